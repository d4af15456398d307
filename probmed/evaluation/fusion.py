"""Precision-weighted fusion of a study's Gaussian embeddings from any subset of its modalities.

For the modalities m a study has (diagonal variances v_m)::

    v = 1 / sum_m (1 / v_m),      mu = v · sum_m (mu_m / v_m)

(the product of the Gaussians, renormalised): a confident modality dominates, an uncertain one barely moves the
result, and a missing one simply is not in the sum.
"""
from __future__ import annotations

import torch

from probmed.embedding import GaussianEmbedding


def precision_weighted_fusion(parts: list[GaussianEmbedding]) -> GaussianEmbedding:
    """Fuse aligned ``[N, D]`` embeddings (rows = the same studies; ``present`` marks which modality each study
    has). Returns ``[N, D]`` mean and log-variance; ``present`` is True where at least one part is."""
    if not parts:
        raise ValueError("fusion needs at least one modality")
    dim = parts[0].mean.shape[1]
    precision = torch.zeros_like(parts[0].mean, dtype=torch.float64)
    weighted = torch.zeros_like(precision)
    for p in parts:
        keep = p.present.to(torch.float64)[:, None]
        prec = torch.exp(-p.log_var.double()).expand(-1, dim) * keep
        precision = precision + prec
        weighted = weighted + prec * p.mean.double()
    present = torch.stack([p.present for p in parts]).any(dim=0)
    safe = torch.where(present[:, None], precision, torch.ones_like(precision))
    mean = torch.where(present[:, None], weighted / safe, torch.zeros_like(weighted))
    log_var = torch.where(present[:, None], -torch.log(safe), torch.zeros_like(weighted))
    return GaussianEmbedding(mean.float(), log_var.float(), present)


def align(embeddings: dict, modalities: list[str]) -> tuple[list[str], list[GaussianEmbedding]]:
    """Put ``{modality: (GaussianEmbedding, ids)}`` on the union of the studies of ``modalities`` (sorted ids);
    rows a modality lacks are zero with ``present=False``."""
    have = [m for m in modalities if m in embeddings]
    ids = sorted({sid for m in have for sid in embeddings[m][1]})
    where = {sid: i for i, sid in enumerate(ids)}
    parts = []
    for m in have:
        emb, mids = embeddings[m]
        rows = torch.tensor([where[s] for s in mids], dtype=torch.int64)
        mean = emb.mean.new_zeros(len(ids), emb.mean.shape[1]).index_copy(0, rows, emb.mean)
        log_var = emb.log_var.new_zeros(len(ids), emb.log_var.shape[1]).index_copy(0, rows, emb.log_var)
        present = torch.zeros(len(ids), dtype=torch.bool).index_fill(0, rows, True)
        parts.append(GaussianEmbedding(mean, log_var, present))
    return ids, parts
