"""Manifest makers on tiny fake trees laid out exactly like the public releases, then built into shards."""
from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from probmed.data.builder import build_dataset
from probmed.data.commands import main
from probmed.data.deid import Pseudonymizer
from probmed.data.manifest import read_manifest
from probmed.data.readers.ecg_sources import read_ecg_source

from realkit import avi, cxr_dicom, wfdb_record

SALT = "manifest-test-salt"


def _csv(path: Path, header: list[str], rows: list[list[object]], gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _build(manifest: Path, out: Path) -> dict:
    return build_dataset(manifest, out, salt=SALT, maxcount=10, progress=False)


def test_mimic_cxr_dicom_tree(tmp_path):
    root = tmp_path / "mimic-cxr"
    studies = {("10000032", "50414267"): ["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
                                          "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"],
               ("10000764", "57375967"): ["096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4"]}
    meta_rows, split_rows, label_rows = [], [], []
    rng = np.random.default_rng(0)
    for (subject, study), dicom_ids in studies.items():
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        for k, dicom_id in enumerate(dicom_ids):
            cxr_dicom(folder / f"{dicom_id}.dcm", rng.integers(0, 4000, (32, 32)).astype(np.uint16),
                      view="PA" if k == 0 else "LATERAL")
            meta_rows.append([dicom_id, subject, study, "CHEST (PA AND LAT)", "PA" if k == 0 else "LATERAL", 32, 32])
            split_rows.append([dicom_id, study, subject, "train" if subject == "10000032" else "validate"])
        (folder.parent / f"s{study}.txt").write_text(
            " FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n FINDINGS: Heart size is normal.\n\n"
            " IMPRESSION: No acute cardiopulmonary process.\n")
        label_rows.append([subject, study, "", "1.0" if subject == "10000032" else "0.0", "", "", "", "", "", "",
                           "", "-1.0", "", "", "", ""])
    _csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id",
         "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns"], meta_rows, gz=True)
    _csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows, gz=True)
    _csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", "Atelectasis", "Cardiomegaly",
         "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
         "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"],
         label_rows, gz=True)
    manifest = tmp_path / "cxr.csv"
    assert main(["manifest", "mimic-cxr", "--root", str(root), "--out", str(manifest)]) == 0
    entries = {e.study_id: e for e in read_manifest(manifest)}
    first = entries["50414267"]
    assert first.patient_id == "10000032" and first.split == "train" and first.values_of("cxr_views") == ["PA", "LATERAL"]
    assert [p.stem for p in first.paths["cxr"]] == studies[("10000032", "50414267")]
    assert first.paths["report"][0].name == "s50414267.txt"
    assert first.findings == {"cardiomegaly": 1, "pleural_effusion": -1}  # CheXpert's -1 (uncertain) is kept
    assert entries["57375967"].split == "val" and entries["57375967"].findings == {"cardiomegaly": 0,
                                                                                  "pleural_effusion": -1}
    summary = _build(manifest, tmp_path / "out")
    assert summary["written"] == 2 and summary["skipped"] == {}


def test_mimic_cxr_jpg_tree_without_tables(tmp_path):
    from PIL import Image

    root = tmp_path / "mimic-cxr-jpg"
    folder = root / "files" / "p10" / "p10000032" / "s50414267"
    folder.mkdir(parents=True)
    Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))).save(folder / "02aa804e.jpg")
    (folder.parent / "s50414267.txt").write_text("FINDINGS: Clear lungs.\nIMPRESSION: Normal.")
    manifest = tmp_path / "jpg.csv"
    main(["manifest", "mimic-cxr", "--root", str(root), "--out", str(manifest)])
    (entry,) = read_manifest(manifest)
    assert entry.paths["cxr"][0].suffix == ".jpg" and entry.split in ("train", "val", "test") and "cxr_views" not in entry.values
    assert _build(manifest, tmp_path / "out")["written"] == 1


def test_mimic_iv_ecg_tree(tmp_path):
    root = tmp_path / "mimic-iv-ecg"
    records = [("10000032", "40689238"), ("10000032", "44458630"), ("10000764", "41256771")]
    for subject, study in records:
        wfdb_record(root / "files" / f"p{subject[:4]}" / f"p{subject}" / f"s{study}", study,
                    leads=["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"])
    _csv(root / "record_list.csv", ["subject_id", "study_id", "file_name", "ecg_time", "path"],
         [[s, st, st, "2180-07-23 08:44:00", f"files/p{s[:4]}/p{s}/s{st}/{st}"] for s, st in records])
    reports = [f"report_{i}" for i in range(18)]
    _csv(root / "machine_measurements.csv", ["subject_id", "study_id", "cart_id", "ecg_time", *reports, "rr_interval"],
         [[s, st, "6848296", "2180-07-23 08:44:00", "Sinus rhythm", "Possible right atrial abnormality",
           *[""] * 16, "659"] for s, st in records])
    manifest = tmp_path / "ecg.csv"
    main(["manifest", "mimic-iv-ecg", "--root", str(root), "--out", str(manifest)])
    entries = read_manifest(manifest)
    assert [e.study_id for e in entries] == [st for _, st in records]
    assert entries[0].values["report_text"] == "FINDINGS: Sinus rhythm. Possible right atrial abnormality."
    assert entries[0].paths["ecg"][0].name == "40689238.hea"
    assert entries[0].split == entries[1].split  # one patient, one split
    out = tmp_path / "out"
    assert _build(manifest, out)["written"] == 3
    # MIMIC-IV-ECG stores aVF before aVL: the shards hold the standard order
    source = read_ecg_source(entries[0].paths["ecg"][0]).signal
    key = Pseudonymizer(SALT).id("study", "40689238")
    stored = {}
    for shard in out.glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith("ecg.npy"):
                    stored[member.name] = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
    assert len(stored) == 3 and all(a.shape == (12, 1000) for a in stored.values())
    np.testing.assert_allclose(stored[f"{key}.ecg.npy"][4] / 1000, source[5], atol=1e-3)  # aVL
    np.testing.assert_allclose(stored[f"{key}.ecg.npy"][5] / 1000, source[4], atol=1e-3)  # aVF


