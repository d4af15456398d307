"""Confidence baselines for selective retrieval, E-AURC, the binned-recall test and the variance-aware confidence.

Does the variance carry information beyond what any deterministic model has for free? For every ordered pair
(query modality → gallery modality) the queries are ranked by several *uncertainty* signals (larger = abstain
first), each scored with the same risk, the instance top-1 miss (``1`` when the true partner is not ranked first):

* ``variance``: the query's predicted σ², mean over dimensions;
* ``variance_pair``: the query's mean σ² plus the retrieved top-1 item's;
* ``margin``: minus the similarity margin, ``−(s_top1 − s_top2)``;
* ``top1``: minus the top-1 similarity;
* ``variance_aware``: minus the probability of a hit of a logistic rule fitted on the validation split
  (:class:`ConfidenceRule`) on ``[margin, top-1 score, log query σ², log item σ²]``.

For each: AURC (:func:`probmed.evaluation.uncertainty.aurc`), the oracle AURC (:func:`oracle_aurc`: errors ranked
last, the best any signal can do at this accuracy), the random AURC (:func:`random_aurc`: the error rate, the
expectation of a random ranking) and E-AURC = AURC − oracle AURC (Geifman et al. 2019), which makes AURC comparable
across models of different accuracy. :func:`binned_recall` is the PCME++ / ProLIP test: R@1 in equal-count bins of
increasing uncertainty and the Pearson correlation of bin index with R@1 (−1: recall falls steadily as the
uncertainty rises).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from probmed.evaluation.uncertainty import _tie_averaged_errors, aurc

#: the signals of :func:`confidence_signals`, in table order
SIGNALS = ("variance", "variance_pair", "margin", "top1")
#: the variance-aware rule's features, in order
RULE_FEATURES = ("margin", "top1", "log_query_variance", "log_item_variance")


def _check_binary(error: Tensor) -> Tensor:
    e = error.double()
    if not bool(((e == 0) | (e == 1)).all()):
        raise ValueError("oracle AURC needs binary errors (0 = hit, 1 = miss)")
    return e


def oracle_aurc(error: Tensor) -> float:
    """AURC of the ideal ranking (every miss abstained on before any hit), closed form.

    With ``N`` queries of which ``E`` are misses, the oracle's risk at coverage ``i / N`` is 0 for ``i ≤ N − E``
    and ``(i − (N − E)) / i`` beyond, so ``AURC* = E/N − (N − E)/N · (H_N − H_{N−E})`` (``H_k`` the k-th harmonic
    number). Args: ``error [N]`` in {0, 1}. NaN for no query."""
    e = _check_binary(error)
    n = len(e)
    if n == 0:
        return math.nan
    misses = float(e.sum())
    hits = n - misses
    tail = torch.arange(int(hits) + 1, n + 1, dtype=torch.float64)  # i = N − E + 1 ... N
    return misses / n - hits / n * float((1.0 / tail).sum())


def random_aurc(error: Tensor) -> float:
    """Expected AURC of a random ranking: the error rate (every coverage's expected risk is the mean error)."""
    return float(error.double().mean()) if len(error) else math.nan


def confidence_signals(found: dict) -> dict[str, Tensor]:
    """The uncertainty signals of one pair (larger = less certain), each ``[Nq]`` float64, from
    :func:`probmed.evaluation.retrieval.pair_ranks`'s ``query_variance``, ``item_variance`` (of the top-1 item),
    ``top1`` and ``top2`` (similarities; ``top2 = top1`` when the gallery has one item)."""
    q, item = found["query_variance"].double(), found["item_variance"].double()
    top1, top2 = found["top1"].double(), found["top2"].double()
    return {"variance": q, "variance_pair": q + item, "margin": -(top1 - top2), "top1": -top1}


def rule_features(found: dict) -> Tensor:
    """``[Nq, 4]`` float64 features of :data:`RULE_FEATURES` (variances floored at 1e-12 before the log)."""
    top1, top2 = found["top1"].double(), found["top2"].double()
    return torch.stack([top1 - top2, top1, found["query_variance"].double().clamp_min(1e-12).log(),
                        found["item_variance"].double().clamp_min(1e-12).log()], dim=1)


def binned_recall(uncertainty: Tensor, hit: Tensor, bins: int = 10) -> dict:
    """R@1 in ``bins`` equal-count bins of increasing uncertainty and Pearson(bin index, R@1).

    Queries are sorted by uncertainty (ties: each tied query counts the mean hit rate of its tie group, as in
    :mod:`probmed.evaluation.uncertainty`) and split into ``bins`` consecutive groups whose sizes differ by at most
    one (``torch.tensor_split``). Returns ``{"recall": [bins] percent, "count": [bins], "pearson": float}`` (NaN
    Pearson with fewer queries than bins or a constant recall)."""
    if len(hit) < bins:
        return {"recall": torch.full((bins,), math.nan, dtype=torch.float64), "count": torch.zeros(bins),
                "pearson": math.nan}
    h = _tie_averaged_errors(uncertainty.double(), hit.double())  # sorted by uncertainty, ties averaged
    parts = torch.tensor_split(h, bins)
    recall = torch.stack([100.0 * p.mean() for p in parts])
    count = torch.tensor([len(p) for p in parts], dtype=torch.float64)
    x = torch.arange(bins, dtype=torch.float64)
    xc, yc = x - x.mean(), recall - recall.mean()
    constant = float(yc.abs().max()) <= 1e-9  # (tie averaging leaves rounding noise in an otherwise flat recall)
    pearson = math.nan if constant else float((xc * yc).sum()) / float(xc.norm() * yc.norm())
    return {"recall": recall, "count": count, "pearson": pearson}


def selective_scores(uncertainty: Tensor, error: Tensor) -> dict[str, float]:
    """``{"aurc", "oracle_aurc", "random_aurc", "e_aurc"}`` of one uncertainty signal against binary ``error``."""
    value, best = aurc(uncertainty, error), oracle_aurc(error)
    return {"aurc": value, "oracle_aurc": best, "random_aurc": random_aurc(error), "e_aurc": value - best}


def fit_logistic(x: Tensor, y: Tensor, l2: float = 1e-2, iterations: int = 100, tol: float = 1e-10) -> tuple[Tensor, float]:
    """L2-regularised logistic regression by Newton's method in float64.

    Minimises ``mean_i BCE(sigmoid(x_i·w + b), y_i) + l2/2 · |w|²`` (the bias is not penalised).

    Args:
        x: ``[N, F]`` features (standardise them first). y: ``[N]`` targets in {0, 1}, both classes present.

    Returns:
        ``(w [F], b)``.

    Raises:
        ValueError: a single class (the unpenalised bias would diverge), or fewer than 2 rows.
    """
    x, y = x.double(), y.double()
    if len(y) < 2 or float(y.min()) == float(y.max()):
        raise ValueError("a logistic rule needs both hits and misses")
    n, f = x.shape
    design = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    theta = torch.zeros(f + 1, dtype=torch.float64)
    theta[-1] = math.log(float(y.mean()) / (1 - float(y.mean())))
    penalty = torch.full((f + 1,), l2, dtype=torch.float64)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = torch.sigmoid(design @ theta)
        grad = design.T @ (p - y) / n + penalty * theta
        hess = (design * (p * (1 - p))[:, None]).T @ design / n + torch.diag(penalty)
        step = torch.linalg.solve(hess + 1e-12 * torch.eye(f + 1, dtype=torch.float64), grad)
        theta = theta - step
        if float(step.abs().max()) < tol:
            break
    return theta[:-1].clone(), float(theta[-1])


@dataclass
class ConfidenceRule:
    """A fitted variance-aware confidence for one ordered pair: ``P(hit) = sigmoid(((x − mean) / std)·weight +
    bias)`` over :data:`RULE_FEATURES`. Stored in the checkpoint as :meth:`state` (plain lists and floats)."""

    mean: list[float]
    std: list[float]
    weight: list[float]
    bias: float
    n: int

    @classmethod
    def fit(cls, found: dict, l2: float = 1e-2) -> "ConfidenceRule":
        """Fit on one pair's validation queries (``found`` from ``pair_ranks``); a hit = the true item ranked first.
        Raises ValueError with one class only."""
        x, y = rule_features(found), (found["ranks"] == 0).double()
        mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False).clamp_min(1e-12)
        w, b = fit_logistic((x - mean) / std, y, l2)
        return cls(mean.tolist(), std.tolist(), w.tolist(), b, len(y))

    def probability(self, found: dict) -> Tensor:
        """``[Nq]`` float64 P(hit) of each query."""
        x = rule_features(found)
        z = (x - torch.tensor(self.mean, dtype=torch.float64)) / torch.tensor(self.std, dtype=torch.float64)
        return torch.sigmoid(z @ torch.tensor(self.weight, dtype=torch.float64) + self.bias)

    def state(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "weight": list(self.weight), "bias": float(self.bias),
                "n": int(self.n)}

    @classmethod
    def from_state(cls, state: dict) -> "ConfidenceRule":
        missing = {"mean", "std", "weight", "bias", "n"} - set(state)
        if missing:
            raise ValueError(f"a stored confidence rule lacks {sorted(missing)}")
        if not len(state["mean"]) == len(state["std"]) == len(state["weight"]) == len(RULE_FEATURES):
            raise ValueError(f"a stored confidence rule must have {len(RULE_FEATURES)} features ({RULE_FEATURES})")
        return cls(list(state["mean"]), list(state["std"]), list(state["weight"]), float(state["bias"]), int(state["n"]))
