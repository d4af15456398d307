"""`probmed data check`: a dry run that reads every file of a manifest, counts per modality what would be used or
skipped and why, shows the label vocabulary with counts, writes nothing, and fails when nothing is usable."""
from __future__ import annotations

import shutil
from pathlib import Path

from pydicom.data import get_testdata_file

from probmed.data.builder import check_dataset
from probmed.data.commands import main
from probmed.data.manifest import write_manifest


def _real(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


def _manifest(tmp_path: Path, good: bool) -> Path:
    for name in ("CT_small.dcm", "examples_ybr_color.dcm", "waveform_ecg.dcm", "MR_small.dcm"):
        shutil.copy(_real(name), tmp_path / name)
    rows = [{"study_id": "bad", "patient_id": "p1", "split": "train", "cxr": "CT_small.dcm", "echo": "MR_small.dcm",
             "ecg": "MR_small.dcm", "finding:edema": -1, "finding:atelectasis": 1}]
    if good:
        rows.append({"study_id": "good", "patient_id": "p2", "split": "test", "cxr": "CT_small.dcm",
                     "echo": "examples_ybr_color.dcm", "ecg": "waveform_ecg.dcm",
                     "report_text": "FINDINGS: clear. IMPRESSION: normal.", "finding:edema": 0})
    return write_manifest(tmp_path / "studies.csv", rows)


def test_check_counts_usable_and_skipped_inputs_and_labels(tmp_path, capsys):
    manifest = _manifest(tmp_path, good=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    summary = check_dataset(manifest, progress=False)
    assert summary["studies"] == 2 and summary["usable_studies"] == 1
    assert summary["modalities"] == {
        "cxr": {"used": 0, "skipped": {"cxr_wrong_modality": 2}},
        "ecg": {"used": 1, "skipped": {"ecg_wrong_modality": 1}},
        "echo": {"used": 1, "skipped": {"echo_wrong_modality": 1}},
        "study": {"used": 0, "skipped": {"no_usable_modality": 1}},
        "text": {"used": 1, "skipped": {}},
    }
    assert summary["labels"] == {"atelectasis": {"positive": 1, "negative": 0, "uncertain": 0, "missing": 1},
                                 "edema": {"positive": 0, "negative": 1, "uncertain": 1, "missing": 0}}
    assert check_dataset(manifest, progress=False, workers=2, chunk=1)["modalities"] == summary["modalities"]
    assert main(["check", "--manifest", str(manifest), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 studies, 1 with a usable input" in out and "cxr_wrong_modality 2" in out
    assert "edema" in out and sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_check_fails_when_nothing_is_usable(tmp_path, capsys):
    manifest = _manifest(tmp_path, good=False)
    assert main(["check", "--manifest", str(manifest), "--quiet", "--workers", "1"]) == 1
    assert "no usable study" in capsys.readouterr().err
    out = tmp_path / "never"
    assert main(["build", "--manifest", str(manifest), "--out", str(out), "--dry-run", "--quiet"]) == 1  # = check
    assert not out.exists()
