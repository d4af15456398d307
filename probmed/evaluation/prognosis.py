"""Prognosis: a logistic-regression head on fused multimodal embeddings predicting a study-level label.

The head is trained on the support half of the evaluated studies and scored (AUROC) on the other half (the split
of :func:`probmed.evaluation.probes.support_mask`). Features: fused mean and fused log-variance.
"""
from __future__ import annotations

import math

import torch

from probmed.evaluation.fusion import align, precision_weighted_fusion
from probmed.evaluation.probes import probe_auroc, support_mask
from probmed.evaluation.zeroshot import labelled


def prognosis(embeddings: dict, labels: dict, findings: list[str], label: str, subsets: list[list[str]],
              support_fraction: float = 0.5, seed: int = 0) -> dict[str, float]:
    """``{"+".join(subset): AUROC}`` of the head on each modality subset's fused embeddings (NaN where the data
    cannot support it: no modality of the subset evaluated, or one class only)."""
    if label not in findings:
        raise ValueError(f"prognosis label {label!r} is not one of the data's labels {findings}")
    out = {}
    for subset in subsets:
        name = "+".join(subset)
        ids, parts = align(embeddings, subset)
        if not parts:
            out[name] = math.nan
            continue
        fused = precision_weighted_fusion(parts)
        rows, target = labelled(ids, labels, findings.index(label))
        x = torch.cat([fused.mean, fused.log_var], dim=1)[rows]
        support = support_mask([ids[i] for i in rows.tolist()], support_fraction, seed)
        out[name] = probe_auroc(x, target, support, 0, 1, seed)
    return out
