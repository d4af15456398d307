"""ECG XML: the vendor is detected before reading, HL7 aECG and GE CardioSoft are read, and amplitudes match a
direct read of the same real ECG (pydicom's 12-lead waveform_ecg.dcm, re-exported by the test in each format)."""
from __future__ import annotations


import numpy as np
import pytest
from pydicom.data import get_testdata_file

from probmed.data.readers import UnreadableInput
from probmed.data.readers.ecg_sources import ecg_xml_format, read_ecg_dicom, read_ecg_source
from realkit import cardiosoft_xml, hl7_aecg


@pytest.fixture(scope="module")
def real_ecg():
    record = read_ecg_dicom(get_testdata_file("waveform_ecg.dcm", download=False))
    return {name: record.signal[i].astype(np.float64) for i, name in enumerate(record.leads)}, record.rate


def test_hl7_aecg_amplitudes_equal_the_dicom_read(real_ecg, tmp_path):
    leads, rate = real_ecg
    path = hl7_aecg(tmp_path / "ecg.xml", leads, rate, scale_uv=2.5, origin_uv=-10.0)
    assert ecg_xml_format(path) == "AnnotatedECG"
    record = read_ecg_source(path)
    assert record.rate == pytest.approx(rate) and record.leads == list(leads)
    for i, name in enumerate(record.leads):
        # the stored digits reproduce the signal to within half a quantisation step (1.25 µV) ...
        np.testing.assert_allclose(record.signal[i], leads[name], atol=1.25e-3 + 1e-6)
        # ... and exactly origin + scale × digit, computed here independently
        digits = np.rint((leads[name] * 1000 + 10.0) / 2.5)
        np.testing.assert_allclose(record.signal[i], (-10.0 + 2.5 * digits) / 1000, rtol=0, atol=1e-6)
    assert record.signal.shape[1] == len(leads["I"])  # the rhythm series, not the quarter-length median beats


def test_cardiosoft_amplitudes_equal_the_dicom_read(real_ecg, tmp_path):
    leads, rate = real_ecg
    path = cardiosoft_xml(tmp_path / "ecg.xml", {k: leads[k] for k in ("I", "II", "V1", "V2", "V3", "V4", "V5",
                                                                       "V6")}, int(rate))
    record = read_ecg_source(path)
    assert record.rate == rate
    index = {n: i for i, n in enumerate(record.leads)}
    for name in ("I", "II", "V1", "V6"):
        np.testing.assert_allclose(record.signal[index[name]], np.rint(leads[name] * 200) / 200, atol=1e-6)
    # the four limb leads the file lacks are derived (Einthoven / Goldberger) from the stored I and II
    one, two = record.signal[index["I"]], record.signal[index["II"]]
    np.testing.assert_allclose(record.signal[index["aVR"]], -(one + two) / 2, atol=1e-6)
    assert sorted(record.leads) == sorted(["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"])


@pytest.mark.parametrize("root, vendor", [("restingecgdata", "Philips PageWriter/TraceMaster"),
                                          ("examdescript", "Schiller"), ("SomethingElse", "unknown XML <SomethingElse>")])
def test_an_unsupported_vendor_is_named_not_called_corrupt(tmp_path, root, vendor):
    path = tmp_path / "ecg.xml"
    path.write_text(f'<?xml version="1.0"?><{root} version="1.04"><waveforms/></{root}>')
    with pytest.raises(UnreadableInput) as info:
        read_ecg_source(path)
    assert info.value.reason == "ecg_unsupported_format"
    assert vendor in str(info.value) and "HL7 aECG" in str(info.value)


def test_a_broken_file_of_a_known_vendor_names_the_vendor(tmp_path):
    (tmp_path / "a.xml").write_text('<AnnotatedECG xmlns="urn:hl7-org:v3"><component/></AnnotatedECG>')
    with pytest.raises(UnreadableInput, match="ecg_unreadable: HL7 aECG: .*sequenceSet"):
        read_ecg_source(tmp_path / "a.xml")
    (tmp_path / "m.xml").write_text("<RestingECG><Waveform><WaveformType>Median</WaveformType></Waveform></RestingECG>")
    with pytest.raises(UnreadableInput, match="ecg_unreadable: GE MUSE: no <Waveform> of type 'Rhythm'"):
        read_ecg_source(tmp_path / "m.xml")
    (tmp_path / "n.xml").write_bytes(b"\x00\x01 not xml")
    with pytest.raises(UnreadableInput, match="ecg_unreadable: .*not XML"):
        read_ecg_source(tmp_path / "n.xml")
