"""``probmed data link``: join one-modality manifests (MIMIC-CXR, MIMIC-IV-ECG, MIMIC-IV-ECHO, MIMIC-IV-Note, or a
hospital's own exports) into multimodal studies, by patient and acquisition time.

Rules (printed with every run and written into the report):

* **Anchor.** Every study of the anchor manifest (``--anchor cxr``) becomes one output study, keeping its id, its
  own columns (its modalities, labels, ``acquired_at``).
* **Windows.** Each other source is named by the modality it contributes (``--manifest ecg=ecg.csv``) and has a
  window: ``--window ecg=24h`` (a row of the same patient acquired at most 24 h before or after the anchor study;
  units ``s``, ``m``, ``h``, ``d``; both ends included), or ``--window text=same-study`` (the row whose ``study_id``
  is the anchor's, or that of a study linked to it from another source, e.g. an echo report keyed by its echo study).
  Time windows are applied first, then same-study ones, in the order given.
* **Several candidates.** The nearest in time wins (ties: the earlier, then the smaller study id); the others are
  counted ``not_nearest``. A candidate may be the nearest of several anchor studies of one patient (counted
  ``reused``). Keeping all candidates as multi-positives is not offered: the manifest's ``ecg``, ``echo`` and
  ``report`` columns hold one input per study.
* **Own modality first.** An anchor study that already has a modality (MIMIC-CXR's own report) keeps it; the other
  source's candidates for it are counted ``anchor_has_own``.
* **Patients.** Ids are compared as written, unless ``--patient-map`` gives a CSV whose columns are source names (and
  optionally ``patient``, the joined id; else the anchor's column, else the first filled one): each row lists one
  person's id in each source. A source that has a column in the map and an id missing from it: ``unknown_patient``
  (an anchor study of such a patient is left out, counted in ``anchor_rows``).
* **Times.** A row without ``acquired_at`` is never guessed: it is counted ``no_time`` (an anchor study without a
  time gets no time-windowed links, counted ``anchor_no_time``).
* **Splits.** By patient over the joined cohort (:func:`probmed.data.manifests.common.split_by_patient` on the
  joined id with ``--splits``): no patient is in two splits, whatever split each source gave (patients whose rows,
  in any source, carried different splits are counted).

Output: one manifest (:mod:`probmed.data.manifest`; any subset of modalities per study) and a report (printed and
written as JSON): studies per combination of modalities, per linked modality the time gaps (hours, linked minus
anchor: quantiles) and its unmatched rows by cause.
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from probmed.data.manifest import FINDING_PREFIX, StudyEntry, read_manifest, write_manifest
from probmed.data.manifests.common import relative, split_by_patient
from probmed.data.times import TIME_COLUMN, format_time

SAME_STUDY = "same-study"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def _modality_columns() -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """From the registry: modality → its manifest columns (``text`` → ``report``, ``report_text``), and modality →
    the columns whose presence means a row has it (its path column, and an inline column such as ``report_text``)."""
    from probmed.data.registry import build_specs

    specs = build_specs()
    return ({s.name: s.build.columns for s in specs},
            {s.name: tuple(c for c in (s.build.path_column, s.build.inline_column) if c) for s in specs})


def parse_window(text: str) -> timedelta | str:
    """``"24h"`` → timedelta(hours=24); ``"same-study"`` → ``"same-study"``; else ValueError."""
    text = text.strip()
    if text == SAME_STUDY:
        return SAME_STUDY
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not match:
        raise ValueError(f"window {text!r}: give a duration such as 90m, 24h, 7d, or {SAME_STUDY}")
    return timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def name_value_pairs(items: list[str], what: str) -> dict[str, str]:
    """``["ecg=a.csv", ...]`` → ``{"ecg": "a.csv"}``; a malformed or repeated name is a ValueError naming ``what``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{what} {item!r}: expected NAME=VALUE")
        if name.strip() in out:
            raise ValueError(f"{what} {name.strip()!r} given twice")
        out[name.strip()] = value.strip()
    return out


@dataclass
class _Row:
    source: str
    entry: StudyEntry
    patient: str | None  # joined patient id; None: unknown to the patient map
    used_by: int = 0


