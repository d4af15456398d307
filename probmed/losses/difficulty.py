"""A variance that predicts how hard an input is to match: the per-item loss-attenuation term (Kendall & Gal 2017)
with the contrastive difficulty detached, so it teaches the variance head and leaves the means to the other terms."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from probmed.losses.base import (
    LossContext,
    LossTerm,
    count_valid_rows,
    global_mean,
    masked_soft_cross_entropy,
    positive_mask,
    soft_targets,
)
from probmed.losses.similarity import cosine


def match_difficulty(ctx: LossContext, key: str, partners: Sequence[str], scale: float) -> tuple[Tensor, Tensor]:
    """Per local row of ``key``: the InfoNCE loss of its mean against each partner's world means, averaged over
    the partners in which the row has a present positive, divided by ``log`` of that partner's present columns
    (1 = chance, 0 = a certain match).

    Returns ``(difficulty [B], valid [B] bool)``; computed without gradient (cosine of the means times ``scale``).
    """
    rows = ctx.local[key]
    total = torch.zeros(rows.mean.shape[0], dtype=rows.mean.dtype, device=rows.mean.device)
    count = torch.zeros_like(total)
    with torch.no_grad():
        for partner in partners:
            cols = ctx.world[partner]
            col_mask = cols.present
            logits = scale * cosine(rows.mean, cols.mean, normalize=True)
            targets, n_pos = soft_targets(positive_mask(ctx.local_group, ctx.world_group, col_mask), logits.dtype)
            per_row = masked_soft_cross_entropy(logits, targets, col_mask)
            chance = col_mask.sum().clamp_min(2).to(logits.dtype).log()
            ok = rows.present & (n_pos > 0)
            total += torch.where(ok, per_row / chance, torch.zeros_like(per_row))
            count += ok.to(total.dtype)
    valid = count > 0
    return total / count.clamp_min(1), valid


def world_valid_count(ctx: LossContext, key: str, partners: Sequence[str]) -> Tensor:
    """Global number of rows of ``key`` with a present positive in at least one partner (0-dim long)."""
    any_partner = torch.stack([ctx.world[p].present for p in partners]).any(0)
    return count_valid_rows(ctx.world[key].present, ctx.world_group, any_partner)


class DifficultyVariance(LossTerm):
    """Teach each modality's variance to say how hard its input is to match (a named variant's term; not ProbMED's).

    For a row ``i`` of modality ``m`` let ``d_i`` be its contrastive difficulty — the InfoNCE loss of its mean
    against the partners' means (cosine times ``scale``), per partner divided by the loss at chance ``log N`` and
    averaged over the partners present in its study — computed without gradient, and ``u_i`` its mean log-variance
    over the D dimensions. The term is Kendall & Gal's loss attenuation with the loss held fixed::

        L_m = mean_i [ d_i · exp(c − u_i) + (u_i − c) ]      minimised at  u_i = c + log d_i

    so the variance of an input whose mean matches its partners at chance sits at ``exp(c)`` and falls by a factor
    ``e`` each time the difficulty does. Only the log-variance head (and the tower features it reads) receives
    gradient from it; the means are left to the contrastive terms. Inputs whose rendering destroys information
    (noise, artefacts, terse shared reports) cannot be matched well, so their variance rises with no label of
    quality ever read.

    Args:
        modalities: the modality keys whose variance is taught.
        partners: per modality, the keys it is matched against (default: every other key of ``modalities``).
        weight: weight in the objective (summed over the modalities).
        scale: logit scale of the cosine difficulty (1 / temperature).
        centre: ``c``, the log-variance of a chance-level input.
        name: logged name (default ``difficulty``).
    """

    def __init__(self, modalities: Sequence[str] = ("cxr", "ecg", "echo", "text"),
                 partners: dict[str, list[str]] | None = None, weight: float = 0.1, scale: float = 10.0,
                 centre: float = -2.0, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.keys = tuple(modalities)
        self.partners = {m: list((partners or {}).get(m, [k for k in self.keys if k != m])) for m in self.keys}
        empty = [m for m, p in self.partners.items() if not p]
        if empty:
            raise ValueError(f"DifficultyVariance: no partner to match {empty} against; give partners or more "
                             f"modalities")
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"DifficultyVariance: scale must be a positive number, got {scale}")
        self.scale = float(scale)
        self.centre = float(centre)

    def default_name(self) -> str:
        return "difficulty"

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.keys, *(p for ps in self.partners.values() for p in ps)]))

    def forward(self, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
        total, extras = None, {}
        for m in self.keys:
            difficulty, valid = match_difficulty(ctx, m, self.partners[m], self.scale)
            u = ctx.local[m].log_var.mean(-1) - self.centre  # [B]
            per_row = difficulty * torch.exp(-u) + u
            loss = global_mean(per_row, valid, world_valid_count(ctx, m, self.partners[m]), ctx.world_size)
            total = loss if total is None else total + loss
            with torch.no_grad():
                extras[f"difficulty/{m}"] = global_mean(difficulty, valid, valid.sum(), 1)
        return total, extras
