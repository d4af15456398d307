"""Physiological plausibility of decoded signals: finite-but-absurd values are refused with a counted cause.

A finite signal can still poison a model: ECG samples of 1e30 µV (float32, finite) gave a finite loss and left
``running_var = inf`` in the ECG stem's batch norm, after which every ECG embedding was the same vector. The shard
readers (:func:`~probmed.data.readers.read_ecg_npy`, :func:`~probmed.data.readers.read_echo_npy`, the CXR readers)
call these checks on what they decode and raise :class:`UnreadableInput` with a stable ``reason``, so the loader
counts the cause and drops the modality of that study (the rest of the study is still used).

Bounds are deliberately generous — they reject what no recording device produces, not unusual patients:

* ECG (millivolts, ``[leads, samples]``): ``ecg_implausible_amplitude`` when any lead strays more than
  :data:`ECG_MAX_ABS_MV` from its own median (surface ECG: QRS rarely above 5 mV, pacing spikes around 10 mV; the
  median removes a DC offset); ``ecg_flat_line`` when every lead is flat (peak-to-peak below :data:`ECG_FLAT_MV`,
  an electrode-off or zero-filled record); ``ecg_stuck_lead`` when a lead is flat at a non-zero value (a saturated
  or disconnected channel; all-zero rows are how a *missing* lead is stored and are left to the lead mask).
* CXR (any range, before scaling to [0, 1]): ``cxr_implausible_range`` when values exceed :data:`CXR_MAX_ABS`
  (no detector's stored values and rescale reach it) or when the image is outlier-dominated — its 0.5–99.5 %
  percentile range is under :data:`CXR_MIN_CORE_FRACTION` of its full range, so min–max scaling would map almost
  every pixel to one grey level.
* Echo (``[frames, H, W]`` in [0, 1] after scaling): ``echo_out_of_range`` for values outside [0, 1] (a float
  cine that was not 8-bit grey levels), ``echo_constant`` for a cine of one grey level, ``echo_frozen`` for a
  multi-frame cine whose frames are all identical (no motion: not a heart).
"""
from __future__ import annotations

import numpy as np

from probmed.data.readers.errors import UnreadableInput

ECG_MAX_ABS_MV = 25.0
ECG_FLAT_MV = 0.01
CXR_MAX_ABS = 1e6
CXR_MIN_CORE_FRACTION = 0.01
ECHO_TOLERANCE = 1e-6


def check_ecg(signal: np.ndarray) -> np.ndarray:
    """``signal`` (float millivolts ``[leads, samples]``, finite) if plausible; raises :class:`UnreadableInput`."""
    centred = signal - np.median(signal, axis=1, keepdims=True)
    peak = float(np.abs(centred).max())
    if peak > ECG_MAX_ABS_MV:
        raise UnreadableInput("ecg_implausible_amplitude",
                              f"a lead deviates {peak:.3g} mV from its median (bound {ECG_MAX_ABS_MV} mV)")
    span = signal.max(axis=1) - signal.min(axis=1)
    flat = span < ECG_FLAT_MV
    if flat.all():
        raise UnreadableInput("ecg_flat_line", f"every lead is flat (peak-to-peak < {ECG_FLAT_MV} mV)")
    stuck = flat & (np.abs(signal).max(axis=1) >= ECG_FLAT_MV)
    if stuck.any():
        raise UnreadableInput("ecg_stuck_lead", f"leads {np.flatnonzero(stuck).tolist()} are constant and non-zero")
    return signal


def check_cxr(image: np.ndarray) -> np.ndarray:
    """``image`` (finite, any range, before min–max scaling) if plausible; raises :class:`UnreadableInput`."""
    low, high = float(image.min()), float(image.max())
    if max(abs(low), abs(high)) > CXR_MAX_ABS:
        raise UnreadableInput("cxr_implausible_range", f"pixel values reach {max(abs(low), abs(high)):.3g}")
    if high > low:
        step = max(1, int(np.sqrt(image.size / 65536)))  # percentiles of a ≤ 256² subsample: cheap on a 3k² image
        sample = image[::step, ::step] if image.ndim == 2 else image.reshape(-1)[:: step * step]
        core_low, core_high = np.percentile(sample, [0.5, 99.5])
        if core_high - core_low < CXR_MIN_CORE_FRACTION * (high - low):
            raise UnreadableInput("cxr_implausible_range",
                                  f"99 % of pixels lie in {100 * (core_high - core_low) / (high - low):.2g} % of the "
                                  "value range (outliers would flatten the image to one grey level)")
    return image


def check_echo(cine: np.ndarray) -> np.ndarray:
    """``cine`` (``[frames, H, W]``, scaled to [0, 1]) if plausible; raises :class:`UnreadableInput`."""
    low, high = float(cine.min()), float(cine.max())
    if low < -ECHO_TOLERANCE or high > 1 + ECHO_TOLERANCE:
        raise UnreadableInput("echo_out_of_range", f"values in [{low:.3g}, {high:.3g}] after scaling, not [0, 1] "
                                                   "(expected 8-bit grey levels)")
    if high - low <= ECHO_TOLERANCE:
        raise UnreadableInput("echo_constant", f"every pixel of every frame is {low:.3g}")
    if cine.shape[0] > 1 and not np.any(np.abs(cine[1:] - cine[:1]) > ECHO_TOLERANCE):
        raise UnreadableInput("echo_frozen", f"all {cine.shape[0]} frames are identical")
    return cine
