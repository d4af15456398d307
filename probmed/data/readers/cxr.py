"""Chest X-ray DICOM → grey image in [0, 1] (0 = black on a standard display, i.e. air is dark)."""
from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from probmed.data.readers.errors import UnreadableInput


def read_cxr_dicom(data: bytes) -> tuple[np.ndarray, str]:
    """Decode one radiograph.

    Applies the modality LUT (RescaleSlope / RescaleIntercept), then the VOI LUT or window from the header,
    inverts MONOCHROME1 so that higher values are always brighter, and rescales to ``[0, 1]``.

    Args:
        data: the bytes of a DICOM file (Part 10, with or without preamble).

    Returns:
        ``(image, view)``: ``float32`` array ``[H, W]`` in ``[0, 1]``; the header's ViewPosition (``""`` if absent).

    Raises:
        UnreadableInput: ``cxr_corrupt_dicom`` when pydicom cannot parse the file or its pixels,
            ``cxr_not_2d`` for a multi-frame or colour image, ``cxr_blank`` for a constant image.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise UnreadableInput("cxr_corrupt_dicom", f"{type(exc).__name__}: {exc}") from exc
    if pixels.ndim != 2:
        raise UnreadableInput("cxr_not_2d", f"pixel array of shape {pixels.shape}")
    image = apply_modality_lut(pixels, ds)
    image = apply_voi_lut(image, ds, prefer_lut=True)
    image = np.asarray(image, dtype=np.float32)
    if not np.all(np.isfinite(image)):
        raise UnreadableInput("cxr_corrupt_dicom", "non-finite pixel values")
    low, high = float(image.min()), float(image.max())
    if high <= low:
        raise UnreadableInput("cxr_blank", "constant image")
    image = (image - low) / (high - low)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        image = 1.0 - image
    return image, str(ds.get("ViewPosition", "") or "")
