"""De-identification beyond the header blocklist: the built DICOM keeps only allowlisted attributes (PS3.15 Basic
Profile check), and each study's report loses every identifying value the builder knows for that study."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from probmed.data.builder import build_dataset
from probmed.data.deid import KEPT_ATTRIBUTES, Pseudonymizer, date_forms, deidentify_dicom, name_forms, scrub_text
from probmed.data.manifest import write_manifest
from probmed.data.readers import read_cxr_dicom
from realkit import PHI, cardiosoft_xml, cxr_dicom, relabelled


def test_built_dicom_keeps_only_allowlisted_attributes(tmp_path):
    pixels = np.tile(np.arange(48, dtype=np.uint16) * 70, (40, 1))
    path = cxr_dicom(tmp_path / "dx.dcm", pixels)
    ds = pydicom.dcmread(path)
    ds.TimezoneOffsetFromUTC, ds.PostprocessingFunction = "+0100", "SITE-CODE-42"
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "Acme", "RoomSeven-XR", "v9-site42"
    ds.KVP, ds.PatientSex, ds.WindowCenter, ds.WindowWidth = 110, "F", 1500, 3000
    data, report = deidentify_dicom(relabelled(ds, "DX"), Pseudonymizer("salt"), "pseudo")
    out = pydicom.dcmread(io.BytesIO(data))
    assert {e.keyword for e in out} <= set(KEPT_ATTRIBUTES)
    for gone in ("TimezoneOffsetFromUTC", "PostprocessingFunction", "Manufacturer", "SoftwareVersions", "KVP",
                 "PatientSex", "ContentSequence"):
        assert gone not in out, gone
    assert b"SITE-CODE-42" not in data and b"+0100" not in data and b"RoomSeven" not in data
    assert out.WindowCenter == 1500 and out.Modality == "DX" and out.ViewPosition == "PA"
    np.testing.assert_array_equal(out.pixel_array, pixels)
    np.testing.assert_array_equal(read_cxr_dicom(data)[0], read_cxr_dicom(relabelled(ds, "DX"))[0])  # same image
    # a real colour ultrasound with its region geometry keeps what decoding needs
    us = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm", download=False))
    out_us = pydicom.dcmread(io.BytesIO(deidentify_dicom(relabelled(us, "US"), Pseudonymizer("s"), "p")[0]))
    np.testing.assert_array_equal(out_us.pixel_array, us.pixel_array)


def test_identifier_forms():
    assert {"2024-02-29", "02/29/2024", "29/02/2024", "29.02.2024", "February 29, 2024"} <= date_forms("20240229")
    assert {"Johanna Smithfield", "Smithfield, Johanna", "Smithfield", "Johanna"} <= name_forms("Smithfield^Johanna")
    text, n = scrub_text("Seen 02/29/2024 by SMITHFIELD; Smithfields and 1020240229 stay.",
                         date_forms("20240229") | name_forms("Smithfield^Johanna"))
    assert text == "Seen ___ by ___; Smithfields and 1020240229 stay." and n == 2


def test_report_loses_every_identifier_the_builder_knows(tmp_path):
    study = tmp_path / "study"
    dx = cxr_dicom(study / "frontal.dcm", np.tile(np.arange(32, dtype=np.uint16) * 90, (32, 1)))
    rate = 500
    t = np.arange(rate * 2) / rate
    ecg = cardiosoft_xml(study / "ecg.xml", {"I": np.sin(2 * np.pi * t) * 0.5, "II": np.cos(2 * np.pi * t) * 0.5},
                         rate)
    report = ("FINAL REPORT. Patient: Johanna Smithfield (MRN99887766), accession ACC5551234, study 2024-02-29.\n"
              "FINDINGS: Heart size is normal. No effusion.\nIMPRESSION: No acute disease. "
              "Discussed with Dr. Ramoray at St Elsewhere General Hospital on February 29, 2024. "
              "Ref SRC-STUDY-77 for patient SRC-PAT-88.")
    write_manifest(tmp_path / "m.csv", [{"study_id": "SRC-STUDY-77", "patient_id": "SRC-PAT-88", "split": "train",
                                         "cxr": dx, "ecg": ecg, "report_text": report}])
    summary = build_dataset(tmp_path / "m.csv", tmp_path / "out", salt="k", progress=False)
    assert summary["notes"]["report_identifiers_scrubbed"] == 9
    with tarfile.open(next((tmp_path / "out").glob("*.tar"))) as tar:
        text = next(tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith("report.txt"))
    for value in ("Johanna", "Smithfield", PHI["patient_id"], PHI["accession"], "2024-02-29", "Ramoray",
                  PHI["institution"], "February 29, 2024", "SRC-STUDY-77", "SRC-PAT-88"):
        assert value.lower() not in text.lower(), value
    assert "FINDINGS: Heart size is normal. No effusion." in text and text.count("___") == 9


def _us_with_burned_in_name(path: Path, regions: bool, declared: str = "YES") -> tuple[Path, np.ndarray]:
    """pydicom's real colour cardiac cine with the patient's name burned into the top band of every frame (as
    scanners print it), stored uncompressed RGB; returns the path and the text mask ``bool [H, W]``."""
    from PIL import Image, ImageDraw

    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm", download=False))
    rgb = ds.pixel_array.copy()
    canvas = Image.new("L", (rgb.shape[2], rgb.shape[1]))
    ImageDraw.Draw(canvas).text((150, 0), "SMITHFIELD^JOHANNA 20240229", fill=255)
    text = np.asarray(canvas) > 0
    rgb[:, text] = 255
    ds.PixelData, ds.PhotometricInterpretation = rgb.tobytes(), "RGB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.PatientName, ds.BurnedInAnnotation = PHI["name"], declared
    if not regions:
        del ds.SequenceOfUltrasoundRegions
    ds.save_as(path, enforce_file_format=True)
    return path, text


def _built_cine(tmp_path: Path, source: Path, **options) -> tuple[np.ndarray | None, dict]:
    from probmed.data.builder import BuildOptions

    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    write_manifest(tmp_path / "m.csv", [{"study_id": "s", "patient_id": "p", "split": "train", "echo": source}])
    summary = build_dataset(tmp_path / "m.csv", out, salt="k", progress=False,
                            options=BuildOptions(echo_size=None, **options))
    shards = list(out.glob("*.tar"))
    if not shards:
        return None, summary
    with tarfile.open(shards[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("echo.npy"))
        return np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False), summary


def test_burned_in_name_is_blanked_outside_the_sector(tmp_path):
    for regions in (True, False):  # by the header's region geometry, else by the pixels that move
        source, text = _us_with_burned_in_name(tmp_path / f"us{regions}.dcm", regions)
        cine, summary = _built_cine(tmp_path, source)
        assert cine is not None and summary["notes"]["echo_burned_in_annotation"] == 1
        assert cine[:, text].max() == 0, regions  # not one pixel of the name is left
        assert cine.std(axis=0).mean() > 1 and cine.max() > 100  # the moving image is still there
    kept, _ = _built_cine(tmp_path, source, keep_burned_in=True, us_blank="none", burned_in_text="off")
    assert kept[:, text].min() > 200  # opted in, and no OCR: left as it was
    refused, summary = _built_cine(tmp_path, source, us_blank="none")
    assert refused is None and summary["skipped"] == {"echo_burned_in_annotation": 1, "no_usable_modality": 1}
    header, _ = _built_cine(tmp_path, _us_with_burned_in_name(tmp_path / "h.dcm", False, "NO")[0], us_blank="header")
    assert header[:, : round(0.12 * 240)].max() == 0 and header[:, text].max() == 0