def _read_patient_map(path: str | Path, sources: list[str], anchor: str) -> dict[str, dict[str, str]]:
    """source → {its patient id → joined id}, for the sources with a column in the map."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c for c in (reader.fieldnames or []) if c in sources]
        unknown = [c for c in (reader.fieldnames or []) if c not in sources and c != "patient"]
        if unknown or not columns:
            raise ValueError(f"{path}: patient map columns must be source names {sources} (and optionally "
                             f"'patient'); found {reader.fieldnames}")
        mapping: dict[str, dict[str, str]] = {c: {} for c in columns}
        for line, row in enumerate(reader, 2):
            ids = {c: (row.get(c) or "").strip() for c in columns}
            joined = ((row.get("patient") or "").strip() or ids.get(anchor) or next((v for v in ids.values() if v), ""))
            if not joined:
                continue
            for column, value in ids.items():
                if value:
                    if mapping[column].get(value, joined) != joined:
                        raise ValueError(f"{path} line {line}: {column} id {value!r} is mapped to two patients")
                    mapping[column][value] = joined
    return mapping


def _quantiles(hours: list[float]) -> dict[str, float] | None:
    if not hours:
        return None
    values = np.quantile(np.asarray(hours, dtype=np.float64), QUANTILES)
    return {f"q{int(q * 100):02d}": round(float(v), 4) for q, v in zip(QUANTILES, values)}


def _check_sources(manifests: dict[str, str | Path], anchor: str, windows: dict[str, str],
                   modality_columns: dict[str, tuple[str, ...]]
                   ) -> tuple[dict[str, timedelta | str], list[str], list[str]]:
    """Validate the sources, the anchor and the windows: ``(parsed windows: source → timedelta or "same-study",
    the non-anchor sources in the order given, the order they are linked in: time windows first)``; ValueError
    naming what is wrong."""
    for name in manifests:
        if name not in modality_columns:
            raise ValueError(f"source {name!r} is not a modality a manifest holds ({sorted(modality_columns)})")
    if anchor not in manifests:
        raise ValueError(f"anchor {anchor!r} is not among the manifests given ({sorted(manifests)})")
    parsed = {name: parse_window(text) for name, text in windows.items()}
    others = [n for n in manifests if n != anchor]
    missing = [n for n in others if n not in parsed]
    extra = [n for n in parsed if n not in others]
    if missing or extra:
        raise ValueError(f"every source but the anchor needs a window (missing: {missing}; windows for no "
                         f"non-anchor source: {extra})")
    order = [n for n in others if parsed[n] != SAME_STUDY] + [n for n in others if parsed[n] == SAME_STUDY]
    return parsed, others, order


def _split_cuts(splits: tuple[float, float, float]) -> tuple[float, float]:
    """``(train, val, test)`` fractions → the two cut points in [0, 1] of :func:`split_by_patient`; ValueError unless
    three non-negative fractions with a positive sum."""
    total = sum(splits)
    if len(splits) != 3 or total <= 0 or min(splits) < 0:
        raise ValueError(f"splits must be three non-negative fractions, got {splits}")
    return (splits[0] / total, (splits[0] + splits[1]) / total)


def _read_rows(manifests: dict[str, str | Path], anchor: str, others: list[str], mapping: dict[str, dict[str, str]]
               ) -> tuple[dict[str, list[_Row]], dict[str, dict[str, list[_Row]]], list[_Row], dict[str, list[_Row]]]:
    """Read every manifest with its rows' joined patient ids (``mapping``: :func:`_read_patient_map`'s, or empty):
    ``(source → its rows, non-anchor source → joined patient → its rows, the anchor rows of known patients sorted by
    patient then time (untimed last) then study id, joined patient → those anchor rows)``."""
    def joined(source: str, patient: str) -> str | None:
        return mapping[source].get(patient) if source in mapping else patient

    rows = {name: [_Row(name, e, joined(name, e.patient_id)) for e in read_manifest(path)]
            for name, path in manifests.items()}
    by_patient: dict[str, dict[str, list[_Row]]] = {n: defaultdict(list) for n in others}
    for name in others:
        for row in rows[name]:
            if row.patient is not None:
                by_patient[name][row.patient].append(row)
    anchors = sorted((r for r in rows[anchor] if r.patient is not None),
                     key=lambda r: (r.patient, r.entry.acquired_at is None, r.entry.acquired_at or 0, r.entry.study_id))
    anchors_of: dict[str, list[_Row]] = defaultdict(list)
    for a in anchors:
        anchors_of[a.patient].append(a)
    return rows, by_patient, anchors, anchors_of


def _link_anchor(a: _Row, order: list[str], parsed: dict[str, timedelta | str],
                 by_patient: dict[str, dict[str, list[_Row]]], per: dict[str, dict],
                 has_modality: Callable[[StudyEntry, str], bool]) -> dict[str, _Row]:
    """The rows linked to anchor study ``a``: source → its picked row (nearest in time, or same study), in ``order``.
    Counts into ``per`` (source → linked, anchor_has_own, anchor_no_time, gaps) and each pick's ``used_by``."""
    linked: dict[str, _Row] = {}
    for name in order:
        if has_modality(a.entry, name):
            per[name]["anchor_has_own"] += 1
            continue
        candidates = by_patient[name].get(a.patient, [])
        if parsed[name] == SAME_STUDY:
            ids = [a.entry.study_id, *(r.entry.study_id for r in linked.values())]
            found = [r for r in candidates if r.entry.study_id in ids]
            pick = min(found, key=lambda r: (ids.index(r.entry.study_id), r.entry.study_id), default=None)
        elif a.entry.acquired_at is None:
            per[name]["anchor_no_time"] += 1
            continue
        else:
            t0 = a.entry.acquired_at
            found = [r for r in candidates if r.entry.acquired_at is not None
                     and abs(r.entry.acquired_at - t0) <= parsed[name]]
            pick = min(found, key=lambda r: (abs(r.entry.acquired_at - t0), r.entry.acquired_at,
                                             r.entry.study_id), default=None)
        if pick is None:
            continue
        linked[name] = pick
        pick.used_by += 1
        per[name]["linked"] += 1
        if a.entry.acquired_at is not None and pick.entry.acquired_at is not None:
            per[name]["gaps"].append((pick.entry.acquired_at - a.entry.acquired_at).total_seconds() / 3600)
    return linked


