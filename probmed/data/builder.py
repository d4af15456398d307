"""``probmed data build``: real study files (manifest) → de-identified webdataset shards + ``sizes.json``.

Each study of the manifest becomes one sample in the shard schema (:mod:`probmed.data.schema`), each modality the
row gives converted by its registered converter (:mod:`probmed.data.registry`, :mod:`probmed.data.converters`):

* CXR views: DICOM → de-identified DICOM (:func:`~probmed.data.deid.deidentify_dicom`, pixel data and transfer
  syntax kept) as ``cxr.<i>.dcm``; PNG / JPEG → metadata stripped, as ``cxr.<i>.png`` / ``cxr.<i>.jpg``. Each view is
  decoded once at build time, so an unreadable view is skipped here rather than at every epoch. With ``cxr_size``
  a view larger than that is stored decoded (LUTs, window, MONOCHROME1 applied) and shrunk to that longer side as a
  16-bit PNG: a 2k² radiograph costs the loader ~50 ms to decode, a 512² PNG a few ms (benchmarks/bench_data.py).
* ECG (DICOM / WFDB / MUSE XML) → standard 12-lead order, optional resampling and neurokit2 cleaning →
  ``ecg.npy`` (int16 µV) with the lead mask in ``meta["ecg_lead_mask"]``.
* Echo (multi-frame DICOM / AVI / MP4) → grey ``uint8 [frames, size, size]`` ``echo.npy`` at its own frame rate
  (``meta["echo_fps"]``), blanked outside the imaging sector (burned-in name, id and date; ``--us-blank``).
* Report (file or inline text, e.g. ECG statements) → ``report.txt``.

The label vocabulary (the manifest's ``finding:<name>`` columns, their value convention and counts) is written to
``labels.json`` (:mod:`probmed.data.labels`); the loader and evaluation take the labels from there. The
manifest's ``ambiguity:<m>`` columns go into ``meta["ambiguity"][<m>]`` for each modality the study ends up with
(evaluation truth, as in the synthetic corpus).

Study and patient ids become salted pseudonyms (the shard key and ``meta``); the salt is never stored, and a shard
whose members hold it (in any common encoding, :mod:`probmed.data.secret_scan`) is refused before it is written.

Every input path passes the path policy before a converter sees it (:mod:`probmed.data.safe_paths`): it must
resolve inside the manifest's directory or a ``--root``, be a regular file (never under ``/proc``, ``/sys``,
``/dev``) and stay under the size limit (:mod:`probmed.data.limits`); a refused path is a counted skip naming the
manifest line and column.

The plan is deterministic: studies are sorted by pseudonym within each split and cut into shards of at most
``maxcount`` studies and ``maxsize`` input bytes. Every finished shard has a record ``.build/<shard>.json`` (its
study pseudonyms and skipped inputs, no paths or source ids); a rerun keeps a shard whose record matches its
planned studies and rebuilds the rest, so an interrupted build resumes where it stopped.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

from probmed.data import registry, schema
from probmed.data.burned_in_text import default_policy, require_engine
from probmed.data.converters import BuildContext
from probmed.data.deid import SALT_ENV, Pseudonymizer
from probmed.data.labels import LABELS_FILE, write_vocabulary
from probmed.data.limits import Limits
from probmed.data.manifest import StudyEntry, label_columns, read_manifest
from probmed.data.readers.errors import UnreadableInput
from probmed.data.registry import build_specs
from probmed.data.safe_paths import check_entry_paths, resolved_roots
from probmed.data.secret_scan import SecretInOutput, find_secret
from probmed.data.shard_writer import shard_name, write_shard, write_sizes

RECORD_DIR = ".build"
#: Fields of a skipped-input entry shown on the console but never written to the output directory (they can hold
#: source ids and paths).
PRIVATE_FIELDS = ("detail", "source_study")


@dataclass
class BuildOptions:
    """What the builder does to each modality (see ``probmed data build --help``)."""

    cxr_size: int | None = None
    ecg_rate: float | None = None
    ecg_clean: bool = False
    echo_size: int | None = 112
    echo_fps: float | None = None
    drop_burned_in: bool = False
    fit: str = "pad"
    us_blank: str = "sector"
    keep_burned_in: bool = False
    #: burned-in text found by OCR in CXR and echo pixels: ``blank``, ``refuse`` or ``off``
    #: (:mod:`probmed.data.burned_in_text`; ``--burned-in-text``)
    burned_in_text: str = field(default_factory=default_policy)
    #: directories inputs may resolve into besides the manifest's own (``--root``; resolved, symlinks followed)
    roots: tuple[str, ...] = ()
    #: resource limits (:class:`probmed.data.limits.Limits`; ``--limit NAME=VALUE``)
    limits: Limits = field(default_factory=Limits)


@dataclass
class ShardJob:
    """One shard to write: its split, index, and the planned studies as ``(pseudonym, entry)``."""

    split: str
    index: int
    studies: list[tuple[str, StudyEntry]]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.studies]


@dataclass
class StudyResult:
    """A built sample (or None when nothing usable was left), skipped inputs and notes."""

    sample: dict | None
    skipped: list[dict] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)


# -- one study ---------------------------------------------------------------------------------------------------
def _attempt(result: StudyResult, key: str, modality: str, fn):
    """Run one modality's conversion; a failure is recorded as a skipped input (never a crash)."""
    try:
        return fn()
    except UnreadableInput as exc:
        reason, detail = exc.reason, str(exc)
    except FileNotFoundError as exc:
        reason, detail = f"{modality}_file_missing", f"{type(exc).__name__}: {exc.filename}"
    except Exception as exc:  # a damaged file of any kind: counted with its type, the build goes on
        reason, detail = f"{modality}_unreadable", f"{type(exc).__name__}: {exc}"
    result.skipped.append({"study": key, "modality": modality, "reason": reason, "detail": detail[:300]})
    return None


