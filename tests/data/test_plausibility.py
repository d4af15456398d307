"""Finite but physiologically impossible signals are refused by the shard readers with a counted cause, while real
recordings (pydicom's 12-lead DICOM ECG and colour cardiac cine) pass; the issue's poisoned shard (20 studies with
ECG samples of 1e30 µV) is read with every one of those ECGs skipped and counted."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from probmed.data import schema
from probmed.data.datamodule import ProbMedDataModule
from probmed.data.readers import UnreadableInput, read_cxr_image, read_echo_npy, read_ecg_npy
from probmed.data.readers.cxr import read_cxr_dicom
from probmed.data.readers.ecg_sources import read_ecg_dicom, standardize_ecg
from probmed.data.readers.echo_sources import read_echo_dicom
from probmed.data.streams import TrainStream

from shardkit import dicom_bytes, npy_bytes, small_inputs, study, write_split


def _ecg_uv(rng, scale: float = 300.0) -> np.ndarray:
    return (rng.standard_normal((12, 500)) * scale).astype(np.float32)


def _reason(call) -> str:
    with pytest.raises(UnreadableInput) as err:
        call()
    return err.value.reason


def test_real_recordings_pass_the_bounds():
    record = read_ecg_dicom(get_testdata_file("waveform_ecg.dcm", download=False))
    signal, mask, _ = standardize_ecg(record)  # millivolts, as `probmed data build` stores them (× 1000, int16 µV)
    stored = np.round(signal * 1000).astype(np.int16)
    decoded = read_ecg_npy(npy_bytes(stored), 12)
    np.testing.assert_allclose(decoded, stored / 1000.0, rtol=0, atol=1e-6)
    cine, _ = read_echo_dicom(get_testdata_file("examples_ybr_color.dcm", download=False))
    assert read_echo_npy(npy_bytes(cine)).shape == cine.shape


def test_ecg_bounds():
    rng = np.random.default_rng(0)
    poisoned = _ecg_uv(rng)
    poisoned[3, 100:110] = 1e30  # finite in float32
    assert _reason(lambda: read_ecg_npy(npy_bytes(poisoned), 12)) == "ecg_implausible_amplitude"
    assert _reason(lambda: read_ecg_npy(npy_bytes(np.zeros((12, 500), np.int16)), 12)) == "ecg_flat_line"
    stuck = _ecg_uv(rng)
    stuck[5] = 32767  # a saturated channel
    assert _reason(lambda: read_ecg_npy(npy_bytes(stuck), 12)) == "ecg_stuck_lead"
    offset = _ecg_uv(rng) + 8000  # an 8 mV DC offset is not an amplitude
    missing = _ecg_uv(rng)
    missing[6:] = 0  # limb-lead-only record: missing leads are zero rows (masked by ecg_lead_mask)
    for fine in (offset, missing):
        np.testing.assert_allclose(read_ecg_npy(npy_bytes(fine), 12), fine / 1000.0, rtol=1e-6)


def test_echo_bounds():
    rng = np.random.default_rng(1)
    assert _reason(lambda: read_echo_npy(npy_bytes(np.full((6, 16, 16), 1e30, np.float32)))) == "echo_out_of_range"
    assert _reason(lambda: read_echo_npy(npy_bytes(np.full((6, 16, 16), 90, np.uint8)))) == "echo_constant"
    frame = rng.integers(0, 255, (16, 16)).astype(np.uint8)
    assert _reason(lambda: read_echo_npy(npy_bytes(np.stack([frame] * 6)))) == "echo_frozen"
    single = read_echo_npy(npy_bytes(frame[None]))  # one frame: no motion to judge
    np.testing.assert_allclose(single[0], frame / 255.0, rtol=1e-6)


def test_cxr_bounds():
    rng = np.random.default_rng(2)
    outlier = rng.integers(1000, 1040, (64, 64)).astype(np.uint16)
    outlier[0, 0] = 65535  # one hot pixel: min-max scaling would flatten the radiograph to one grey level
    png = io.BytesIO()
    Image.fromarray(outlier).save(png, format="PNG")
    assert _reason(lambda: read_cxr_image(png.getvalue())) == "cxr_implausible_range"
    huge = dicom_bytes(rng.integers(0, 4096, (32, 32)).astype(np.uint16), slope=1e30)
    assert _reason(lambda: read_cxr_dicom(huge)) == "cxr_implausible_range"
    image, _ = read_cxr_dicom(dicom_bytes(rng.integers(0, 4096, (32, 32)).astype(np.uint16)))
    assert image.min() == 0.0 and image.max() == 1.0


def test_a_shard_with_twenty_ecgs_of_1e30_microvolts_is_read_with_each_one_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(3)
    poisoned = []
    for i in range(20):
        s = study(f"p{i}", rng=rng)
        s[schema.ECG_EXT] = npy_bytes(_ecg_uv(rng) * 1e27)  # ~3e29 µV: finite float32
        poisoned.append(s)
    write_split(tmp_path, "train", [poisoned + [study(f"ok{i}", rng=rng) for i in range(4)]])
    dm = ProbMedDataModule(str(tmp_path), batch_size=4, inputs=small_inputs())
    stream = TrainStream(dm.shards("train")[0], dm.decoder, dm.collator, 4, 0, batches_per_worker=6, num_workers=1,
                         shuffle_buffer=1)
    counts, ecg_present = Counter(), {}
    for batch in stream.batches_for(0, 1):
        counts.update(batch["skipped"])
        for sid, present, signal in zip(batch["study_id"], batch["present"]["ecg"], batch["inputs"]["ecg"]["signal"]):
            ecg_present[sid] = bool(present)
            assert float(signal.abs().max()) < 100  # no absurd value reaches a batch
    assert counts["ecg_implausible_amplitude"] == 20
    assert {sid for sid, p in ecg_present.items() if p} == {f"ok{i}" for i in range(4)}
    assert {f"p{i}" for i in range(20)} <= set(ecg_present)  # the studies themselves are kept (other modalities)


def test_source_readers_apply_the_same_bounds_at_build_time(tmp_path):
    """`probmed data build` reads source files through these readers: a record whose units are wrong by 10^6 (µV
    values labelled volts) and a blank cine (one grey level: a video of nothing) are refused there, before they reach
    a shard. (A lossy video of a still scene is not "frozen": the codec makes its frames differ.)"""
    import av
    import wfdb

    from probmed.data.readers.ecg_sources import read_ecg_source
    from probmed.data.readers.echo_sources import read_echo_source

    uv = np.random.default_rng(4).normal(0, 500, (2000, 12))
    names = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    wfdb.wrsamp("volts", fs=500, units=["V"] * 12, sig_name=names, p_signal=uv, fmt=["16"] * 12, adc_gain=[1.0] * 12,
                baseline=[0] * 12, write_dir=str(tmp_path))
    assert _reason(lambda: read_ecg_source(tmp_path / "volts.hea")) == "ecg_implausible_amplitude"
    wfdb.wrsamp("uvolts", fs=500, units=["uV"] * 12, sig_name=names, p_signal=uv, fmt=["16"] * 12,
                adc_gain=[1.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    assert read_ecg_source(tmp_path / "uvolts.hea").signal.shape == (12, 2000)  # the same numbers, right units

    frame = np.full((64, 64, 3), 90, np.uint8)
    with av.open(str(tmp_path / "blank.avi"), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuvj420p"
        for _ in range(8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    assert _reason(lambda: read_echo_source(tmp_path / "blank.avi")) == "echo_constant"
