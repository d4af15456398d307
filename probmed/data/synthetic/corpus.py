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
    """The ``json`` metadata of one study (schema keys + hidden attributes)."""
    return {
        "study_id": plan.study_id,
        "patient_id": plan.patient_id,
        "split": plan.split,
        "findings": {k: int(plan.findings[k]) for k in FINDINGS},
        "cxr_views": list(plan.cxr_views),
        "ecg_leads": list(ECG_LEADS) if plan.present["ecg"] else [],
        "ecg_sampling_rate": int(cfg.ecg_rate) if plan.present["ecg"] else None,
        "echo_fps": float(cfg.echo_fps) if plan.present["echo"] else None,
        "modalities": [m for m, present in plan.present.items() if present],
        "attributes": dict(plan.attributes),
        "source": "probmed-synthetic",
    }


# worker state (set by the pool initializer, or directly when running in-process)
_BANK: ecg_mod.ECGBank | None = None


def _init_worker(bank: ecg_mod.ECGBank | None) -> None:
    global _BANK
    _BANK = bank
    # NumPy / torch thread pools would fight over the 2 cores with the other worker
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def render_study(plan: StudyPlan, cfg: RenderConfig, bank: ecg_mod.ECGBank | None = None
                 ) -> tuple[str, dict[str, Any], dict[str, float]]:
    """Render one study: ``(split, sample dict for the shard writer, per-modality seconds)``."""
    bank = bank if bank is not None else _BANK
    timing: dict[str, float] = {}
    sample: dict[str, Any] = {"__key__": plan.study_id}
    a, f, tr = plan.attributes, plan.findings, plan.patient_traits
    if plan.present["cxr"]:
        t0 = time.process_time()
        rng = study_rng(cfg.seed, plan.index, "cxr")
        for i, (view, phot) in enumerate(zip(plan.cxr_views, plan.cxr_photometric)):
            density = cxr_mod.render_cxr(rng, view, a, tr, cfg.cxr_size)
            sample[f"cxr.{i}.dcm"] = cxr_mod.to_dicom_bytes(
                density, rng, seed=cfg.seed, study_id=plan.study_id, view=view, view_index=i, photometric=phot,
                bits=plan.cxr_bits, phi=plan.phi, n_views=len(plan.cxr_views),
            )
        timing["cxr"] = time.process_time() - t0
    if plan.present["ecg"]:
        t0 = time.process_time()
        if bank is None:
            raise RuntimeError("render_study needs the ECG bank")
        sig = ecg_mod.synthesize_ecg(
            bank, study_rng(cfg.seed, plan.index, "ecg"), heart_rate=a["heart_rate"], rhythm=a["rhythm"],
            traits=tr, sampling_rate=cfg.ecg_rate, seconds=cfg.ecg_seconds, structure=a,
        )
        sample[ECG_EXT] = _npy_bytes(sig)
        timing["ecg"] = time.process_time() - t0
    if plan.present["echo"]:
        t0 = time.process_time()
        cine = echo_mod.render_echo(
            study_rng(cfg.seed, plan.index, "echo"), heart_rate=a["heart_rate"], rhythm=a["rhythm"], ef=a["ef"],
            lv_scale=a["lv_scale"], traits=tr, frames=cfg.echo_frames, size=cfg.echo_size, fps=cfg.echo_fps,
            lv_wall_mm=a["lv_wall_mm"], la_diameter_mm=a["la_diameter_mm"],
        )
        sample[ECHO_EXT] = _npy_bytes(cine)
        timing["echo"] = time.process_time() - t0
    if plan.present["text"]:
        t0 = time.process_time()
        sample[REPORT_EXT] = make_report(study_rng(cfg.seed, plan.index, "text"), f, a).encode("utf-8")
        timing["text"] = time.process_time() - t0
    if plan.present.get("ct"):
        t0 = time.process_time()
        hu = ct_mod.render_ct(study_rng(cfg.seed, plan.index, "ct"), a, tr, cfg.ct_size)
        sample["ct.0.dcm"] = ct_mod.to_ct_dicom_bytes(hu, seed=cfg.seed, study_id=plan.study_id, phi=plan.phi)
        timing["ct"] = time.process_time() - t0
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
) -> dict[str, Any]:
    """Write a synthetic corpus of ``n_studies`` studies as webdataset shards under ``out_dir``.

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

    Returns:
        a summary dict: counts per split, shard sizes, finding prevalence, modality presence, timings
        (``profile_ms``: mean CPU milliseconds per study and modality inside the renderer).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    extras = tuple(dict.fromkeys(extra_modalities))
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
    cfg = RenderConfig(
        seed=int(seed), cxr_size=int(cxr_size), echo_size=int(echo_size), echo_frames=int(echo_frames),
        echo_fps=float(echo_fps) if echo_fps else echo_mod.default_fps(int(echo_frames)),
        ecg_rate=int(ecg_rate), ecg_seconds=float(ecg_seconds), ct_size=int(ct_size),
    )
    plans = plan_corpus(n_studies, seed, missing=miss, splits=tuple(splits), lateral_fraction=lateral_fraction,
                        extra_modalities=extras)
    modalities = (*CORPUS_MODALITIES, *extras)
    # write order: a seeded permutation, so a shard mixes patients (a patient's studies are not adjacent)
    order = np.random.default_rng([int(seed), 9]).permutation(len(plans))
    ordered = [plans[int(i)] for i in order]

    if cache_dir is True:
        cache: Path | None = ecg_mod.ECGBank.cache_dir_default()
    elif cache_dir in (None, False):
        cache = None
    else:
        cache = Path(cache_dir)  # type: ignore[arg-type]
    keys = ecg_mod.needed_templates(
        [(p.attributes["rhythm"], p.attributes["heart_rate"]) for p in plans if p.present["ecg"]], cfg.ecg_rate
    )
    t_bank = time.perf_counter()
    ctx = _mp_context()
    if workers > 1 and keys:
        with ctx.Pool(workers) as pool:
            bank = ecg_mod.ECGBank.build(keys, cache_dir=cache, pool=pool)
    else:
        bank = ecg_mod.ECGBank.build(keys, cache_dir=cache)
    bank_seconds = time.perf_counter() - t_bank

    timing_sum = {m: 0.0 for m in modalities}
    timing_n = {m: 0 for m in modalities}
    split_counts = {s: 0 for s in SPLITS}
    done = 0
    t_render = time.perf_counter()
    last_print = 0.0
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
            with ctx.Pool(workers, initializer=_init_worker, initargs=(bank,)) as pool:
                consume(pool.imap(_render_task, [(p, cfg) for p in ordered], chunksize=4), writer)
        else:
            consume((render_study(p, cfg, bank) for p in ordered), writer)
    if progress and tty:
        print(file=sys.stderr)
    render_seconds = time.perf_counter() - t_render
    sizes = writer.sizes

    F = np.array([[p.findings[k] for k in FINDINGS] for p in plans])
    info = {
        "generator": "probmed.data.synthetic",
        "arguments": {
            "n_studies": int(n_studies), "seed": int(seed), "missing": miss, "splits": list(splits),
            "cxr_size": cfg.cxr_size, "echo_size": cfg.echo_size, "echo_frames": cfg.echo_frames,
            "echo_fps": cfg.echo_fps, "ecg_rate": cfg.ecg_rate, "ecg_seconds": cfg.ecg_seconds,
            "shard_size": int(shard_size), "lateral_fraction": lateral_fraction,
        } | ({"extra_modalities": list(extras), "ct_size": cfg.ct_size} if extras else {}),
        "n_studies": len(plans),
        "n_patients": len({p.patient_id for p in plans}),
        "split_counts": split_counts,
        "findings_prevalence": {k: round(float(F[:, i].mean()), 4) for i, k in enumerate(FINDINGS)},
        "normal_fraction": round(float((F.sum(1) == 0).mean()), 4),
        "modality_presence": {m: int(sum(p.present[m] for p in plans)) for m in modalities},
        "cxr_lateral": int(sum(len(p.cxr_views) > 1 for p in plans)),
        "shards": sizes,
    }
    tmp = out_dir / f"{INFO_FILE}.tmp"
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / INFO_FILE)
    total = time.perf_counter() - t_start
    summary = dict(info)
    summary.update(
        out_dir=str(out_dir),
        seconds=round(total, 3),
        bank_seconds=round(bank_seconds, 3),
        bank_templates=len(keys),
        render_seconds=round(render_seconds, 3),
        studies_per_s=round(len(plans) / max(total, 1e-9), 2),
        profile_ms={m: round(1000 * timing_sum[m] / timing_n[m], 3) for m in modalities if timing_n[m]},
        workers=int(workers),
        config=asdict(cfg),
    )
    return summary