def _confined(entry: StudyEntry, key: str, opts: BuildOptions, result: StudyResult) -> StudyEntry:
    """The entry with only the paths that pass the path policy (:mod:`probmed.data.safe_paths`: inside a root,
    a regular file, under the size limit; checked with ``stat``, nothing opened); each refused path is a skipped
    input of its modality with its cause."""
    roots = resolved_roots(opts.roots)
    paths = {}
    for spec in build_specs():
        column = spec.build.path_column
        if column not in entry.paths:
            continue
        kept, refused = check_entry_paths(entry, column, spec.name, roots, opts.limits)
        for reason, detail in refused:
            result.skipped.append({"study": key, "modality": spec.name, "reason": reason, "detail": detail[:300]})
        if kept:
            paths[column] = kept
    return replace(entry, paths=paths)


def build_study(key: str, entry: StudyEntry, pseudo: Pseudonymizer, opts: BuildOptions) -> StudyResult:
    """Convert one manifest entry into a shard sample: every registered modality the row gives, by its converter
    (:mod:`probmed.data.converters`; which column builds which modality is :mod:`probmed.data.registry`)."""
    result = StudyResult(None)
    patient = pseudo.id("patient", entry.patient_id)
    meta: dict = {"study_id": key, "patient_id": patient, "split": entry.split, "findings": dict(entry.findings)}
    sample: dict = {"__key__": key}
    ctx = BuildContext(key, patient, pseudo, opts, result.notes,
                       lambda modality, fn: _attempt(result, key, modality, fn))
    entry = _confined(entry, key, opts, result)
    for spec in build_specs():
        build = spec.build
        if not (entry.has(build.path_column) or (build.inline_column and entry.has(build.inline_column))):
            continue
        if not build.many and len(entry.paths.get(build.path_column, [])) > 1:
            result.skipped.append({"study": key, "modality": spec.name, "reason": f"{spec.name}_several_files",
                                   "detail": f"column {build.path_column!r} takes one file"})
            continue
        got = _attempt(result, key, spec.name, lambda build=build: build.convert(entry, ctx))
        if got is not None:
            sample.update(got[0])
            meta.update(got[1])
            if got[0] and spec.name in entry.ambiguity:  # the manifest's ambiguity:<m>, for a modality it has
                meta.setdefault("ambiguity", {})[spec.name] = entry.ambiguity[spec.name]
    if len(sample) == 1:
        result.skipped.append({"study": key, "modality": "study", "reason": "no_usable_modality", "detail": ""})
        return result
    sample[schema.META_EXT] = json.dumps(meta, sort_keys=True).encode("utf-8")
    result.sample = sample
    return result


