"""Skip a training step whose loss — or any buffer — is NaN/inf on *any* rank, on every rank, so DDP never diverges,
hangs or keeps poisoned statistics.

Each rank all-reduces 0/1 "my loss is finite" and "my buffers are finite" flags with MIN, in the step's one small
all-reduce, which also carries other per-step yes/no decisions that all ranks must share (:meth:`NonFiniteGuard.ride`:
the Slurm requeue flag). The backward still runs on
every rank (Lightning forbids returning ``None`` under DDP, and a backward on some ranks only would leave DDP's
gradient all-reduce waiting), then, if any rank was non-finite, every rank drops its gradients before the update:
AdamW/SGD skip parameters without a gradient, so weights and moments stay untouched. The learning-rate schedule
and ``global_step`` still advance. The module's buffers (batch-norm running statistics) are copied before the
forward (:meth:`NonFiniteGuard.snapshot`) and, when the step is skipped, put back on every rank: an input with
absurd but finite values (1e30 µV) can leave a finite loss and an infinite ``running_var``, which would turn every
later embedding of clean data into the same vector. fp16 with a GradScaler is not supported by the skip (bf16-mixed
needs no scaler). Skipped steps are counted and logged, cumulative and identical on all ranks:
``train/skipped_nonfinite`` (all), ``train/skipped_nonfinite_buffers`` (those whose loss was finite everywhere
but a buffer was not); the skipped step's loss values are logged as NaN, never as the previous step's.

Fault injection (tests only): ``PROBMED_INJECT_NONFINITE="RANK:BATCH[:buffers][,...]"`` turns the loss of those
(global rank, batch index) steps into NaN — or, with ``:buffers``, the first batch-norm ``running_var`` into inf
after the forward — to test the all-ranks agreement without corrupting data.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from probmed.distributed import world_size

INJECT_ENV = "PROBMED_INJECT_NONFINITE"


def _injected(rank: int, batch_idx: int, what: str = "loss") -> bool:
    spec = os.environ.get(INJECT_ENV, "").strip()
    if not spec:
        return False
    targets = set()
    for item in (i.strip() for i in spec.split(",")):
        parts = item.split(":") if item else []
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[:2]) or parts[2:] not in ([], ["buffers"]):
            raise ValueError(f"{INJECT_ENV}={spec!r}: expected 'RANK:BATCH[:buffers][,...]'")
        targets.add((int(parts[0]), int(parts[1]), parts[2] if len(parts) == 3 else "loss"))
    return (rank, batch_idx, what) in targets


def _floating_buffers(module: nn.Module) -> list[Tensor]:
    return [b for b in module.buffers() if b.is_floating_point()]


class NonFiniteGuard:
    """Agreement on whether a step's loss is finite, plus the count of skipped steps."""

    def __init__(self) -> None:
        self.skipped = 0
        self.skipped_buffers = 0  # of which: loss finite on every rank, some buffer not
        self.skip_update = False  # the current step's decision, made in training_step, used in optimizer_step
        self._saved: list[Tensor] = []
        self._riders: dict[str, Callable[[], bool]] = {}
        self.agreed: dict[str, bool] = {}  # each rider's decision of the current step: True if any rank said yes

    def ride(self, name: str, flag: Callable[[], bool]) -> None:
        """Carry ``flag()`` (this rank's yes/no, read at the all-reduce) in every step's all-reduce; the step's
        decision, True if any rank said yes, is ``agreed[name]`` after :meth:`all_finite`."""
        self._riders[name] = flag

    def snapshot(self, module: nn.Module) -> None:
        """Copy ``module``'s buffers (before the step's forward updates batch-norm statistics)."""
        self._saved = [b.detach().clone() for b in module.buffers()]

    def loss(self, loss: Tensor, rank: int, batch_idx: int, module: nn.Module | None = None) -> Tensor:
        """The loss, or NaN where the test-only fault injection asks for one (or an inf buffer of ``module``)."""
        if module is not None and _injected(rank, batch_idx, "buffers"):
            running_var = [b for name, b in module.named_buffers() if name.endswith("running_var")]
            running_var[0].data.fill_(float("inf"))  # .data: autograd's version check is not part of the test
        return loss * float("nan") if _injected(rank, batch_idx) else loss

    def all_finite(self, loss: Tensor, module: nn.Module | None = None) -> bool:
        """True iff the loss — and every floating buffer of ``module`` — is finite on every rank (one all-reduce
        when distributed, carrying the :meth:`ride` flags too); counts a skip if not (:meth:`optimizer_step` then drops the update and puts the buffers
        back, after the backward: autograd may have saved a buffer, e.g. position ids, for it)."""
        loss_ok = bool(torch.isfinite(loss.detach()).all())
        buffers_ok = module is None or all(bool(torch.isfinite(b).all()) for b in _floating_buffers(module))
        riders = {name: bool(flag()) for name, flag in self._riders.items()}
        values = [int(loss_ok), int(buffers_ok), *(int(not yes) for yes in riders.values())]
        flags = torch.tensor(values, dtype=torch.int32, device=loss.device)
        if world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        flags = flags.tolist()  # one host sync for all of them
        loss_ok, buffers_ok = bool(flags[0]), bool(flags[1])
        self.agreed = {name: not flags[2 + i] for i, name in enumerate(riders)}
        finite = loss_ok and buffers_ok
        self.skipped += not finite
        self.skipped_buffers += loss_ok and not buffers_ok
        self.skip_update = not finite
        return finite

    def restore(self, module: nn.Module) -> None:
        """Put ``module``'s buffers back as the last :meth:`snapshot` saw them."""
        if not self._saved:
            return
        with torch.no_grad():
            for buffer, saved in zip(module.buffers(), self._saved, strict=True):
                buffer.copy_(saved)

    def optimizer_step(self, optimizer, closure, module: nn.Module | None = None) -> None:
        """``optimizer.step`` whose closure (training step + backward) drops every gradient when the step was
        non-finite on some rank, so the update leaves all parameters and optimizer moments as they were, and puts
        ``module``'s buffers back as :meth:`snapshot` saw them."""

        def guarded():
            loss = closure()
            if self.skip_update:
                optimizer.zero_grad(set_to_none=True)
                if module is not None:
                    self.restore(module)
            return loss

        optimizer.step(closure=guarded)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "skipped_buffers": self.skipped_buffers}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.skipped_buffers = int(state.get("skipped_buffers", 0))
