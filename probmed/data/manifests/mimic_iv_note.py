"""MIMIC-IV-Note (v2.2) radiology and echo reports → a text-only manifest of timed reports.

Layout (PhysioNet)::

    <root>/note/radiology.csv[.gz]          note_id, subject_id, hadm_id, note_type, note_seq, charttime, storetime,
                                            text      (note_type RR: report, AR: addendum)
    <root>/note/radiology_detail.csv[.gz]   note_id, subject_id, field_name, field_value, field_ordinal
                                            (field_name: exam_code, exam_name, cpt_code, ...)
    <root>/note/echo.csv[.gz]               echo reports, when released as a table of the same columns (announced
                                            by MIMIC-IV-ECHO; read only if present)

(``note/`` may be omitted.) Each note is one row: ``report_text`` = ``text``, ``acquired_at`` = ``charttime``,
``patient_id`` = ``subject_id``, split by a hash of the patient id. **Attached to the study it describes** where the
dataset links them, by taking that study's id as its ``study_id``:

* a radiology note whose ``radiology_detail`` row has ``field_name`` = ``link_field`` (default ``study_id``) gets
  that ``field_value``. MIMIC-IV-Note v2.2 itself has no such field (its radiology notes are not linked to
  MIMIC-CXR study ids), so there every radiology note stays a timed record; a hospital's export may have one;
* a note listed in MIMIC-IV-ECHO's ``echo-study-list.csv`` (``note_id`` column; ``echo_root``) gets that echo
  ``study_id``.

Every other note keeps its ``note_id`` as ``study_id``: a timed text record that ``probmed data link`` attaches by
time window (``--window text=2h``). When several notes link the same study, the earliest (``charttime``, then
``note_id``) is attached and the others stay timed records.
"""
from __future__ import annotations

import csv
import gzip
import io
import sys
from pathlib import Path
from typing import Iterator

from probmed.data.manifests.common import dataset_root, read_table, split_by_patient, write_studies
from probmed.data.times import TIME_COLUMN, format_time, parse_source_time

NOTE_TABLES = ("radiology", "echo")
#: Longest CSV cell read (a report of several pages is far shorter).
MAX_CELL = 16 * 1024 * 1024


def _table_path(root: Path, name: str) -> Path | None:
    for folder in (root / "note", root):
        for candidate in (folder / f"{name}.csv", folder / f"{name}.csv.gz"):
            if candidate.is_file():
                return candidate
    return None


def _rows(path: Path) -> Iterator[dict[str, str]]:
    """A CSV (optionally gzip) streamed row by row (the radiology table is ~750 MB)."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL))
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        yield from csv.DictReader(text)


def _links(root: Path, link_field: str, echo_root: Path | None) -> dict[str, str]:
    """note_id → the study id the dataset links it to."""
    links: dict[str, str] = {}
    detail = _table_path(root, "radiology_detail")
    if detail is not None and link_field:
        for row in _rows(detail):
            if row.get("field_name") == link_field and (row.get("field_value") or "").strip():
                links.setdefault(row["note_id"], row["field_value"].strip())
    if echo_root is not None:
        studies = read_table(echo_root, "echo-study-list.csv")
        if studies is None:
            raise FileNotFoundError(f"{echo_root}/echo-study-list.csv not found (is this the MIMIC-IV-ECHO root?)")
        for row in studies.to_dict("records"):
            if (row.get("note_id") or "").strip():
                links.setdefault(row["note_id"].strip(), row["study_id"])
    return links


def make_mimic_iv_note_manifest(root: str | Path, out: str | Path, echo_root: str | Path | None = None,
                                link_field: str = "study_id"):
    root, out = dataset_root(root, "MIMIC-IV-Note"), Path(out)
    tables = [p for p in (_table_path(root, name) for name in NOTE_TABLES) if p is not None]
    if not tables:
        raise FileNotFoundError(f"{root}: no note/radiology.csv[.gz] (is this the MIMIC-IV-Note root?)")
    links = _links(root, link_field, Path(echo_root) if echo_root else None)
    rows = []
    for table in tables:
        for note in _rows(table):
            when = parse_source_time(note.get("charttime"))
            rows.append({"study_id": note["note_id"], "patient_id": note["subject_id"],
                         "split": split_by_patient(note["subject_id"]), "report_text": note.get("text", ""),
                         TIME_COLUMN: format_time(when), "_link": links.get(note["note_id"]),
                         "_order": (when is None, format_time(when), note["note_id"])})
    claimed: set[str] = set()
    attached = 0
    for row in sorted(rows, key=lambda r: r["_order"]):
        study = row.pop("_link")
        row.pop("_order")
        if study and study not in claimed:
            claimed.add(study)
            row["study_id"] = study
            attached += 1
    print(f"mimic-iv-note: {attached} of {len(rows)} notes attached to the study they describe; "
          f"{len(rows) - attached} kept as timed records (keyed by note_id)", file=sys.stderr)
    return write_studies(out, rows, root, "MIMIC-IV-Note", "note rows")
