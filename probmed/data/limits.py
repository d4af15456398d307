"""Resource limits on untrusted input: what one file may declare before it is decoded.

Every source file ``probmed data build|check`` reads, and every shard member the loader reads, is checked against
these limits **from its header** (file size from ``os.stat``, tar member size from the tar header, DICOM rows ×
columns × frames × bits with ``stop_before_pixels``, PNG / JPEG size from Pillow's lazy ``Image.open``, ``.npy``
shape from its header) before any pixel or sample is decoded, so a file that declares gigabytes costs a header read
and a counted cause ``<modality>_too_large``, never an allocation.

The defaults are sized from real data with head-room (largest CR / DX radiographs ≈ 4300 × 3500; echo cines a few
hundred frames at ≤ 1024², e.g. 300 RGB frames of 800 × 600 = 0.43 × 2³⁰ samples; 12-lead ECGs ≤ 5000 Hz × 60 s;
radiology reports well under 1 MB):

===================  ============  ===========================================================================
limit                default       what it bounds
===================  ============  ===========================================================================
``image_side``       8192          rows and columns of a radiograph / CT slice (pixels)
``image_pixels``     8192²         rows × columns × samples per pixel of one image
``echo_frames``      1024          frames of an echo cine
``echo_side``        1024          rows and columns of an echo frame (pixels)
``echo_samples``     2³⁰           frames × rows × columns × samples per pixel of one cine (1 GiB as 8 bits)
``ecg_samples``      300 000       samples per lead (5000 Hz × 60 s)
``ecg_leads``        16            leads (channels) of one ECG
``report_bytes``     1 MiB         a report file / ``report.txt`` member
``file_bytes``       512 MiB       any one source file or shard member (compressed size as stored)
``meta_bytes``       1 MiB         a shard's ``json`` metadata member
===================  ============  ===========================================================================

Change them with ``probmed data build|check --limit NAME=VALUE`` (repeatable) or, for the loader, the data
config's ``limits: {NAME: VALUE}``.
"""
from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """The limits (see the module docstring for units and how the defaults were sized)."""

    image_side: int = 8192
    image_pixels: int = 8192 * 8192
    echo_frames: int = 1024
    echo_side: int = 1024
    echo_samples: int = 1 << 30
    ecg_samples: int = 300_000
    ecg_leads: int = 16
    report_bytes: int = 1 * MiB
    file_bytes: int = 512 * MiB
    meta_bytes: int = 1 * MiB

    @classmethod
    def from_overrides(cls, overrides: dict | list | tuple | None = None) -> "Limits":
        """Defaults with some values replaced: a mapping ``{name: value}`` or ``["name=value", ...]``.

        Raises:
            ValueError: for an unknown name or a value that is not a positive integer.
        """
        if not overrides:
            return cls()
        if not isinstance(overrides, dict):
            pairs = {}
            for item in overrides:
                name, sep, value = str(item).partition("=")
                if not sep:
                    raise ValueError(f"limit {item!r}: expected NAME=VALUE")
                pairs[name.strip()] = value.strip()
            overrides = pairs
        names = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for name, value in overrides.items():
            if name not in names:
                raise ValueError(f"unknown limit {name!r} (known: {', '.join(sorted(names))})")
            try:
                number = int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ValueError(f"limit {name}={value!r} is not an integer") from exc
            if number < 1:
                raise ValueError(f"limit {name}={value!r} must be positive")
            values[name] = number
        return dataclasses.replace(cls(), **values)

    def member_bytes(self, modality: str, file_name: str) -> int:
        """The largest stored size a shard member of ``modality`` may have (bytes)."""
        if modality == "text" or file_name.endswith(".txt"):
            return self.report_bytes
        if file_name == "json" or file_name.endswith(".json"):
            return self.meta_bytes
        return self.file_bytes


DEFAULT_LIMITS = Limits()


def _error(reason: str, detail: str):
    # imported here: the readers import this module, and probmed.data.readers' __init__ imports the readers
    from probmed.data.readers.errors import UnreadableInput

    return UnreadableInput(reason, detail)


def too_large(modality: str, detail: str):
    """The counted refusal of an over-limit input: cause ``<modality>_too_large``."""
    return _error(f"{modality}_too_large", detail)


