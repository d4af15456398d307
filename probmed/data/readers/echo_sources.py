"""Echo source formats → grey cine ``uint8 [frames, H, W]`` plus its frame rate (frames/s).

One reader per format, registered by file suffix in :data:`ECHO_SOURCE_READERS`:

* ``.dcm`` — multi-frame (or single-frame) ultrasound DICOM: MONOCHROME1/2, RGB, YBR_FULL / YBR_FULL_422 (pydicom
  converts YBR to RGB), PALETTE COLOR (through the palette LUT), any transfer syntax the installed pixel handlers
  decode (JPEG baseline, JPEG 2000, RLE, ...). The frame rate comes from CineRate, RecommendedDisplayFrameRate,
  FrameTime (ms) or FrameTimeVector, in that order.
* ``.avi`` / ``.mp4`` / ``.mov`` — video files as in EchoNet-Dynamic, decoded with PyAV (FFmpeg); the frame rate
  is the stream's average rate.

Colour is reduced to luma (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B), the grey level a B-mode display shows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from probmed.data.limits import (
    DEFAULT_LIMITS, Limits, check_cine_dims, check_dicom_cine_header, dicom_header, too_large,
)
from probmed.data.readers.errors import UnreadableInput
from probmed.data.readers.identity import check_identity
from probmed.data.readers.plausibility import check_echo

#: ITU-R BT.601 luma weights for R, G, B.
LUMA = np.array([0.299, 0.587, 0.114])
#: The same weights in thousandths: luma = (299 R + 587 G + 114 B) / 1000, exact in integers.
_LUMA_MILLI = np.array([299, 587, 114], dtype=np.uint32)
#: Frames converted at a time: a block of 8 frames of 480 × 640 costs ~30 MiB of uint32 temporaries, whatever the
#: cine's length (a whole 120-frame float64 copy cost ~1.2 GiB).
FRAME_BLOCK = 8


def rgb_to_grey(rgb: np.ndarray, top: int = 255) -> np.ndarray:
    """``[..., 3]`` RGB with values in ``0..top`` (255 for 8-bit, 65535 for 16-bit palette entries) → ``uint8
    [...]`` luma (BT.601), rounded half up, computed in integers over blocks of :data:`FRAME_BLOCK` frames so the
    temporaries stay small for long colour cines."""
    frames = rgb.reshape(-1, *rgb.shape[-3:]) if rgb.ndim >= 4 else rgb[None]
    out = np.empty(frames.shape[:-1], dtype=np.uint8)
    divisor = 1000 * top  # luma in 0..255 = (weights · rgb) · 255 / (1000 · top)
    for start in range(0, len(frames), FRAME_BLOCK):
        block = frames[start : start + FRAME_BLOCK].astype(np.uint64 if top > 255 else np.uint32)
        weighted = block @ _LUMA_MILLI.astype(block.dtype)
        del block
        weighted *= 255  # in place: the block copy and this sum are the only temporaries
        weighted += divisor // 2
        weighted //= divisor
        np.minimum(weighted, 255, out=weighted)
        out[start : start + FRAME_BLOCK] = weighted
    return out.reshape(rgb.shape[:-1])


def _to_uint8(grey: np.ndarray, bits: int) -> np.ndarray:
    if grey.dtype == np.uint8:
        return grey
    top = float(2 ** bits - 1) if bits else float(grey.max() or 1)
    return np.clip(np.rint(grey.astype(np.float64) * 255.0 / top), 0, 255).astype(np.uint8)


def dicom_frame_rate(ds) -> float | None:
    """Frames per second from a DICOM header, or None when it has none of the frame-timing attributes."""
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        value = ds.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    frame_time = ds.get("FrameTime")
    if frame_time not in (None, "") and float(frame_time) > 0:
        return 1000.0 / float(frame_time)
    vector = ds.get("FrameTimeVector")
    if vector is not None and len(vector) > 1:
        increments = np.asarray([float(v) for v in vector[1:]])
        if np.all(increments > 0):
            return 1000.0 / float(increments.mean())
    return None


def echo_header(path: str | Path) -> dict:
    """What de-identification needs from a cine's header: ``{"burned_in": "YES" | "NO" | "" (not stated or not a
    DICOM), "regions": [(x0, y0, x1, y1), ...]}`` (the Sequence of Ultrasound Regions)."""
    import pydicom

    from probmed.data.deid import ultrasound_regions

    if Path(path).suffix.lower() != ".dcm":
        return {"burned_in": "", "regions": []}
    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    return {"burned_in": str(ds.get("BurnedInAnnotation", "") or "").upper(), "regions": ultrasound_regions(ds)}


def read_echo_dicom(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> tuple[np.ndarray, float | None]:
    """A cine DICOM → ``(uint8 [frames, H, W], fps or None)``.

    Raises:
        UnreadableInput: ``echo_unreadable`` (pydicom cannot parse or decode it), ``echo_wrong_modality`` (not an
            ultrasound image, :mod:`probmed.data.readers.identity`), ``echo_unsupported_photometric``.
    """
    import pydicom
    from pydicom.pixels import apply_color_lut

    # frames and frame size from the header, before any pixel is read
    check_dicom_cine_header(dicom_header(path, "echo_unreadable", limits.file_bytes), "echo", limits)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise UnreadableInput("echo_unreadable", f"{type(exc).__name__}: {exc}") from exc
    check_identity(ds, "echo")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise UnreadableInput("echo_unreadable", f"{type(exc).__name__}: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if photometric == "PALETTE COLOR":
        grey = _palette_grey(pixels, ds, apply_color_lut)
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
        grey = rgb_to_grey(pixels)  # pydicom returns RGB for every YBR variant by default
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = _to_uint8(pixels, int(ds.get("BitsStored", 8)))
        if photometric == "MONOCHROME1":
            grey = 255 - grey
    else:
        raise UnreadableInput("echo_unsupported_photometric", photometric)
    if frames == 1 and grey.ndim == 2:
        grey = grey[None]
    if grey.ndim != 3 or min(grey.shape) == 0:
        raise UnreadableInput("echo_unreadable", f"cine of shape {grey.shape}")
    return np.ascontiguousarray(grey), dicom_frame_rate(ds)


def _palette_grey(pixels: np.ndarray, ds, apply_color_lut) -> np.ndarray:
    """Palette indices → RGB through the header's LUT (8- or 16-bit entries) → luma."""
    rgb = apply_color_lut(pixels, ds)
    return rgb_to_grey(rgb, 65535 if rgb.max() > 255 else 255)


