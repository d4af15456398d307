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
