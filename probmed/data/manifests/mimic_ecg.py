"""MIMIC-IV-ECG (v1.0, WFDB) → manifest.

Layout (PhysioNet)::

    <root>/record_list.csv            subject_id, study_id, file_name, ecg_time, path
    <root>/machine_measurements.csv   subject_id, study_id, cart_id, ecg_time, report_0 ... report_17, ...
    <root>/files/p1000/p10000032/s40689238/40689238.hea (+ .dat)   (``path`` = files/.../40689238)

The machine statements ``report_0..report_17`` become the study's report text; there is no official split, so
studies are split by a hash of the patient id. ``acquired_at``: ``ecg_time`` (record_list, else
machine_measurements; ``YYYY-MM-DD HH:MM:SS``); blank where neither gives a readable time.
"""
from __future__ import annotations

from pathlib import Path

from probmed.data.manifests.common import dataset_root, read_table, relative, split_by_patient, write_studies
from probmed.data.readers.text import statements_report
from probmed.data.times import TIME_COLUMN, format_time, parse_source_time


def make_mimic_ecg_manifest(root: str | Path, out: str | Path):
    root, out = dataset_root(root, "MIMIC-IV-ECG"), Path(out)
    records = read_table(root, "record_list.csv")
    if records is None:
        raise FileNotFoundError(f"{root}/record_list.csv not found (is this the MIMIC-IV-ECG root?)")
    measurements = read_table(root, "machine_measurements.csv")
    statements, measured_at = {}, {}
    if measurements is not None:
        columns = [c for c in measurements.columns if c.startswith("report_")]
        columns.sort(key=lambda c: int(c.split("_")[1]))
        for row in measurements.to_dict("records"):
            statements[row["study_id"]] = statements_report(row[c] for c in columns)
            measured_at[row["study_id"]] = row.get("ecg_time", "")
    rows = []
    for row in records.to_dict("records"):
        rows.append({"study_id": row["study_id"], "patient_id": row["subject_id"],
                     "split": split_by_patient(row["subject_id"]),
                     "ecg": relative(root / f"{row['path']}.hea", out.parent),
                     "report_text": statements.get(row["study_id"], ""),
                     TIME_COLUMN: format_time(parse_source_time(row.get("ecg_time"))
                                              or parse_source_time(measured_at.get(row["study_id"])))})
    return write_studies(out, rows, root, "MIMIC-IV-ECG", "record_list.csv rows")
