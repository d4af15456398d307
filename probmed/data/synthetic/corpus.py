"""Generate the embedded demo corpus: plan the hidden truth, render studies in worker processes, write shards.

Determinism: the plan depends only on the arguments; each study is rendered from generators seeded by
``(seed, study index, modality)``; the ECG bank from fixed per-template seeds; DICOM UIDs from the seed; tar
members carry a fixed mtime/owner. Results are consumed in plan order, so the shard bytes are identical for
any number of workers and whether or not the ECG bank came from the disk cache.
"""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probmed.data.schema import ECG_EXT, ECG_LEADS, ECHO_EXT, FINDINGS, META_EXT, REPORT_EXT, SPLITS
from probmed.data.shard_writer import ShardSetWriter
from probmed.data.synthetic import ct as ct_mod
from probmed.data.synthetic import cxr as cxr_mod
from probmed.data.synthetic import echo as echo_mod
from probmed.data.synthetic import ecg as ecg_mod
from probmed.data.synthetic import quality
from probmed.data.synthetic.plan import CORPUS_MODALITIES, EXTRA_MODALITIES, StudyPlan, plan_corpus, study_rng
from probmed.data.synthetic.report import make_report

DEFAULT_MISSING = {"cxr": 0.1, "ecg": 0.15, "echo": 0.2, "text": 0.0}
INFO_FILE = "corpus_info.json"


@dataclass(frozen=True)
class RenderConfig:
    seed: int = 0
    cxr_size: int = 256
    echo_size: int = 64
    echo_frames: int = 16
    echo_fps: float = 12.8
    ecg_rate: int = 250
    ecg_seconds: float = 10.0
    ct_size: int = 128


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def study_meta(plan: StudyPlan, cfg: RenderConfig) -> dict[str, Any]:
    """The ``json`` metadata of one study (schema keys + hidden attributes + the quality ground truth).

    ``findings`` holds 1 / 0 and -1 for a borderline study's uncertain finding; ``ambiguity`` maps each modality
    the study has to its ambiguity in [0, 1] and ``quality`` to its mechanisms' strengths
    (:mod:`probmed.data.synthetic.quality`): truth for evaluation, never read by the model.
    """
    return {
        "study_id": plan.study_id,
        "patient_id": plan.patient_id,
        "split": plan.split,
        "findings": {k: int(v) for k, v in plan.labels().items() if k in FINDINGS},
        "cxr_views": list(plan.cxr_views),
        "ecg_leads": list(ECG_LEADS) if plan.present["ecg"] else [],
        "ecg_sampling_rate": int(cfg.ecg_rate) if plan.present["ecg"] else None,
        "echo_fps": float(cfg.echo_fps) if plan.present["echo"] else None,
        "modalities": [m for m, present in plan.present.items() if present],
        "attributes": dict(plan.attributes),
        "source": "probmed-synthetic",
    } | ({"ambiguity": dict(plan.ambiguity), "quality": {m: dict(q) for m, q in plan.quality.items()}}
         if plan.ambiguity else {})


# worker state (set by the pool initializer, or directly when running in-process)
_BANK: ecg_mod.ECGBank | None = None


def _init_worker(bank: ecg_mod.ECGBank | None) -> None:
    global _BANK
    _BANK = bank
    # NumPy / torch thread pools would fight over the 2 cores with the other worker
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _render_cxr(plan: StudyPlan, cfg: RenderConfig, sample: dict[str, Any]) -> None:
    rng = study_rng(cfg.seed, plan.index, "cxr")
    noise = quality.noise_rng(cfg.seed, plan.index, "cxr")
    q = plan.quality.get("cxr")
    for i, (view, phot) in enumerate(zip(plan.cxr_views, plan.cxr_photometric)):
        density = cxr_mod.render_cxr(rng, view, plan.attributes, plan.patient_traits, cfg.cxr_size, quality=q)
        density = quality.degrade_cxr(density, noise, q) if q else density
        sample[f"cxr.{i}.dcm"] = cxr_mod.to_dicom_bytes(
            density, rng, seed=cfg.seed, study_id=plan.study_id, view=view, view_index=i, photometric=phot,
            bits=plan.cxr_bits, phi=plan.phi, n_views=len(plan.cxr_views),
        )


