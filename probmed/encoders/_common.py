"""Small helpers shared by the towers (freezing, batch-norm layers)."""
from __future__ import annotations

from fnmatch import fnmatch
from typing import Sequence

from torch import nn


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
