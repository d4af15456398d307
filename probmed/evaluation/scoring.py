"""How evaluation scores a query against a gallery: with the model's own similarity for that pair.

A pair some loss term contrasts is scored by that term's similarity (the one the objective trained); a pair no
term contrasts (e.g. CXR↔ECG bound only through the text anchor) by ``untrained_similarity`` when given, else by
the first contrastive term's (:meth:`probmed.losses.Objective.scoring_term`).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from probmed.embedding import GaussianEmbedding
from probmed.losses import Objective
from probmed.losses.similarity import pairwise_similarity, similarity_kind

Scorer = Callable[[GaussianEmbedding, GaussianEmbedding, str, str], Tensor]


def term_logit_scale(term) -> float:
    """The multiplier a term puts on its similarity to make logits (InfoNCE's ``1/τ``, PCME++/MedProbCLIP's
    ``a``); 1 for terms without one."""
    if hasattr(term, "logit_scale"):
        return float(term.logit_scale().detach())
    if hasattr(term, "scale"):
        return float(term.scale.detach().clamp_min(getattr(term, "min_scale", 0.0)))
    return 1.0


def make_scorer(objective: Objective, untrained_similarity: Optional[str], device: torch.device, chunk: int = 1024) -> Scorer:
    """``score(query, gallery, a, b) -> [Nq, Ng]`` float32 CPU similarity, computed on ``device`` without gradient."""
    if untrained_similarity is not None:
        try:
            similarity_kind(untrained_similarity)
        except ValueError as exc:
            raise ValueError(f"untrained_similarity: {exc}") from None

    @torch.no_grad()
    def score(query: GaussianEmbedding, gallery: GaussianEmbedding, a: str, b: str) -> Tensor:
        q = GaussianEmbedding(query.mean.to(device), query.log_var.to(device), query.present.to(device))
        g = GaussianEmbedding(gallery.mean.to(device), gallery.log_var.to(device), gallery.present.to(device))
        if untrained_similarity is None or objective.contrasting_term(a, b) is not None:
            return objective.score(q, g, a, b, chunk=chunk).float().cpu()
        return torch.cat([
            pairwise_similarity(untrained_similarity, q.mean[s : s + chunk].float(), q.log_var[s : s + chunk].float(),
                                g.mean.float(), g.log_var.float())
            for s in range(0, max(len(q), 1), chunk)
        ]).float().cpu()

    return score
