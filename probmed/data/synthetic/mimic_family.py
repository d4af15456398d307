"""A small generated stand-in of four MIMIC-IV-family downloads (MIMIC-CXR, MIMIC-IV-ECG, MIMIC-IV-ECHO,
MIMIC-IV-Note) in their real layouts, with the cases ``probmed data link`` must count planted at known places.

Patients ``1PPPPPPP`` share ids across the four modules (as MIMIC does). Every chest film study (the anchor) gets,
by its running index ``k``, one case of each kind, so that the expected link report follows from the cases alone
(:func:`write_mimic_family_standin` returns it as ``planted``):

* ECG (``k % 6``): at +3 h; at exactly −24 h (a 24 h window includes it); at +24 h + 1 s (excludes it); two ECGs,
  at +2 h and −5 h (the nearer is linked, the other is ``not_nearest``); none; one whose ``ecg_time`` is blank
  (``no_time``).
* echo (``k % 4``): a study at +6 d 23 h (a still first, then a 16-frame cine); at −7 d − 1 min (out of a 7 d
  window); none; a study with a still only (``mimic-iv-echo`` leaves it out: no cine).
* text (``k % 5``): MIMIC-CXR's own report; its own report and a radiology note linked to it (``anchor_has_own``);
  no own report and a linked radiology note (linked by same-study); no own report and an echo report linked to the
  study's echo study (linked through the echo, when that echo is linked); no report at all.
* every 17th study has a blank ``StudyTime`` (no ECG or echo is planted for it; its text cases still apply);
* clock formats: ``StudyTime`` as MIMIC-CXR's numeric CSV writes it (``75013.234`` = 07:50:13.234, ``213014.0``),
  ``ecg_time`` with seconds, ``study_datetime`` with milliseconds;
* every 4th patient has one radiology note linked to nothing (``no_same_study``); every 10th patient has an ECG and
  no chest film (``patient_without_anchor``); every 7th patient with two chest film studies has them in two
  different MIMIC-CXR splits (the joined split must put the patient in one).

The radiology notes link to chest film studies through a ``radiology_detail`` field ``study_id`` — a stand-in for a
hospital export that has one (MIMIC-IV-Note v2.2 has no such field); echo reports are linked by
``echo-study-list.csv``'s ``note_id`` and kept in ``note/echo.csv.gz``.
"""
from __future__ import annotations

import csv
import gzip
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from probmed.data.manifests.common import split_by_patient
from probmed.data.synthetic.mimic_layout import write_cxr_study, write_cxr_tables

ECG_CASES = ("in", "edge_in", "edge_out", "two", "none", "no_time")
ECHO_CASES = ("in", "edge_out", "none", "still_only")
TEXT_CASES = ("own", "own_plus_note", "note", "echo_note", "none")
ECG_OFFSETS = {"in": [timedelta(hours=3)], "edge_in": [timedelta(hours=-24)],
               "edge_out": [timedelta(hours=24, seconds=1)], "two": [timedelta(hours=2), timedelta(hours=-5)],
               "none": [], "no_time": [None]}
ECHO_OFFSETS = {"in": timedelta(days=6, hours=23), "edge_out": -timedelta(days=7, minutes=1),
                "still_only": timedelta(days=2)}
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
_SPLIT_NAME = {"train": "train", "val": "validate", "test": "test"}


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open(path, "wt", newline="") if path.suffix == ".gz" else open(path, "w", newline="")
    with opener as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _wfdb(directory: Path, name: str, seed: int, rate: int = 100, seconds: float = 5.0) -> None:
    import wfdb

    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    beat = np.exp(-(((t * 1.2) % 1.0 - 0.3) ** 2) / 0.001)  # ~72 beats per minute
    signal = np.stack([(0.3 + 0.1 * i) * beat + rng.normal(0, 0.02, t.size) for i in range(12)], axis=1)
    directory.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=rate, units=["mV"] * 12, sig_name=LEADS, p_signal=signal, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(directory))


def write_echo_dicom(path: Path, frames: int, when: datetime, seed: int, size: int = 32) -> None:
    """An ultrasound (multi-frame when ``frames`` > 1) DICOM: a bright disc whose radius pulses with time."""
    import pydicom
    from pydicom.uid import UltrasoundImageStorage, UltrasoundMultiFrameImageStorage

    from probmed.data.synthetic.cxr import new_dataset, study_uid

    sop = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    ds = new_dataset(sop, study_uid(seed, path.stem, "sop"))
    yy, xx = np.mgrid[:size, :size] - size / 2
    cine = np.stack([np.where(xx**2 + yy**2 < (size / 4 * (1 + 0.3 * np.sin(2 * np.pi * k / 8))) ** 2, 200, 20)
                     for k in range(frames)]).astype(np.uint8)
    ds.Modality, ds.PatientID = "US", path.parent.parent.name[1:]
    ds.StudyDate, ds.StudyTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames, ds.FrameTime = frames, 33.3
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = cine.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _numeric_time(t: datetime, k: int) -> tuple[str, str]:
    """MIMIC-CXR metadata's ``StudyDate`` / ``StudyTime`` as the CSV writes them: numbers, leading zeros lost."""
    hhmmss = int(t.strftime("%H%M%S"))
    fraction = f"{t.microsecond // 1000:03d}" if k % 2 else "0"  # 213014.0 / 75013.234
    return t.strftime("%Y%m%d"), f"{hhmmss}.{fraction}"


