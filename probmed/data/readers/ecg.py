"""12-lead ECG arrays: stored int16 microvolts → float32 millivolts at the model's sampling rate."""
from __future__ import annotations

import io
from math import gcd

import numpy as np
from scipy.signal import resample_poly

from probmed.data.limits import DEFAULT_LIMITS, Limits, check_ecg_dims, check_npy_elements, npy_header
from probmed.data.readers.errors import UnreadableInput
from probmed.data.readers.plausibility import check_ecg


def read_ecg_npy(data: bytes, n_leads: int, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode a ``.npy`` ECG of shape ``[leads, samples]`` (microvolts) into ``float32`` millivolts.

    The file is read with ``allow_pickle=False``: an object array is refused, never unpickled.

    Raises:
        UnreadableInput: ``ecg_too_large`` (the header declares more leads or samples than ``limits``; nothing
            read), ``ecg_unreadable`` (not a plain numeric .npy, or shorter than its header declares),
            ``ecg_wrong_lead_count`` (first axis is not ``n_leads``), ``ecg_nonfinite`` (NaN/inf samples), ``ecg_empty`` (no samples), and the physiological
            bounds of :func:`~probmed.data.readers.plausibility.check_ecg` (``ecg_implausible_amplitude``,
            ``ecg_flat_line``, ``ecg_stuck_lead``).
    """
    shape, dtype = npy_header(data, "ecg")  # the declared shape, before any sample is read
    if len(shape) == 2:
        check_ecg_dims(shape[0], shape[1], limits)
    check_npy_elements(shape, dtype, len(data), "ecg")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise UnreadableInput("ecg_unreadable", f"{type(exc).__name__}: {exc}") from exc
    if array.dtype.kind not in "iuf":
        raise UnreadableInput("ecg_unreadable", f"dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] != n_leads:
        raise UnreadableInput("ecg_wrong_lead_count", f"expected [{n_leads}, samples], got {list(array.shape)}")
    if array.shape[1] == 0:
        raise UnreadableInput("ecg_empty", "no samples")
    signal = array.astype(np.float32) / 1000.0
    if not np.all(np.isfinite(signal)):
        raise UnreadableInput("ecg_nonfinite", "NaN or inf samples")
    return check_ecg(signal)


def resample_ecg(signal: np.ndarray, rate: float, target_rate: float) -> np.ndarray:
    """Resample ``[leads, samples]`` from ``rate`` to ``target_rate`` Hz (polyphase, anti-aliased; rates are
    rounded to whole Hz)."""
    if round(rate) == round(target_rate):
        return signal
    num, den = int(round(target_rate)), int(round(rate))
    g = gcd(num, den)
    return resample_poly(signal, num // g, den // g, axis=-1).astype(np.float32)
