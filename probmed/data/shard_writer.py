"""Write webdataset shard sets: ``<split>-%06d.tar`` files plus ``sizes.json``, reproducibly and atomically.

Used by the synthetic corpus generator and meant to be reused by the real-data builder. One sample is a dict
``{"__key__": study_id, "<ext>": bytes | str, ...}`` (already encoded: this writer never pickles anything).

Guarantees:

* **Reproducible bytes.** Every tar member gets a fixed mtime, mode, owner and group, members are written in
  sorted extension order (webdataset's ``TarWriter`` does that), so the same samples give the same shard bytes.
* **Atomic enough.** A shard is written to ``<name>.tmp`` and renamed when it is complete; ``sizes.json`` is
  removed when writing starts and written (also via a temporary file and rename) only after every shard is
  complete. An interrupted run therefore never leaves a ``sizes.json`` that describes missing or partial shards.
* **No stale shards.** With ``clean=True`` (the default) shards matching ``<split>-NNNNNN.tar`` (and leftover
  ``.tmp`` files) already in the directory are deleted first, so a smaller re-run does not leave extra shards
  behind that a glob would pick up.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

from probmed.data.schema import SHARD_PATTERN, SIZES_FILE, SPLITS

#: Fixed modification time of every tar member (2020-01-01T00:00:00Z): no wall-clock time in the shards.
FIXED_MTIME = 1577836800

_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar(\.tmp)?$")


def shard_name(split: str, index: int) -> str:
    """``shard_name("train", 3)`` → ``"train-000003.tar"``."""
    return SHARD_PATTERN.format(split=split) % index


def _encode_sample(sample: Mapping[str, object]) -> dict[str, bytes | str]:
    if "__key__" not in sample:
        raise ValueError("a sample needs a '__key__'")
    key = str(sample["__key__"])
    if "." in key or "/" in key or not key:
        raise ValueError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")
    out: dict[str, bytes | str] = {"__key__": key}
    for ext, value in sample.items():
        if ext == "__key__":
            continue
        if ext.startswith("_"):
            continue  # private metadata is never written
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        elif not isinstance(value, bytes):
            raise TypeError(f"{key}.{ext}: expected bytes or str, got {type(value).__name__} (encode it first)")
        out[ext] = value
    return out


class ShardSetWriter:
    """Write samples of several splits into ``<split>-%06d.tar`` shards of at most ``maxcount`` samples.

    Usage::

        with ShardSetWriter("data_shards/demo", maxcount=200) as w:
            w.write("train", {"__key__": "s0000001", "json": b"{...}", "report.txt": "FINDINGS: ..."})
        w.sizes   # {"train-000000.tar": 1}

    On a clean exit of the ``with`` block (or :meth:`close`) the open shards are finalised and ``sizes.json``
    is written; on an exception the open ``.tmp`` shards are deleted and no ``sizes.json`` is written.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        maxcount: int = 200,
        *,
        splits: Iterable[str] | None = SPLITS,
        clean: bool = True,
        mtime: int = FIXED_MTIME,
        user: str = "probmed",
        group: str = "probmed",
    ) -> None:
        if maxcount < 1:
            raise ValueError("maxcount must be >= 1")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.maxcount = int(maxcount)
        self.splits = tuple(splits) if splits is not None else None
        self.mtime = mtime
        self.user = user
        self.group = group
        self.sizes: dict[str, int] = {}
        self._open: dict[str, tuple[object, object, Path, Path]] = {}  # split -> (TarWriter, file, tmp, final)
        self._count: dict[str, int] = {}
        self._next_index: dict[str, int] = {}
        self._closed = False
        sizes_path = self.out_dir / SIZES_FILE
        if sizes_path.exists():
            sizes_path.unlink()
        if clean:
            self._clean()

    # -- housekeeping -------------------------------------------------------------------------------------
    def _clean(self) -> None:
        for p in self.out_dir.iterdir():
            m = _SHARD_RE.match(p.name)
            if m and p.is_file() and (self.splits is None or m.group("split") in self.splits):
                p.unlink()
        for p in self.out_dir.glob(SIZES_FILE + ".*.tmp"):
            p.unlink()

    # -- writing ------------------------------------------------------------------------------------------
    def _open_shard(self, split: str) -> None:
        from webdataset import TarWriter

        index = self._next_index.get(split, 0)
        self._next_index[split] = index + 1
        final = self.out_dir / shard_name(split, index)
        tmp = final.with_name(final.name + ".tmp")
        fh = open(tmp, "wb")
        tw = TarWriter(fh, user=self.user, group=self.group, mtime=self.mtime, encoder=False, compress=False)
        self._open[split] = (tw, fh, tmp, final)
        self._count[split] = 0

    def _finish_shard(self, split: str) -> None:
        tw, fh, tmp, final = self._open.pop(split)
        tw.close()  # type: ignore[attr-defined]
        fh.flush()  # type: ignore[attr-defined]
        os.fsync(fh.fileno())  # type: ignore[attr-defined]
        fh.close()  # type: ignore[attr-defined]
        os.replace(tmp, final)
        self.sizes[final.name] = self._count.pop(split)

    def write(self, split: str, sample: Mapping[str, object]) -> None:
        """Append one sample (one study) to the current shard of ``split``."""
        if self._closed:
            raise RuntimeError("writer is closed")
        if self.splits is not None and split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected one of {self.splits}")
        encoded = _encode_sample(sample)
        if split in self._open and self._count[split] >= self.maxcount:
            self._finish_shard(split)
        if split not in self._open:
            self._open_shard(split)
        tw = self._open[split][0]
        tw.write(encoded)  # type: ignore[attr-defined]
        self._count[split] += 1

    def close(self) -> dict[str, int]:
        """Finalise the open shards and write ``sizes.json``; returns ``{shard file name: n samples}``."""
        if self._closed:
            return self.sizes
        for split in list(self._open):
            self._finish_shard(split)
        self._closed = True
        self.sizes = dict(sorted(self.sizes.items()))
        write_sizes(self.out_dir, self.sizes)
        return self.sizes

    def abort(self) -> None:
        """Drop the open (incomplete) shards and write no ``sizes.json``."""
        for split in list(self._open):
            tw, fh, tmp, _ = self._open.pop(split)
            try:
                try:
                    tw.close()  # type: ignore[attr-defined]  # (else tarfile's __del__ writes to a closed file)
                finally:
                    fh.close()  # type: ignore[attr-defined]
            finally:
                if tmp.exists():
                    tmp.unlink()
        self._closed = True

    def __enter__(self) -> "ShardSetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_sizes(out_dir: str | os.PathLike, sizes: Mapping[str, int]) -> Path:
    """Atomically write ``sizes.json`` (``{shard file name: n samples}``, sorted) into ``out_dir``."""
    out_dir = Path(out_dir)
    path = out_dir / SIZES_FILE
    tmp = out_dir / f"{SIZES_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(dict(sorted(sizes.items())), fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_shards(
    out_dir: str | os.PathLike,
    samples: Iterable[tuple[str, Mapping[str, object]]],
    maxcount: int = 200,
    **kwargs,
) -> dict[str, int]:
    """Write ``(split, sample)`` pairs into a shard set; returns the sizes written to ``sizes.json``."""
    with ShardSetWriter(out_dir, maxcount, **kwargs) as writer:
        for split, sample in samples:
            writer.write(split, sample)
    return writer.sizes


def write_shard(path: str | os.PathLike, samples: Iterable[Mapping[str, object]], mtime: int = FIXED_MTIME) -> int:
    """Write one complete shard atomically (``<path>.tmp`` then rename), with the same reproducible member
    attributes as :class:`ShardSetWriter`; returns the number of samples written."""
    from webdataset import TarWriter

    final = Path(path)
    tmp = final.with_name(final.name + ".tmp")
    count = 0
    try:
        with open(tmp, "wb") as fh:
            tw = TarWriter(fh, user="probmed", group="probmed", mtime=mtime, encoder=False, compress=False)
            for sample in samples:
                tw.write(_encode_sample(sample))
                count += 1
            tw.close()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count
