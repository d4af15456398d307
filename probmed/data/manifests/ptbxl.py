"""PTB-XL (v1.0.x, WFDB + SCP-ECG statements) → manifest.

Layout (PhysioNet)::

    <root>/ptbxl_database.csv   ecg_id, patient_id, ..., report, scp_codes ("{'NORM': 100.0, 'SR': 0.0}"), ...,
                                strat_fold, filename_lr, filename_hr
    <root>/scp_statements.csv   (index: statement code), description, diagnostic, form, rhythm, diagnostic_class, ...
    <root>/records500/00000/00001_hr.hea (+ .dat)      (and records100/..._lr at 100 Hz)

Split: the recommended ``strat_fold`` 1–8 train, 9 val, 10 test. Report text: the free-text ``report`` followed by
the descriptions of the record's SCP statements. Labels: the five diagnostic superclasses (``finding:norm``,
``mi``, ``sttc``, ``cd``, ``hyp``) and the embedded corpus's rhythm findings (AFIB/AFLT → atrial_fibrillation,
SBRAD → bradycardia, STACH → tachycardia), 0 where absent. ``acquired_at``: ``recording_date``
(``YYYY-MM-DD HH:MM:SS``; blank when unreadable).

Ambiguity (``ambiguity:ecg``): the fraction of PTB-XL's four signal-quality columns (``baseline_drift``,
``static_noise``, ``burst_noise``, ``electrodes_problems``: free text naming the affected leads, empty when the
annotator saw no problem) that are annotated for the record: 0, 0.25, 0.5, 0.75 or 1. Blank (unknown) when the
database has none of the four columns (an older release).
"""
from __future__ import annotations

import ast
from pathlib import Path

from probmed.data.manifest import AMBIGUITY_PREFIX, FINDING_PREFIX
from probmed.data.manifests.common import dataset_root, read_table, relative, write_studies
from probmed.data.readers.text import statements_report
from probmed.data.times import TIME_COLUMN, format_time, parse_source_time

SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
#: PTB-XL's signal-quality columns (Wagner et al. 2020, Table 2: "Signal Metadata").
NOISE_COLUMNS = ("baseline_drift", "static_noise", "burst_noise", "electrodes_problems")


def ecg_ambiguity(row: dict) -> float | None:
    """The fraction of the four noise columns annotated (non-empty) for one database row; None without them."""
    known = [c for c in NOISE_COLUMNS if c in row]
    if not known:
        return None
    return sum(bool(str(row[c] or "").strip()) for c in NOISE_COLUMNS if c in row) / len(NOISE_COLUMNS)
RHYTHM_FINDINGS = {"AFIB": "atrial_fibrillation", "AFLT": "atrial_fibrillation", "SBRAD": "bradycardia",
                   "STACH": "tachycardia"}


def _split(fold: str) -> str:
    return {"9": "val", "10": "test"}.get(str(int(float(fold))), "train")


def make_ptbxl_manifest(root: str | Path, out: str | Path, high_rate: bool = True):
    root, out = dataset_root(root, "PTB-XL"), Path(out)
    database = read_table(root, "ptbxl_database.csv")
    if database is None:
        raise FileNotFoundError(f"{root}/ptbxl_database.csv not found (is this the PTB-XL root?)")
    scp = read_table(root, "scp_statements.csv")
    code_column = scp.columns[0]
    descriptions = dict(zip(scp[code_column], scp["description"]))
    classes = {code: cls for code, cls, diag in zip(scp[code_column], scp["diagnostic_class"], scp["diagnostic"])
               if diag in ("1", "1.0") and cls}
    rows = []
    for row in database.to_dict("records"):
        codes = ast.literal_eval(row["scp_codes"]) if row["scp_codes"] else {}  # a literal dict, never code
        statements = [row.get("report", "")] + [descriptions.get(code, code) for code in codes]
        entry = {"study_id": row["ecg_id"], "patient_id": str(int(float(row["patient_id"]))),
                 "split": _split(row["strat_fold"]),
                 "ecg": relative(root / f"{row['filename_hr' if high_rate else 'filename_lr']}.hea", out.parent),
                 "report_text": statements_report(statements),
                 TIME_COLUMN: format_time(parse_source_time(row.get("recording_date")))}
        present = {classes[c] for c in codes if c in classes}
        for superclass in SUPERCLASSES:
            entry[FINDING_PREFIX + superclass.lower()] = int(superclass in present)
        for finding in sorted(set(RHYTHM_FINDINGS.values())):
            entry[FINDING_PREFIX + finding] = int(any(RHYTHM_FINDINGS.get(c) == finding for c in codes))
        amb = ecg_ambiguity(row)
        entry[AMBIGUITY_PREFIX + "ecg"] = "" if amb is None else amb
        rows.append(entry)
    return write_studies(out, rows, root, "PTB-XL", "ptbxl_database.csv rows")