def _joined_row(a: _Row, linked: dict[str, _Row], split: str, modality_columns: dict[str, tuple[str, ...]],
                has_modality: Callable[[StudyEntry, str], bool], base: Path) -> tuple[dict[str, str], list[str]]:
    """One output manifest row for anchor study ``a`` and its ``linked`` rows (paths relative to ``base``), and the
    modalities it holds: ``(row, modalities present)``. The anchor gives all its modalities, a linked row only its
    source's; findings: the first source's value of each label wins."""
    row = {"study_id": a.entry.study_id, "patient_id": a.patient, "split": split,
           TIME_COLUMN: format_time(a.entry.acquired_at)}
    present = []
    for source_row in (a, *linked.values()):
        entry = source_row.entry
        take = modality_columns if source_row is a else {source_row.source: modality_columns[source_row.source]}
        for modality, columns in take.items():
            if not has_modality(entry, modality):
                continue
            present.append(modality)
            for column in columns:
                if entry.paths.get(column):
                    row[column] = ";".join(relative(p, base) for p in entry.paths[column])
                elif entry.values.get(column):
                    row[column] = entry.values[column]
        for label, value in entry.findings.items():
            row.setdefault(FINDING_PREFIX + label, value)
    return row, present


def _modality_report(window_text: str, window: timedelta | str, rows: list[_Row], per: dict,
                     anchors_of: dict[str, list[_Row]], holders: dict[tuple[str, str], list[_Row]],
                     has_modality: Callable[[StudyEntry, str], bool]) -> dict:
    """The report's entry for one linked source (``rows``: its rows; ``per``: its counts from :func:`_link_anchor`):
    window, candidates, linked, reused, anchor_has_own, anchor_no_time, gap_hours quantiles, unmatched by cause."""
    unmatched: Counter = Counter()
    for row in rows:
        if row.used_by:
            continue
        unmatched[_cause(row, window, anchors_of, holders, has_modality)] += 1
    return {
        "window": window_text, "candidates": len(rows), "linked": per["linked"],
        "reused": sum(r.used_by > 1 for r in rows),
        "anchor_has_own": per["anchor_has_own"], "anchor_no_time": per["anchor_no_time"],
        "gap_hours": _quantiles(per["gaps"]), "unmatched": dict(sorted(unmatched.items()))}


def _patients_in_several_splits(rows: dict[str, list[_Row]], anchors_of: dict[str, list[_Row]]) -> int:
    """How many joined patients with an anchor study had rows, in any source, carrying different splits."""
    source_splits: dict[str, set[str]] = defaultdict(set)
    for name in rows:
        for row in rows[name]:
            if row.patient is not None:
                source_splits[row.patient].add(row.entry.split)
    return sum(len(s) > 1 for p, s in source_splits.items() if p in anchors_of)


