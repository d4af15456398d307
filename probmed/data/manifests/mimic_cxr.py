"""MIMIC-CXR (DICOM, v2.0.0) or MIMIC-CXR-JPG (v2.x) → manifest.

Layout (PhysioNet)::

    <root>/files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.dcm   (or .jpg)
    <reports_root>/files/p10/p10000032/s50414267.txt          (mimic-cxr-reports; may be the same root)
    <root>/mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ..., ViewPosition, ...,
                                               StudyDate, StudyTime, ...
    <root>/mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split (train / validate / test)
    <root>/mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, Atelectasis, Cardiomegaly, ... (1, 0, -1, blank)

The CSVs are optional: without metadata the view comes from the DICOM header at build time (JPGs get none);
without the split file studies are split by patient hash; the 14 CheXpert labels become ``finding:<label>`` columns
with CheXpert's values kept (``1`` / ``0`` / ``-1`` uncertain / blank missing; the loader's ``uncertain`` policy
decides what -1 means). ``acquired_at``: the metadata's ``StudyDate`` + ``StudyTime`` (numbers in the CSV, so
``StudyTime`` ``75013.234`` is 07:50:13.234: :func:`probmed.data.times.numeric_date_time`), else the DICOM header's
``AcquisitionDateTime`` or ``StudyDate`` + ``StudyTime``; blank for JPGs without metadata.

Ambiguity (documented rules; blank = unknown):

* ``ambiguity:cxr`` from the metadata's ``ViewPosition`` of the study's frontal views, the best one counting (a
  study is as readable as its best frontal film): ``PA`` 0; ``AP`` (portable: magnified heart, often rotated and
  poorly inspired) 0.5, or 0.75 when ``PatientOrientationCodeSequence_CodeMeaning`` is ``Recumbent`` (a supine
  film: effusions layer, the heart broadens); other frontal positions (``AP AXIAL``, decubitus ``AP LLD`` ...,
  ``SWIMMERS``) 0.75. Blank without the metadata file or without a frontal view.
* ``ambiguity:text`` from CheXpert's uncertain labels, where the study has a report and a CheXpert row:
  min(1, (number of the 14 labels that are -1) / 3), i.e. 0 for a report that hedges nothing, 1/3 per hedged
  finding, 1 from three on.
"""
from __future__ import annotations

from pathlib import Path

from probmed.data.manifest import AMBIGUITY_PREFIX, FINDING_PREFIX
from probmed.data.manifests.common import dataset_root, read_table, relative, snake, split_by_patient, write_studies
from probmed.data.safe_paths import within
from probmed.data.times import TIME_COLUMN, file_time, format_time, numeric_date_time

CHEXPERT_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
                   "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
                   "Pneumonia", "Pneumothorax", "Support Devices")


#: ViewPosition → ambiguity of a frontal film (anything else that is not lateral: :data:`OTHER_FRONTAL`).
VIEW_AMBIGUITY = {"PA": 0.0, "AP": 0.5}
SUPINE_AP, OTHER_FRONTAL = 0.75, 0.75
LATERAL_VIEWS = ("LATERAL", "LL", "RL", "XTABLE LATERAL", "LAO", "RAO", "LPO", "RPO")


def cxr_ambiguity(views: list[tuple[str, str]]) -> float | str:
    """The study's CXR ambiguity from ``(ViewPosition, patient orientation)`` of its images ("" = unknown)."""
    scores = []
    for view, orientation in views:
        view = (view or "").strip().upper()
        if not view or view in LATERAL_VIEWS:
            continue
        if view == "AP" and (orientation or "").strip().lower() == "recumbent":
            scores.append(SUPINE_AP)
        else:
            scores.append(VIEW_AMBIGUITY.get(view, OTHER_FRONTAL))
    return min(scores) if scores else ""


