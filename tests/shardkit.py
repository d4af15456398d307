"""Hand-built study files and shards for tests (written with pydicom / NumPy / webdataset themselves)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import webdataset as wds
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from probmed.data import schema


def dicom_bytes(pixels: np.ndarray, photometric: str = "MONOCHROME2", slope: float = 1.0, intercept: float = 0.0,
                view: str = "PA") -> bytes:
    """A minimal valid DICOM radiograph holding ``pixels`` (uint16 [H, W])."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Test^Patient"
    ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def study(key: str, patient: str | None = None, split: str = "train", cxr: bool = True, ecg: bool = True,
          echo: bool = True, text: bool = True, rng: np.random.Generator | None = None) -> dict:
    """A small valid study sample (``__key__`` plus the files of the modalities asked for)."""
    rng = rng or np.random.default_rng(abs(hash(key)) % 2**32)
    sample = {"__key__": key}
    meta = {"study_id": key, "patient_id": patient or f"p{key}", "split": split,
            "findings": {f: int(rng.integers(2)) for f in schema.FINDINGS}}
    if cxr:
        sample["cxr.0.dcm"] = dicom_bytes(rng.integers(0, 4096, (32, 32)).astype(np.uint16))
        meta["cxr_views"] = ["PA"]
    if ecg:
        sample[schema.ECG_EXT] = npy_bytes((rng.standard_normal((12, 500)) * 300).astype(np.int16))
        meta.update(ecg_leads=list(schema.ECG_LEADS), ecg_sampling_rate=50)
    if echo:
        sample[schema.ECHO_EXT] = npy_bytes(rng.integers(0, 255, (6, 16, 16)).astype(np.uint8))
        meta["echo_fps"] = 25
    if text:
        sample[schema.REPORT_EXT] = f"FINDINGS: study {key} is unremarkable.\nIMPRESSION: Normal.".encode()
    sample[schema.META_EXT] = json.dumps(meta).encode()
    return sample


def write_split(directory: Path, split: str, shards: list[list[dict]]) -> list[Path]:
    """Write ``shards`` (lists of samples) as ``<split>-%06d.tar`` and merge their counts into ``sizes.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    sizes_file = directory / schema.SIZES_FILE
    sizes = json.loads(sizes_file.read_text()) if sizes_file.exists() else {}
    paths = []
    for i, samples in enumerate(shards):
        path = directory / (schema.SHARD_PATTERN.format(split=split) % i)
        with wds.TarWriter(str(path)) as sink:
            for s in samples:
                sink.write(s)
        sizes[path.name] = len(samples)
        paths.append(path)
    sizes_file.write_text(json.dumps(sizes))
    return paths


def small_inputs():
    """Datamodule options matching :func:`study`'s sizes."""
    from probmed.data.inputs import CXRInput, ECGInput, EchoInput, TextInput

    return dict(cxr=CXRInput(size=16), ecg=ECGInput(rate=50, seconds=10), echo=EchoInput(frames=4, size=8),
                text=TextInput(max_length=16))
