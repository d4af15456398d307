"""Test-time input corruptions with severities, keyed by the input pipeline that makes a modality's batch input.

Every function takes the batch input of its modality (as the data pipeline produces it, see
:mod:`probmed.data.inputs`), a severity ``s ≥ 0`` (0 = unchanged) and a ``torch.Generator``, and returns a
corrupted copy; it never changes its input in place. ECG and echo inputs are ``{"signal", "lead_mask"}`` and
``{"frames", "frame_mask"}``; a bare signal tensor is accepted too (then there is no mask to update). Units:

* CXR ``[B, 1, S, S]`` standardised ``(pixel − 0.5) / 0.25``: ``noise`` adds Gaussian noise of ``0.05·s`` in pixel
  units (0–1); ``blur`` a Gaussian blur of σ = ``s`` pixels; ``contrast`` shrinks each image's deviation from its
  mean by ``1 / (1 + 0.5·s)``; ``rotation`` turns each film by ``±4·s`` degrees (sign per film, borders
  replicated: a rotated patient); ``exposure`` applies a gamma ``exp(±0.25·s)`` to the pixels clipped to 0–1 (under-
  or over-exposure, sign per film).
* ECG ``[B, leads, T]`` in mV: ``noise`` adds white noise of ``0.05·s`` mV; ``baseline_wander`` adds per lead a
  sinusoid of ``0.2·s`` mV amplitude, one to three cycles per record, random phase; ``lead_dropout`` zeroes
  ``min(leads − 1, 2·s)`` random leads per study and marks them missing in ``lead_mask`` (as a record lacking
  those leads would be).
* Echo ``[B, T, 1, S, S]`` standardised: ``frame_dropout`` blanks (mid grey) each frame with probability
  ``min(0.9, 0.15·s)`` and marks it dropped in ``frame_mask`` (a clip left with no kept frame is, as the echo
  tower treats any such row, encoded with all its frames: blanks included); ``speckle`` multiplies pixel
  intensities by ``1 + 0.1·s·n``, n ~ N(0, 1); ``contrast_loss`` blends each frame towards its mean by
  ``k = min(0.85, 0.25·s)`` and fills the lost contrast with clutter of the frame mean's brightness,
  ``0.3·k·mean·n`` smoothed over 3 × 3 pixels (a poor acoustic window: less contrast and detail, not more
  energy); ``blur`` a Gaussian blur of σ = ``0.5·s`` pixels of each frame (poor lateral resolution);
  ``persistence`` replaces each frame by the running average ``(1 − k)·previous + k·frame``, ``k = 1 −
  min(0.85, 0.25·s)`` (a high persistence setting: the wall motion smeared, the apparent contraction damped);
  ``sector_dropout`` darkens, by ``min(0.9, 0.3·s)``, a wedge of ``min(0.6, 0.1·s)`` rad seen from the apex at the
  top centre, at a random angle (a rib or lung shadow).
* Text ``{"input_ids", "attention_mask"}``: ``word_dropout`` masks out each token other than the first and the
  last attended one with probability ``min(0.9, 0.1·s)``; ``truncation`` keeps only the first
  ``⌈(1 − min(0.9, 0.25·s))·n⌉`` of the n words between them (a terse report); ``word_substitution`` replaces each
  of those words with probability ``min(0.9, 0.1·s)`` by a word of another report of the batch (a report naming
  findings it does not assert, as a hedged one does; a one-report batch is returned unchanged).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from probmed.data.inputs import ECGInput, EchoInput, ImageInput, TextInput
from probmed.data.registry import SPECS

PIXEL_SCALE, PIXEL_SHIFT = 0.25, 0.5  # images are standardised as (pixel − 0.5) / 0.25 by the data pipeline


def _noise_like(x: Tensor, g: torch.Generator) -> Tensor:
    return torch.randn(x.shape, generator=g, dtype=torch.float32).to(device=x.device, dtype=x.dtype)


def _signal(x: Tensor | Mapping[str, Tensor], key: str) -> Tensor:
    """The signal of a modality input: ``x[key]`` of a mapping, or the tensor itself."""
    return x[key] if isinstance(x, Mapping) else x


def _replace(x: Tensor | Mapping[str, Tensor], key: str, signal: Tensor, **masks: Tensor) -> Any:
    """``x`` with its signal replaced (and, for a mapping, the given masks): the input's own layout, a new object."""
    if not isinstance(x, Mapping):
        return signal
    return {**x, key: signal, **masks}


