"""Per-step random state, so that a resumed run draws the same random numbers as an uninterrupted one.

Lightning checkpoints do not hold the torch RNG state (and only rank 0 writes the file, so the other ranks' states
could not be kept anyway). Seeding torch at the start of every training batch from ``(seed, epoch, batch, rank)``
makes every random draw of a step — synthetic-sampling noise, dropout masks — a function of where the run is, not
of how it got there."""
from __future__ import annotations

import hashlib
import os

import torch


def step_seed(base: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A 63-bit seed from ``(base, epoch, batch_idx, rank)`` (stable across processes and Python versions)."""
    digest = hashlib.blake2b(f"{base}/{epoch}/{batch_idx}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_step(epoch: int, batch_idx: int, rank: int, base: int | None = None) -> None:
    """Seed torch (CPU and all CUDA devices) for one training step. ``base`` defaults to the run's
    ``seed_everything`` value (``PL_GLOBAL_SEED``), else 0."""
    if base is None:
        base = int(os.environ.get("PL_GLOBAL_SEED", 0))
    torch.manual_seed(step_seed(base, epoch, batch_idx, rank))
