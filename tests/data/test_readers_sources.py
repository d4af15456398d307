"""Readers of real-world formats, on real files shipped in PyPI packages (pydicom's test files) and on files written
by each format's reference library (pydicom, Pillow, wfdb, PyAV); GE MUSE XML written here from its documented
layout."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from probmed.data import schema
from probmed.data.inputs import CXRInput, EchoInput
from probmed.data.readers import UnreadableInput, read_cxr, read_cxr_dicom, read_cxr_image
from probmed.data.readers.ecg_sources import (
    canonical_lead, read_ecg_dicom, read_ecg_muse_xml, read_ecg_source, read_ecg_wfdb, standardize_ecg,
)
from probmed.data.readers.echo_sources import read_echo_dicom, read_echo_source, read_echo_video
from probmed.data.readers.text import read_report, split_sections, statements_report
from realkit import relabelled


def _testfile(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom no longer ships {name}"
    return path


def _bytes(name: str) -> bytes:
    return Path(_testfile(name)).read_bytes()


def _luma(rgb: np.ndarray, top: int = 255) -> np.ndarray:
    """BT.601 luma of the whole array at once in float64 (exact: integer sums below 2⁵³), rounded half up: the
    reference for the reader's blockwise integer conversion."""
    weighted = rgb.astype(np.float64) @ np.array([299.0, 587.0, 114.0])
    return np.floor(weighted * 255.0 / (1000.0 * top) + 0.5).astype(np.uint8)


def _film(name: str) -> bytes:
    """A pydicom test image (CT, MR, NM, SC) relabelled as a DX chest film, so the CXR reader decodes it."""
    return relabelled(_testfile(name), "DX")


# -- CXR -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                        "MR_small_jpeg_ls_lossless.dcm"])
def test_cxr_lossless_transfer_syntaxes_decode_to_the_uncompressed_pixels(compressed):
    reference, _ = read_cxr_dicom(_film("MR_small.dcm"))
    image, _ = read_cxr_dicom(_film(compressed))
    np.testing.assert_array_equal(image, reference)


@pytest.mark.parametrize("name, shape", [("JPGExtended.dcm", (1024, 256)), ("JPEG2000.dcm", (1024, 256)),
                                         ("image_dfl.dcm", (512, 512))])
def test_cxr_lossy_jpeg_jpeg2000_and_deflated_8bit_decode(name, shape):
    image, _ = read_cxr_dicom(_film(name))
    assert image.shape == shape and image.dtype == np.float32
    assert image.min() == 0.0 and image.max() == 1.0