def _render_ecg(plan: StudyPlan, cfg: RenderConfig, sample: dict[str, Any], bank: ecg_mod.ECGBank | None) -> None:
    if bank is None:
        raise RuntimeError("render_study needs the ECG bank")
    a = plan.attributes
    sig = ecg_mod.synthesize_ecg(
        bank, study_rng(cfg.seed, plan.index, "ecg"), heart_rate=a["heart_rate"], rhythm=a["rhythm"],
        traits=plan.patient_traits, sampling_rate=cfg.ecg_rate, seconds=cfg.ecg_seconds, structure=a,
    )
    if "ecg" in plan.quality:
        sig = quality.degrade_ecg(sig, quality.noise_rng(cfg.seed, plan.index, "ecg"), plan.quality["ecg"],
                                  cfg.ecg_rate)
    sample[ECG_EXT] = _npy_bytes(sig)


def _render_echo(plan: StudyPlan, cfg: RenderConfig, sample: dict[str, Any]) -> None:
    a, q = plan.attributes, plan.quality.get("echo")
    cine = echo_mod.render_echo(
        study_rng(cfg.seed, plan.index, "echo"), heart_rate=a["heart_rate"], rhythm=a["rhythm"], ef=a["ef"],
        lv_scale=a["lv_scale"], traits=plan.patient_traits, frames=cfg.echo_frames, size=cfg.echo_size,
        fps=cfg.echo_fps, lv_wall_mm=a["lv_wall_mm"], la_diameter_mm=a["la_diameter_mm"],
        foreshortening=q["foreshortening"] if q else 0.0,
    )
    if q:
        cine = quality.degrade_echo(cine, quality.noise_rng(cfg.seed, plan.index, "echo"), q)
    sample[ECHO_EXT] = _npy_bytes(cine)


def _render_text(plan: StudyPlan, cfg: RenderConfig, sample: dict[str, Any]) -> None:
    text = make_report(study_rng(cfg.seed, plan.index, "text"), plan.findings, plan.attributes,
                       quality=plan.quality.get("text"), quality_rng=quality.noise_rng(cfg.seed, plan.index, "text"),
                       uncertain=plan.uncertain)
    sample[REPORT_EXT] = text.encode("utf-8")


def _render_ct(plan: StudyPlan, cfg: RenderConfig, sample: dict[str, Any]) -> None:
    hu = ct_mod.render_ct(study_rng(cfg.seed, plan.index, "ct"), plan.attributes, plan.patient_traits, cfg.ct_size)
    if "ct" in plan.quality:
        hu = quality.degrade_ct(hu, quality.noise_rng(cfg.seed, plan.index, "ct"), plan.quality["ct"])
    sample["ct.0.dcm"] = ct_mod.to_ct_dicom_bytes(hu, seed=cfg.seed, study_id=plan.study_id, phi=plan.phi)


def render_study(plan: StudyPlan, cfg: RenderConfig, bank: ecg_mod.ECGBank | None = None
                 ) -> tuple[str, dict[str, Any], dict[str, float]]:
    """Render one study: ``(split, sample dict for the shard writer, per-modality seconds)``; each modality is
    rendered at its plan's quality (:mod:`probmed.data.synthetic.quality`)."""
    bank = bank if bank is not None else _BANK
    timing: dict[str, float] = {}
    sample: dict[str, Any] = {"__key__": plan.study_id}
    renderers = {"cxr": _render_cxr, "ecg": lambda p, c, s: _render_ecg(p, c, s, bank), "echo": _render_echo,
                 "text": _render_text, "ct": _render_ct}
    for modality, render in renderers.items():
        if plan.present.get(modality):
            t0 = time.process_time()
            render(plan, cfg, sample)
            timing[modality] = time.process_time() - t0
    sample[META_EXT] = json.dumps(study_meta(plan, cfg), sort_keys=True).encode("utf-8")
    return plan.split, sample, timing


def _render_task(args):
    plan, cfg = args
    return render_study(plan, cfg)


def _mp_context():
    """spawn, not fork: the caller may hold threads (torch / OpenMP) whose locks a forked child would inherit
    locked and wait on forever."""
    return mp.get_context("spawn")


