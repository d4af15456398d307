"""MIMIC-IV-ECHO (v0.1 / v1.0, multi-frame ultrasound DICOM) → manifest.

Layout (PhysioNet)::

    <root>/echo-record-list.csv[.gz]   subject_id, study_id, acquisition_datetime, dicom_filepath
    <root>/echo-study-list.csv[.gz]    subject_id, study_id, study_datetime, note_id, note_seq, note_charttime
    <root>/files/p10/p10002221/s94106955/94106955_0001.dcm          (``dicom_filepath`` = files/.../..._0001.dcm)

A study holds dozens of DICOMs: 2-D cines of the standard views and single-frame stills (spectral Doppler, M-mode).
The manifest's ``echo`` column holds one cine per study (the loader reads one), so each study keeps **its first
cine**: the first of its DICOMs, in the order of ``acquisition_datetime`` then file name, whose header states at
least ``min_frames`` frames (``NumberOfFrames``; default 16, which leaves out the stills). The release labels no
view, so the kept cine is not always the same view; a study with no such cine is left out (counted). Headers are
read without pixels.

Without the record list the study folders are scanned (``files/p*/p*/s*/*.dcm``). ``acquired_at``: the study list's
``study_datetime``, else the kept cine's ``acquisition_datetime``, else its header (``AcquisitionDateTime`` or
``StudyDate`` + ``StudyTime``). No official split: by a hash of the patient id. The study list's ``note_id`` links
a study to its report; ``probmed data manifest mimic-iv-note --echo-root`` uses it to key the report by the echo
study (so that ``probmed data link --window text=same-study`` attaches it).
"""
from __future__ import annotations

import sys
from pathlib import Path

from probmed.data.manifests.common import dataset_root, read_table, relative, split_by_patient, write_studies
from probmed.data.times import TIME_COLUMN, file_time, format_time, parse_source_time

#: Fewest frames of a DICOM kept as the study's cine (fewer: a still or a Doppler strip).
MIN_FRAMES = 16


def _frames(path: Path) -> int:
    """``NumberOfFrames`` of a DICOM (header only); 0 for a file pydicom cannot parse."""
    import pydicom

    try:
        return int(pydicom.dcmread(str(path), stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
    except Exception:  # unreadable: not a cine we can keep; `data check` would report it if listed
        return 0


def _records(root: Path) -> list[dict[str, str]]:
    table = read_table(root, "echo-record-list.csv")
    if table is not None:
        return table.to_dict("records")
    rows = []
    for path in sorted((root / "files").glob("p*/p*/s*/*.dcm")):
        rows.append({"subject_id": path.parent.parent.name[1:], "study_id": path.parent.name[1:],
                     "acquisition_datetime": "", "dicom_filepath": str(path.relative_to(root))})
    if not rows:
        raise FileNotFoundError(f"{root}: neither echo-record-list.csv nor files/p*/p*/s*/*.dcm found "
                                "(is this the MIMIC-IV-ECHO root?)")
    return rows


def make_mimic_iv_echo_manifest(root: str | Path, out: str | Path, min_frames: int = MIN_FRAMES):
    root, out = dataset_root(root, "MIMIC-IV-ECHO"), Path(out)
    studies = read_table(root, "echo-study-list.csv")
    study_times = ({r["study_id"]: r.get("study_datetime", "") for r in studies.to_dict("records")}
                   if studies is not None else {})
    by_study: dict[tuple[str, str], list[dict[str, str]]] = {}
    for record in _records(root):
        by_study.setdefault((record["subject_id"], record["study_id"]), []).append(record)
    rows, without_cine = [], 0
    for (subject, study), records in sorted(by_study.items()):
        records.sort(key=lambda r: (parse_source_time(r.get("acquisition_datetime")) is None,
                                    parse_source_time(r.get("acquisition_datetime")) or 0, r["dicom_filepath"]))
        chosen = next((r for r in records if (root / r["dicom_filepath"]).is_file()
                       and _frames(root / r["dicom_filepath"]) >= min_frames), None)
        if chosen is None:
            without_cine += 1
            continue
        path = root / chosen["dicom_filepath"]
        when = (parse_source_time(study_times.get(study)) or parse_source_time(chosen.get("acquisition_datetime"))
                or file_time(path))
        rows.append({"study_id": study, "patient_id": subject, "split": split_by_patient(subject),
                     "echo": relative(path, out.parent), TIME_COLUMN: format_time(when)})
    if without_cine:
        print(f"mimic-iv-echo: {without_cine} studies left out: no DICOM of theirs has >= {min_frames} frames",
              file=sys.stderr)
    return write_studies(out, rows, root, "MIMIC-IV-ECHO", "studies with a DICOM cine of at least min_frames frames")
