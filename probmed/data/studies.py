"""Raw webdataset sample → decoded study → batch, with every skipped input counted by cause.

A *batch* (what the LightningModule receives) is a dict:

- ``inputs``: ``{modality: model input}`` — a tensor (``cxr [B, 1, S, S]``) or a dict of tensors passed to the
  tower as keyword arguments (:mod:`probmed.encoders.tower_input`): ``ecg {"signal": [B, leads, L] mV,
  "lead_mask": bool [B, leads]}``, ``echo {"frames": [B, T, 1, S, S], "frame_mask": bool [B, T]}``, ``text
  {"input_ids": [B, S], "attention_mask": [B, S]}``; a zero placeholder (masks all False) stands in wherever the
  study lacks the modality;
- ``present``: ``{modality: bool [B]}``;
- ``group``: ``int64 [B]`` positive-group id (hash of the study id, or of the patient id);
- ``labels``: ``float32 [B, len(labels)]`` in the dataset's label-vocabulary order (:mod:`probmed.data.labels`),
  NaN where a label is missing (or uncertain under the ``ignore`` policy);
- ``ambiguity``: ``{modality: float32 [B]}`` for every modality of ``inputs``: the study's recorded ambiguity in
  [0, 1] (``meta["ambiguity"][modality]``: the synthetic corpus's quality, or a manifest's ``ambiguity:<m>``
  column), NaN where the study lacks the modality or the metadata gives no value; an invalid value (not a number,
  not finite, outside [0, 1]) is NaN and counted as ``ambiguity_invalid``. Ground truth for evaluation only: the
  model never reads it;
- ``study_id``: list of B strings;
- ``skipped``: ``{cause: count}`` of inputs this worker skipped since its previous batch.
"""
from __future__ import annotations

import hashlib
import json
import logging
from fnmatch import fnmatchcase
from collections import Counter
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from probmed.data import schema
from probmed.data.inputs import ModalityInput
from probmed.data.labels import check_policy, label_vector, value_name
from probmed.data.readers import UnreadableInput, UnsafeInput

log = logging.getLogger(__name__)