@dataclass
class _Tally:
    """What :func:`write_mimic_family_standin` has planted so far: the rows of the four modules' tables, the next ECG
    and echo study ids, and the expected link report counts."""
    ecg_id: int = 40000000
    echo_id: int = 90000000
    cxr_studies: list[dict] = field(default_factory=list)
    ecg_rows: list[list[object]] = field(default_factory=list)
    echo_records: list[list[object]] = field(default_factory=list)
    echo_studies: list[list[object]] = field(default_factory=list)
    notes: list[list[object]] = field(default_factory=list)
    details: list[list[object]] = field(default_factory=list)
    echo_notes: list[list[object]] = field(default_factory=list)
    linked: Counter = field(default_factory=Counter)
    unmatched: dict[str, Counter] = field(
        default_factory=lambda: {"ecg": Counter(), "echo": Counter(), "text": Counter()})
    anchor_has_own: Counter = field(default_factory=Counter)
    anchor_no_time: Counter = field(default_factory=Counter)
    gaps: dict[str, list[float]] = field(default_factory=lambda: {"ecg": [], "echo": []})
    combos: Counter = field(default_factory=Counter)
    conflicts: int = 0
    echo_left_out: int = 0


def _add_ecg(tally: _Tally, ecg_root: Path, subject: str, ecg_time: str, seed: int) -> None:
    """Write one ECG record of ``subject`` (id ``tally.ecg_id``, then advanced) under ``ecg_root``, and its
    ``record_list.csv`` row with ``ecg_time`` (blank: no time)."""
    _wfdb(ecg_root / "files" / f"p{subject[:4]}" / f"p{subject}" / f"s{tally.ecg_id}", str(tally.ecg_id),
          seed + tally.ecg_id)
    tally.ecg_rows.append([subject, tally.ecg_id, str(tally.ecg_id), ecg_time,
                           f"files/p{subject[:4]}/p{subject}/s{tally.ecg_id}/{tally.ecg_id}"])
    tally.ecg_id += 1


def _plant_ecgs(tally: _Tally, ecg_root: Path, subject: str, anchor_when: datetime | None, ecg_case: str,
                seed: int, present: set[str]) -> None:
    """The ECGs of one chest film study (acquired at ``anchor_when``) for ``ecg_case`` (:data:`ECG_CASES`), counted
    as the link report will count them; adds ``"ecg"`` to ``present`` when one is linked."""
    for n, offset in enumerate(ECG_OFFSETS[ecg_case]):
        ecg_time = "" if offset is None else (anchor_when + offset).isoformat(sep=" ")
        _add_ecg(tally, ecg_root, subject, ecg_time, seed)
        if offset is None:
            tally.unmatched["ecg"]["no_time"] += 1
        elif ecg_case == "edge_out":
            tally.unmatched["ecg"]["out_of_window"] += 1
        elif n == 0:
            tally.linked["ecg"] += 1
            present.add("ecg")
            tally.gaps["ecg"].append(offset.total_seconds() / 3600)
        else:
            tally.unmatched["ecg"]["not_nearest"] += 1