def read_echo_video(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> tuple[np.ndarray, float | None]:
    """An AVI / MP4 video → ``(uint8 [frames, H, W], fps)`` with PyAV (every frame decoded to grey).

    Raises:
        UnreadableInput: ``echo_unreadable`` for a file FFmpeg cannot open or decode, ``echo_empty``.
    """
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else None
            check_cine_dims("echo", int(stream.frames or 0), int(stream.codec_context.height or 0),
                            int(stream.codec_context.width or 0), limits)
            frames = []
            for frame in container.decode(stream):  # a container may not state its frame count: cut while decoding
                if len(frames) == limits.echo_frames:
                    raise too_large("echo", f"more than {limits.echo_frames} frames")
                check_cine_dims("echo", len(frames) + 1, frame.height, frame.width, limits)
                frames.append(frame.to_ndarray(format="gray"))
    except (av.FFmpegError, IndexError, OSError, ValueError) as exc:
        raise UnreadableInput("echo_unreadable", f"{type(exc).__name__}: {exc}") from exc
    if not frames:
        raise UnreadableInput("echo_empty", "video has no frames")
    return np.stack(frames).astype(np.uint8), rate


#: Source file suffix → echo reader (paths on disk).
ECHO_SOURCE_READERS: dict[str, Callable[[Path], tuple[np.ndarray, float | None]]] = {
    ".dcm": read_echo_dicom,
    ".avi": read_echo_video,
    ".mp4": read_echo_video,
    ".mov": read_echo_video,
}


def read_echo_source(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> tuple[np.ndarray, float | None]:
    """Read an echo file with the reader registered for its suffix; the DICOM and video readers check frames and
    frame size against ``limits`` (from the header, and while decoding a video)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such echo file", str(path))
    reader = ECHO_SOURCE_READERS.get(path.suffix.lower())
    if reader is None:
        raise UnreadableInput("echo_unknown_format", f"{path.name}: no echo reader for {path.suffix!r} "
                                                     f"(known: {sorted(ECHO_SOURCE_READERS)})")
    cine, fps = reader(path, limits=limits) if reader in (read_echo_dicom, read_echo_video) else reader(path)
    check_echo(cine.astype(np.float32) / 255.0)  # as at load time: a constant or frozen cine never reaches a shard
    return cine, fps
