"""How a modality's batch input reaches its tower — one convention for every modality (ImageBind style).

A modality's batch input is either

* a tensor ``[B, ...]``: the tower is called as ``tower(x)`` (e.g. CXR ``[B, 1, S, S]``); or
* a mapping of tensors ``{argument name: [B, ...]}``: the tower is called with them as keyword arguments,
  ``tower(**inputs)`` — e.g. ECG ``{"signal": [B, leads, L], "lead_mask": [B, leads]}`` →
  ``ECGEncoder.forward(signal, lead_mask)``, echo ``{"frames", "frame_mask"}`` → ``EchoEncoder.forward``, text
  ``{"input_ids", "attention_mask"}`` → ``TextEncoder.forward``.

Masks and other per-study side inputs thus travel with their signal, and the LightningModule needs no
per-modality branch: it selects rows with :func:`select_rows` and calls :func:`run_tower`.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn


def batch_size_of(inputs: Tensor | Mapping[str, Tensor]) -> int:
    """B of a modality input; a clear error when the tensors of a mapping disagree on it or one is not a tensor."""
    if not isinstance(inputs, Mapping):
        return int(inputs.shape[0])
    sizes = {}
    for key, value in inputs.items():
        if not isinstance(value, Tensor) or value.ndim == 0:
            kind = type(value).__name__
            raise TypeError(f"modality input {key!r} must be a tensor with a batch dimension, not {kind}")
        sizes[key] = int(value.shape[0])
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the tensors of one modality input differ in batch size: {sizes}")
    return next(iter(sizes.values()))


def select_rows(inputs: Tensor | Mapping[str, Tensor], rows: Tensor) -> Tensor | dict[str, Tensor]:
    """The same rows (studies) ``rows`` (int64 ``[N]``) of the tensor, or of every tensor of the mapping."""
    batch_size_of(inputs)  # mismatched mappings fail here, not as a shape error deep inside the tower
    if isinstance(inputs, Mapping):
        return {key: value[rows] for key, value in inputs.items()}
    return inputs[rows]


def concat_rows(first: Tensor | Mapping[str, Tensor], second: Tensor | Mapping[str, Tensor]) -> Any:
    """The rows of ``second`` appended to those of ``first`` (the same layout: two tensors, or two mappings with the
    same keys)."""
    if isinstance(first, Mapping):
        if not isinstance(second, Mapping) or set(first) != set(second):
            raise ValueError("concat_rows: both inputs must be mappings with the same keys")
        return {key: torch.cat([first[key], second[key]]) for key in first}
    return torch.cat([first, second])


def run_tower(tower: nn.Module, inputs: Tensor | Mapping[str, Tensor]) -> Any:
    """``tower(**inputs)`` for a mapping, ``tower(inputs)`` for a tensor."""
    return tower(**inputs) if isinstance(inputs, Mapping) else tower(inputs)
