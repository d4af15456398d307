"""Optimizer parameter groups, built in one place: per-tower learning rates and layer-wise learning-rate decay.

Configured under ``model.param_groups`` (LightningCLI)::

    param_groups:
      class_path: probmed.optim.ParamGroups
      init_args:
        rules:
          - {pattern: "encoders.text.*", lr_scale: 0.1, layer_decay: 0.75}   # pretrained text tower: slow, LLRD
          - {pattern: "encoders.cxr.*", lr_scale: 0.5}
          - {pattern: "encoders.ecg.*", weight_decay: 0.0}

Every trainable parameter goes to the first rule whose glob ``pattern`` matches its name (as in
``module.named_parameters()``, e.g. ``encoders.text.model.encoder.layer.3.attention.self.query.weight``); the rest
(heads, loss scales, unmatched towers) train at the optimizer's own learning rate. A group's learning rate is the
optimizer's ``lr`` times ``lr_scale`` (times the layer factor below); the module applies the scales with
:func:`apply_lr_scales` right after building the optimizer, before the scheduler records its base rates.

**Layer-wise decay** (BEiT / ELECTRA style): inside a rule with ``layer_decay = d < 1`` each parameter gets a depth
``l``: 0 for the input end (names containing ``embed``, ``stem``, ``patch``, ``pos_``, ``cls_token``), ``i + 1`` for
the ``i``-th block (the first integer after ``layer.``, ``layers.``, ``blocks.`` or ``stages.`` in its name: BERT's
``encoder.layer.i``, ViT's ``blocks.i``, Swin's ``layers.i`` stage, XResNet1d's ``stages.i``), and ``L + 1`` for
anything after the last block (final norms, poolers), where ``L`` is the number of blocks found in the rule; its
factor is ``d ** (top - l)`` with ``top`` the largest depth present in the rule, so the output end trains at the
rule's full rate. Frozen parameters (``requires_grad=False``) are left out of every group.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Iterable, Optional

from torch import nn
from torch.optim import Optimizer

__all__ = ["GroupRule", "ParamGroups", "apply_lr_scales", "layer_depth"]

_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|blocks|stages)\.(\d+)(?:\.|$)")
_INPUT_END = ("embed", "stem", "patch", "pos_", "cls_token")


@dataclass
class GroupRule:
    """One rule: which parameters (glob over the full parameter name) and how they train.

    Args:
        pattern: glob over names from ``module.named_parameters()`` (e.g. ``"encoders.text.*"``).
        lr_scale: multiplies the optimizer's learning rate.
        layer_decay: layer-wise decay factor ``d`` (1 = none; see the module docstring).
        weight_decay: this group's weight decay; None keeps the optimizer's.
    """

    pattern: str
    lr_scale: float = 1.0
    layer_decay: float = 1.0
    weight_decay: Optional[float] = None


def layer_depth(name: str) -> Optional[int]:
    """The block index ``i`` in a parameter name (see the module docstring), or None when it has none."""
    match = _BLOCK.search(name)
    return int(match.group(1)) if match else None


def _depths(names: list[str]) -> dict[str, int]:
    """Depth ``l`` in ``0 .. L + 1`` of each name (input end 0, block ``i`` → ``i + 1``, after the blocks L + 1)."""
    blocks = {n: layer_depth(n) for n in names}
    n_blocks = 1 + max((b for b in blocks.values() if b is not None), default=-1)
    out = {}
    for n, b in blocks.items():
        if b is not None:
            out[n] = b + 1
        elif any(k in n for k in _INPUT_END):
            out[n] = 0
        else:
            out[n] = n_blocks + 1
    return out


class ParamGroups:
    """Callable ``module -> list of param-group dicts`` for ``torch.optim`` (see the module docstring).

    Each group carries ``params``, ``lr_scale`` (applied by :func:`apply_lr_scales`), ``name`` (rule pattern and
    depth, for logging) and ``weight_decay`` when the rule sets one. Groups with the same rule and depth are merged.

    Args:
        rules: the rules, first match wins.
    """

    def __init__(self, rules: list[GroupRule]) -> None:
        self.rules = list(rules)
        for r in self.rules:
            if r.lr_scale < 0 or not (0 < r.layer_decay <= 1):
                raise ValueError(f"rule {r}: lr_scale must be >= 0 and layer_decay in (0, 1]")

    def __call__(self, module: nn.Module) -> list[dict]:
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        by_rule: dict[int, list[tuple[str, nn.Parameter]]] = {}
        for n, p in trainable:
            idx = next((i for i, r in enumerate(self.rules) if fnmatch(n, r.pattern)), -1)
            by_rule.setdefault(idx, []).append((n, p))
        groups: list[dict] = []
        for idx, named in sorted(by_rule.items()):
            if idx < 0:
                groups.append({"params": [p for _, p in named], "lr_scale": 1.0, "name": "default"})
                continue
            rule = self.rules[idx]
            depths = _depths([n for n, _ in named]) if rule.layer_decay < 1 else {n: 0 for n, _ in named}
            top = max(depths.values())
            by_depth: dict[int, list[nn.Parameter]] = {}
            for n, p in named:
                by_depth.setdefault(depths[n], []).append(p)
            for depth, params in sorted(by_depth.items()):
                group = {
                    "params": params,
                    "lr_scale": rule.lr_scale * rule.layer_decay ** (top - depth),
                    "name": f"{rule.pattern}@{depth}",
                }
                if rule.weight_decay is not None:
                    group["weight_decay"] = rule.weight_decay
                groups.append(group)
        return groups


def apply_lr_scales(optimizer: Optimizer) -> Optimizer:
    """Multiply each group's learning rate by its ``lr_scale`` (once; the key is then set to 1)."""
    for group in optimizer.param_groups:
        scale = group.get("lr_scale", 1.0)
        group["lr"] = group["lr"] * scale
        group["lr_scale"] = 1.0
    return optimizer


def describe(groups: Iterable[dict]) -> list[tuple[str, int, float]]:
    """``(name, number of parameters, lr)`` per group (for logs and tests)."""
    return [(g.get("name", "?"), sum(p.numel() for p in g["params"]), g.get("lr", float("nan"))) for g in groups]
