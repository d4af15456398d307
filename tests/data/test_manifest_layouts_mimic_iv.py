"""Acquisition times in every manifest (the clock formats of each source, DICOM headers) and the MIMIC-IV-ECHO and
MIMIC-IV-Note layouts, on small trees laid out like the PhysioNet releases."""
from __future__ import annotations

import csv
import gzip
from datetime import datetime
from pathlib import Path

import pydicom
import pytest

from probmed.data.commands import main
from probmed.data.manifest import read_manifest, write_manifest
from probmed.data.synthetic.mimic_family import write_echo_dicom
from probmed.data.times import dicom_datetime, file_time, header_time, numeric_date_time, parse_iso

from realkit import cxr_dicom, wfdb_record


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_iso_times_and_what_is_refused():
    assert parse_iso("2180-07-23 08:44:00") == datetime(2180, 7, 23, 8, 44)
    assert parse_iso("2180-07-23T08:44") == datetime(2180, 7, 23, 8, 44)
    assert parse_iso(" 2180-07-23T08:44:05.5 ") == datetime(2180, 7, 23, 8, 44, 5, 500000)
    assert parse_iso("2180-07-23T08:44:05.123456789") == datetime(2180, 7, 23, 8, 44, 5, 123456)
    assert parse_iso("") is None and parse_iso(None) is None
    for bad in ("2180-07-23", "2180-07-23T08:44:00Z", "2180-07-23T08:44:00+01:00", "23/07/2180 08:44",
                "2180-02-30T08:00:00", "2180-07-23T25:00:00"):
        with pytest.raises(ValueError):
            parse_iso(bad)


def test_dicom_and_numeric_clocks():
    # DICOM TM may be truncated on the right: HH, HHMM, HHMMSS, HHMMSS.F...
    assert dicom_datetime("21800506", "09") == datetime(2180, 5, 6, 9)
    assert dicom_datetime("21800506", "0930") == datetime(2180, 5, 6, 9, 30)
    assert dicom_datetime("21800506", "093015.25") == datetime(2180, 5, 6, 9, 30, 15, 250000)
    assert dicom_datetime("21800506", "09:30:15") == datetime(2180, 5, 6, 9, 30, 15)  # ACR-NEMA
    assert dicom_datetime("21800506", "") is None and dicom_datetime("", "0930") is None  # a date alone: unknown
    assert dicom_datetime("21801306", "0930") is None
    # MIMIC-CXR's metadata CSV holds numbers: leading zeros are gone, so the integer part is padded on the left
    assert numeric_date_time("21800506", "75013.234") == datetime(2180, 5, 6, 7, 50, 13, 234000)
    assert numeric_date_time("21800506", "213014.0") == datetime(2180, 5, 6, 21, 30, 14)
    assert numeric_date_time("21800506.0", "13.5") == datetime(2180, 5, 6, 0, 0, 13, 500000)
    assert numeric_date_time("21800506", "") is None and numeric_date_time("21800506", "1234567") is None
    ds = pydicom.Dataset()
    ds.StudyDate, ds.StudyTime = "21800506", "0930"
    assert header_time(ds) == datetime(2180, 5, 6, 9, 30)
    ds.AcquisitionDateTime = "21800506101112.5+0100"  # preferred; its UTC offset dropped (local time kept)
    assert header_time(ds) == datetime(2180, 5, 6, 10, 11, 12, 500000)
    ds.AcquisitionDateTime = "2180"  # not through the hour: the study's date and time instead
    assert header_time(ds) == datetime(2180, 5, 6, 9, 30)


def test_the_reader_refuses_a_bad_time_naming_line_and_column(tmp_path):
    rows = [{"study_id": "a", "patient_id": "p", "split": "train", "acquired_at": "2180-01-01T10:00:00"},
            {"study_id": "b", "patient_id": "p", "split": "train", "acquired_at": ""}]
    a, b = read_manifest(write_manifest(tmp_path / "m.csv", rows))
    assert a.acquired_at == datetime(2180, 1, 1, 10) and b.acquired_at is None
    assert "acquired_at" not in a.values
    rows[1]["acquired_at"] = "2180-01-01"
    with pytest.raises(ValueError, match=r"manifest line 3: acquired_at = '2180-01-01' is not an ISO 8601"):
        read_manifest(write_manifest(tmp_path / "m.csv", rows))


