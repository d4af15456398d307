"""Hostile manifests (issue 28, path policy): every input path must resolve inside the manifest's directory or a
declared ``--root``; system files, FIFOs, devices and directories are refused unopened with a counted cause naming
the row and the column; the de-identification salt never reaches a shard."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from probmed.data.builder import BuildOptions, build_dataset, check_dataset
from probmed.data.manifest import write_manifest
from probmed.data.secret_scan import SecretInOutput, secret_forms

from realkit import png_with_text, wfdb_record

SALT = "hostile-salt-7f3a9c2e"  # long enough to be scanned for (probmed.data.secret_scan.MIN_SCANNED_LENGTH)
GOOD = {"study_id": "good", "patient_id": "p0", "split": "train", "report_text": "FINDINGS: Clear lungs."}


def _all_output(out: Path) -> bytes:
    """Every byte the build wrote: shard files (and their members), records, sizes, labels."""
    data = b""
    for path in sorted(out.rglob("*")):
        if path.is_file():
            data += path.read_bytes()
            if path.suffix == ".tar":
                with tarfile.open(path) as tar:
                    for member in tar.getmembers():
                        data += tar.extractfile(member).read()
    return data


def _assert_no_leak(out: Path, *forbidden: bytes) -> None:
    data = _all_output(out)
    for form in secret_forms(SALT):
        assert form not in data
    for value in forbidden:
        assert value not in data, value[:40]


def _build(tmp_path: Path, rows: list[dict], **options) -> dict:
    manifest = write_manifest(tmp_path / "export" / "studies.csv", [GOOD, *rows])
    return build_dataset(manifest, tmp_path / "out", salt=SALT, progress=False, options=BuildOptions(**options))


def test_proc_self_environ_as_a_report_is_refused_and_the_salt_never_reaches_a_shard(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBMED_DEID_SALT", SALT)
    monkeypatch.setenv("HOSTILE_SECRET_VAR", "env-value-that-must-not-leak")
    summary = _build(tmp_path, [{"study_id": "s1", "patient_id": "p1", "split": "train",
                                 "report": "/proc/self/environ", "report_text": "FINDINGS: fallback."}])
    assert summary["skipped"]["not_a_regular_file"] == 1
    example = next(s for s in summary["skipped_examples"] if s["reason"] == "not_a_regular_file")
    assert "manifest line 3, column 'report'" in example["detail"] and example["modality"] == "text"
    _assert_no_leak(tmp_path / "out", b"env-value-that-must-not-leak", b"HOSTILE_SECRET_VAR")


def test_symlinks_and_dot_dot_out_of_the_manifest_directory_are_refused_unless_under_a_declared_root(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "note.txt").write_text("FINDINGS: OUTSIDE-ROOT-CONTENT.")
    (export / "passwd.txt").symlink_to("/etc/passwd")
    (export / "escape.txt").symlink_to(outside / "note.txt")
    rows = [{"study_id": "s1", "patient_id": "p1", "split": "train", "report": "passwd.txt"},
            {"study_id": "s2", "patient_id": "p2", "split": "train", "report": "../elsewhere/note.txt"},
            {"study_id": "s3", "patient_id": "p3", "split": "train", "report": "escape.txt"},
            {"study_id": "s4", "patient_id": "p4", "split": "train", "report": str(outside / "note.txt")}]
    summary = _build(tmp_path, rows)
    assert summary["skipped"]["path_outside_root"] == 4 and summary["written"] == 1
    details = [s["detail"] for s in summary["skipped_examples"] if s["reason"] == "path_outside_root"]
    assert any("manifest line 3, column 'report'" in d and "/etc/passwd" in d for d in details)
    _assert_no_leak(tmp_path / "out", b"root:x:0", b"OUTSIDE-ROOT-CONTENT")
    # the same manifest with the other directory declared: its files are read, /etc/passwd still is not
    summary = build_dataset(export / "studies.csv", tmp_path / "out2", salt=SALT, progress=False,
                            options=BuildOptions(roots=(str(outside),)))
    assert summary["skipped"] == {"path_outside_root": 1, "no_usable_modality": 1} and summary["written"] == 4
    _assert_no_leak(tmp_path / "out2", b"root:x:0")


def test_fifo_device_and_directory_are_refused_unopened_by_check_and_build(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    os.mkfifo(export / "pipe.png")
    os.mkfifo(export / "pipe.txt")
    (export / "zero.png").symlink_to("/dev/zero")
    (export / "folder.txt").mkdir()
    rows = [{"study_id": "s1", "patient_id": "p1", "split": "train", "cxr": "pipe.png", "report": "pipe.txt"},
            {"study_id": "s2", "patient_id": "p2", "split": "train", "cxr": "zero.png", "report": "folder.txt"}]
    manifest = write_manifest(export / "studies.csv", [GOOD, *rows])
    # a subprocess under a timeout: a FIFO opened for reading would block forever
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "probmed", "data", "check", "--manifest", str(manifest), "--quiet"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "not_a_regular_file 2" in done.stdout  # cxr: FIFO and /dev/zero; text: FIFO and directory
    assert "column 'cxr'" in done.stdout and "is a FIFO" in done.stdout and "is a directory" in done.stdout  # examples
    summary = build_dataset(manifest, tmp_path / "out", salt=SALT, progress=False)
    assert summary["skipped"] == {"no_usable_modality": 2, "not_a_regular_file": 4} and summary["written"] == 1


def test_wfdb_header_naming_a_signal_file_outside_the_root_is_refused(tmp_path):
    export = tmp_path / "export"
    header = wfdb_record(export / "ecg", "rec", seed=1)
    text = header.read_text().replace("rec.dat", "../../secret.dat")
    (tmp_path / "secret.dat").write_bytes((export / "ecg" / "rec.dat").read_bytes())
    header.write_text(text)
    summary = _build(tmp_path, [{"study_id": "s1", "patient_id": "p1", "split": "train",
                                 "ecg": str(header.relative_to(export))}])
    assert summary["skipped"]["path_outside_root"] == 1
    detail = next(s["detail"] for s in summary["skipped_examples"] if s["reason"] == "path_outside_root")
    assert "signal file of rec.hea" in detail and "column 'ecg'" in detail


@pytest.mark.parametrize("encode", [lambda s: s, lambda s: base64.b64encode(b"x" + s.encode()).decode(),
                                    lambda s: s.encode().hex()])
def test_a_shard_holding_the_salt_in_any_common_encoding_is_never_published(tmp_path, encode):
    rows = [{"study_id": "s1", "patient_id": "p1", "split": "train",
             "report_text": f"FINDINGS: pasted by a script {encode(SALT)} end."}]
    with pytest.raises(SecretInOutput, match="salt appears in 1 member"):
        _build(tmp_path, rows)
    assert not list((tmp_path / "out").glob("*.tar")) and not (tmp_path / "out" / "sizes.json").exists()
    _assert_no_leak(tmp_path / "out")


def test_the_salt_is_never_read_from_a_file_the_manifest_names(tmp_path, monkeypatch):
    # a manifest cannot set the salt: a "salt" column is an ordinary value, and a build without one refuses
    monkeypatch.delenv("PROBMED_DEID_SALT", raising=False)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "salt.txt").write_text(SALT)
    manifest = write_manifest(tmp_path / "export" / "studies.csv", [GOOD])
    with pytest.raises(ValueError, match="salt is required"):
        build_dataset(manifest, tmp_path / "out", progress=False)


def test_images_and_reports_inside_the_root_still_build(tmp_path):
    export = tmp_path / "export"
    png = png_with_text(export / "a" / "view.png", "x")
    (export / "link.png").symlink_to(png)  # a link that stays inside the root is fine
    rows = [{"study_id": "s1", "patient_id": "p1", "split": "train", "cxr": "a/view.png;link.png"}]
    summary = _build(tmp_path, rows)
    assert summary["skipped"] == {} and summary["written"] == 2
    assert check_dataset(export / "studies.csv", progress=False)["modalities"]["cxr"]["used"] == 1


def test_the_mimic_cxr_manifest_maker_follows_no_symlink_out_of_its_root(tmp_path):
    from probmed.data.manifest import read_manifest
    from probmed.data.manifests.mimic_cxr import make_mimic_cxr_manifest

    root = tmp_path / "mimic"
    inside = root / "files" / "p10" / "p10000001" / "s50000001"
    inside.mkdir(parents=True)
    png_with_text(inside / "view.jpg", "x")
    (inside.parent / "s50000001.txt").write_text("FINDINGS: ok.")
    elsewhere = tmp_path / "elsewhere" / "s50000002"
    elsewhere.mkdir(parents=True)
    png_with_text(elsewhere / "secret.jpg", "x")
    (inside.parent / "s50000002").symlink_to(elsewhere)  # a whole study directory pointing out of the tree
    (inside / "passwd.jpg").symlink_to("/etc/passwd")  # one file pointing out
    (inside.parent / "s50000003").mkdir()
    (inside.parent / "s50000003.txt").symlink_to("/etc/passwd")  # a report pointing out
    path, count = make_mimic_cxr_manifest(root, tmp_path / "m.csv")
    assert count == 1
    (entry,) = read_manifest(path)
    assert [p.name for p in entry.paths["cxr"]] == ["view.jpg"] and entry.paths["report"][0].name == "s50000001.txt"
    assert b"elsewhere" not in path.read_bytes() and b"passwd" not in path.read_bytes()


@pytest.mark.parametrize("cell", ["=HYPERLINK(\"http://x\",\"y\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
                                  "\tx"])
def test_manifest_cells_that_a_spreadsheet_would_run_are_quoted_and_read_back_unchanged(tmp_path, cell):
    from probmed.data.manifest import read_manifest

    path = write_manifest(tmp_path / "m.csv", [{"study_id": cell, "patient_id": "p", "split": "train",
                                                "report_text": "x", "finding:edema": -1}])
    import csv

    with open(path, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["study_id"] == "'" + cell  # quoted on disk
    assert row["finding:edema"] == "-1"  # a number is not a formula: written as it is
    (entry,) = read_manifest(path)
    assert entry.study_id == cell.strip() and entry.findings == {"edema": -1}
