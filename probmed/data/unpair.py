"""Drop the pairing of two (or more) modalities from a shard set: no study keeps more than one of them.

M3Bind binds image modalities that never co-occur in a study, each only through text. ``unpair_shards`` copies a
shard set and, in the chosen splits, removes from every study that holds several of the named modalities all but
one of them (which one is kept is a hash of the study id, so about equally many studies keep each); the report and
every other file stay. Splits not named (by default val and test) are copied unchanged, so retrieval between the
unpaired modalities can still be measured there against the true pairs. Files are copied byte for byte; nothing
is decoded.

    probmed data unpair --src data_shards/demo --out data_shards/demo_unpaired --modalities cxr ecg
"""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

from probmed.data.registry import modality_of, stored_modalities
from probmed.data.shard_members import over_limit
from probmed.data.studies import stable_hash


def sample_key(name: str) -> str:
    """The webdataset key of a tar member (``"s0001.cxr.0.dcm"`` → ``"s0001"``)."""
    base = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(base)] + base.split(".", 1)[0]


def _modality(name: str) -> str | None:
    """The stored modality of a tar member (``"s0001.ecg.npy"`` → ``"ecg"``), None for metadata and others."""
    base = name.rsplit("/", 1)[-1]
    return modality_of(base.split(".", 1)[1]) if "." in base else None


def kept_modality(study: str, present: list[str]) -> str:
    """Which of the named modalities a study holding all of ``present`` keeps (deterministic in the study id)."""
    return sorted(present)[stable_hash(f"unpair:{study}") % len(present)]


def _unpair_tar(src: Path, dst: Path, modalities: set[str], counts: dict[str, int]) -> None:
    with tarfile.open(src) as tin:
        members = []
        for m in tin.getmembers():
            cause = over_limit(m) if m.isfile() else None
            if cause is not None:  # never copied: a sparse member declaring 4 GiB would be written out in full
                counts[f"skipped:{cause}"] = counts.get(f"skipped:{cause}", 0) + 1
            elif m.isfile():
                members.append(m)
        by_key: dict[str, set[str]] = {}
        for m in members:
            if _modality(m.name) in modalities:
                by_key.setdefault(sample_key(m.name), set()).add(_modality(m.name))
        drop = {}
        for key, present in by_key.items():
            if len(present) > 1:
                keep = kept_modality(key.rsplit("/", 1)[-1], list(present))
                drop[key] = present - {keep}
                counts[keep] = counts.get(keep, 0) + 1
        tmp = dst.with_suffix(".tar.tmp")
        with tarfile.open(tmp, "w") as tout:
            for m in members:
                if _modality(m.name) in drop.get(sample_key(m.name), ()):
                    counts["dropped_files"] = counts.get("dropped_files", 0) + 1
                    continue
                tout.addfile(m, tin.extractfile(m))
        tmp.replace(dst)


def unpair_shards(src: str | Path, out: str | Path, modalities: list[str],
                  splits: tuple[str, ...] = ("train",)) -> dict:
    """Copy the shard set ``src`` to ``out``, unpairing ``modalities`` in ``splits``; returns a summary
    ``{"studies_keeping": {modality: n}, "dropped_files": n, "shards": n, "skipped": {cause: n}}``; a member whose
    header declares more than its modality's limit (:mod:`probmed.data.limits`) is not copied
    (``<modality>_too_large``)."""
    src, out = Path(src), Path(out)
    if len(set(modalities)) < 2:
        raise ValueError(f"name at least two modalities to unpair, got {modalities}")
    unknown = sorted(set(modalities) - set(stored_modalities()))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; stored modalities: {list(stored_modalities())}")
    sizes_file = src / "sizes.json"
    if not sizes_file.is_file():
        raise FileNotFoundError(f"{sizes_file} not found: --src must be a shard set (probmed data synth/build)")
    if src.resolve() == out.resolve():
        raise ValueError("--out must differ from --src (the source shards are read while the copy is written)")
    sizes = json.loads(sizes_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for name in sorted(sizes):
        if name.split("-", 1)[0] in splits:
            _unpair_tar(src / name, out / name, set(modalities), counts)
        else:
            shutil.copyfile(src / name, out / name)
    for extra in sorted(p for p in src.iterdir() if p.suffix == ".json"):
        shutil.copyfile(extra, out / extra.name)
    dropped = counts.pop("dropped_files", 0)
    skipped = {key.split(":", 1)[1]: counts.pop(key) for key in sorted(counts) if key.startswith("skipped:")}
    return {"studies_keeping": counts, "dropped_files": dropped, "shards": len(sizes), "skipped": skipped}
