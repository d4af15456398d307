"""`probmed data` as a user meets it: a manifest maker pointed at a missing or empty root stops with one line and
exit 2 (no header-only CSV), `data check` prints its whole report on stdout in reading order, messages read as
English, and every manifest column is documented for users in docs/real_data.md."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from conftest import REPO, run_probmed
from probmed.data.commands import main
from probmed.data.manifest import AMBIGUITY_PREFIX, FINDING_PREFIX, columns, write_manifest
from probmed.data.manifests import MAKERS


@pytest.mark.parametrize("dataset", sorted(MAKERS))
def test_every_maker_refuses_a_missing_root_without_writing(tmp_path, capsys, dataset):
    out = tmp_path / "m.csv"
    assert main(["manifest", dataset, "--root", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere: no such directory" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


@pytest.mark.parametrize("dataset", sorted(MAKERS))
def test_every_maker_refuses_an_empty_root_without_writing(tmp_path, capsys, dataset):
    root, out = tmp_path / "empty", tmp_path / "m.csv"
    root.mkdir()
    assert main(["manifest", dataset, "--root", str(root), "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("probmed data manifest: error: ") and str(root) in line
    assert not out.exists()


def test_a_root_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["manifest", "mimic-cxr", "--root", str(tmp_path / "f"), "--out", str(tmp_path / "m.csv")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_missing_root_from_the_command_line_is_one_line_and_exit_2(tmp_path):
    """The issue's exact command, as a user runs it (a child process): one stderr line, status 2, no CSV."""
    out = tmp_path / "cxr.csv"
    proc = run_probmed(["data", "manifest", "mimic-cxr", "--root", str(tmp_path / "missing"), "--out", str(out)],
                       cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.output
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.output
    assert "missing: no such directory (expected the MIMIC-CXR root" in proc.stderr
    assert not out.exists()
    debug = run_probmed(["--debug", "data", "manifest", "mimic-cxr", "--root", str(tmp_path / "missing"),
                         "--out", str(out)], cwd=tmp_path, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


def _check_manifest(tmp_path: Path) -> Path:
    """Two studies: one whose cxr is a CT slice and whose ecg is an MR slice, one fully usable ECG + report."""
    for name in ("CT_small.dcm", "MR_small.dcm", "waveform_ecg.dcm"):
        shutil.copy(get_testdata_file(name, download=False), tmp_path / name)
    rows = [{"study_id": "s-bad", "patient_id": "p1", "split": "train", "cxr": "CT_small.dcm", "ecg": "MR_small.dcm"},
            {"study_id": "s-good", "patient_id": "p2", "split": "test", "ecg": "waveform_ecg.dcm",
             "report_text": "FINDINGS: clear.", "finding:edema": 0}]
    return write_manifest(tmp_path / "studies.csv", rows)


def test_check_prints_summary_and_example_causes_on_stdout_in_reading_order(tmp_path):
    manifest = _check_manifest(tmp_path)
    proc = run_probmed(["data", "check", "--manifest", str(manifest), "--quiet"], cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.output
    assert proc.stderr.strip() == "", proc.stderr  # nothing of the report on the other stream
    lines = proc.stdout.splitlines()
    assert lines[0] == "2 studies, 1 with a usable input"
    cxr = next(i for i, line in enumerate(lines) if line.strip().startswith("cxr "))
    ecg = next(i for i, line in enumerate(lines) if line.strip().startswith("ecg "))
    labels = next(i for i, line in enumerate(lines) if line.startswith("labels ("))
    assert "cxr_wrong_modality 1" in lines[cxr] and "ecg_wrong_modality 1" in lines[ecg]
    # each modality's example cause follows its own count line, before the next modality and the label table
    assert lines[cxr + 1].strip().startswith("e.g. study s-bad:") and "Modality 'CT'" in lines[cxr + 1]
    assert lines[ecg + 1].strip().startswith("e.g. study s-bad:") and "Modality 'MR'" in lines[ecg + 1]
    assert cxr < ecg < labels and "edema" in lines[labels + 1]


def test_wrong_modality_message_reads_as_english(tmp_path):
    """Not "expected a ECG ecg file": no "a" before a vowel, no word twice in a row, the column and codes named."""
    import pydicom

    from probmed.data.readers.errors import UnreadableInput
    from probmed.data.readers.identity import ACCEPTED, check_identity

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False), stop_before_pixels=True)
    for modality in ACCEPTED:
        if modality == "ct":
            ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm", download=False), stop_before_pixels=True)
        with pytest.raises(UnreadableInput) as caught:
            check_identity(ds, modality)
        message = str(caught.value)
        assert not re.search(r"\ba [aeiouAEIOU]", message), message
        assert not re.search(r"\b(\w+) \1\b", message, re.IGNORECASE), message  # no "ECG ecg"
        assert f"the '{modality}' column takes DICOM files of Modality" in message


def test_not_a_checkpoint_message_uses_the_right_article(tmp_path):
    from probmed.training.resume import NotALightningCheckpointError, require_lightning_checkpoint

    with pytest.raises(NotALightningCheckpointError, match=r"it is an object of type 'int'"):
        require_lightning_checkpoint(3, tmp_path / "x.ckpt")


def test_messages_do_not_put_a_variable_after_a_fixed_article():
    """f-strings in probmed/ must not write ``a {word}`` (wrong before a vowel: "a ECG", "a int"); the synthetic
    report generator's prose is data, not a message, and is left out."""
    offenders = []
    for path in (REPO / "probmed").rglob("*.py"):
        if "synthetic" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"f[\"'].*\b[Aa] \{", line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_every_manifest_column_is_documented_for_users():
    """docs/real_data.md's manifest table names every column the writer knows (and the label/ambiguity prefixes),
    says which are required, and the README points a user to it."""
    text = (REPO / "docs" / "real_data.md").read_text()
    section = text[text.index("## The manifest"):text.index("## Inputs are what they claim to be")]
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `([^`]+)` \| (yes|no) \|", section, re.MULTILINE)}
    assert set(columns()) <= set(rows), set(columns()) - set(rows)
    assert {f"{FINDING_PREFIX}<name>", f"{AMBIGUITY_PREFIX}<m>"} <= set(rows)
    assert {c for c, required in rows.items() if required == "yes"} == {"study_id", "patient_id", "split"}
    assert "frames per second" in section and "ISO 8601" in section
    assert "docs/real_data.md" in (REPO / "README.md").read_text()