def stable_hash(text: str) -> int:
    """A non-negative 63-bit integer hash of ``text``, identical in every process and run."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


class SkipCounter(Counter):
    """Counts skipped inputs by cause; also usable as a webdataset exception handler (counts, warns, continues)."""

    def add(self, cause: str, detail: str = "") -> None:
        self[cause] += 1
        if self[cause] <= 3:  # say why, without flooding the log
            log.warning("skipped input (%s): %s", cause, detail[:300])

    def __call__(self, exc: BaseException) -> bool:
        self.add("shard_read_error", f"{type(exc).__name__}: {exc}")
        return True

    def pop_all(self) -> dict[str, int]:
        counts = dict(self)
        self.clear()
        return counts


def _valid_label(value) -> bool:
    try:
        value_name(value)
    except ValueError:
        return False
    return True


class StudyDecoder:
    """Decodes one raw sample (``{"__key__": id, ext: bytes, ...}``) into a study dict, or returns None (counted).

    Args:
        inputs: modality name → its input pipeline.
        positives: ``"study"`` (a study's own modalities are its positives) or ``"patient"`` (every study of the
            same patient is a positive).
        known_files: glob patterns of shard files that are expected though not loaded (default: every registered
            modality's, :mod:`probmed.data.registry`); any other file no input reads is counted as
            ``unknown_extension``.
        labels: the label vocabulary, in label-vector order (default: the embedded corpus's findings).
        uncertain: what an uncertain (-1) label becomes: ``ignore`` (NaN), ``positive`` (1) or ``negative`` (0).
    """

    def __init__(self, inputs: dict[str, ModalityInput], positives: str = "study",
                 known_files: tuple[str, ...] | None = None, labels: tuple[str, ...] = schema.FINDINGS,
                 uncertain: str = "ignore"):
        if positives not in ("study", "patient"):
            raise ValueError(f"positives must be 'study' or 'patient', got {positives!r}")
        self.labels, self.uncertain = tuple(labels), check_policy(uncertain)
        self.inputs = inputs
        self.positives = positives
        if known_files is None:
            from probmed.data.registry import SPECS

            known_files = tuple(p for spec in SPECS.values() for p in spec.files)
        self.known_files = tuple(known_files)

    def _known(self, file_name: str) -> bool:
        return (any(m.owns(file_name) for m in self.inputs.values())
                or any(fnmatchcase(file_name, p) for p in self.known_files))

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator, train: bool, skips: SkipCounter):
        key = sample.get("__key__", "?")
        unsafe = [ext for ext in sample if not ext.startswith("__") and ext.rsplit(".", 1)[-1] in schema.FORBIDDEN_EXTS]
        if unsafe:
            skips.add("unsafe_sample", f"{key}: refused {unsafe} (files that could execute code are never decoded)")
            return None
        try:
            meta = json.loads(sample[schema.META_EXT])
            if not isinstance(meta, dict):
                raise ValueError("metadata is not a JSON object")
        except Exception as exc:
            skips.add("meta_invalid", f"{key}: {type(exc).__name__}: {exc}")
            return None
        for ext in sample:
            if not ext.startswith("__") and ext != schema.META_EXT and not self._known(ext):
                skips.add("unknown_extension", f"{key}: ignored file .{ext} (no reader for it)")
        study = {"study_id": str(meta.get("study_id", key)), "inputs": {}, "present": {}}
        for name, modality in self.inputs.items():
            value = None
            if modality.stored(sample):
                try:
                    value = modality.decode(sample, meta, rng, train)
                except UnsafeInput:
                    raise
                except UnreadableInput as exc:
                    skips.add(exc.reason, f"{key}: {exc}")
                except Exception as exc:  # a reader bug must not kill a long run; count it loudly instead
                    skips.add(f"{name}_decode_error", f"{key}: {type(exc).__name__}: {exc}")
            study["present"][name] = value is not None
            study["inputs"][name] = modality.placeholder() if value is None else value
        if not any(study["present"].values()):
            skips.add("no_usable_modality", str(key))
            return None
        group_key = meta.get("patient_id") if self.positives == "patient" else None
        study["group"] = stable_hash(str(group_key or study["study_id"]))
        findings = meta.get("findings")
        if isinstance(findings, dict):  # untrusted metadata: "Infinity", a 4000-digit integer, ... skip this study
            bad = [n for n in self.labels if not _valid_label(findings.get(n))]
            if bad:
                skips.add("label_invalid", f"{key}: findings {bad[:3]} are not 1, 0, -1 or absent")
                return None
        study["labels"] = label_vector(findings if isinstance(findings, dict) else {}, self.labels, self.uncertain)
        study["ambiguity"] = study_ambiguity(meta, study["present"], skips, str(key))
        return study


def study_ambiguity(meta: dict, present: dict[str, bool], skips: SkipCounter, key: str = "?") -> dict[str, float]:
    """``{modality: ambiguity}`` for each modality of ``present``: ``meta["ambiguity"][modality]`` as a float in
    [0, 1]; NaN where the modality is absent or no value is recorded; NaN and one ``ambiguity_invalid`` skip per
    invalid value (non-numeric, non-finite, outside [0, 1]) or a non-object ``ambiguity`` field."""
    recorded = meta.get("ambiguity")
    if recorded is None:
        recorded = {}
    elif not isinstance(recorded, dict):
        skips.add("ambiguity_invalid", f"{key}: 'ambiguity' is {type(recorded).__name__}, not an object")
        recorded = {}
    out: dict[str, float] = {}
    for name, is_present in present.items():
        value = recorded.get(name)
        out[name] = float("nan")
        if value is None:
            continue
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")
        if not (0.0 <= number <= 1.0):  # also False for NaN
            skips.add("ambiguity_invalid", f"{key}: ambiguity of {name} is {value!r} (a number in [0, 1] expected)")
        elif is_present:
            out[name] = number
    return out


class StudyCollator:
    """Stacks decoded studies into a batch (see the module docstring for its layout)."""

    def __init__(self, inputs: dict[str, ModalityInput]):
        self.inputs = inputs

    def __call__(self, studies: list[dict], skipped: dict[str, int]) -> dict[str, Any]:
        return {
            "inputs": {n: m.collate([s["inputs"][n] for s in studies]) for n, m in self.inputs.items()},
            "present": {n: torch.tensor([s["present"][n] for s in studies]) for n in self.inputs},
            "group": torch.tensor([s["group"] for s in studies], dtype=torch.int64),
            "labels": torch.from_numpy(np.stack([s["labels"] for s in studies])),
            "ambiguity": {n: torch.tensor([s.get("ambiguity", {}).get(n, float("nan")) for s in studies],
                                          dtype=torch.float32) for n in self.inputs},
            "study_id": [s["study_id"] for s in studies],
            "skipped": skipped,
        }


def batches(
    studies: Iterable[dict], collate: StudyCollator, batch_size: int, skips: SkipCounter, partial: bool
) -> Iterator[dict]:
    """Group studies into batches of ``batch_size``; a final short batch only when ``partial``.

    Each batch carries the skips counted since the previous one. A finite (``partial``) stream holds each full
    batch back until the next study arrives, so skips counted after the last study (a broken or empty last shard)
    ride with the last batch instead of being lost."""
    buffer: list[dict] = []
    held: list[dict] | None = None
    for study in studies:
        if held is not None:
            yield collate(held, skips.pop_all())
            held = None
        buffer.append(study)
        if len(buffer) == batch_size:
            if partial:
                held = buffer
            else:
                yield collate(buffer, skips.pop_all())
            buffer = []
    if held is not None:
        yield collate(held, skips.pop_all())
    elif buffer and partial:
        yield collate(buffer, skips.pop_all())