def test_cxr_rescale_slope_intercept_on_a_real_ct():
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    hounsfield = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (hounsfield - hounsfield.min()) / (hounsfield.max() - hounsfield.min())
    image, _ = read_cxr_dicom(_film("CT_small.dcm"))
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_cxr_voi_window_is_applied():
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 40, 400  # a soft-tissue window in HU
    image, _ = read_cxr_dicom(relabelled(ds, "DX"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # DICOM linear window: below c - 0.5 - (w-1)/2 → min, above c - 0.5 + (w-1)/2 → max, linear between
    low, high = 40 - 0.5 - 399 / 2, 40 - 0.5 + 399 / 2
    windowed = np.clip((hu - low) / (high - low), 0, 1)
    windowed = (windowed - windowed.min()) / (windowed.max() - windowed.min())
    np.testing.assert_allclose(image, windowed, atol=2e-3)
    assert (image == 0).mean() > 0.05  # air and everything below the window is clipped to black


def test_cxr_png_8_and_16_bit_and_jpeg_by_extension():
    ramp16 = np.tile(np.arange(0, 65536, 257, dtype=np.uint16), (8, 1))
    png16, png8, jpg = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.fromarray(ramp16).save(png16, format="PNG")
    Image.fromarray((ramp16 >> 8).astype(np.uint8)).save(png8, format="PNG")
    Image.fromarray((ramp16 >> 8).astype(np.uint8)).convert("RGB").save(jpg, format="JPEG", quality=95)
    expected = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (8, 1))
    np.testing.assert_allclose(read_cxr("cxr.0.png", png16.getvalue())[0], expected, atol=1e-6)
    np.testing.assert_allclose(read_cxr("cxr.1.png", png8.getvalue())[0], expected, atol=1e-6)
    np.testing.assert_allclose(read_cxr("cxr.2.jpg", jpg.getvalue())[0], expected, atol=0.03)
    with pytest.raises(UnreadableInput) as err:
        read_cxr("cxr.0.tiff", png8.getvalue())
    assert err.value.reason == "cxr_unknown_format"
    with pytest.raises(UnreadableInput) as err:
        read_cxr_image(b"\x89PNG\r\n\x1a\n truncated")
    assert err.value.reason == "cxr_corrupt_image"


def test_cxr_input_reads_any_stored_extension():
    png = io.BytesIO()
    Image.fromarray(np.tile(np.arange(16, dtype=np.uint8) * 16, (16, 1))).save(png, format="PNG")
    out = CXRInput(size=16, view="first").decode({"cxr.0.png": png.getvalue()}, {}, np.random.default_rng(0), False)
    assert out.shape == (1, 16, 16)
    torch.testing.assert_close(out[0, 0], (torch.linspace(0, 1, 16) - 0.5) / 0.25)


# -- ECG -----------------------------------------------------------------------------------------------------------
def test_ecg_dicom_waveform_units_and_labels():
    path = _testfile("waveform_ecg.dcm")
    record = read_ecg_dicom(path)
    assert record.leads == list(schema.ECG_LEADS)
    assert record.rate == 1000.0 and record.signal.shape == (12, 10000)
    # reference: raw int16 samples × channel sensitivity (µV) / 1000, computed from the bytes directly
    ds = pydicom.dcmread(path)
    group = ds.WaveformSequence[0]
    raw = np.frombuffer(group.WaveformData, dtype="<i2").reshape(-1, 12).T
    sensitivity = np.array([float(c.ChannelSensitivity) for c in group.ChannelDefinitionSequence])
    np.testing.assert_allclose(record.signal, raw * sensitivity[:, None] / 1000.0, rtol=1e-6)
    assert read_ecg_dicom(path, group="MEDIAN BEAT").signal.shape == (12, 1200)


def test_ecg_standardize_reorders_resamples_and_masks_missing_leads():
    record = read_ecg_dicom(_testfile("waveform_ecg.dcm"))
    order = ("V6", "I", "XYZ")
    signal, mask, rate = standardize_ecg(record, order, rate=500)
    assert signal.shape == (3, 5000) and rate == 500.0
    assert mask.tolist() == [True, True, False]
    assert np.all(signal[2] == 0)
    np.testing.assert_allclose(signal[1, 100:-100], record.signal[0, 200:-200:2], atol=0.02)
    cleaned, _, _ = standardize_ecg(record, rate=500, clean=True)
    assert cleaned.shape == (12, 5000) and np.all(np.isfinite(cleaned))
    assert abs(float(np.median(cleaned[1]))) < abs(float(np.median(record.signal[1]))) + 0.05  # baseline removed
    with pytest.raises(UnreadableInput) as err:
        standardize_ecg(record, ("X", "Y"))
    assert err.value.reason == "ecg_no_known_leads"


def test_ecg_wfdb_record_written_by_wfdb(tmp_path):
    import wfdb

    rng = np.random.default_rng(0)
    names = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]  # PTB-XL spelling
    mv = rng.normal(0, 0.5, (5000, 12))
    wfdb.wrsamp("rec", fs=500, units=["mV"] * 12, sig_name=names, p_signal=mv, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    record = read_ecg_source(tmp_path / "rec.hea")
    assert record.leads == list(schema.ECG_LEADS) and record.rate == 500.0
    np.testing.assert_allclose(record.signal, mv.T, atol=1e-3)  # 1 µV quantisation
    assert read_ecg_source(tmp_path / "rec").signal.shape == (12, 5000)  # record name without suffix
    # an 8-lead record in microvolts: the four missing leads are masked
    wfdb.wrsamp("eight", fs=250, units=["uV"] * 8, sig_name=names[:2] + names[6:], p_signal=mv[:2500, :8] * 1000,
                fmt=["16"] * 8, adc_gain=[1.0] * 8, baseline=[0] * 8, write_dir=str(tmp_path))
    signal, mask, _ = standardize_ecg(read_ecg_wfdb(tmp_path / "eight.hea"))
    assert mask.tolist() == [True, True, False, False, False, False] + [True] * 6
    np.testing.assert_allclose(signal[:2], mv[:2500, :2].T, atol=1e-3)


def _muse_xml(leads: dict[str, np.ndarray], rate: int = 500, per_bit: float = 4.88) -> bytes:
    """A GE MUSE RestingECG export: <Waveform> blocks with <WaveformType>, <SampleBase> and per-lead <LeadData>
    (<LeadID>, <LeadAmplitudeUnitsPerBit>, <LeadAmplitudeUnits>, <WaveFormData> = base64 of little-endian int16)."""
    def lead_xml(name, counts):
        data = base64.b64encode(counts.astype("<i2").tobytes()).decode()
        return (f"<LeadData><LeadByteCountTotal>{counts.size * 2}</LeadByteCountTotal><LeadID>{name}</LeadID>"
                f"<LeadAmplitudeUnitsPerBit>{per_bit}</LeadAmplitudeUnitsPerBit>"
                f"<LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits><WaveFormData>{data}</WaveFormData></LeadData>")
    median = "".join(lead_xml(n, c[:600]) for n, c in leads.items())
    rhythm = "".join(lead_xml(n, c) for n, c in leads.items())
    return (f'<?xml version="1.0" encoding="ISO-8859-1"?><RestingECG><MuseInfo><MuseVersion>9.0.9</MuseVersion>'
            f"</MuseInfo><PatientDemographics><PatientID>12345</PatientID><PatientLastName>DOE</PatientLastName>"
            f"</PatientDemographics><Waveform><WaveformType>Median</WaveformType><SampleBase>{rate}</SampleBase>"
            f"{median}</Waveform><Waveform><WaveformType>Rhythm</WaveformType><SampleBase>{rate}</SampleBase>"
            f"{rhythm}</Waveform></RestingECG>").encode("latin-1")


def test_ecg_muse_xml_decodes_and_derives_limb_leads(tmp_path):
    rng = np.random.default_rng(1)
    counts = {name: rng.integers(-300, 300, 5000) for name in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")}
    path = tmp_path / "ecg.xml"
    path.write_bytes(_muse_xml(counts))
    record = read_ecg_source(path)
    assert record.rate == 500.0 and record.signal.shape[1] == 5000
    signal, mask, _ = standardize_ecg(record)
    assert mask.all()
    mv = {n: c * 4.88 / 1000.0 for n, c in counts.items()}
    np.testing.assert_allclose(signal[0], mv["I"], rtol=1e-5)
    np.testing.assert_allclose(signal[2], mv["II"] - mv["I"], atol=1e-5)             # III
    np.testing.assert_allclose(signal[3], -(mv["I"] + mv["II"]) / 2, atol=1e-5)       # aVR
    np.testing.assert_allclose(signal[4], mv["I"] - mv["II"] / 2, atol=1e-5)          # aVL
    np.testing.assert_allclose(signal[5], mv["II"] - mv["I"] / 2, atol=1e-5)          # aVF
    assert read_ecg_muse_xml(path, "Median").signal.shape[1] == 600
    (tmp_path / "bad.xml").write_text("<RestingECG><Waveform>")
    with pytest.raises(UnreadableInput):
        read_ecg_source(tmp_path / "bad.xml")


def test_ecg_lead_names_and_unknown_format(tmp_path):
    assert [canonical_lead(x) for x in ("Lead I (Einthoven)", "AVR", "v1", "Lead aVF")] == ["I", "aVR", "V1", "aVF"]
    (tmp_path / "x.scp").write_bytes(b"\0" * 10)
    with pytest.raises(UnreadableInput) as err:
        read_ecg_source(tmp_path / "x.scp")
    assert err.value.reason == "ecg_unknown_format"


# -- echo ----------------------------------------------------------------------------------------------------------
def test_echo_dicom_multiframe_ybr_jpeg_cine():
    path = _testfile("examples_ybr_color.dcm")
    cine, fps = read_echo_dicom(path)
    assert cine.shape == (30, 240, 320) and cine.dtype == np.uint8
    assert fps == pytest.approx(1000 / 33.333)
    ds = pydicom.dcmread(path)
    expected = _luma(ds.pixel_array)  # pydicom's own YBR → RGB conversion, then BT.601 luma
    np.testing.assert_array_equal(cine, expected)
    raw = pydicom.dcmread(path)  # the luma of YBR is its Y plane, up to RGB clipping at the gamut edge
    raw.pixel_array_options(as_rgb=False)
    difference = np.abs(cine.astype(float) - raw.pixel_array[..., 0].astype(float))
    assert (difference <= 2).mean() > 0.999 and difference.max() <= 8


def test_echo_dicom_palette_rgb_and_rle_multiframe(tmp_path):
    from pydicom.pixels import apply_color_lut

    path = _testfile("examples_palette.dcm")
    cine, fps = read_echo_dicom(path)
    ds = pydicom.dcmread(path)
    rgb = apply_color_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(cine[0], _luma(rgb, 65535 if rgb.max() > 255 else 255))
    assert cine.shape == (1, 350, 800) and fps is None
    rgb_cine, _ = read_echo_dicom(_testfile("examples_rgb_color.dcm"))
    np.testing.assert_array_equal(rgb_cine[0], _luma(pydicom.dcmread(_testfile("examples_rgb_color.dcm")).pixel_array))
    (tmp_path / "two.dcm").write_bytes(relabelled(_testfile("SC_rgb_rle_2frame.dcm"), "US"))  # an SC, relabelled US
    two, _ = read_echo_dicom(tmp_path / "two.dcm")
    assert two.shape == (2, 100, 100)
    j2k, _ = read_echo_dicom(_testfile("examples_jpeg2k.dcm"))  # a JPEG 2000 (YBR_RCT) ultrasound frame
    np.testing.assert_array_equal(j2k[0], _luma(pydicom.dcmread(_testfile("examples_jpeg2k.dcm")).pixel_array))


def _write_video(path: Path, frames: np.ndarray, fps: int, codec: str) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for frame in frames:
            packet = stream.encode(av.VideoFrame.from_ndarray(np.repeat(frame[..., None], 3, -1), format="rgb24"))
            container.mux(packet)
        container.mux(stream.encode())


@pytest.mark.parametrize("suffix, codec", [(".avi", "mjpeg"), (".mp4", "mpeg4")])
def test_echo_video_written_by_pyav(tmp_path, suffix, codec):
    t = np.arange(20)
    frames = np.zeros((20, 64, 64), np.uint8)
    for k in t:
        frames[k, :, : 8 + 2 * k] = 200  # a bright bar that grows one step per frame
    path = tmp_path / f"clip{suffix}"
    _write_video(path, frames, 50, codec)
    cine, fps = read_echo_source(path)
    assert fps == 50.0 and cine.shape == (20, 64, 64)
    widths = (cine[:, 32] > 100).sum(axis=1)
    np.testing.assert_allclose(widths, 8 + 2 * t, atol=1)
    (tmp_path / "broken.avi").write_bytes(b"RIFF....AVI garbage")
    with pytest.raises(UnreadableInput):
        read_echo_video(tmp_path / "broken.avi")


def test_echo_clip_sampling_follows_the_frame_rate():
    cine = np.arange(60, dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)  # frame k has grey level k
    buffer = io.BytesIO()
    np.save(buffer, cine)
    sample = {schema.ECHO_EXT: buffer.getvalue()}
    rng = np.random.default_rng(0)

    def levels(fps, meta_fps):
        clip = EchoInput(frames=5, size=4, fps=fps).decode(sample, {"echo_fps": meta_fps}, rng, False)
        assert clip["frame_mask"].all()  # 60 stored frames: no clip here needs padding
        return torch.round((clip["frames"][:, 0, 0, 0] * 0.25 + 0.5) * 255).tolist()

    assert levels(25, 50) == [0, 2, 4, 6, 8]     # 50 frames/s sampled at 25: every second frame
    assert levels(25, 25) == [0, 1, 2, 3, 4]
    assert levels(20, 30) == [0, 2, 3, 4, 6]     # round(k · 1.5)
    with pytest.raises(UnreadableInput):
        EchoInput(frames=5, size=4, fps=25).decode(sample, {}, rng, False)


# -- text ----------------------------------------------------------------------------------------------------------
def test_report_section_variants():
    mimic_style = (" FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION: ___ with cough\n\n"
                   " FINDINGS:\n \n Heart size is normal.\n\n IMPRESSION: \n No acute process.\n")
    assert split_sections(mimic_style) == {"": "FINAL REPORT", "EXAMINATION": "CHEST (PA AND LAT)",
                                           "INDICATION": "___ with cough", "FINDINGS": "Heart size is normal.",
                                           "IMPRESSION": "No acute process."}
    mixed = "Findings: mild cardiomegaly.\nconclusion : enlarged heart\nImpression\nno effusion"
    assert split_sections(mixed) == {"FINDINGS": "mild cardiomegaly.", "IMPRESSION": "enlarged heart no effusion"}
    no_headers = "Heart size normal: no effusion."
    assert split_sections(no_headers) == {"": no_headers}
    assert read_report(b"findings: a.\nIMPRESSION: b.", ("FINDINGS",)) == "FINDINGS: a."
    assert read_report(b"IMPRESSION: only this.", ("FINDINGS", "IMPRESSION")) == "IMPRESSION: only this."


def test_ecg_machine_statements_become_a_report():
    statements = ["Sinus rhythm", "", None, float("nan"), "Left axis deviation.", "  Sinus   rhythm "]
    assert statements_report(statements) == "FINDINGS: Sinus rhythm. Left axis deviation."
    assert statements_report(["", None]) == ""


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_cxr_window_equals_pydicoms_voi_lut_after_scaling(function):
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 60, 350, function
    reference = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    reference = (reference - reference.min()) / (reference.max() - reference.min())
    image, _ = read_cxr_dicom(relabelled(ds, "DX"))
    np.testing.assert_allclose(image, reference, atol=1e-5)


def test_ecg_input_skips_records_with_too_few_real_leads():
    from probmed.data.inputs import ECGInput

    buffer = io.BytesIO()
    np.save(buffer, (np.random.default_rng(1).standard_normal((12, 500)) * 300).astype(np.int16))  # ~0.3 mV
    sample, rng = {schema.ECG_EXT: buffer.getvalue()}, np.random.default_rng(0)
    eight = {"ecg_sampling_rate": 50, "ecg_lead_mask": [1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]}
    decoded = ECGInput(rate=50, seconds=10, min_leads=8).decode(sample, eight, rng, False)
    assert decoded["signal"].shape == (12, 500)
    assert decoded["lead_mask"].tolist() == [bool(m) for m in eight["ecg_lead_mask"]]
    with pytest.raises(UnreadableInput) as err:
        ECGInput(rate=50, seconds=10, min_leads=12).decode(sample, eight, rng, False)
    assert err.value.reason == "ecg_too_few_leads"