def cxr_noise(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    return x + (0.05 * s / PIXEL_SCALE) * _noise_like(x, g)


def cxr_blur(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    if s <= 0:
        return x.clone()
    radius = max(1, math.ceil(3 * s))
    size = min(2 * radius + 1, 2 * ((x.shape[-1] - 1) // 2) + 1)
    from torchvision.transforms.functional import gaussian_blur  # only when blurring: keeps data workers light

    return gaussian_blur(x, [size, size], [float(s), float(s)])


def cxr_contrast(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return mean + (x - mean) / (1.0 + 0.5 * s)


def _pixels(x: Tensor) -> Tensor:
    return x * PIXEL_SCALE + PIXEL_SHIFT


def _standardised(pixel: Tensor) -> Tensor:
    return (pixel - PIXEL_SHIFT) / PIXEL_SCALE


def cxr_rotation(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    if s <= 0:
        return x.clone()
    sign = torch.where(torch.rand(x.shape[0], generator=g) < 0.5, -1.0, 1.0)
    angle = (sign * math.radians(4.0 * s)).to(device=x.device, dtype=x.dtype)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)  # [B, 2, 3]
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)


def cxr_exposure(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    if s <= 0:
        return x.clone()
    sign = torch.where(torch.rand(x.shape[0], generator=g) < 0.5, -1.0, 1.0)
    gamma = torch.exp(sign * 0.25 * s).to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return _standardised(_pixels(x).clamp(0.0, 1.0) ** gamma)


def ecg_noise(x: Any, s: float, g: torch.Generator) -> Any:
    signal = _signal(x, "signal")
    return _replace(x, "signal", signal + 0.05 * s * _noise_like(signal, g))


def ecg_baseline_wander(x: Any, s: float, g: torch.Generator) -> Any:
    signal = _signal(x, "signal")
    b, leads, t = signal.shape
    cycles = 1.0 + 2.0 * torch.rand(b, leads, 1, generator=g)
    phase = 2 * math.pi * torch.rand(b, leads, 1, generator=g)
    time = torch.linspace(0, 1, t)[None, None, :]
    wander = (0.2 * s * torch.sin(2 * math.pi * cycles * time + phase)).to(device=signal.device, dtype=signal.dtype)
    return _replace(x, "signal", signal + wander)


def ecg_lead_dropout(x: Any, s: float, g: torch.Generator) -> Any:
    signal = _signal(x, "signal")
    b, leads, _ = signal.shape
    n_drop = min(leads - 1, int(round(2 * s)))
    keep = torch.ones(b, leads, dtype=torch.bool)
    for i in range(b):
        keep[i, torch.randperm(leads, generator=g)[:n_drop]] = False
    keep = keep.to(signal.device)
    dropped = signal * keep[:, :, None].to(signal.dtype)
    if not isinstance(x, Mapping):
        return dropped
    return _replace(x, "signal", dropped, lead_mask=(x["lead_mask"] > 0) & keep)


def echo_frame_dropout(x: Any, s: float, g: torch.Generator) -> Any:
    frames = _signal(x, "frames")
    drop = (torch.rand(frames.shape[0], frames.shape[1], generator=g) < min(0.9, 0.15 * s)).to(frames.device)
    blank = torch.zeros((), dtype=frames.dtype, device=frames.device)
    blanked = torch.where(drop[:, :, None, None, None], blank, frames)
    if not isinstance(x, Mapping):
        return blanked
    return _replace(x, "frames", blanked, frame_mask=(x["frame_mask"] > 0) & ~drop)


def echo_speckle(x: Any, s: float, g: torch.Generator) -> Any:
    frames = _signal(x, "frames")
    pixel = frames * PIXEL_SCALE + PIXEL_SHIFT
    pixel = pixel * (1.0 + 0.1 * s * _noise_like(frames, g))
    return _replace(x, "frames", (pixel - PIXEL_SHIFT) / PIXEL_SCALE)


def echo_contrast_loss(x: Any, s: float, g: torch.Generator) -> Any:
    frames = _signal(x, "frames")
    k = min(0.85, 0.25 * s)
    pixel = _pixels(frames)
    mean = pixel.mean(dim=(-2, -1), keepdim=True)
    noise = _noise_like(frames, g).flatten(0, 2)  # [B·T·1, S, S]: smoothed per frame over 3 × 3 pixels
    clutter = torch.nn.functional.avg_pool2d(noise[:, None], 3, stride=1, padding=1, count_include_pad=False)
    clutter = clutter.view_as(frames)
    return _replace(x, "frames", _standardised(mean + (pixel - mean) * (1.0 - k) + 0.3 * k * mean * clutter))


def echo_blur(x: Any, s: float, g: torch.Generator) -> Any:
    frames = _signal(x, "frames")
    if s <= 0:
        return _replace(x, "frames", frames.clone())
    blurred = cxr_blur(frames.flatten(0, 1), 0.5 * s, g).view_as(frames)
    return _replace(x, "frames", blurred)


def echo_persistence(x: Any, s: float, g: torch.Generator) -> Any:
    frames = _signal(x, "frames")
    keep = 1.0 - min(0.85, 0.25 * s)
    out = [frames[:, 0]]
    for t in range(1, frames.shape[1]):
        out.append(keep * frames[:, t] + (1.0 - keep) * out[-1])
    return _replace(x, "frames", torch.stack(out, dim=1))


def echo_sector_dropout(x: Any, s: float, g: torch.Generator) -> Any:
    frames = _signal(x, "frames")
    if s <= 0:
        return _replace(x, "frames", frames.clone())
    size = frames.shape[-1]
    rows = torch.arange(size, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(size, dtype=torch.float32)[None, :] + 0.5 - size / 2
    angle = torch.atan2(cols, rows)  # [S, S] from the apex at the top centre, 0 straight down
    centre = (torch.rand(frames.shape[0], generator=g) - 0.5) * 1.2  # rad, within the sector
    half = min(0.6, 0.1 * s) / 2
    wedge = ((angle[None] - centre[:, None, None]).abs() < half).to(device=frames.device, dtype=frames.dtype)
    gain = 1.0 - min(0.9, 0.3 * s) * wedge  # [B, S, S]
    return _replace(x, "frames", _standardised(_pixels(frames) * gain[:, None, None]))


def text_truncation(x: dict[str, Tensor], s: float, g: torch.Generator) -> dict[str, Tensor]:
    mask = x["attention_mask"]
    length = mask.sum(dim=1, keepdim=True)
    last = length - 1  # the closing special token
    kept = 1 + torch.ceil((length - 2).clamp_min(0) * (1.0 - min(0.9, 0.25 * s)))  # first token + kept words
    position = torch.arange(mask.shape[1])[None, :].to(mask.device)
    cut = (position >= kept) & (position != last) & (mask > 0)
    return {**x, "attention_mask": mask.masked_fill(cut, 0)}


def text_word_dropout(x: dict[str, Tensor], s: float, g: torch.Generator) -> dict[str, Tensor]:
    mask = x["attention_mask"]
    last = mask.sum(dim=1, keepdim=True) - 1  # the closing special token
    position = torch.arange(mask.shape[1])[None, :].to(mask.device)
    droppable = (mask > 0) & (position > 0) & (position != last)
    drop = (torch.rand(mask.shape, generator=g) < min(0.9, 0.1 * s)).to(mask.device) & droppable
    return {**x, "attention_mask": mask.masked_fill(drop, 0)}


def text_word_substitution(x: dict[str, Tensor], s: float, g: torch.Generator) -> dict[str, Tensor]:
    mask, ids = x["attention_mask"], x["input_ids"]
    b, width = ids.shape
    last = mask.sum(dim=1, keepdim=True) - 1  # the closing special token
    position = torch.arange(width)[None, :].to(mask.device)
    words = (mask > 0) & (position > 0) & (position != last)  # [B, W] what may be replaced, and the donor pool
    swap = (torch.rand(ids.shape, generator=g) < min(0.9, 0.1 * s)).to(mask.device) & words
    if b < 2 or not swap.any():
        return {**x, "input_ids": ids.clone()}
    donor_row = (torch.arange(b)[:, None] + torch.randint(1, b, (b, width), generator=g)) % b  # another report
    donor_len = words.sum(1).clamp_min(1).cpu()  # words of each report, at positions 1..n
    donor_pos = 1 + (torch.rand(b, width, generator=g) * donor_len[donor_row]).long()
    donors = ids[donor_row.to(ids.device), donor_pos.to(ids.device)]
    has_words = (words.sum(1) > 0)[donor_row.to(ids.device)]
    return {**x, "input_ids": torch.where(swap & has_words, donors, ids)}


#: Input pipeline class → corruption kind → function(batch input, severity, generator). A pipeline's subclasses
#: (a second radiograph view, a CT slice, the impression section) share its batch layout and so its corruptions.
CORRUPTIONS: dict[type, dict[str, Callable]] = {
    ImageInput: {"noise": cxr_noise, "blur": cxr_blur, "contrast": cxr_contrast, "rotation": cxr_rotation,
                 "exposure": cxr_exposure},
    ECGInput: {"noise": ecg_noise, "baseline_wander": ecg_baseline_wander, "lead_dropout": ecg_lead_dropout},
    EchoInput: {"frame_dropout": echo_frame_dropout, "speckle": echo_speckle, "contrast_loss": echo_contrast_loss,
                "sector_dropout": echo_sector_dropout, "blur": echo_blur, "persistence": echo_persistence},
    TextInput: {"word_dropout": text_word_dropout, "truncation": text_truncation,
                "word_substitution": text_word_substitution},
}


def corruptions_for(pipeline: type) -> dict[str, Callable]:
    """Kind → function for an input pipeline class (its nearest base in :data:`CORRUPTIONS`), or ``{}``."""
    for cls in pipeline.__mro__:
        if cls in CORRUPTIONS:
            return CORRUPTIONS[cls]
    return {}


def get_corruption(modality: str, kind: str, like: str | None = None) -> Callable:
    """The function for ``kind`` on the registered ``modality`` (or on the registered modality ``like``, for a
    modality added in the config alone, e.g. ``retina`` corrupted like ``cxr``), or a clear error naming what
    exists."""
    name = like or modality
    kinds = corruptions_for(SPECS[name].pipeline) if name in SPECS else {}
    if not kinds:
        have = sorted(n for n, s in SPECS.items() if corruptions_for(s.pipeline))
        raise ValueError(f"no corruptions registered for modality {name!r}; have {have} (for a modality added in "
                         f"the config, set `like:` to a registered one whose input has the same layout)")
    if kind not in kinds:
        raise ValueError(f"unknown {name} corruption {kind!r}; choose one of {sorted(kinds)}")
    return kinds[kind]


def corrupt(modality: str, kind: str, inputs: Any, severity: float, seed: int, like: str | None = None) -> Any:
    """Apply one corruption at one severity with a generator seeded by ``seed`` (deterministic per batch)."""
    if severity < 0:
        raise ValueError(f"severity must be ≥ 0, got {severity}")
    fn = get_corruption(modality, kind, like)
    return fn(inputs, float(severity), torch.Generator().manual_seed(int(seed)))


def all_corruptions(keys, severities=(1.0, 2.0, 3.0)) -> list[dict]:
    """``model.evaluation.corruptions`` entries for every registered corruption of every key of ``keys`` that is
    a registered modality (others are skipped), each at ``severities``: the suite's σ²-against-severity
    measurement over everything the registry can corrupt (``<stage>/robustness/<m>/variance_spearman``)."""
    return [{"modality": k, "kind": kind, "severities": [float(s) for s in severities]}
            for k in keys if k in SPECS for kind in corruptions_for(SPECS[k].pipeline)]