def generate_corpus(
    out_dir: str | os.PathLike,
    n_studies: int,
    seed: int = 0,
    *,
    missing: dict[str, float] | None = None,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    cxr_size: int = 256,
    echo_size: int = 64,
    echo_frames: int = 16,
    echo_fps: float | None = None,
    ecg_rate: int = 250,
    ecg_seconds: float = 10.0,
    shard_size: int = 200,
    workers: int = 2,
    lateral_fraction: float = 0.3,
    cache_dir: str | os.PathLike | None | bool = True,
    progress: bool = False,
    extra_modalities: tuple[str, ...] = (),
    ct_size: int = 128,
    ambiguity: bool = True,
) -> dict[str, Any]:
    """Write a synthetic corpus of ``n_studies`` studies as webdataset shards under ``out_dir``.

    Each study's modalities carry an ambiguity rendered into the signal and recorded in the metadata; 10 % of
    studies are borderline (a -1 label). Defaults (:mod:`probmed.data.synthetic.quality`): 70 % clean (a < 0.05),
    a 0.05 + 0.95·Beta(1.2, 1.8) tail. ``ambiguity=False``: every study clean, no borderline ones, no such keys.

    Args:
        missing: fraction of studies lacking each modality (defaults :data:`DEFAULT_MISSING`; unnamed
            modalities keep their default).
        splits: train/val/test fractions (by patient).
        cache_dir: where the ECG bank is cached; ``True`` = ``$PROBMED_CACHE/ecg_bank`` or
            ``~/.cache/probmed/ecg_bank``; ``None``/``False`` = no disk cache.
        workers: worker processes (``<= 1`` renders in this process).
        extra_modalities: opt-in modalities to add (``("ct",)``: an axial chest CT slice ``ct.0.dcm`` of
            ``ct_size`` pixels, missing in 20 % of studies unless ``missing`` says otherwise; see
            :data:`~probmed.data.synthetic.plan.EXTRA_MODALITIES`). The corpus's own files do not change.

    Returns a summary dict: counts per split, shard sizes, finding prevalence, modality presence, timings
    (``profile_ms``: mean CPU milliseconds per study and modality inside the renderer).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    extras = tuple(dict.fromkeys(extra_modalities))
    miss = _check_arguments(extras, missing, shard_size, cxr_size, ct_size, echo_size, echo_frames, ecg_rate,
                            ecg_seconds)
    cfg = RenderConfig(
        seed=int(seed), cxr_size=int(cxr_size), echo_size=int(echo_size), echo_frames=int(echo_frames),
        echo_fps=float(echo_fps) if echo_fps else echo_mod.default_fps(int(echo_frames)),
        ecg_rate=int(ecg_rate), ecg_seconds=float(ecg_seconds), ct_size=int(ct_size),
    )
    plans = plan_corpus(n_studies, seed, missing=miss, splits=tuple(splits), lateral_fraction=lateral_fraction,
                        extra_modalities=extras, ambiguity=ambiguity)
    modalities = (*CORPUS_MODALITIES, *extras)
    # write order: a seeded permutation, so a shard mixes patients (a patient's studies are not adjacent)
    order = np.random.default_rng([int(seed), 9]).permutation(len(plans))
    ordered = [plans[int(i)] for i in order]
    t_bank = time.perf_counter()
    bank, n_templates = _build_bank(plans, cfg, cache_dir, workers)
    t_render = time.perf_counter()
    split_counts, profile_ms, sizes = _render_and_write(ordered, cfg, bank, out_dir, shard_size, workers, progress,
                                                        modalities)
    arguments = {"n_studies": int(n_studies), "seed": int(seed), "missing": miss, "splits": list(splits)} | {
        k: v for k, v in asdict(cfg).items() if k not in ("seed", "ct_size")} | {
        "shard_size": int(shard_size), "lateral_fraction": lateral_fraction,
    } | ({"extra_modalities": list(extras), "ct_size": cfg.ct_size} if extras else {})
    info = _write_info(out_dir, plans, modalities, arguments, split_counts, sizes)
    total = time.perf_counter() - t_start
    return dict(info) | dict(
        out_dir=str(out_dir),
        seconds=round(total, 3),
        bank_seconds=round(t_render - t_bank, 3),
        bank_templates=n_templates,
        render_seconds=round(total - (t_render - t_start), 3),
        studies_per_s=round(len(plans) / max(total, 1e-9), 2),
        profile_ms=profile_ms,
        workers=int(workers),
        config=asdict(cfg),
    )


def _check_arguments(extras, missing, shard_size, cxr_size, ct_size, echo_size, echo_frames, ecg_rate,
                     ecg_seconds) -> dict[str, float]:
    """The missing fraction of every modality, after refusing impossible arguments (ValueError)."""
    unknown = sorted(set(extras) - set(EXTRA_MODALITIES))
    if unknown:
        raise ValueError(f"unknown extra modalities {unknown} (known: {sorted(EXTRA_MODALITIES)})")
    miss = dict(DEFAULT_MISSING) | {m: EXTRA_MODALITIES[m] for m in extras} | dict(missing or {})
    for k, v in miss.items():
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"missing fraction for {k} must be in [0, 1], got {v}")
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    if cxr_size < 32 or ct_size < 32 or echo_size < 16 or echo_frames < 2 or ecg_rate < 50 or ecg_seconds < 2:
        raise ValueError("sizes too small (cxr and ct >= 32, echo >= 16 px and >= 2 frames, ECG >= 50 Hz and >= 2 s)")
    return miss


def _build_bank(plans: list[StudyPlan], cfg: RenderConfig, cache_dir, workers: int
                ) -> tuple[ecg_mod.ECGBank, int]:
    """The ECG beat bank the plans need (from the disk cache when there) and its number of templates."""
    if cache_dir is True:
        cache: Path | None = ecg_mod.ECGBank.cache_dir_default()
    elif cache_dir in (None, False):
        cache = None
    else:
        cache = Path(cache_dir)  # type: ignore[arg-type]
    keys = ecg_mod.needed_templates(
        [(p.attributes["rhythm"], p.attributes["heart_rate"]) for p in plans if p.present["ecg"]], cfg.ecg_rate
    )
    if workers > 1 and keys:
        with _mp_context().Pool(workers) as pool:
            return ecg_mod.ECGBank.build(keys, cache_dir=cache, pool=pool), len(keys)
    return ecg_mod.ECGBank.build(keys, cache_dir=cache), len(keys)


def _render_and_write(ordered: list[StudyPlan], cfg: RenderConfig, bank, out_dir: Path, shard_size: int,
                      workers: int, progress: bool, modalities) -> tuple[dict[str, int], dict[str, float], dict]:
    """Render the studies in ``ordered`` (in worker processes when ``workers > 1``) and write them, in that order,
    as shards: ``(studies per split, mean CPU ms per study and modality, shard sizes)``."""
    timing_sum = {m: 0.0 for m in modalities}
    timing_n = {m: 0 for m in modalities}
    split_counts = {s: 0 for s in SPLITS}
    done, last_print, t_render = 0, 0.0, time.perf_counter()
    tty = sys.stderr.isatty()  # a terminal gets one updating line; a log gets a whole line every 30 s

    def consume(results, writer):
        nonlocal done, last_print
        for split, sample, timing in results:
            writer.write(split, sample)
            split_counts[split] += 1
            for m, dt in timing.items():
                timing_sum[m] += dt
                timing_n[m] += 1
            done += 1
            now = time.perf_counter()
            if progress and (now - last_print > (1.0 if tty else 30.0) or done == len(ordered)):
                last_print = now
                rate = done / max(now - t_render, 1e-9)
                line = f"[probmed synth] {done}/{len(ordered)} studies, {rate:.1f}/s"
                print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    with ShardSetWriter(out_dir, maxcount=shard_size) as writer:
        if workers > 1:
            with _mp_context().Pool(workers, initializer=_init_worker, initargs=(bank,)) as pool:
                consume(pool.imap(_render_task, [(p, cfg) for p in ordered], chunksize=4), writer)
        else:
            consume((render_study(p, cfg, bank) for p in ordered), writer)
    if progress and tty:
        print(file=sys.stderr)
    profile = {m: round(1000 * timing_sum[m] / timing_n[m], 3) for m in modalities if timing_n[m]}
    return split_counts, profile, writer.sizes


def _write_info(out_dir: Path, plans: list[StudyPlan], modalities, arguments: dict, split_counts: dict,
                sizes: dict) -> dict[str, Any]:
    """Write (atomically) and return ``corpus_info.json``: arguments, counts, prevalences, ambiguity summary."""
    F = np.array([[p.findings[k] for k in FINDINGS] for p in plans])
    amb = {m: np.array([p.ambiguity[m] for p in plans if m in p.ambiguity]) for m in modalities}
    info = {
        "generator": "probmed.data.synthetic",
        "arguments": arguments,
        "n_studies": len(plans),
        "n_patients": len({p.patient_id for p in plans}),
        "split_counts": split_counts,
        "findings_prevalence": {k: round(float(F[:, i].mean()), 4) for i, k in enumerate(FINDINGS)},
        "normal_fraction": round(float((F.sum(1) == 0).mean()), 4),
        "modality_presence": {m: int(sum(p.present[m] for p in plans)) for m in modalities},
        "cxr_lateral": int(sum(len(p.cxr_views) > 1 for p in plans)),
        "shards": sizes,
    }
    if any(p.ambiguity for p in plans):  # (a corpus without ambiguity keeps the info file of before, byte for byte)
        info |= {"borderline_fraction": round(float(np.mean([bool(p.uncertain) for p in plans])), 4),
                 "ambiguity_mean": {m: round(float(v.mean()), 4) for m, v in amb.items() if len(v)}}
    tmp = out_dir / f"{INFO_FILE}.tmp"
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / INFO_FILE)
    return info
