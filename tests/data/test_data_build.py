"""`probmed data build`: manifest → de-identified shards the datamodule reads; resumable, parallel, skips counted,
and no identifying value from the inputs anywhere in the output."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from probmed.data import registry, schema
from probmed.data.builder import BuildOptions, build_dataset
from probmed.data.commands import main
from probmed.data.datamodule import ProbMedDataModule
from probmed.data.deid import Pseudonymizer
from probmed.data.manifest import read_manifest, write_manifest
from probmed.data.inputs import CXRInput, ECGInput, EchoInput, TextInput
from probmed.data.readers import read_cxr, read_cxr_dicom


def cxr_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()

from realkit import PHI, avi, cxr_dicom, jpeg_with_comment, png_with_text, wfdb_record

SALT = "test-salt-never-stored"


@pytest.fixture
def hospital(tmp_path) -> Path:
    """A small hospital export: 8 studies over 3 splits in every format the builder reads, PHI planted."""
    root = tmp_path / "export"
    rng = np.random.default_rng(0)
    ecg_dicom = Path(get_testdata_file("waveform_ecg.dcm", download=False))
    rows = []
    for i in range(8):
        split = ("train", "train", "train", "train", "val", "val", "test", "test")[i]
        study = f"{PHI['accession']}-{i}"
        ramp = np.tile(np.arange(64, dtype=np.uint16) * 60, (64, 1)) + rng.integers(0, 50, (64, 64)).astype(np.uint16)
        cxr = [cxr_dicom(root / study / "frontal.dcm", ramp, "PA", burned_in=(i == 0))]
        views = ["PA"]
        if i == 1:
            cxr.append(png_with_text(root / study / "lateral.png", PHI["name"]))
            views.append("LATERAL")
        if i == 2:
            cxr.append(jpeg_with_comment(root / study / "lateral.jpg", PHI["name"]))
            views.append("LL")
        ecg = shutil.copy(ecg_dicom, root / study / "ecg.dcm") if i == 3 else wfdb_record(root / study, "ecg", seed=i)
        rows.append({
            "study_id": study, "patient_id": f"{PHI['patient_id']}{i % 5}", "split": split,
            "cxr": ";".join(str(p.relative_to(tmp_path)) for p in cxr), "cxr_views": ";".join(views),
            "ecg": str(Path(ecg).relative_to(tmp_path)),
            "echo": str(avi(root / study / "echo.avi").relative_to(tmp_path)),
            "report_text": f"FINDINGS: Normal heart size.\nIMPRESSION: No acute disease {i}.",
            "finding:cardiomegaly": i % 2, "finding:pleural_effusion": "",
        })
    write_manifest(tmp_path / "studies.csv", rows)
    return tmp_path / "studies.csv"


def _output_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


def _members(out: Path) -> dict[str, bytes]:
    members = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                members[member.name] = tar.extractfile(member).read()
    return members


def test_build_writes_deidentified_shards_the_loader_reads(hospital, tmp_path):
    out = tmp_path / "shards"
    summary = build_dataset(hospital, out, salt=SALT, maxcount=3, progress=False)
    assert summary["written"] == 8 and summary["skipped"] == {}
    assert summary["notes"] == {"cxr_burned_in_annotation": 1}
    sizes = json.loads((out / schema.SIZES_FILE).read_text())
    assert sizes == {"test-000000.tar": 2, "train-000000.tar": 3, "train-000001.tar": 1, "val-000000.tar": 2}

    # no identifying value of any input file or of the manifest, in any output byte (shards, sizes, records)
    blob = _output_bytes(out)
    entries = read_manifest(hospital)
    identifiers = [*PHI.values(), *(e.study_id for e in entries), *(e.patient_id for e in entries), SALT]
    ecg = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm", download=False))
    identifiers += [str(ecg.PatientID), str(ecg.InstitutionName), str(ecg.StudyDate)]
    for value in identifiers:
        for form in {value, value.replace("^", " "), value.split("^")[0]}:
            assert form.encode() not in blob, f"{form!r} leaked into the output"

    members = _members(out)
    pseudo = Pseudonymizer(SALT)
    key0 = pseudo.id("study", entries[0].study_id)
    ds = pydicom.dcmread(io.BytesIO(members[f"{key0}.cxr.0.dcm"]))
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientID == pseudo.id("patient", entries[0].patient_id)
    assert not any(elem.tag.is_private for elem in ds) and "StudyDate" not in ds and "InstitutionName" not in ds
    original = pydicom.dcmread(tmp_path / entries[0].paths["cxr"][0].relative_to(tmp_path))
    np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)  # pixels kept bit for bit
    meta = json.loads(members[f"{key0}.json"])
    assert meta["study_id"] == key0 and meta["cxr_views"] == ["PA"] and meta["findings"] == {"cardiomegaly": 0}
    assert meta["ecg_sampling_rate"] == 500.0 and meta["ecg_lead_mask"] == [1] * 12 and meta["echo_fps"] == 50.0
    key1, key2 = pseudo.id("study", entries[1].study_id), pseudo.id("study", entries[2].study_id)
    assert f"{key1}.cxr.1.png" in members and f"{key2}.cxr.1.jpg" in members
    assert json.loads(members[f"{key2}.json"])["cxr_views"] == ["PA", "LL"]
    echo = np.load(io.BytesIO(members[f"{key0}.echo.npy"]), allow_pickle=False)
    assert echo.shape == (12, 112, 112) and echo.dtype == np.uint8
    ecg_dicom_key = pseudo.id("study", entries[3].study_id)
    stored = np.load(io.BytesIO(members[f"{ecg_dicom_key}.ecg.npy"]), allow_pickle=False)
    assert stored.shape == (12, 10000) and json.loads(members[f"{ecg_dicom_key}.json"])["ecg_sampling_rate"] == 1000

    dm = ProbMedDataModule(str(out), batch_size=2, num_workers=0, train_batches_per_epoch=2,
                           inputs=dict(cxr=CXRInput(size=32), ecg=ECGInput(rate=100, seconds=2),
                                       echo=EchoInput(frames=4, size=16, fps=25), text=TextInput(max_length=16)))
    dm.setup("fit")
    batches = list(dm.train_dataloader()) + list(dm.val_dataloader())
    assert all(b["present"][m].all() for b in batches for m in registry.default_modalities())
    assert all(b["skipped"] == {} for b in batches)
    assert batches[0]["inputs"]["ecg"]["signal"].shape == (2, 12, 200)


def test_build_resumes_and_is_deterministic(hospital, tmp_path):
    out = tmp_path / "shards"
    build_dataset(hospital, out, salt=SALT, maxcount=2, progress=False)
    first = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    again = build_dataset(hospital, out, salt=SALT, maxcount=2, progress=False)
    assert again["reused_shards"] == len(first) == 4
    (out / "train-000001.tar").unlink()  # an interrupted run: one shard missing
    (out / ".build" / "val-000000.tar.json").unlink()  # and one whose record was never written
    resumed = build_dataset(hospital, out, salt=SALT, maxcount=2, progress=False, workers=2)
    assert resumed["reused_shards"] == 2 and resumed["written"] == 8
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == first  # rebuilt bit for bit
    replanned = build_dataset(hospital, out, salt=SALT, maxcount=8, progress=False)
    assert sorted(p.name for p in out.glob("*.tar")) == ["test-000000.tar", "train-000000.tar", "val-000000.tar"]
    assert replanned["reused_shards"] == 2  # val and test hold the same studies under both plans; train is rebuilt
    other = build_dataset(hospital, tmp_path / "other", salt="another salt", maxcount=8, progress=False)
    assert set(_members(tmp_path / "other")).isdisjoint(_members(out))  # another salt, other pseudonyms


def test_bad_inputs_are_skipped_with_reasons(hospital, tmp_path):
    entries = read_manifest(hospital)
    rows = []
    for e in entries:
        rows.append({"study_id": e.study_id, "patient_id": e.patient_id, "split": e.split,
                     "cxr": ";".join(str(p) for p in e.paths["cxr"]), "ecg": str(e.paths["ecg"][0]),
                     "echo": str(e.paths["echo"][0]), "report_text": e.values["report_text"]})
    (tmp_path / "corrupt.dcm").write_bytes(b"DICM but not really")
    (tmp_path / "clip.webm").write_bytes(b"\0" * 64)
    rows[0]["cxr"] = str(tmp_path / "corrupt.dcm")
    rows[1]["ecg"] = str(tmp_path / "missing.hea")
    rows[2]["echo"] = str(tmp_path / "clip.webm")
    (tmp_path / "empty.txt").write_text(" \n ")
    rows[3].update(report=str(tmp_path / "empty.txt"), report_text="")
    rows[4].update(cxr=str(tmp_path / "corrupt.dcm"), ecg="", echo="", report_text="")
    write_manifest(tmp_path / "bad.csv", rows)
    summary = build_dataset(tmp_path / "bad.csv", tmp_path / "out", salt=SALT, progress=False)
    assert summary["skipped"] == {"cxr_unreadable": 2, "ecg_file_missing": 1, "echo_unknown_format": 1,
                                  "no_usable_modality": 1, "text_empty": 1}
    assert summary["written"] == 7
    assert {s["source_study"] for s in summary["skipped_examples"]} == {e.study_id for e in entries[:5]}  # console
    records = _output_bytes(tmp_path / "out" / ".build")
    assert b"corrupt.dcm" not in records and str(tmp_path).encode() not in records  # no paths in the records
    assert not any(e.study_id.encode() in records for e in entries)  # nor source ids


def test_cli_build_needs_a_salt_and_reports(hospital, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PROBMED_DEID_SALT", raising=False)
    assert main(["build", "--manifest", str(hospital), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "salt is required" in capsys.readouterr().err
    monkeypatch.setenv("PROBMED_DEID_SALT", SALT)
    assert main(["build", "--manifest", str(hospital), "--out", str(tmp_path / "o"), "--maxcount", "4",
                 "--workers", "2", "--ecg-rate", "250", "--echo-size", "32", "--cxr-size", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["written"] == 8 and report["shards"] == 3
    assert json.loads((tmp_path / "o" / schema.SIZES_FILE).read_text())["train-000000.tar"] == 4
    members = _members(tmp_path / "o")
    key = Pseudonymizer(SALT).id("study", read_manifest(hospital)[0].study_id)
    assert f"{key}.cxr.0.png" in members and f"{key}.cxr.0.dcm" not in members  # 64² DICOM stored as 32² PNG
    small, _ = read_cxr(f"{key}.cxr.0.png", members[f"{key}.cxr.0.png"])
    full, _ = read_cxr_dicom(cxr_bytes(read_manifest(hospital)[0].paths["cxr"][0]))
    from PIL import Image  # Pillow's anti-aliased bilinear resize: an independent implementation of the shrink

    expected = np.asarray(Image.fromarray(full).resize((32, 32), Image.Resampling.BILINEAR))
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(small, expected, atol=2e-3)
    assert np.load(io.BytesIO(members[f"{key}.ecg.npy"])).shape == (12, 500)  # 2 s at 250 Hz


def test_deidentify_a_real_dicom_with_overlay_sequences_and_private_tags():
    from probmed.data.deid import deidentify_dicom

    for name in ("examples_overlay.dcm", "nested_priv_SQ.dcm", "CT_small.dcm"):
        path = get_testdata_file(name, download=False)
        original = pydicom.dcmread(path)
        phi = [str(original[k].value) for k in ("PatientName", "PatientID", "StudyDate", "InstitutionName")
               if k in original and str(original[k].value)]
        data, report = deidentify_dicom(Path(path).read_bytes(), Pseudonymizer(SALT), "pseudo")
        ds = pydicom.dcmread(io.BytesIO(data))
        assert not any(elem.tag.is_private for elem in ds.iterall())
        assert not any(elem.tag.group & 0xFF00 == 0x6000 for elem in ds)  # overlay planes gone
        assert not any(elem.VR in ("PN", "DA", "DT", "TM") and elem.keyword != "PatientName" for elem in ds.iterall())
        assert ds.PatientName == "pseudo" and ds.PatientIdentityRemoved == "YES"
        for value in phi:
            if len(value) >= 4:
                assert value.encode() not in data, (name, value)
        if "BitsAllocated" in original:  # (nested_priv_SQ.dcm has a PixelData element but no image description)
            np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)


def test_maxsize_cuts_shards_by_input_bytes(hospital, tmp_path):
    entries = read_manifest(hospital)
    one_study = min(e.input_bytes() for e in entries)  # any two studies together are larger
    summary = build_dataset(hospital, tmp_path / "out", salt=SALT, maxcount=100, maxsize=one_study, progress=False)
    assert summary["written"] == 8 and set(summary["sizes"].values()) == {1}  # one study per shard
    summary = build_dataset(hospital, tmp_path / "out2", salt=SALT, maxcount=100, maxsize=10**9, progress=False)
    assert summary["shards"] == 3