def test_mimic_cxr_time_from_the_metadata_or_the_dicom_header(tmp_path, capsys):
    root = tmp_path / "mimic-cxr"
    import numpy as np

    pixels = np.full((16, 16), 900, np.uint16)
    for subject, study, dicom_id in [("10000032", "50414267", "d1"), ("10000032", "53189527", "d2")]:
        cxr_dicom(root / "files" / "p10" / f"p{subject}" / f"s{study}" / f"{dicom_id}.dcm", pixels)
    main(["manifest", "mimic-cxr", "--root", str(root), "--out", str(tmp_path / "header.csv")])
    assert "(0 without acquired_at" in capsys.readouterr().out
    # realkit's films carry StudyDate 20240229, StudyTime 101010
    assert {e.acquired_at for e in read_manifest(tmp_path / "header.csv")} == {datetime(2024, 2, 29, 10, 10, 10)}
    _csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate",
                                                    "StudyTime"],
         [["d1", "10000032", "50414267", "PA", "21800506", "75013.234"], ["d2", "10000032", "53189527", "PA",
                                                                          "21800506", ""]])
    main(["manifest", "mimic-cxr", "--root", str(root), "--out", str(tmp_path / "meta.csv")])
    assert "(1 without acquired_at: unknown, not guessed)" in capsys.readouterr().out
    first, second = read_manifest(tmp_path / "meta.csv")
    assert first.acquired_at == datetime(2180, 5, 6, 7, 50, 13, 234000)
    assert second.acquired_at is None  # the metadata gives no time: unknown, not taken from elsewhere


def test_mimic_iv_ecg_and_ptbxl_times(tmp_path):
    root = tmp_path / "mimic-iv-ecg"
    for study in ("40689238", "44458630"):
        wfdb_record(root / "files" / "p1000" / "p10000032" / f"s{study}", study)
    _csv(root / "record_list.csv", ["subject_id", "study_id", "file_name", "ecg_time", "path"],
         [["10000032", "40689238", "40689238", "2180-07-23 08:44:00", "files/p1000/p10000032/s40689238/40689238"],
          ["10000032", "44458630", "44458630", "", "files/p1000/p10000032/s44458630/44458630"]])
    main(["manifest", "mimic-iv-ecg", "--root", str(root), "--out", str(tmp_path / "ecg.csv")])
    assert [e.acquired_at for e in read_manifest(tmp_path / "ecg.csv")] == [datetime(2180, 7, 23, 8, 44), None]
    ptb = tmp_path / "ptb-xl"
    wfdb_record(ptb / "records500" / "00000", "00001_hr")
    _csv(ptb / "ptbxl_database.csv", ["ecg_id", "patient_id", "recording_date", "report", "scp_codes", "strat_fold",
                                      "filename_lr", "filename_hr"],
         [[1, "15709.0", "1984-11-09 09:17:34", "sinusrhythmus", "{'NORM': 100.0}", 3, "records100/00000/00001_lr",
           "records500/00000/00001_hr"]])
    _csv(ptb / "scp_statements.csv", ["", "description", "diagnostic", "form", "rhythm", "diagnostic_class"],
         [["NORM", "normal ECG", "1.0", "", "", "NORM"]])
    main(["manifest", "ptb-xl", "--root", str(ptb), "--out", str(tmp_path / "ptb.csv")])
    assert read_manifest(tmp_path / "ptb.csv")[0].acquired_at == datetime(1984, 11, 9, 9, 17, 34)


def _echo_tree(root: Path, with_lists: bool = True) -> None:
    t = datetime(2180, 3, 1, 9, 0, 0)
    studies = {  # study: [(file, frames, acquisition time)]
        "90000001": [("90000001_0001.dcm", 1, t), ("90000001_0002.dcm", 16, t.replace(minute=5)),
                     ("90000001_0003.dcm", 20, t.replace(minute=7))],
        "90000002": [("90000002_0001.dcm", 1, t.replace(day=2))],  # a still only: no cine
        "90000003": [("90000003_0002.dcm", 24, t.replace(day=3, minute=9)),
                     ("90000003_0001.dcm", 18, t.replace(day=3, minute=8))],  # acquired first, listed second
    }
    records = []
    for study, files in studies.items():
        for name, frames, when in files:
            path = root / "files" / "p10" / "p10002221" / f"s{study}" / name
            write_echo_dicom(path, frames, when, seed=0)
            records.append(["10002221", study, when.isoformat(sep=" "), str(path.relative_to(root))])
    if with_lists:
        _csv(root / "echo-record-list.csv", ["subject_id", "study_id", "acquisition_datetime", "dicom_filepath"],
             records)
        _csv(root / "echo-study-list.csv",
             ["subject_id", "study_id", "study_datetime", "note_id", "note_seq", "note_charttime"],
             [["10002221", "90000001", "2180-03-01 08:58:30.125", "10002221-EC-1", 1, "2180-03-01 11:00:00"],
              ["10002221", "90000002", "2180-03-02 09:00:00", "", "", ""],
              ["10002221", "90000003", "", "", "", ""]])