def link_manifests(manifests: dict[str, str | Path], anchor: str, windows: dict[str, str], out: str | Path,
                   patient_map: str | Path | None = None, splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
                   report_path: str | Path | None = None) -> dict:
    """Join ``manifests`` (modality → manifest CSV) around ``anchor``; write the joined manifest to ``out`` and the
    report (returned) to ``report_path`` (default ``<out>.report.json``). See the module docstring for the rules."""
    out = Path(out)
    modality_columns, presence_columns = _modality_columns()
    parsed, others, order = _check_sources(manifests, anchor, windows, modality_columns)
    cuts = _split_cuts(splits)
    mapping = _read_patient_map(patient_map, list(manifests), anchor) if patient_map else {}
    rows, by_patient, anchors, anchors_of = _read_rows(manifests, anchor, others, mapping)

    def has_modality(entry: StudyEntry, modality: str) -> bool:
        return any(entry.has(c) for c in presence_columns[modality])

    per = {n: {"linked": 0, "anchor_no_time": 0, "anchor_has_own": 0, "gaps": []} for n in others}
    out_rows, combinations, split_count = [], Counter(), Counter()
    holders: dict[tuple[str, str], list[_Row]] = defaultdict(list)  # (patient, study id) -> output studies' anchors
    for a in anchors:
        linked = _link_anchor(a, order, parsed, by_patient, per, has_modality)
        for source_row in (a, *linked.values()):
            holders[(a.patient, source_row.entry.study_id)].append(a)
        split = split_by_patient(a.patient, cuts)
        row, present = _joined_row(a, linked, split, modality_columns, has_modality, out.parent)
        combinations["+".join(m for m in modality_columns if m in present) or "(none)"] += 1
        split_count[split] += 1
        out_rows.append(row)
    write_manifest(out, out_rows)

    report_modalities = {name: _modality_report(windows[name], parsed[name], rows[name], per[name], anchors_of, holders,
                                                has_modality) for name in others}
    rule = (f"split by patient over the joined cohort: sha256(patient id) as u in [0, 1): u < {cuts[0]:g} train, "
            f"< {cuts[1]:g} val, else test; the sources' own splits are ignored")
    report = {
        "out": str(out), "anchor": anchor, "rule": rule, "studies": len(out_rows),
        "patients": len({r["patient_id"] for r in out_rows}), "splits": dict(sorted(split_count.items())),
        "patients_in_several_source_splits": _patients_in_several_splits(rows, anchors_of),
        "anchor_rows": {"rows": len(rows[anchor]), "unknown_patient": sum(r.patient is None for r in rows[anchor]),
                        "no_time": sum(r.entry.acquired_at is None for r in anchors)},
        "combinations": dict(combinations.most_common()), "modalities": report_modalities}
    report_path = Path(report_path) if report_path else out.with_suffix(".report.json")
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    report["report_path"] = str(report_path)
    return report


def _cause(row: _Row, window, anchors_of: dict[str, list[_Row]], holders: dict[tuple[str, str], list[_Row]],
           has_modality) -> str:
    """Why a candidate row was linked to no anchor study."""
    if row.patient is None:
        return "unknown_patient"
    if row.patient not in anchors_of:
        return "patient_without_anchor"
    mine = anchors_of[row.patient]
    if window == SAME_STUDY:
        same = holders.get((row.patient, row.entry.study_id), [])
        if not same:
            return "no_same_study"
        return "anchor_has_own" if all(has_modality(a.entry, row.source) for a in same) else "not_nearest"
    if row.entry.acquired_at is None:
        return "no_time"
    near = [a for a in mine if a.entry.acquired_at is not None
            and abs(a.entry.acquired_at - row.entry.acquired_at) <= window]
    if not near:
        return "out_of_window"
    if all(has_modality(a.entry, row.source) for a in near):
        return "anchor_has_own"
    return "not_nearest"


def format_report(report: dict) -> str:
    lines = [f"{report['studies']} studies of {report['patients']} patients (anchor {report['anchor']}) -> "
             f"{report['out']}", f"splits: {report['rule']}",
             f"  {report['splits']}; {report['patients_in_several_source_splits']} patients had rows in several "
             "source splits", f"anchor rows: {report['anchor_rows']}", "studies per combination of modalities:"]
    lines += [f"  {combo:<24} {n:>7}" for combo, n in report["combinations"].items()]
    for name, m in report["modalities"].items():
        gaps = m["gap_hours"]
        lines.append(f"{name} ({m['window']}): {m['linked']} linked of {m['candidates']} rows, {m['reused']} reused, "
                     f"anchor has own {m['anchor_has_own']}, anchor without time {m['anchor_no_time']}")
        if gaps:
            lines.append("  gap hours (linked - anchor): " + " ".join(f"{k} {v:g}" for k, v in gaps.items()))
        lines.append("  unmatched: " + (", ".join(f"{k} {v}" for k, v in m["unmatched"].items()) or "-"))
    lines.append(f"report: {report['report_path']}")
    return "\n".join(lines)
