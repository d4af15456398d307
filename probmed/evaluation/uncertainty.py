"""Does the variance know when the model is wrong? Risk–coverage, AURC, selective recall, Spearman, ECE.

Selective prediction abstains on the most uncertain queries first (largest predicted variance). When several
queries share an uncertainty value their order is arbitrary; every function here uses the *expected* value over
random orderings of the tied queries (each tied query's error is replaced by the mean error of its tie group),
so results never depend on the sort's tie-breaking.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional import spearman_corrcoef
from torchmetrics.functional.classification import binary_calibration_error


def _tie_averaged_errors(uncertainty: Tensor, error: Tensor) -> Tensor:
    """Errors sorted by increasing uncertainty, each replaced by the mean error of its tie group. ``[N]``."""
    order = torch.argsort(uncertainty, stable=True)
    u, e = uncertainty[order].double(), error[order].double()
    _, inverse, counts = torch.unique_consecutive(u, return_inverse=True, return_counts=True)
    group_mean = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, e) / counts
    return group_mean[inverse]


def risk_coverage(uncertainty: Tensor, error: Tensor) -> tuple[Tensor, Tensor]:
    """Risk–coverage curve when abstaining on the largest uncertainty first.

    Args:
        uncertainty: ``[N]`` predicted uncertainty per query (e.g. mean variance).
        error: ``[N]`` loss per query in [0, 1] (e.g. 1 when the true item is not ranked first).

    Returns:
        ``(coverage [N], risk [N])``: keeping the ``i`` most certain queries gives coverage ``i / N`` and risk
        (expected mean error over them, ties averaged) ``risk[i - 1]``.
    """
    if len(error) == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    e = _tie_averaged_errors(uncertainty, error)
    n = torch.arange(1, len(e) + 1, dtype=torch.float64)
    return n / len(e), torch.cumsum(e, 0) / n


def aurc(uncertainty: Tensor, error: Tensor) -> float:
    """Area under the risk–coverage curve: the mean of the risks at coverages 1/N, 2/N, ..., 1 (Geifman et al.)."""
    _, risk = risk_coverage(uncertainty, error)
    return float(risk.mean()) if len(risk) else math.nan


def selective_risk(uncertainty: Tensor, error: Tensor, coverage: float) -> float:
    """Risk when keeping the ``ceil(coverage · N)`` most certain queries (at least one)."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    _, risk = risk_coverage(uncertainty, error)
    if len(risk) == 0:
        return math.nan
    keep = max(1, math.ceil(coverage * len(risk) - 1e-9))
    return float(risk[keep - 1])


def spearman(uncertainty: Tensor, error: Tensor) -> float:
    """Spearman rank correlation (ties get mean ranks) of uncertainty with error; NaN when either is constant."""
    if len(error) < 2 or bool((uncertainty == uncertainty[0]).all()) or bool((error == error[0]).all()):
        return math.nan
    return float(spearman_corrcoef(uncertainty.double(), error.double()))


def expected_calibration_error(probs: Tensor, target: Tensor, n_bins: int = 10) -> float:
    """Binary ECE (torchmetrics, L1): ``sum_b |B_b|/N · |mean p − fraction positive|`` over equal-width bins."""
    if len(probs) == 0:
        return math.nan
    return float(binary_calibration_error(probs.float(), target.long(), n_bins=n_bins, norm="l1"))


def reliability_bins(probs: Tensor, target: Tensor, n_bins: int = 10) -> dict[str, Tensor]:
    """Per equal-width bin of P(positive): ``count``, ``confidence`` (mean p) and ``frequency`` (fraction
    positive); empty bins hold NaN. Bins are ``(lo, hi]`` as in torchmetrics (p = 0 goes to the first)."""
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    index = (torch.bucketize(probs.double(), edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(probs, dtype=torch.float64))
    conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, probs.double())
    freq = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, target.double())
    nan = torch.full_like(count, math.nan)
    return {
        "edges": edges,
        "count": count,
        "confidence": torch.where(count > 0, conf / count.clamp_min(1), nan),
        "frequency": torch.where(count > 0, freq / count.clamp_min(1), nan),
    }


#: the quantiles of each modality's predicted variance logged at every evaluation (``<stage>/variance/<m>/p05`` ...)
VARIANCE_QUANTILES = (0.05, 0.5, 0.95)


def variance_quantiles(embeddings: dict, stage: str) -> dict[str, float]:
    """``{"<stage>/variance/<m>/p05": q, ".../p50", ".../p95", ".../mean"}`` of each modality's per-row mean
    variance (:meth:`~probmed.embedding.GaussianEmbedding.mean_variance`, the same quantity as the training scalar
    ``variance/<m>``; units of the embedding's squared coordinates) over the split's present rows.

    Args:
        embeddings: ``{modality: (GaussianEmbedding [N, D], study ids)}`` (present rows only); empty ones are left
            out.
    """
    out = {}
    for m, (emb, _) in sorted(embeddings.items()):
        if not len(emb):
            continue
        var = emb.mean_variance().double()
        q = torch.quantile(var, torch.tensor(VARIANCE_QUANTILES, dtype=torch.float64))
        out.update({f"{stage}/variance/{m}/p{round(p * 100):02d}": float(v) for p, v in zip(VARIANCE_QUANTILES, q)})
        out[f"{stage}/variance/{m}/mean"] = float(var.mean())
    return out