def _plant_echo(tally: _Tally, echo_root: Path, subject: str, start: datetime, echo_case: str, text_case: str,
                seed: int, present: set[str]) -> None:
    """The echo study of one chest film study (acquired at ``start``) for ``echo_case`` (:data:`ECHO_CASES`; none for
    ``"none"``): its DICOMs, record and study list rows, and (``text_case`` ``"echo_note"``) its echo report; counted
    as the link report will count them; adds ``"echo"`` / ``"text"`` to ``present`` when linked."""
    if echo_case == "none":
        return
    echo_study = str(tally.echo_id)
    tally.echo_id += 1
    echo_when = start + ECHO_OFFSETS[echo_case]
    folder = echo_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{echo_study}"
    files = [(f"{echo_study}_0001.dcm", 1, echo_when)]
    if echo_case != "still_only":
        files.append((f"{echo_study}_0002.dcm", 16, echo_when + timedelta(minutes=2)))
    for name, frames, t in files:
        write_echo_dicom(folder / name, frames, t, seed)
        tally.echo_records.append([subject, echo_study, t.isoformat(sep=" "),
                                   str((folder / name).relative_to(echo_root))])
    note_id = f"{subject}-EC-{echo_study[-3:]}" if text_case == "echo_note" else ""
    tally.echo_studies.append([subject, echo_study, echo_when.isoformat(sep=" ", timespec="milliseconds"), note_id,
                               1 if note_id else "", echo_when.isoformat(sep=" ") if note_id else ""])
    if echo_case == "still_only":
        tally.echo_left_out += 1
    elif echo_case == "in":
        tally.linked["echo"] += 1
        present.add("echo")
        tally.gaps["echo"].append(ECHO_OFFSETS["in"].total_seconds() / 3600)
    else:
        tally.unmatched["echo"]["out_of_window"] += 1
    if note_id:
        tally.echo_notes.append([note_id, subject, "", "EC", 1, echo_when.isoformat(sep=" "), "",
                                 "ECHO REPORT. Left ventricular function is normal."])
        if echo_case == "in":
            tally.linked["text"] += 1
            present.add("text")
        else:
            tally.unmatched["text"]["no_same_study"] += 1


def _plant_text(tally: _Tally, subject: str, study: str, k: int, when: datetime, text_case: str,
                present: set[str]) -> None:
    """The report side of chest film study ``study`` (``k``: its running index, ``when``: its time) for
    ``text_case`` (:data:`TEXT_CASES`): counts its own report, and writes a radiology note linked to it where the
    case has one; adds ``"text"`` to ``present`` when it has a report."""
    if text_case in ("own", "own_plus_note"):
        tally.anchor_has_own["text"] += 1
        present.add("text")
    if text_case in ("own_plus_note", "note"):
        note_id = f"{subject}-RR-{k % 90 + 1}"
        tally.notes.append([note_id, subject, "", "RR", k % 90 + 1, (when + timedelta(hours=1)).isoformat(sep=" "),
                            "", f"FINDINGS: Heart size is normal. Study {k}."])
        tally.details.append([note_id, subject, "study_id", study, 1])
        if text_case == "note":
            tally.linked["text"] += 1
            present.add("text")
        else:
            tally.unmatched["text"]["anchor_has_own"] += 1


def _plant_study(tally: _Tally, roots: dict[str, Path], subject: str, k: int, when: datetime, split: str,
                 rng: np.random.Generator, prompts: dict, size: int, seed: int) -> None:
    """Chest film study ``k`` (running index) of ``subject`` at ``when`` in source split ``split``: its films and
    report (drawing from ``rng``), metadata row, and its ECG, echo and text cases (picked by ``k``)."""
    study = f"5{k:07d}"
    timed = k % 17 != 16
    ecg_case, echo_case, text_case = ECG_CASES[k % 6], ECHO_CASES[k % 4], TEXT_CASES[k % 5]
    if not timed:
        ecg_case, echo_case = "none", ("none" if echo_case != "still_only" else "still_only")
    labels, images = write_cxr_study(roots["mimic-cxr"], subject, study, k, rng, prompts, size,
                                     report=text_case in ("own", "own_plus_note"))
    date, clock = _numeric_time(when, k) if timed else (when.strftime("%Y%m%d"), "")
    tally.cxr_studies.append({"subject": subject, "study": study, "split": _SPLIT_NAME[split], "labels": labels,
                              "images": images, "StudyDate": date, "StudyTime": clock})
    # the anchor's time as written (a fraction of a second only where the CSV keeps one)
    anchor_when = when.replace(microsecond=when.microsecond if k % 2 else 0) if timed else None
    present = {"cxr"}
    if not timed:
        tally.anchor_no_time["ecg"] += 1
        tally.anchor_no_time["echo"] += 1
    _plant_ecgs(tally, roots["mimic-iv-ecg"], subject, anchor_when, ecg_case, seed, present)
    _plant_echo(tally, roots["mimic-iv-echo"], subject, anchor_when or when, echo_case, text_case, seed, present)
    _plant_text(tally, subject, study, k, when, text_case, present)
    tally.combos["+".join(m for m in ("cxr", "ecg", "echo", "text") if m in present)] += 1


