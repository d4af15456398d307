"""Training-step metrics averaged over ranks in one packed all-reduce, only on the steps that are logged.

Lightning's ``self.log(..., sync_dist=True)`` reduces every metric separately at every step, whatever
``log_every_n_steps`` says (about 30 host-syncing collectives per ProbMed step). The module instead logs its
step metrics only on logging steps, averaged over ranks by :func:`mean_over_ranks`: one all-reduce of all values
stacked into one float32 vector.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from probmed.distributed import world_size


def logging_step(trainer) -> bool:
    """Whether the current training step's metrics reach the loggers (``log_every_n_steps``). It depends only on
    the step count, so every rank decides alike (Lightning also logs when ``should_stop`` is set; that extra point
    is not needed and would make the decision depend on rank-local state)."""
    every = trainer.log_every_n_steps
    return every > 0 and (trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % every == 0


def mean_over_ranks(values: dict[str, Tensor | float]) -> dict[str, Tensor]:
    """``values`` (scalars, any float dtype) averaged over ranks as float32, in one all-reduce of their stacked
    vector ``[len(values)]``; unchanged (as float32 tensors) without a process group. Every rank must pass the same
    keys in the same order. A NaN on any rank makes that metric NaN."""
    if not values:
        return {}
    keys = list(values)
    device = next((v.device for v in values.values() if torch.is_tensor(v)), torch.device("cpu"))
    packed = torch.stack([torch.as_tensor(values[k], device=device).detach().float().reshape(()) for k in keys])
    if world_size() > 1:
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        packed = packed / world_size()
    return dict(zip(keys, packed.unbind(0)))
