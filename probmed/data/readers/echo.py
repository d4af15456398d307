"""Echocardiogram cine arrays: stored uint8 ``[frames, H, W]`` → float32 ``[frames, H, W]`` in [0, 1]."""
from __future__ import annotations

import io

import numpy as np

from probmed.data.limits import DEFAULT_LIMITS, Limits, check_cine_dims, check_npy_elements, npy_header
from probmed.data.readers.errors import UnreadableInput
from probmed.data.readers.plausibility import check_echo


def read_echo_npy(data: bytes, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode a ``.npy`` cine (grey levels 0–255, ``allow_pickle=False``).

    Raises:
        UnreadableInput: ``echo_too_large`` (the header declares more frames or a larger frame than ``limits``;
            nothing read), ``echo_unreadable`` (not a plain numeric .npy or not ``[frames, H, W]``), ``echo_empty``,
            and those of :func:`~probmed.data.readers.plausibility.check_echo` (``echo_out_of_range``,
            ``echo_constant``, ``echo_frozen``).
    """
    shape, dtype = npy_header(data, "echo")  # the declared shape, before any frame is read
    if len(shape) == 3:
        check_cine_dims("echo", shape[0], shape[1], shape[2], limits)
    check_npy_elements(shape, dtype, len(data), "echo")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise UnreadableInput("echo_unreadable", f"{type(exc).__name__}: {exc}") from exc
    if array.dtype.kind not in "iuf" or array.ndim != 3:
        raise UnreadableInput("echo_unreadable", f"expected numeric [frames, H, W], got {array.dtype} {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0 or array.shape[2] == 0:
        raise UnreadableInput("echo_empty", f"shape {list(array.shape)}")
    cine = array.astype(np.float32) / 255.0
    if not np.all(np.isfinite(cine)):
        raise UnreadableInput("echo_unreadable", "non-finite values")
    return check_echo(cine)