# -- the plan and the shards -----------------------------------------------------------------------------------------
def plan_shards(entries: list[StudyEntry], pseudo: Pseudonymizer, maxcount: int, maxsize: int | None) -> list[ShardJob]:
    """Deterministic shard plan: per split, studies sorted by pseudonym, cut at ``maxcount`` studies or when the
    shard's input files would pass ``maxsize`` bytes (a shard always holds at least one study)."""
    jobs: list[ShardJob] = []
    for split in schema.SPLITS:
        keyed = sorted(((pseudo.id("study", e.study_id), e) for e in entries if e.split == split),
                       key=lambda pair: pair[0])
        shards: list[list[tuple[str, StudyEntry]]] = []
        size = 0
        for key, entry in keyed:
            nbytes = entry.input_bytes() if maxsize else 0
            if not shards or len(shards[-1]) >= maxcount or (maxsize and size + nbytes > maxsize):
                shards.append([])
                size = 0
            shards[-1].append((key, entry))
            size += nbytes
        jobs += [ShardJob(split, index, studies) for index, studies in enumerate(shards)]
    return jobs


def _with_manifest_root(options: BuildOptions, manifest: str | Path) -> BuildOptions:
    """The options with the manifest's directory first among the roots inputs may resolve into."""
    return replace(options, roots=(os.path.realpath(Path(manifest).parent), *options.roots))


def _record_path(out: Path, name: str) -> Path:
    return out / RECORD_DIR / f"{name}.json"


def finished_record(out: Path, job: ShardJob) -> dict | None:
    """The record of a shard already built for exactly this job's studies, or None (then it is rebuilt)."""
    record_file = _record_path(out, job.name)
    if not (out / job.name).is_file() or not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
    except ValueError:
        return None
    return record if record.get("planned") == job.keys else None


def run_job(job: ShardJob, out: str, salt: str, opts: BuildOptions) -> dict:
    """Build and write one shard, then its record (the record is written last: it marks the shard finished)."""
    out_dir = Path(out)
    pseudo = Pseudonymizer(salt)
    results = [build_study(key, entry, pseudo, opts) for key, entry in job.studies]
    leaks = find_secret([r.sample for r in results if r.sample is not None], salt)
    if leaks:  # checked before anything is written: a shard holding the salt is never published
        raise SecretInOutput(f"refusing to write {job.name}: the de-identification salt appears in {len(leaks)} "
                             f"member(s) ({', '.join(leaks[:5])}); find which input carries it "
                             "(probmed data check) and remove it")
    count = write_shard(out_dir / job.name, [r.sample for r in results if r.sample is not None])
    notes: Counter = Counter()
    for r in results:
        notes.update(r.notes)
    skipped = [{**s, "source_study": entry.study_id} for (_, entry), r in zip(job.studies, results) for s in r.skipped]
    record = {"shard": job.name, "planned": job.keys, "count": count, "notes": dict(notes),
              "skipped": [{k: v for k, v in s.items() if k not in PRIVATE_FIELDS} for s in skipped]}
    path = _record_path(out_dir, job.name)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))  # pseudonyms and reasons only: no paths, ids or error texts
    os.replace(tmp, path)
    return {**record, "skipped": skipped}


def _remove_stale(out: Path, jobs: list[ShardJob]) -> None:
    """Delete shards (and records) of a previous plan that this plan does not have."""
    planned = {job.name for job in jobs}
    for path in out.glob("*.tar"):
        if path.name not in planned and path.name.split("-")[0] in schema.SPLITS:
            path.unlink()
            _record_path(out, path.name).unlink(missing_ok=True)


