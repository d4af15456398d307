"""Skip a training step whose loss is NaN/inf on *any* rank — on every rank, so DDP never diverges or hangs.

Each rank all-reduces a 0/1 "my loss is finite" flag with MIN. The backward still runs on every rank (Lightning
forbids returning ``None`` under DDP, and a backward on some ranks only would leave DDP's gradient all-reduce
waiting), then, if any rank's loss was non-finite, every rank drops its gradients before the optimizer update:
AdamW/SGD skip parameters without a gradient, so weights and moments stay untouched. The learning-rate schedule
and ``global_step`` still advance. Batch-norm running statistics updated by that forward are not rolled back (a
NaN *input* would poison them; this guard is for the loss). fp16 with a GradScaler is not supported by the skip
(bf16-mixed needs no scaler). The number of skipped steps is counted and logged as ``train/skipped_nonfinite``
(cumulative, identical on all ranks).

Fault injection (tests only): ``PROBMED_INJECT_NONFINITE="RANK:BATCH[,RANK:BATCH...]"`` turns the loss of those
(global rank, batch index) steps into NaN, to test the all-ranks agreement without corrupting data.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

INJECT_ENV = "PROBMED_INJECT_NONFINITE"


def _injected(rank: int, batch_idx: int) -> bool:
    spec = os.environ.get(INJECT_ENV, "").strip()
    if not spec:
        return False
    try:
        targets = {tuple(int(x) for x in item.split(":")) for item in spec.split(",") if item.strip()}
    except ValueError as err:
        raise ValueError(f"{INJECT_ENV}={spec!r}: expected 'RANK:BATCH[,RANK:BATCH...]'") from err
    return (rank, batch_idx) in targets


class NonFiniteGuard:
    """Agreement on whether a step's loss is finite, plus the count of skipped steps."""

    def __init__(self) -> None:
        self.skipped = 0
        self.skip_update = False  # the current step's decision, made in training_step, used in optimizer_step

    def loss(self, loss: Tensor, rank: int, batch_idx: int) -> Tensor:
        """The loss, or NaN where the test-only fault injection asks for one."""
        return loss * float("nan") if _injected(rank, batch_idx) else loss

    def all_finite(self, loss: Tensor) -> bool:
        """True iff the loss is finite on every rank (one all-reduce when distributed); counts a skip if not."""
        flag = torch.isfinite(loss.detach()).all().to(torch.int32).reshape(1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = bool(flag.item())
        self.skipped += not finite
        self.skip_update = not finite
        return finite

    def optimizer_step(self, optimizer, closure) -> None:
        """``optimizer.step`` whose closure (training step + backward) drops every gradient when the step's loss
        was non-finite on some rank, so the update leaves all parameters and optimizer moments as they were."""

        def guarded():
            loss = closure()
            if self.skip_update:
                optimizer.zero_grad(set_to_none=True)
            return loss

        optimizer.step(closure=guarded)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped", 0))
