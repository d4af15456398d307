"""Small helpers shared by the towers (freezing, batch-norm layers, activation checkpointing).

A leaf of the package graph (torch only): both the towers and ``probmed.training.compute`` import from here.
"""
from __future__ import annotations

import contextlib
import functools
from fnmatch import fnmatch
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint


def apply_freeze(module: nn.Module, freeze: bool, unfreeze: Sequence[str] = ()) -> bool:
    """Freeze ``module``'s parameters when ``freeze``; keep those whose name matches a glob in ``unfreeze``.

    Returns True when the module is *fully* frozen (then callers keep its norm layers in eval mode).
    """
    if not freeze:
        return False
    patterns = list(unfreeze or ())
    fully = True
    for name, p in module.named_parameters():
        keep = any(fnmatch(name, pat) for pat in patterns)
        p.requires_grad_(keep)
        fully &= not keep
    return fully


def batch_norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers (any dimension, SyncBatchNorm included) inside ``module``, itself included."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def restore_norm_statistics(tower: nn.Module) -> Iterator[None]:
    """Put the tower's batch-norm running statistics (mean, var, batch count) back as they were on entry."""
    saved = [(buf, buf.clone()) for m in batch_norm_layers(tower) for buf in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _recompute_contexts(tower: nn.Module):
    """``context_fn`` of the checkpoint: nothing around the forward, statistics restored around the recomputation."""
    if torch.compiler.is_compiling():  # a compiled checkpoint accepts only dispatch modes here
        return contextlib.nullcontext(), contextlib.nullcontext()
    return contextlib.nullcontext(), restore_norm_statistics(tower)


def checkpoint_call(module: nn.Module, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` under non-reentrant activation checkpointing, the recomputation in the backward
    leaving ``module``'s batch-norm running statistics as the forward set them."""
    contexts = functools.partial(_recompute_contexts, module)
    return activation_checkpoint(fn, *args, use_reentrant=False, context_fn=contexts, **kwargs)
