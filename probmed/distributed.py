"""The process group as every part of ProbMed sees it: one place that asks whether training is distributed.

Single-process runs (no ``torch.distributed`` group, or a group of one) get the trivial answers, so callers never
branch on whether a group exists.
"""
from __future__ import annotations

from typing import Any

import torch.distributed as dist


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def world_size() -> int:
    """Number of processes in the default group (1 without one)."""
    return rank_and_world_size()[1]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (a collective: every rank must call it); ``[obj]`` in a single process.
    Objects travel pickled between the ranks of one job, never from data."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
