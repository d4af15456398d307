"""Per-tower compute switches, set in YAML: activation (gradient) checkpointing and ``torch.compile``.

``trainer.callbacks``::

    - class_path: probmed.training.TowerCompute
      init_args: {checkpoint: [cxr, echo], compile: [text]}

Applied in ``setup`` — before the strategy wraps the model in DDP — on ``module.encoders[name]``:

* ``checkpoint``: the tower's forward runs under ``torch.utils.checkpoint`` (non-reentrant): its activations are
  recomputed in the backward instead of stored — memory ∝ tower inputs/outputs, compute +1 forward of that tower.
  Batch-norm towers update their running statistics twice per step (once more in the recomputation).
* ``compile``: ``nn.Module.compile`` in place (parameter names, hence checkpoints, unchanged); ``compile_kwargs``
  go to ``torch.compile`` (e.g. ``{mode: max-autotune, dynamic: true}``; ``dynamic`` helps towers whose batch size
  varies with the modality mask).
"""
from __future__ import annotations

import functools
from typing import Any

import lightning as L
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint


def checkpoint_forward(tower: nn.Module) -> None:
    """Make ``tower``'s forward recompute its activations in the backward (idempotent)."""
    if getattr(tower, "_probmed_checkpointed", False):
        return
    forward = tower.forward

    @functools.wraps(forward)
    def checkpointed(*args, **kwargs):
        if not tower.training:
            return forward(*args, **kwargs)
        return activation_checkpoint(forward, *args, use_reentrant=False, **kwargs)

    tower.forward = checkpointed
    tower._probmed_checkpointed = True


class TowerCompute(L.Callback):
    """Gradient checkpointing and ``torch.compile`` per modality tower (see the module docstring)."""

    def __init__(self, checkpoint: list[str] = [], compile: list[str] = [],  # noqa: B006 (jsonargparse literal)
                 compile_kwargs: dict[str, Any] = {}):  # noqa: B006
        self.checkpoint, self.compile, self.compile_kwargs = list(checkpoint), list(compile), dict(compile_kwargs)

    def setup(self, trainer, pl_module, stage: str) -> None:
        towers = pl_module.encoders
        unknown = sorted((set(self.checkpoint) | set(self.compile)) - set(towers))
        if unknown:
            raise ValueError(f"TowerCompute names {unknown}, which are not towers; towers: {sorted(towers)}")
        for name in self.checkpoint:
            checkpoint_forward(towers[name])
        for name in self.compile:
            towers[name].compile(**self.compile_kwargs)