def _write_tables(roots: dict[str, Path], tally: _Tally) -> None:
    """Write the four modules' tables (MIMIC-CXR's metadata, split and label CSVs; the ECG record list; the echo
    record and study lists; the radiology and echo notes and radiology details) from ``tally``'s rows."""
    write_cxr_tables(roots["mimic-cxr"], tally.cxr_studies)
    _csv(roots["mimic-iv-ecg"] / "record_list.csv", ["subject_id", "study_id", "file_name", "ecg_time", "path"],
         tally.ecg_rows)
    _csv(roots["mimic-iv-echo"] / "echo-record-list.csv",
         ["subject_id", "study_id", "acquisition_datetime", "dicom_filepath"], tally.echo_records)
    _csv(roots["mimic-iv-echo"] / "echo-study-list.csv",
         ["subject_id", "study_id", "study_datetime", "note_id", "note_seq", "note_charttime"], tally.echo_studies)
    header = ["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"]
    _csv(roots["mimic-iv-note"] / "note" / "radiology.csv.gz", header, tally.notes)
    _csv(roots["mimic-iv-note"] / "note" / "echo.csv.gz", header, tally.echo_notes)
    _csv(roots["mimic-iv-note"] / "note" / "radiology_detail.csv.gz",
         ["note_id", "subject_id", "field_name", "field_value", "field_ordinal"], tally.details)


def _planted_counts(tally: _Tally) -> dict:
    """The expected ``probmed data link`` report counts for what ``tally`` records as planted."""
    cxr_studies, ecg_rows = tally.cxr_studies, tally.ecg_rows
    patients_with_cxr = len({s["subject"] for s in cxr_studies})
    return {
        "studies": len(cxr_studies), "patients": patients_with_cxr,
        "patients_in_several_source_splits": tally.conflicts, "anchor_no_time": tally.anchor_no_time["ecg"],
        "combinations": dict(tally.combos), "echo_studies_without_cine": tally.echo_left_out,
        "manifest_rows": {"cxr": len(cxr_studies), "ecg": len(ecg_rows),
                          "echo": len(tally.echo_studies) - tally.echo_left_out,
                          "text": len(tally.notes) + len(tally.echo_notes)},
        "untimed_rows": {"cxr": sum(not s["StudyTime"] for s in cxr_studies),
                         "ecg": sum(not r[3] for r in ecg_rows), "echo": 0, "text": 0},
        "modalities": {name: {"linked": tally.linked[name], "anchor_has_own": tally.anchor_has_own[name],
                              "anchor_no_time": tally.anchor_no_time[name] if name != "text" else 0,
                              "unmatched": dict(sorted(tally.unmatched[name].items())),
                              "gap_hours": sorted(tally.gaps.get(name, []))}
                       for name in ("ecg", "echo", "text")},
    }


def write_mimic_family_standin(root: str | Path, phrases: dict, patients: int = 200, seed: int = 0,
                               size: int = 32) -> dict:
    """Write ``<root>/{mimic-cxr,mimic-iv-ecg,mimic-iv-echo,mimic-iv-note}`` and return ``{"roots": {...},
    "planted": expected link report counts}`` for ``--anchor cxr --window ecg=24h --window echo=7d --window
    text=same-study`` (see the module docstring). ``phrases``: the report sentences per CheXpert label, as
    :func:`~probmed.data.synthetic.mimic_layout.write_mimic_cxr_standin` takes them."""
    root, rng = Path(root), np.random.default_rng(seed)
    prompts = phrases
    roots = {name: root / name for name in ("mimic-cxr", "mimic-iv-ecg", "mimic-iv-echo", "mimic-iv-note")}
    tally, k = _Tally(), 0
    base = datetime(2180, 1, 1, 7, 50, 13, 234000)
    for p in range(patients):
        subject = f"1{p:07d}"
        if p % 10 == 9:  # an ECG and no chest film
            _add_ecg(tally, roots["mimic-iv-ecg"], subject, (base + timedelta(days=p)).isoformat(sep=" "), seed)
            tally.unmatched["ecg"]["patient_without_anchor"] += 1
            continue
        n_studies = 2 if p % 3 == 0 else 1
        own_split = split_by_patient(subject)
        if p % 4 == 0:
            note_id = f"{subject}-RR-99"
            tally.notes.append([note_id, subject, "", "RR", 99,
                                (base + timedelta(days=p, hours=-40)).isoformat(sep=" "), "",
                                "EXAMINATION: CHEST (PORTABLE AP). IMPRESSION: No acute process."])
            tally.unmatched["text"]["no_same_study"] += 1
        if n_studies == 2 and p % 7 == 0:
            tally.conflicts += 1
        for j in range(n_studies):
            when = base + timedelta(days=p, minutes=37 * p) + timedelta(days=30 * j, hours=13 * j)
            split = own_split if not (n_studies == 2 and p % 7 == 0 and j == 1) else (
                "test" if own_split != "test" else "train")
            _plant_study(tally, roots, subject, k, when, split, rng, prompts, size, seed)
            k += 1
    _write_tables(roots, tally)
    return {"roots": {k: str(v) for k, v in roots.items()}, "planted": _planted_counts(tally)}
