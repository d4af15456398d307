"""Gathering embeddings across ranks for contrastive losses (open_clip's ``gather_with_grad`` pattern).

Every rank computes the loss of its LOCAL rows against ALL GLOBAL columns. The columns are gathered with
:func:`torch.distributed.nn.functional.all_gather`, whose backward sums the column gradients of every rank back
to the rank that owns the rows; the rows themselves keep their local autograd path. With the loss of rank ``r``
normalised as ``world_size * sum(local row losses) / (global number of valid rows)`` (see
:func:`probmed.losses.base.global_mean`), DDP's gradient *averaging* then yields exactly the gradient of the
single-process loss on the concatenated global batch. Gathering *without* gradients and computing a global loss
instead gives gradients ``world_size`` times too small (open_clip issue #616).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from probmed.distributed import rank_and_world_size


def check_equal_batch(local_batch: int, device: torch.device, world_size: int) -> None:
    """Raise a clear error (on every rank alike) when ranks hold different numbers of local rows.

    ``all_gather`` needs equal shapes on all ranks; uneven batches would otherwise hang or fail obscurely. This is
    one extra collective: it is used only when the row bound for :func:`pad_rows` is unknown.
    """
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor([local_batch], dtype=torch.long, device=device))
    sizes_list = [int(s.item()) for s in sizes]
    if len(set(sizes_list)) != 1:
        raise ValueError(
            f"probmed.losses: every rank must hold the same local batch size to gather embeddings, got "
            f"{sizes_list} (use drop_last / webdataset with_epoch so that all ranks see full, equal batches)"
        )


def pad_rows(x: Tensor, rows: int) -> Tensor:
    """``x`` [B, ...] followed by ``rows - B`` rows of zeros (differentiable; the padding gets no gradient).

    Every rank pads to the same bound (the data module's batch size), so the gathers need no batch-size check.
    """
    extra = rows - x.shape[0]
    if extra < 0:
        raise ValueError(
            f"probmed.losses: this rank holds {x.shape[0]} rows, more than the {rows} every rank pads to for the "
            f"gather (the data module's batch_size)"
        )
    if extra == 0:
        return x
    return torch.cat([x, x.new_zeros((extra, *x.shape[1:]))], dim=0)


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [B, ...] of every rank along dim 0, differentiably (the backward sums over ranks)."""
    rank, world = rank_and_world_size()
    if world == 1:
        return x
    from torch.distributed import _functional_collectives as fc

    return fc.all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD).wait()


def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [B, ...] of every rank along dim 0, without gradient (masks, group ids)."""
    rank, world = rank_and_world_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