def build_dataset(manifest: str | Path, out: str | Path, salt: str | None = None, maxcount: int = 200,
                  maxsize: int | None = None, workers: int = 1, options: BuildOptions | None = None,
                  progress: bool = True) -> dict:
    """Build (or resume building) a shard set from a manifest; returns a summary.

    Returns:
        ``{"out_dir", "studies", "written", "shards", "reused_shards", "skipped": {reason: count},
        "skipped_examples": [...], "notes": {...}, "sizes": {shard: count}}``.
    """
    from tqdm import tqdm

    options = _with_manifest_root(options or BuildOptions(), manifest)
    pseudo = Pseudonymizer(salt)  # raises a clear error without a salt
    require_engine(options.burned_in_text)  # before any shard: no build silently skips the OCR
    salt = salt if salt is not None else os.environ.get(SALT_ENV, "")
    entries = read_manifest(manifest)
    out_dir = Path(out)
    (out_dir / RECORD_DIR).mkdir(parents=True, exist_ok=True)
    (out_dir / schema.SIZES_FILE).unlink(missing_ok=True)  # only a finished build has a sizes.json
    jobs = plan_shards(entries, pseudo, maxcount, maxsize)
    _remove_stale(out_dir, jobs)
    records: dict[str, dict] = {}
    todo = []
    for job in jobs:
        record = finished_record(out_dir, job)
        if record is None:
            todo.append(job)
        else:
            records[job.name] = record
    reused = len(records)
    bar = tqdm(total=len(entries), initial=sum(len(records[n]["planned"]) for n in records), unit="study",
               disable=not progress, file=sys.stderr, desc="probmed data build")
    if workers > 1 and len(todo) > 1:
        # spawn, not fork: the caller may hold threads (torch / OpenMP / tokenizers) whose locks a forked child
        # inherits locked — a fork-started pool deadlocked that way inside the test suite
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_job, job, str(out_dir), salt, options): job for job in todo}
            for future in as_completed(futures):
                records[futures[future].name] = future.result()
                bar.update(len(futures[future].studies))
    else:
        for job in todo:
            records[job.name] = run_job(job, str(out_dir), salt, options)
            bar.update(len(job.studies))
    bar.close()
    sizes = {name: int(rec["count"]) for name, rec in sorted(records.items()) if rec["count"] > 0}
    for name, rec in records.items():  # a shard left with no study is not listed and not kept
        if rec["count"] == 0:
            (out_dir / name).unlink(missing_ok=True)
    columns = label_columns(manifest)
    if columns:
        write_vocabulary(out_dir, columns, [e.findings for e in entries])
    else:  # no finding columns: no labels.json, so the loader keeps its default vocabulary (labels.read_vocabulary)
        (out_dir / LABELS_FILE).unlink(missing_ok=True)
    write_sizes(out_dir, sizes)
    skipped = Counter(s["reason"] for rec in records.values() for s in rec["skipped"])
    notes: Counter = Counter()
    for rec in records.values():
        notes.update(rec["notes"])
    return {"out_dir": str(out_dir), "studies": len(entries), "written": sum(sizes.values()), "shards": len(sizes),
            "reused_shards": reused, "skipped": dict(sorted(skipped.items())),
            "skipped_examples": [s for rec in records.values() for s in rec["skipped"]][:10],
            "notes": dict(sorted(notes.items())), "sizes": sizes}


# -- the dry run ----------------------------------------------------------------------------------------------------
def _check_chunk(entries: list[StudyEntry], opts: BuildOptions) -> list[tuple[list[str], list[dict]]]:
    """Convert each study as the build would, keeping only which modalities came out and what was skipped."""
    import secrets

    pseudo = Pseudonymizer(secrets.token_hex(16))  # throwaway: nothing is written
    out = []
    for entry in entries:
        result = build_study(pseudo.id("study", entry.study_id), entry, pseudo, opts)
        files = result.sample or {}
        used = sorted({m for ext in files if (m := registry.modality_of(ext)) is not None})
        out.append((used, [{**s, "source_study": entry.study_id} for s in result.skipped]))
    return out


def check_dataset(manifest: str | Path, options: BuildOptions | None = None, workers: int = 1,
                  progress: bool = True, chunk: int = 16) -> dict:
    """``probmed data check``: read and convert every file the manifest references, as ``build`` would, and write
    nothing.

    Returns:
        ``{"studies", "usable_studies", "modalities": {modality: {"used": n, "skipped": {reason: n}}},
        "labels": {label: {positive, negative, uncertain, missing}}, "skipped_examples": [...]}``.
    """
    from tqdm import tqdm

    from probmed.data.labels import count_values

    options = _with_manifest_root(options or BuildOptions(), manifest)
    require_engine(options.burned_in_text)
    entries = read_manifest(manifest)
    chunks = [entries[i : i + chunk] for i in range(0, len(entries), chunk)]
    results: list[tuple[list[str], list[dict]]] = []
    bar = tqdm(total=len(entries), unit="study", disable=not progress, file=sys.stderr, desc="probmed data check")
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(_check_chunk, chunks, [options] * len(chunks)):
                results += done
                bar.update(len(done))
    else:
        for part in chunks:
            results += _check_chunk(part, options)
            bar.update(len(part))
    bar.close()
    modalities: dict[str, dict] = {}
    for used, skipped in results:
        for name in used:
            modalities.setdefault(name, {"used": 0, "skipped": Counter()})["used"] += 1
        for s in skipped:
            modalities.setdefault(s["modality"], {"used": 0, "skipped": Counter()})["skipped"][s["reason"]] += 1
    return {"studies": len(entries), "usable_studies": sum(bool(used) for used, _ in results),
            "modalities": {m: {"used": v["used"], "skipped": dict(sorted(v["skipped"].items()))}
                           for m, v in sorted(modalities.items())},
            "labels": count_values(label_columns(manifest), [e.findings for e in entries]),
            "skipped_examples": [s for _, skipped in results for s in skipped][:10]}