def text_ambiguity(label_row: dict | None) -> float | str:
    """min(1, uncertain CheXpert labels / 3) of a study's label row ("" without one)."""
    if not label_row:
        return ""
    uncertain = sum(str(label_row.get(label, "")).strip() in ("-1", "-1.0") for label in CHEXPERT_LABELS)
    return round(min(1.0, uncertain / 3.0), 4)


#: The values of the CheXpert label CSV that are labels (anything else, blank included, is missing).
CHEXPERT_VALUES = ("1", "0", "-1", "1.0", "0.0", "-1.0")


def _study_time(images: list[Path], times: dict):
    """The earliest time the metadata gives the study's images, else the first DICOM header that has one."""
    known = [times[p.stem] for p in images if times.get(p.stem) is not None]
    if known or times:
        return min(known, default=None)
    return next((t for p in images if p.suffix == ".dcm" and (t := file_time(p)) is not None), None)


def make_mimic_cxr_manifest(root: str | Path, out: str | Path, reports_root: str | Path | None = None):
    root, out = dataset_root(root, "MIMIC-CXR"), Path(out)
    reports = Path(reports_root) if reports_root else root
    meta = read_table(root, "mimic-cxr-2.0.0-metadata.csv")
    views = dict(zip(meta["dicom_id"], meta["ViewPosition"])) if meta is not None else {}
    times = {}
    if meta is not None and {"StudyDate", "StudyTime"} <= set(meta.columns):
        times = {d: numeric_date_time(date, time)
                 for d, date, time in zip(meta["dicom_id"], meta["StudyDate"], meta["StudyTime"])}
    orient_column = "PatientOrientationCodeSequence_CodeMeaning"
    orientation = dict(zip(meta["dicom_id"], meta[orient_column])) if meta is not None and orient_column in meta \
        else {}
    split_table = read_table(root, "mimic-cxr-2.0.0-split.csv")
    splits = dict(zip(split_table["study_id"], split_table["split"])) if split_table is not None else {}
    labels = read_table(root, "mimic-cxr-2.0.0-chexpert.csv")
    label_rows = {row["study_id"]: row for row in labels.to_dict("records")} if labels is not None else {}
    rows = []
    for study_dir in sorted((root / "files").glob("p*/p*/s*")):
        if not study_dir.is_dir() or not within(study_dir, root):
            continue
        images = [p for p in sorted(study_dir.glob("*.dcm")) or sorted(study_dir.glob("*.jpg")) if within(p, root)]
        patient, study = study_dir.parent.name[1:], study_dir.name[1:]
        report = reports / "files" / study_dir.parent.parent.name / study_dir.parent.name / f"{study_dir.name}.txt"
        has_report = report.is_file() and within(report, reports)  # a symlink out of the tree is no report
        if not images and not has_report:
            continue
        row = {"study_id": study, "patient_id": patient, "split": splits.get(study) or split_by_patient(patient),
               "cxr": ";".join(relative(p, out.parent) for p in images),
               "cxr_views": ";".join(views.get(p.stem, "") for p in images) if views else "",
               "report": relative(report, out.parent) if has_report else "",
               TIME_COLUMN: format_time(_study_time(images, times))}
        for label in CHEXPERT_LABELS:
            value = label_rows.get(study, {}).get(label, "")
            row[FINDING_PREFIX + snake(label)] = str(int(float(value))) if value in CHEXPERT_VALUES else ""
        row[AMBIGUITY_PREFIX + "cxr"] = cxr_ambiguity([(views.get(p.stem, ""), orientation.get(p.stem, ""))
                                                       for p in images]) if views and images else ""
        row[AMBIGUITY_PREFIX + "text"] = text_ambiguity(label_rows.get(study)) if row["report"] else ""
        rows.append(row)
    return write_studies(out, rows, root, "MIMIC-CXR",
                         "files/pXX/pNNNNNNNN/sNNNNNNNN/ folders holding .dcm or .jpg images or a report")
