"""The training objective measured on evaluation batches: ``val/loss`` (and ``test/loss``) beside ``train/loss``.

Each evaluation batch is scored by the module's own :class:`~probmed.losses.Objective` — the same terms and parts
as ``train/<part>`` — on that rank's rows only (``distributed="local"`` for the call: evaluation runs no per-step
collective, and ranks may read different numbers of batches), without advancing the objective's step counter (the
seed of its random draws, so training stays exactly as without it). The epoch value is the mean over the split's
rows: ``sum(batch loss · batch rows) / rows``, summed over ranks by one object gather at the epoch end, identical on
every rank. A contrastive loss depends on its batch size: compare ``val/loss`` with itself over training (and with
``train/loss`` only at equal batch sizes), not across batch sizes.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

from probmed.distributed import all_gather_objects


@torch.no_grad()
def local_objective(objective, embeddings: dict, group: Tensor):
    """``objective(embeddings, group)`` on this rank's rows (no gather), leaving its ``distributed`` mode and its
    ``step`` counter as they were. Returns its :class:`~probmed.losses.base.LossOutput`."""
    mode, step = objective.distributed, objective.step
    objective.distributed = "local"
    try:
        return objective(embeddings, group)
    finally:
        objective.distributed, objective.step = mode, step


class EvalLoss:
    """Row-weighted sums of the objective's total and parts over one evaluation epoch of one rank."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.rows = 0

    def reset(self) -> None:
        self.sums.clear()
        self.rows = 0

    def add(self, objective, embeddings: dict, group: Tensor) -> None:
        """Score one batch when it holds every modality the objective reads (else nothing is added)."""
        if not objective.modalities <= set(embeddings) or len(group) == 0:
            return
        out = local_objective(objective, embeddings, group)
        rows = int(len(group))
        self.sums["loss"] += float(out.total) * rows
        for name, value in out.parts.items():
            self.sums[name] += float(value) * rows
        self.rows += rows

    def scalars(self, stage: str) -> dict[str, float]:
        """``{"<stage>/loss": mean, "<stage>/<part>": mean, ...}`` over every rank's rows (a collective: every rank
        calls it); finite values only; empty when no rank scored a batch."""
        totals: dict[str, float] = defaultdict(float)
        rows = 0
        for sums, n in all_gather_objects((dict(self.sums), self.rows)):
            rows += n
            for name, value in sums.items():
                totals[name] += value
        self.reset()
        if not rows:
            return {}
        means = {f"{stage}/{name}": value / rows for name, value in totals.items()}
        return {k: v for k, v in means.items() if math.isfinite(v)}


__all__ = ["EvalLoss", "local_objective"]
