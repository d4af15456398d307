"""The label vocabulary of a dataset: which labels its studies carry, what their values mean, how many of each.

``probmed data build`` writes ``labels.json`` beside ``sizes.json``::

    {"labels": ["atelectasis", "cardiomegaly", ...],          # label-vector order (the manifest's finding columns)
     "values": {"positive": 1, "negative": 0, "uncertain": -1, "missing": null},
     "counts": {"atelectasis": {"positive": 12, "negative": 30, "uncertain": 4, "missing": 54}, ...}}

Each study's ``meta["findings"]`` maps a label to ``1`` / ``0`` / ``-1`` (CheXpert's positive / negative /
uncertain); a label a study lacks is missing. The loader turns these into a ``float32`` vector in vocabulary order,
NaN for missing, and uncertain by the configured policy (:data:`UNCERTAIN_POLICIES`, CheXpert's U-Ignore / U-Ones /
U-Zeros). A dataset without ``labels.json`` (the embedded corpus) has the corpus findings
(:data:`probmed.data.schema.FINDINGS`).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from probmed.data import schema

LABELS_FILE = "labels.json"

#: The value convention of ``meta["findings"]`` (``None``: the label is absent from the study's findings).
VALUES: dict[str, int | None] = {"positive": 1, "negative": 0, "uncertain": -1, "missing": None}

#: Uncertain-label policy → the value an uncertain label takes in the label vector (NaN: treated as unknown).
UNCERTAIN_POLICIES: dict[str, float] = {"ignore": math.nan, "positive": 1.0, "negative": 0.0}

_NAME_OF_VALUE = {v: k for k, v in VALUES.items() if v is not None}


def value_name(value) -> str:
    """``1`` → ``"positive"``, ``0`` → ``"negative"``, ``-1`` → ``"uncertain"``, ``None`` → ``"missing"``.

    Raises:
        ValueError: for any other value (labels are 1 / 0 / -1 or absent), including ``inf``, NaN, booleans and
            integers too large for a float.
    """
    if value is None:
        return "missing"
    try:  # a shard's metadata is untrusted: "Infinity", a 4000-digit integer, a list, ... are refused, not raised on
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        number = None
    name = _NAME_OF_VALUE.get(int(number)) if number is not None and number in (1.0, 0.0, -1.0) else None
    if name is None:
        raise ValueError(f"label value {value!r} is not one of 1 (positive), 0 (negative), -1 (uncertain)")
    return name


def count_values(names: Iterable[str], findings: Iterable[Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """``{label: {positive, negative, uncertain, missing: count}}`` over the studies' findings."""
    names = list(names)
    counts = {name: Counter({k: 0 for k in VALUES}) for name in names}
    for study in findings:
        for name in names:
            counts[name][value_name(study.get(name))] += 1
    return {name: dict(c) for name, c in counts.items()}


def write_vocabulary(out_dir: str | Path, names: Iterable[str], findings: Iterable[Mapping[str, int]]) -> Path:
    """Write ``labels.json`` (names in the order given, the value convention, the value counts)."""
    names = list(names)
    path = Path(out_dir) / LABELS_FILE
    body = {"labels": names, "values": VALUES, "counts": count_values(names, findings)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.replace(path)
    return path


def read_vocabulary(data_dir: str | Path) -> dict:
    """The dataset's ``labels.json``, or the corpus findings (no counts) when the dataset has none.

    Raises:
        ValueError: for a ``labels.json`` without a non-empty ``labels`` list of unique names.
    """
    path = Path(data_dir) / LABELS_FILE
    if not path.is_file():
        return {"labels": list(schema.FINDINGS), "values": VALUES, "counts": {}}
    body = json.loads(path.read_text())
    names = body.get("labels") if isinstance(body, dict) else None
    if not names or not isinstance(names, list) or len(set(names)) != len(names):
        raise ValueError(f"{path}: 'labels' must be a non-empty list of unique label names")
    return body


def label_vector(findings: Mapping[str, object], names: Iterable[str], uncertain: str = "ignore") -> np.ndarray:
    """``float32 [len(names)]``: 1 / 0 per label, NaN where missing, uncertain (-1) by ``uncertain`` policy.

    A value outside the convention (e.g. ``2``, ``"yes"``) is treated as missing: the loader must not crash on one
    study's metadata (``probmed data check`` and the builder refuse such values up front).
    """
    fill = UNCERTAIN_POLICIES[uncertain]
    out = []
    for name in names:
        value = findings.get(name)
        try:
            kind = value_name(value)
        except (TypeError, ValueError):
            kind = "missing"
        out.append({"positive": 1.0, "negative": 0.0, "uncertain": fill, "missing": math.nan}[kind])
    return np.asarray(out, dtype=np.float32)


def check_policy(uncertain: str) -> str:
    """``uncertain`` if it names a policy, else a ValueError listing them."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain label policy must be one of {sorted(UNCERTAIN_POLICIES)}, got {uncertain!r}")
    return uncertain
