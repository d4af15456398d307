"""Few-shot linear probes (k = 1, 5, 10, all shots per class) on frozen embeddings, per modality and finding."""
from __future__ import annotations

import math

import torch

from probmed.embedding import GaussianEmbedding
from probmed.evaluation.probes import probe_auroc, support_mask
from probmed.evaluation.zeroshot import labelled


def probe_features(emb: GaussianEmbedding, kind: str) -> torch.Tensor:
    """``[N, D]`` means, or ``[N, D + D_var]`` means and log-variances side by side (``mean_var``)."""
    if kind == "mean":
        return emb.mean.float()
    if kind == "mean_var":
        return torch.cat([emb.mean.float(), emb.log_var.float()], dim=1)
    raise ValueError(f"probe features must be 'mean' or 'mean_var', got {kind!r}")


def few_shot(embeddings: dict, labels: dict, findings: list[str], ks: list[int], features: str = "mean",
             repeats: int = 3, support_fraction: float = 0.5, seed: int = 0) -> dict[str, dict[int, dict[str, float]]]:
    """``{modality: {k: {finding: evaluation AUROC}}}`` (NaN where the data cannot support a k-shot probe)."""
    if any(k < 0 for k in ks):
        raise ValueError(f"shots must be ≥ 0 (0 = all), got {ks}")
    out: dict[str, dict[int, dict[str, float]]] = {}
    for modality, (emb, ids) in sorted(embeddings.items()):
        x = probe_features(emb, features)
        support = support_mask(ids, support_fraction, seed)
        out[modality] = {k: {} for k in ks}
        for column, finding in enumerate(findings):
            rows, target = labelled(ids, labels, column)
            for k in ks:
                out[modality][k][finding] = (
                    probe_auroc(x[rows], target, support[rows], k, repeats, seed) if len(rows) else math.nan
                )
    return out
