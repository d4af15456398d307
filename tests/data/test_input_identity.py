"""Inputs are what they claim to be: real pydicom test files of the wrong kind (CT, MR, ECG, US) handed in as chest
films, echo cines or ECGs are refused with a cause naming what they are; the right kinds pass."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import SecondaryCaptureImageStorage

from probmed.data.builder import build_dataset
from probmed.data.manifest import write_manifest
from probmed.data.readers import UnreadableInput, read_cxr_dicom
from probmed.data.readers.ecg_sources import read_ecg_dicom
from probmed.data.readers.echo_sources import read_echo_dicom
from probmed.data.readers.identity import check_identity
from realkit import cxr_dicom


def _real(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


@pytest.mark.parametrize("name, found", [("CT_small.dcm", "CT Image Storage"), ("MR_small.dcm", "MR Image Storage"),
                                         ("examples_ybr_color.dcm", "Ultrasound Multi-frame Image Storage")])
def test_a_ct_mr_or_us_file_is_not_a_chest_film(name, found):
    with pytest.raises(UnreadableInput) as info:
        read_cxr_dicom(_real(name).read_bytes())
    assert info.value.reason == "cxr_wrong_modality"
    assert found in str(info.value) and "Modality CR or DX" in str(info.value)


def test_a_dx_film_and_a_chest_secondary_capture_are_accepted(tmp_path):
    pixels = np.tile(np.arange(32, dtype=np.uint16) * 100, (32, 1))
    path = cxr_dicom(tmp_path / "dx.dcm", pixels)
    image, view = read_cxr_dicom(path.read_bytes())
    assert image.shape == (32, 32) and view == "PA"
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    del ds.BodyPartExamined
    with pytest.raises(UnreadableInput, match="cxr_wrong_modality: found Modality 'OT', SOP Class 'Secondary"):
        check_identity(ds, "cxr")
    ds.BodyPartExamined = "CHEST"
    check_identity(ds, "cxr")  # a secondary capture of a chest film is one
    contradicted = copy.deepcopy(pydicom.dcmread(path))
    contradicted.Modality = "CT"  # a DX storage class whose Modality says CT: refused, the header contradicts itself
    with pytest.raises(UnreadableInput, match="cxr_wrong_modality"):
        check_identity(contradicted, "cxr")


def test_echo_accepts_ultrasound_and_refuses_ct():
    cine, fps = read_echo_dicom(_real("examples_ybr_color.dcm"))
    assert cine.shape[0] == 30
    with pytest.raises(UnreadableInput, match="echo_wrong_modality: found Modality 'CT'"):
        read_echo_dicom(_real("CT_small.dcm"))


def test_ecg_accepts_a_waveform_and_refuses_an_image():
    record = read_ecg_dicom(_real("waveform_ecg.dcm"))
    assert len(record.leads) == 12
    with pytest.raises(UnreadableInput, match="ecg_wrong_modality: found Modality 'MR', SOP Class 'MR Image Storage'"):
        read_ecg_dicom(_real("MR_small.dcm"))


def test_build_counts_wrong_modalities_as_skips(tmp_path):
    rows = []
    for i, (cxr, echo, ecg) in enumerate([("CT_small.dcm", "MR_small.dcm", "CT_small.dcm"),
                                          ("MR_small.dcm", "examples_ybr_color.dcm", "waveform_ecg.dcm")]):
        folder = tmp_path / f"s{i}"
        folder.mkdir()
        paths = [shutil.copy(_real(n), folder / f"{k}.dcm") for k, n in (("cxr", cxr), ("echo", echo), ("ecg", ecg))]
        rows.append({"study_id": f"s{i}", "patient_id": f"p{i}", "split": "train", "cxr": paths[0],
                     "echo": paths[1], "ecg": paths[2]})
    write_manifest(tmp_path / "m.csv", rows)
    summary = build_dataset(tmp_path / "m.csv", tmp_path / "out", salt="s", progress=False)
    assert summary["skipped"] == {"cxr_wrong_modality": 2, "echo_wrong_modality": 1, "ecg_wrong_modality": 1,
                                  "no_usable_modality": 1}
    assert summary["written"] == 1