def test_mimic_iv_echo_keeps_each_studys_first_cine(tmp_path, capsys):
    root = tmp_path / "mimic-iv-echo"
    _echo_tree(root)
    main(["manifest", "mimic-iv-echo", "--root", str(root), "--out", str(tmp_path / "echo.csv")])
    captured = capsys.readouterr()
    assert "wrote 2 studies" in captured.out
    assert "1 studies left out: no DICOM of theirs has >= 16 frames" in captured.err
    first, third = read_manifest(tmp_path / "echo.csv")
    assert first.paths["echo"][0].name == "90000001_0002.dcm"  # the still before it is skipped
    assert first.acquired_at == datetime(2180, 3, 1, 8, 58, 30, 125000)  # study_datetime first
    assert third.paths["echo"][0].name == "90000003_0001.dcm"  # by acquisition time, not by name
    assert third.acquired_at == datetime(2180, 3, 3, 9, 8)  # no study_datetime: the cine's acquisition time
    main(["manifest", "mimic-iv-echo", "--root", str(root), "--out", str(tmp_path / "long.csv"), "--min-frames", "20"])
    assert [e.paths["echo"][0].name for e in read_manifest(tmp_path / "long.csv")] == ["90000001_0003.dcm",
                                                                                          "90000003_0002.dcm"]


def test_mimic_iv_echo_without_lists_scans_the_tree_and_reads_headers(tmp_path):
    root = tmp_path / "mimic-iv-echo"
    _echo_tree(root, with_lists=False)
    main(["manifest", "mimic-iv-echo", "--root", str(root), "--out", str(tmp_path / "echo.csv")])
    entries = read_manifest(tmp_path / "echo.csv")
    assert [e.study_id for e in entries] == ["90000001", "90000003"] and entries[0].patient_id == "10002221"
    # no times listed: files in name order, time from the header (StudyDate + StudyTime)
    assert entries[1].paths["echo"][0].name == "90000003_0001.dcm"
    assert entries[1].acquired_at == file_time(entries[1].paths["echo"][0]) == datetime(2180, 3, 3, 9, 8)
    assert main(["manifest", "mimic-iv-echo", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "x.csv")]) == 2


def test_mimic_iv_note_attaches_reports_where_the_dataset_links_them(tmp_path, capsys):
    root, echo = tmp_path / "mimic-iv-note", tmp_path / "mimic-iv-echo"
    _echo_tree(echo)
    header = ["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime", "storetime", "text"]
    _csv(root / "note" / "radiology.csv.gz", header, [
        ["10002221-RR-1", "10002221", "", "RR", 1, "2180-03-01 12:00:00", "", "CHEST PA. No effusion."],
        ["10002221-RR-2", "10002221", "", "RR", 2, "2180-03-01 10:00:00", "", "CHEST PA, earlier.\nTwo lines."],
        ["10002221-AR-3", "10002221", "", "AR", 3, "2180-03-04 10:00:00", "", "Addendum."],
        ["10002221-EC-1", "10002221", "", "EC", 1, "2180-03-01 11:00:00", "", "ECHO: normal LV function."]])
    _csv(root / "note" / "radiology_detail.csv.gz", ["note_id", "subject_id", "field_name", "field_value",
                                                     "field_ordinal"],
         [["10002221-RR-1", "10002221", "exam_code", "C11", 1], ["10002221-RR-1", "10002221", "study_id", "50000001", 1],
          ["10002221-RR-2", "10002221", "study_id", "50000001", 1]])
    main(["manifest", "mimic-iv-note", "--root", str(root), "--echo-root", str(echo), "--out", str(tmp_path / "n.csv")])
    assert "2 of 4 notes attached" in capsys.readouterr().err
    notes = {e.study_id: e for e in read_manifest(tmp_path / "n.csv")}
    # two notes name study 50000001: the earlier one is attached, the other stays a timed record
    assert notes["50000001"].values["report_text"] == "CHEST PA, earlier.\nTwo lines."
    assert notes["10002221-RR-1"].acquired_at == datetime(2180, 3, 1, 12)
    assert notes["90000001"].values["report_text"] == "ECHO: normal LV function."  # via echo-study-list's note_id
    assert "10002221-AR-3" in notes and notes["10002221-AR-3"].patient_id == "10002221"
    main(["manifest", "mimic-iv-note", "--root", str(root), "--link-field", "none", "--out", str(tmp_path / "t.csv")])
    assert sorted(e.study_id for e in read_manifest(tmp_path / "t.csv")) == sorted(
        ["10002221-RR-1", "10002221-RR-2", "10002221-AR-3", "10002221-EC-1"])
    assert main(["manifest", "mimic-iv-note", "--root", str(tmp_path), "--out", str(tmp_path / "x.csv")]) == 2
    assert main(["manifest", "mimic-iv-note", "--root", str(root), "--echo-root", str(tmp_path),
                 "--out", str(tmp_path / "x.csv")]) == 2
