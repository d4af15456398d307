"""Chest X-ray files → grey image in [0, 1] (0 = black on a standard display, i.e. air is dark).

One reader per stored format, chosen by file extension through :data:`CXR_READERS` (``cxr.<i>.dcm``,
``cxr.<i>.png``, ``cxr.<i>.jpg``). Compressed DICOM transfer syntaxes (JPEG baseline/extended/lossless, JPEG-LS,
JPEG 2000, RLE, deflate) are decoded by pydicom's pixel handlers (pylibjpeg with its libjpeg and openjpeg plugins).
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from probmed.data.limits import (
    DEFAULT_LIMITS, Limits, check_deflated_dicom, check_dicom_image_header, check_raster_header, image_inflated_bytes,
)
from probmed.data.readers.errors import UnreadableInput
from probmed.data.readers.identity import check_identity
from probmed.data.readers.plausibility import check_cxr


def _normalise(image: np.ndarray) -> np.ndarray:
    """Min–max scale a finite, non-constant, plausible image (:func:`~probmed.data.readers.plausibility.check_cxr`)
    to ``[0, 1]`` (``float32``)."""
    image = np.asarray(image, dtype=np.float32)
    if not np.all(np.isfinite(image)):
        raise UnreadableInput("cxr_corrupt_dicom", "non-finite pixel values")
    check_cxr(image)
    low, high = float(image.min()), float(image.max())
    if high <= low:
        raise UnreadableInput("cxr_blank", "constant image")
    return (image - low) / (high - low)


def _modality(pixels: np.ndarray, ds) -> np.ndarray:
    """The modality LUT: a linear RescaleSlope / RescaleIntercept in float32 (pydicom's float64 version costs
    ~4× more on a 2k² radiograph); a Modality LUT Sequence goes through pydicom. A slope that is not a positive
    finite number (or a non-finite intercept) is refused as ``cxr_implausible_rescale``."""
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(pixels, ds)
    raw_slope = ds.get("RescaleSlope", None)
    try:
        slope = 1.0 if raw_slope is None or str(raw_slope).strip() == "" else float(raw_slope)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError) as exc:
        raise UnreadableInput("cxr_corrupt_dicom", f"rescale: {exc}") from exc
    if not (np.isfinite(slope) and slope > 0 and np.isfinite(intercept)):
        # a slope of -1 inverts the film, 0 erases it: no device writes either (PS3.3 C.11.1.1.2)
        raise UnreadableInput("cxr_implausible_rescale", f"RescaleSlope {raw_slope}, RescaleIntercept {intercept}")
    image = pixels.astype(np.float32)
    if slope != 1.0:
        image *= np.float32(slope)
    if intercept != 0.0:
        image += np.float32(intercept)
    return image


def _first(value) -> float:
    """The first of several window values (a header may list several windows; the first is the default)."""
    return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)


def _voi(image: np.ndarray, ds) -> np.ndarray:
    """The VOI transform. A LINEAR / LINEAR_EXACT window (the common case) is a clip to the window's bounds
    followed by a linear map, and the linear map is undone by the min–max scaling that follows, so only the clip is
    applied (the same image as pydicom's ``apply_voi_lut`` after scaling, ~10× faster on 2k²). A VOI LUT Sequence
    or a SIGMOID window goes through pydicom."""
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if "VOILUTSequence" in ds or function not in ("LINEAR", "LINEAR_EXACT") or "WindowWidth" not in ds:
        return apply_voi_lut(image, ds, prefer_lut=True)
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    if function == "LINEAR_EXACT":
        low, high = center - width / 2, center + width / 2
    else:  # PS3.3 C.11.2.1.2.1
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    return np.clip(image, np.float32(low), np.float32(high))


def read_cxr_dicom(data: bytes, identity: str = "cxr", limits: Limits = DEFAULT_LIMITS) -> tuple[np.ndarray, str]:
    """Decode one radiograph (or, with ``identity="ct"``, one CT slice: the same 2-D grey decoding).

    Applies the modality LUT (RescaleSlope / RescaleIntercept), then the VOI LUT or window from the header,
    inverts MONOCHROME1 so that higher values are always brighter, and rescales to ``[0, 1]``.

    Args:
        data: the bytes of a DICOM file (Part 10, with or without preamble; any transfer syntax pydicom's
            installed pixel handlers decode).
        identity: which modality's SOP classes and Modality codes the file must carry (a key of
            :data:`probmed.data.readers.identity.ACCEPTED`: ``cxr`` = CR / DX, ``ct`` = CT).

    Returns:
        ``(image, view)``: ``float32`` array ``[H, W]`` in ``[0, 1]``; the header's ViewPosition (``""`` if absent).

    Raises:
        UnreadableInput: ``cxr_corrupt_dicom`` when pydicom cannot parse the file or its pixels,
            ``<identity>_wrong_modality`` for a file that is not of that modality (for ``cxr``: a CT slice, an MR
            image, ...; see :mod:`probmed.data.readers.identity`),
            ``<identity>_too_large`` for a header declaring more pixels than ``limits`` allow (nothing decoded),
            ``<identity>_not_greyscale`` for a colour PhotometricInterpretation (RGB, YBR, PALETTE COLOR),
            ``cxr_not_2d`` for a multi-frame image, ``cxr_blank`` for a constant image.
    """
    check_deflated_dicom(io.BytesIO(data), identity, image_inflated_bytes(limits))  # before pydicom inflates it
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise UnreadableInput("cxr_corrupt_dicom", f"{type(exc).__name__}: {exc}") from exc
    if "PixelData" not in ds:
        raise UnreadableInput("cxr_corrupt_dicom", "no pixel data (not a DICOM image)")
    check_identity(ds, identity)
    check_dicom_image_header(ds, identity, limits)  # rows x columns x frames from the header, before decoding
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnreadableInput(f"{identity}_not_greyscale", f"PhotometricInterpretation {photometric}")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise UnreadableInput("cxr_corrupt_dicom", f"{type(exc).__name__}: {exc}") from exc
    if pixels.ndim != 2:
        raise UnreadableInput("cxr_not_2d", f"pixel array of shape {pixels.shape}")
    image = _normalise(_voi(_modality(pixels, ds), ds))
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        image = 1.0 - image
    return image, str(ds.get("ViewPosition", "") or "")


def read_cxr_image(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[np.ndarray, str]:
    """Decode a PNG or JPEG radiograph (8- or 16-bit grey; colour is converted to luma) with Pillow.

    Returns:
        ``(image, "")``: ``float32 [H, W]`` in ``[0, 1]``; the view is not in the file (the manifest gives it).

    Raises:
        UnreadableInput: ``cxr_too_large`` for a header declaring more pixels than ``limits`` allow (nothing
            decoded), ``cxr_corrupt_image`` when Pillow cannot decode the bytes, ``cxr_colour_image``
            (:func:`check_not_colour`), ``cxr_blank``.
    """
    check_raster_header(data, "cxr", limits)  # width x height from the header: Image.open decodes nothing
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("L", "I", "I;16", "I;16B", "F"):
                colour = np.asarray(img.convert("RGB"))
                check_not_colour(colour)
                img = img.convert("L")
            pixels = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if isinstance(exc, UnreadableInput):
            raise
        raise UnreadableInput("cxr_corrupt_image", f"{type(exc).__name__}: {exc}") from exc
    return _normalise(pixels), ""


#: A pixel is coloured when its channels differ by more than this many 8-bit levels (JPEG chroma noise of a grey
#: film stays below it).
CHROMA_LEVELS = 24
#: A radiograph stored as RGB is refused when more than this fraction of its pixels is coloured.
COLOUR_FRACTION = 0.02


def check_not_colour(rgb: np.ndarray) -> None:
    """Refuse a colour photograph or a coloured diagram given as a radiograph.

    Args:
        rgb: ``uint8 [H, W, 3]``.

    Raises:
        UnreadableInput: ``cxr_colour_image`` when more than :data:`COLOUR_FRACTION` of the pixels have channels
            more than :data:`CHROMA_LEVELS` apart (a grey film saved as RGB has R = G = B up to compression noise).
    """
    channels = rgb.astype(np.int16)
    spread = channels.max(axis=-1) - channels.min(axis=-1)
    fraction = float(np.mean(spread > CHROMA_LEVELS))
    if fraction > COLOUR_FRACTION:
        raise UnreadableInput("cxr_colour_image", f"{fraction:.1%} of the pixels are coloured (a photograph or "
                                                  "diagram, not a radiograph)")


#: Stored CXR file extension (last part of ``cxr.<i>.<ext>``) → reader.
CXR_READERS: dict[str, Callable[[bytes], tuple[np.ndarray, str]]] = {
    "dcm": read_cxr_dicom,
    "png": read_cxr_image,
    "jpg": read_cxr_image,
    "jpeg": read_cxr_image,
}


def read_cxr(name: str, data: bytes, identity: str = "cxr", limits: Limits = DEFAULT_LIMITS
             ) -> tuple[np.ndarray, str]:
    """Decode a stored view by its file name or extension (``"cxr.0.dcm"``, ``"x.png"``) through
    :data:`CXR_READERS`; a DICOM file must be of the modality ``identity`` (:func:`read_cxr_dicom`).

    Raises:
        UnreadableInput: ``cxr_unknown_format`` for an extension no reader handles.
    """
    ext = name.rsplit(".", 1)[-1].lower()
    reader = CXR_READERS.get(ext)
    if reader is None:
        raise UnreadableInput("cxr_unknown_format", f"no CXR reader for .{ext} (known: {sorted(CXR_READERS)})")
    return reader(data, identity, limits) if reader is read_cxr_dicom else reader(data, limits)
