"""Per-tower compute switches, set in YAML: activation checkpointing, micro-batching and ``torch.compile``.

``trainer.callbacks``::

    - class_path: probmed.training.TowerCompute
      init_args: {checkpoint: [echo], micro_batch_size: {cxr: 16, text: 32}, compile: [ecg]}

Applied in ``setup`` — before the strategy wraps the model in DDP — on ``module.encoders[name]``:

* ``checkpoint``: the tower's forward runs under ``torch.utils.checkpoint`` (non-reentrant): its activations are
  recomputed in the backward instead of stored — memory ∝ tower inputs/outputs, compute +1 forward of that tower.
* ``micro_batch_size``: the tower embeds the studies of a training batch ``n`` at a time, each chunk checkpointed:
  the backward recomputes and releases one chunk's activations after the other, so the tower's activation memory
  is that of ``n`` studies while the loss still sees — and contrasts — every embedding of the batch. This is the
  exact form of gradient accumulation for a contrastive loss (GradCache, Gao et al. 2021; see
  :mod:`probmed.training.accumulation`): the gradient equals the whole batch's for towers whose forward treats
  studies independently (layer norm, frozen batch norm); a training batch-norm tower normalises each chunk with
  that chunk's statistics (as under GradCache) and updates its running statistics once per chunk.
* ``compile``: ``nn.Module.compile`` in place (parameter names, hence checkpoints, unchanged); ``compile_kwargs``
  go to ``torch.compile`` (e.g. ``{mode: max-autotune, dynamic: true}``; ``dynamic`` helps towers whose batch size
  varies with the modality mask).

The recomputation leaves batch-norm running statistics as the first forward set them (they are restored after it),
so checkpointing changes no buffer; under ``torch.compile`` of the same tower that restore is not possible and a
recomputed batch-norm tower updates its statistics twice. Evaluation (no gradient) runs the plain forward.
"""
from __future__ import annotations

import functools
from typing import Any, Iterator, Optional

import lightning as L
import torch
from torch import Tensor, nn

from probmed.encoders._common import batch_norm_layers, checkpoint_call


def _chunks(args: tuple, kwargs: dict, size: int) -> Iterator[tuple[tuple, dict]]:
    """The call's tensor arguments cut into consecutive chunks of ``size`` rows, a one-row remainder joined to the
    last full chunk (other arguments passed as is)."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor) and a.ndim > 0]
    if not tensors:
        raise TypeError("a micro-batched tower needs at least one tensor argument with a batch dimension")
    rows = {int(t.shape[0]) for t in tensors}
    if len(rows) > 1:
        raise ValueError(f"a micro-batched tower's tensor arguments differ in batch size: {sorted(rows)}")
    total = rows.pop()

    bounds = list(range(0, total, size)) + [total]
    if len(bounds) > 2 and total - bounds[-2] == 1:  # a one-row remainder joins the chunk before it: batch-norm
        del bounds[-2]                               # statistics of a single row are undefined in training

    def cut(value: Any, start: int, stop: int) -> Any:
        return value[start:stop] if isinstance(value, Tensor) and value.ndim > 0 else value

    for start, stop in zip(bounds[:-1], bounds[1:]):
        yield tuple(cut(a, start, stop) for a in args), {k: cut(v, start, stop) for k, v in kwargs.items()}


def checkpoint_forward(tower: nn.Module, micro_batch_size: Optional[int] = None) -> None:
    """Make ``tower``'s training forward recompute its activations in the backward, ``micro_batch_size`` rows at a
    time (None: the whole batch as one chunk). Outputs ``[B, ...]`` tensors, concatenated over the chunks."""
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be a positive number of studies, got {micro_batch_size}")
    if micro_batch_size == 1 and batch_norm_layers(tower):
        raise ValueError("micro_batch_size=1 for a batch-norm tower: training batch statistics need >= 2 studies")
    if hasattr(tower, "_probmed_micro_batch_size"):  # already wrapped (setup runs once per stage)
        if tower._probmed_micro_batch_size != micro_batch_size:
            raise ValueError(f"tower already checkpointed with micro_batch_size={tower._probmed_micro_batch_size}")
        return
    forward = tower.forward

    def run(*args, **kwargs) -> Tensor:
        return checkpoint_call(tower, forward, *args, **kwargs)

    @functools.wraps(forward)
    def checkpointed(*args, **kwargs):
        if not (tower.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        if micro_batch_size is None:
            return run(*args, **kwargs)
        outputs = [run(*a, **k) for a, k in _chunks(args, kwargs, micro_batch_size)]
        if not all(isinstance(o, Tensor) for o in outputs):
            raise TypeError(f"a micro-batched tower must return a tensor [B, ...], got {type(outputs[0]).__name__}")
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    tower.forward = checkpointed
    tower._probmed_micro_batch_size = micro_batch_size


class TowerCompute(L.Callback):
    """Activation checkpointing, micro-batching and ``torch.compile`` per modality tower (see the module docstring).

    Args:
        checkpoint: towers whose training forward is checkpointed as a whole.
        micro_batch_size: tower → studies per checkpointed chunk (implies checkpointing that tower).
        compile: towers compiled in place with ``compile_kwargs``.
    """

    def __init__(self, checkpoint: list[str] = [], micro_batch_size: dict[str, int] = {},  # noqa: B006
                 compile: list[str] = [], compile_kwargs: dict[str, Any] = {}):  # noqa: B006 (jsonargparse literal)
        self.checkpoint, self.compile, self.compile_kwargs = list(checkpoint), list(compile), dict(compile_kwargs)
        self.micro_batch_size = {name: int(n) for name, n in micro_batch_size.items()}
        bad = {name: n for name, n in self.micro_batch_size.items() if n < 1}
        if bad:
            raise ValueError(f"TowerCompute micro_batch_size must be positive numbers of studies, got {bad}")
        both = sorted(set(self.checkpoint) & set(self.micro_batch_size))
        if both:
            raise ValueError(f"TowerCompute: {both} in both checkpoint and micro_batch_size (a micro-batched tower is "
                             "already checkpointed, chunk by chunk); name each tower once")

    def setup(self, trainer, pl_module, stage: str) -> None:
        towers = pl_module.encoders
        named = set(self.checkpoint) | set(self.micro_batch_size) | set(self.compile)
        unknown = sorted(named - set(towers))
        if unknown:
            raise ValueError(f"TowerCompute names {unknown}, which are not towers; towers: {sorted(towers)}")
        for name in self.checkpoint:
            checkpoint_forward(towers[name])
        for name, size in self.micro_batch_size.items():
            checkpoint_forward(towers[name], size)
        for name in self.compile:
            towers[name].compile(**self.compile_kwargs)