def check_image_dims(modality: str, rows: int, cols: int, samples: int = 1, frames: int = 1,
                     limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse an image (radiograph, CT slice) whose declared size exceeds the limits (before decoding it)."""
    # a header without a size (or an unparsable one) is left to the decoder, which refuses it with its own cause
    if max(rows, cols) > limits.image_side or rows * cols * max(samples, 1) * max(frames, 1) > limits.image_pixels:
        raise too_large(modality, f"declares {frames} x {rows} x {cols} x {samples} samples (limits: side "
                                  f"{limits.image_side}, {limits.image_pixels} pixels)")


def check_cine_dims(modality: str, frames: int, rows: int, cols: int, limits: Limits = DEFAULT_LIMITS,
                    samples: int = 1) -> None:
    """Refuse a cine whose declared frames, frame size or decoded samples (frames × rows × columns × samples per
    pixel) exceed the limits (before decoding it)."""
    if (frames > limits.echo_frames or max(rows, cols) > limits.echo_side
            or frames * rows * cols * max(samples, 1) > limits.echo_samples):
        raise too_large(modality, f"declares {frames} frames of {rows} x {cols} x {samples} (limits: "
                                  f"{limits.echo_frames} frames, side {limits.echo_side}, {limits.echo_samples} "
                                  "samples)")


def check_ecg_dims(leads: int, samples: int, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse an ECG whose declared leads or samples per lead exceed the limits (before reading a sample)."""
    if leads > limits.ecg_leads or samples > limits.ecg_samples:
        raise too_large("ecg", f"declares {leads} leads x {samples} samples (limits: {limits.ecg_leads} leads, "
                               f"{limits.ecg_samples} samples)")


def dicom_header(data_or_path, reason: str, max_inflated: int = DEFAULT_LIMITS.file_bytes):
    """A DICOM file's header only (``stop_before_pixels``; nothing past it is read or decoded; a deflated file is
    first checked not to inflate past ``max_inflated`` bytes, :func:`check_deflated_dicom`).

    Raises:
        UnreadableInput: ``reason`` (e.g. ``cxr_corrupt_dicom``) when pydicom cannot parse the header.
    """
    import pydicom

    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        source = io.BytesIO(data_or_path)
        check_deflated_dicom(source, reason.split("_")[0], max_inflated)
    else:
        source = str(data_or_path)
        with open(source, "rb") as fh:
            check_deflated_dicom(fh, reason.split("_")[0], max_inflated)
    try:
        return pydicom.dcmread(source, force=True, stop_before_pixels=True)
    except Exception as exc:
        raise _error(reason, f"{type(exc).__name__}: {exc}") from exc


def _header_int(ds, keyword: str, default: int) -> int:
    value = ds.get(keyword, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        return -1


def check_dicom_image_header(ds, modality: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Rows × Columns × NumberOfFrames × SamplesPerPixel of a DICOM image header against the image limits (bits per
    sample are at most 64, so the pixel limit bounds the decoded bytes at 8 × ``image_pixels``)."""
    check_image_dims(modality, _header_int(ds, "Rows", 0), _header_int(ds, "Columns", 0),
                     _header_int(ds, "SamplesPerPixel", 1), _header_int(ds, "NumberOfFrames", 1), limits)


def check_dicom_cine_header(ds, modality: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Frames and frame size of a DICOM cine header against the cine limits."""
    check_cine_dims(modality, _header_int(ds, "NumberOfFrames", 1), _header_int(ds, "Rows", 0),
                    _header_int(ds, "Columns", 0), limits, _header_int(ds, "SamplesPerPixel", 1))


def check_raster_header(data: bytes, modality: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """PNG / JPEG width × height from the header (Pillow's ``Image.open`` is lazy: nothing is decoded here).

    Raises:
        UnreadableInput: ``<modality>_too_large``; ``<modality>_corrupt_image`` when the header cannot be read.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            bands = len(img.getbands())
    except Image.DecompressionBombError as exc:  # Pillow's own guard (over 2 × its MAX_IMAGE_PIXELS) at open
        raise too_large(modality, str(exc)) from exc
    except Exception as exc:
        raise _error(f"{modality}_corrupt_image", f"{type(exc).__name__}: {exc}") from exc
    check_image_dims(modality, height, width, bands, 1, limits)


def npy_header(data: bytes, modality: str) -> tuple[tuple[int, ...], "object"]:
    """``(shape, dtype)`` of a ``.npy`` from its header alone (``np.lib.format``); nothing else is read.

    Raises:
        UnreadableInput: ``<modality>_unreadable`` for a file without a valid ``.npy`` header (or a pickled dtype).
    """
    import numpy as np

    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"npy format version {version}")
        shape, _, dtype = reader(stream)
    except Exception as exc:
        raise _error(f"{modality}_unreadable", f"{type(exc).__name__}: {exc}") from exc
    if dtype.hasobject:
        raise _error(f"{modality}_unreadable", f"object dtype {dtype}")
    return tuple(int(s) for s in shape), dtype


def check_npy_elements(shape: tuple[int, ...], dtype, available: int, modality: str) -> None:
    """A ``.npy`` whose header declares more bytes than the file holds is truncated (refused before reading)."""
    need = math.prod(shape) * dtype.itemsize
    if need > available:
        raise _error(f"{modality}_unreadable", f"header declares {need} bytes, file holds {available}")


DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
_CHUNK = 1 << 20


def check_deflated_dicom(fp, modality: str, max_inflated: int) -> None:
    """A DICOM file in the Deflated Explicit VR Little Endian transfer syntax: its inflated size, counted in 1 MiB
    chunks that are not kept, must stay under ``max_inflated`` bytes (pydicom inflates the whole dataset in memory
    before it reads even the header: a few KB can declare gigabytes). Other transfer syntaxes pass untouched; the
    file position is restored.

    Raises:
        UnreadableInput: ``<modality>_too_large``.
    """
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble

    start = fp.tell()
    try:
        try:
            read_preamble(fp, force=True)
            meta = _read_file_meta_info(fp)
        except Exception:  # no file meta: pydicom decides what the file is
            return
        if str(meta.get("TransferSyntaxUID", "")) != DEFLATED_TRANSFER_SYNTAX:
            return
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while not inflater.eof:
            chunk = inflater.unconsumed_tail or fp.read(_CHUNK)
            if not chunk:
                break
            total += len(inflater.decompress(chunk, _CHUNK))
            if total > max_inflated:
                raise too_large(modality, f"deflated dataset inflates past {max_inflated} bytes")
    except zlib.error as exc:
        raise _error(f"{modality}_unreadable", f"deflated dataset: {exc}") from exc
    finally:
        fp.seek(start)


def image_inflated_bytes(limits: Limits = DEFAULT_LIMITS) -> int:
    """The most a deflated radiograph may inflate to: 16 bits per pixel (CR / DX store 8 or 16) plus 16 MiB of
    header."""
    return limits.image_pixels * 2 + 16 * MiB


#: How much of a shard member :func:`check_member_head` looks at (a ``.npy`` header, a PNG IHDR, a DICOM header
#: without its pixel data all fit; a JPEG whose size marker comes later is checked when decoded).
HEAD_BYTES = 64 * 1024


def check_member_head(modality: str | None, ext: str, head: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """A shard member's declared size, from its first :data:`HEAD_BYTES` only, before the rest is read: ``.npy``
    shape (ECG leads × samples, echo frames × side², others their byte count), PNG / JPEG width × height, DICOM
    rows × columns × frames. A head that cannot be parsed passes: the member is then bounded by its size limit
    and checked again when decoded.

    Raises:
        UnreadableInput: ``<modality>_too_large``; ``<modality>_unreadable`` for a ``.npy`` without a valid header.
    """
    name = modality or "member"
    if ext.endswith("npy"):
        shape, dtype = npy_header(head, name)
        if modality == "ecg" and len(shape) == 2:
            check_ecg_dims(shape[0], shape[1], limits)
        elif modality == "echo" and len(shape) == 3:
            check_cine_dims(name, shape[0], shape[1], shape[2], limits)
        elif math.prod(shape) * dtype.itemsize > limits.file_bytes:
            raise too_large(name, f"declares {list(shape)} {dtype}")
    elif ext.endswith(("png", "jpg", "jpeg")):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(head)) as img:
                width, height = img.size
                bands = len(img.getbands())
        except Image.DecompressionBombError as exc:
            raise too_large(name, str(exc)) from exc
        except Exception:
            return
        check_image_dims(name, height, width, bands, 1, limits)
    elif ext.endswith("dcm"):
        import pydicom

        if DEFLATED_TRANSFER_SYNTAX.encode() in head[:4096]:
            return  # pydicom would inflate even this head in one piece: checked in counted steps when decoded
        try:
            ds = pydicom.dcmread(io.BytesIO(head), force=True, stop_before_pixels=True)
            rows, cols = _header_int(ds, "Rows", 0), _header_int(ds, "Columns", 0)
        except Exception:
            return
        check_image_dims(name, rows, cols, _header_int(ds, "SamplesPerPixel", 1), _header_int(ds, "NumberOfFrames", 1),
                         limits)
