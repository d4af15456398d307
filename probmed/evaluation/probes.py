"""Linear probes on frozen features: a deterministic support/evaluation split, k-shot draws, logistic regression.

Used by few-shot classification (per modality) and prognosis (on fused embeddings).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from probmed.data.studies import stable_hash
from probmed.evaluation.zeroshot import binary_metrics


def support_mask(ids: list[str], fraction: float, seed: int) -> Tensor:
    """``[N]`` bool: study in the support pool (a hash of seed and id, so the split is the same on every run,
    rank and model, and a study is on the same side for every modality)."""
    if not 0 < fraction < 1:
        raise ValueError(f"support fraction must be in (0, 1), got {fraction}")
    return torch.tensor([stable_hash(f"{seed}:{sid}") % 10_000 < fraction * 10_000 for sid in ids], dtype=torch.bool)


def draw_shots(target: Tensor, k: int, seed: int) -> Tensor | None:
    """Indices of ``k`` positives and ``k`` negatives drawn without replacement (``k = 0``: all rows), or None
    when a class has fewer than ``k`` rows (or none at all)."""
    pos, neg = (target == 1).nonzero().squeeze(1), (target == 0).nonzero().squeeze(1)
    if len(pos) == 0 or len(neg) == 0:
        return None
    if k == 0:
        return torch.arange(len(target))
    if len(pos) < k or len(neg) < k:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.cat([pos[torch.randperm(len(pos), generator=g)[:k]], neg[torch.randperm(len(neg), generator=g)[:k]]])


def probe_probs(train_x: Tensor, train_y: Tensor, test_x: Tensor, seed: int = 0) -> Tensor:
    """Fit an L2-regularised logistic regression (scikit-learn, lbfgs, C = 1) and return P(y = 1) on ``test_x``."""
    from sklearn.linear_model import LogisticRegression  # lazy: scikit-learn costs ~1 s to import, used at test only

    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    model.fit(train_x.double().numpy(), train_y.long().numpy())
    return torch.from_numpy(model.predict_proba(test_x.double().numpy())[:, 1].astype(np.float32))


def probe_auroc(features: Tensor, target: Tensor, support: Tensor, k: int, repeats: int, seed: int) -> float:
    """Mean evaluation AUROC of probes trained on k-shot draws from the support rows (one fit for ``k = 0``);
    NaN when the support pool cannot give k of each class or the evaluation rows hold one class only."""
    train_idx = support.nonzero().squeeze(1)
    test_idx = (~support).nonzero().squeeze(1)
    test_y = target[test_idx]
    if len(test_idx) == 0 or len(torch.unique(test_y)) < 2:
        return math.nan
    scores = []
    for r in range(1 if k == 0 else repeats):
        shots = draw_shots(target[train_idx], k, seed * 1000 + r)
        if shots is None:
            return math.nan
        chosen = train_idx[shots]
        probs = probe_probs(features[chosen], target[chosen], features[test_idx], seed)
        scores.append(binary_metrics(probs, test_y)["auroc"])
    return float(np.mean(scores))