def test_ptbxl_tree(tmp_path):
    root = tmp_path / "ptb-xl"
    header = ["ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold", "filename_lr", "filename_hr"]
    rows = [[1, "15709.0", 56, 1, "sinusrhythmus periphere niederspannung", "{'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}",
             3, "records100/00000/00001_lr", "records500/00000/00001_hr"],
            [2, "13243.0", 19, 0, "vorhofflimmern", "{'AFIB': 100.0, 'IMI': 35.0}", 9,
             "records100/00000/00002_lr", "records500/00000/00002_hr"],
            [3, "20372.0", 37, 1, "sinustachykardie", "{'STACH': 100.0, 'NORM': 80.0}", 10,
             "records100/00000/00003_lr", "records500/00000/00003_hr"]]
    for row in rows:
        wfdb_record(root / "records500" / "00000", f"{row[0]:05d}_hr",
                    leads=["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"])
    _csv(root / "ptbxl_database.csv", header, rows)
    _csv(root / "scp_statements.csv", ["", "description", "diagnostic", "form", "rhythm", "diagnostic_class"],
         [["NORM", "normal ECG", "1.0", "", "", "NORM"], ["IMI", "inferior myocardial infarction", "1.0", "", "", "MI"],
          ["LVOLT", "low QRS voltages in the frontal and horizontal leads", "", "1.0", "", ""],
          ["SR", "sinus rhythm", "", "", "1.0", ""], ["AFIB", "atrial fibrillation", "", "", "1.0", ""],
          ["STACH", "sinus tachycardia", "", "", "1.0", ""]])
    manifest = tmp_path / "ptbxl.csv"
    main(["manifest", "ptb-xl", "--root", str(root), "--out", str(manifest)])
    e1, e2, e3 = read_manifest(manifest)
    assert (e1.split, e2.split, e3.split) == ("train", "val", "test")
    assert e1.patient_id == "15709" and e1.paths["ecg"][0].name == "00001_hr.hea"
    assert e1.values["report_text"] == ("FINDINGS: sinusrhythmus periphere niederspannung. normal ECG. low QRS voltages in "
                              "the frontal and horizontal leads. sinus rhythm.")
    assert e1.findings["norm"] == 1 and e1.findings["mi"] == 0
    assert e2.findings["mi"] == 1 and e2.findings["atrial_fibrillation"] == 1 and e2.findings["norm"] == 0
    assert e3.findings["tachycardia"] == 1 and e3.findings["bradycardia"] == 0
    summary = _build(manifest, tmp_path / "out")
    assert summary["written"] == 3 and sorted(summary["sizes"]) == ["test-000000.tar", "train-000000.tar",
                                                                     "val-000000.tar"]


@pytest.mark.parametrize("with_extension", [False, True])
def test_echonet_dynamic_tree(tmp_path, with_extension):
    root = tmp_path / "EchoNet-Dynamic"
    names = ["0X100009310A3BD7FC", "0X1002E8FBACD08477", "0X100CF05D141FF143"]
    for name in names:
        avi(root / "Videos" / f"{name}.avi", frames=10, size=32, fps=50)
    _csv(root / "FileList.csv", ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames",
                                 "Split"],
         [[n + (".avi" if with_extension else ""), ef, 14.9, 69.2, 112, 112, 50, 10, split]
          for n, ef, split in zip(names, (78.5, 35.2, 59.1), ("TRAIN", "VAL", "TEST"))])
    (root / "VolumeTracings.csv").write_text("FileName,X1,Y1,X2,Y2,Frame\n")
    manifest = tmp_path / "echonet.csv"
    main(["manifest", "echonet-dynamic", "--root", str(root), "--out", str(manifest)])
    entries = read_manifest(manifest)
    assert [e.study_id for e in entries] == names and [e.split for e in entries] == ["train", "val", "test"]
    assert [e.findings["reduced_ef"] for e in entries] == [0, 1, 0] and float(entries[0].values["echo_fps"]) == 50.0
    summary = _build(manifest, tmp_path / "out")
    assert summary["written"] == 3
    sizes = json.loads((tmp_path / "out" / "sizes.json").read_text())
    assert sum(sizes.values()) == 3
