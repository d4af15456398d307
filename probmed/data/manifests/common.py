"""Helpers shared by the manifest makers."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from probmed.data.manifest import write_manifest


def split_by_patient(patient_id: str, fractions: tuple[float, float] = (0.8, 0.9)) -> str:
    """A deterministic split for datasets without an official one: a hash of the patient id below 0.8 → train,
    below 0.9 → val, else test (all studies of a patient land in the same split)."""
    u = int.from_bytes(hashlib.sha256(str(patient_id).encode()).digest()[:8], "big") / 2**64
    return "train" if u < fractions[0] else ("val" if u < fractions[1] else "test")


def snake(name: str) -> str:
    """``"Pleural Effusion"`` → ``"pleural_effusion"`` (label column names)."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def read_table(root: Path, *names: str):
    """The first of ``names`` (CSV, optionally ``.gz``) that exists under ``root`` as a pandas DataFrame of strings
    (empty cells are ``""``), or None."""
    import pandas as pd  # imported here: `probmed data ...` should not pay for pandas unless a maker runs

    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return pd.read_csv(candidate, dtype=str, keep_default_na=False)
    return None


def relative(path: Path, base: Path) -> str:
    """``path`` relative to the manifest's directory when possible (else absolute)."""
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def dataset_root(root: str | Path, dataset: str) -> Path:
    """``root`` as a Path, checked to be an existing directory before a maker scans it.

    Raises:
        FileNotFoundError: ``root`` does not exist (the message names it and the dataset expected there).
        NotADirectoryError: ``root`` is a file.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such directory (expected the {dataset} root as downloaded)")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory (expected the {dataset} root as downloaded)")
    return root


def write_studies(out: str | Path, rows: list[dict], root: Path, dataset: str, layout: str) -> tuple[Path, int]:
    """Write the maker's rows with :func:`probmed.data.manifest.write_manifest`; returns ``(path, len(rows))``.

    Raises:
        ValueError: no study was found under ``root`` (nothing is written: a header-only manifest would build an
            empty dataset); the message names the root and the ``layout`` the maker looks for.
    """
    if not rows:
        raise ValueError(f"{root}: no {dataset} study found (looked for {layout}); nothing written to {out}")
    return write_manifest(out, rows), len(rows)
