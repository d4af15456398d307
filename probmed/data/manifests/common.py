"""Helpers shared by the manifest makers."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path


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
