"""Readers turn the bytes of one stored file into an array with documented shape and units.

Shard files are read by ``cxr``, ``ecg``, ``echo`` and ``text``; source formats (DICOM waveform, WFDB, MUSE XML,
cine DICOM, AVI/MP4) are read when shards are built, by ``ecg_sources`` and ``echo_sources``.

Each reader raises :class:`~probmed.data.readers.errors.UnreadableInput` (with a short machine-readable
``reason``) for input it cannot use; the loader counts those and skips the modality, never crashing.
"""
from probmed.data.readers.cxr import read_cxr, read_cxr_dicom, read_cxr_image
from probmed.data.readers.ecg import read_ecg_npy, resample_ecg
from probmed.data.readers.echo import read_echo_npy
from probmed.data.readers.errors import UnreadableInput, UnsafeInput
from probmed.data.readers.text import read_report

__all__ = [
    "UnreadableInput",
    "UnsafeInput",
    "read_cxr",
    "read_cxr_dicom",
    "read_cxr_image",
    "read_ecg_npy",
    "read_echo_npy",
    "read_report",
    "resample_ecg",
]
