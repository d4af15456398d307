"""Temperature scaling (Guo et al. 2017) and per-finding Platt scaling of zero-shot probabilities, fitted on the
validation split.

Zero-shot gives each (study, finding) a logit ``z = scale · (s_pos − s_neg)`` (:mod:`probmed.evaluation.zeroshot`).
One temperature ``T > 0`` per image/signal modality, pooled over that modality's findings, rescales it:
``P(finding) = sigmoid(z / T)``. ``T`` minimises the mean binary cross-entropy on the validation split; the
objective is convex in ``β = 1/T`` (a one-feature logistic regression without intercept), so Newton's method on
``β`` finds it; ``β`` is kept ≥ :data:`MIN_INVERSE_TEMPERATURE` (a model whose logits are anti-correlated with the
labels is not flipped: temperature scaling never changes the ranking, so AUROC is the same before and after).

A temperature cannot move a finding whose logits are offset (a prompt pair that favours "present" for every study
stays miscalibrated at any ``T``). **Platt scaling** (Platt 1999) fits, per modality *and finding*, a slope and an
intercept: ``P = sigmoid(a · z + b)`` (``a ≥ 1e-3``, so the ranking within a finding is kept; a tiny L2 penalty on
``b`` keeps a finding whose validation labels are all one class finite), by Newton's method on the same convex
cross-entropy.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

MIN_INVERSE_TEMPERATURE = 1e-3


def scaled_nll(logits: Tensor, target: Tensor, inverse_temperature: float) -> float:
    """Mean binary cross-entropy of ``sigmoid(β · logits)`` against ``target`` (float64)."""
    z = inverse_temperature * logits.double()
    return float(torch.nn.functional.binary_cross_entropy_with_logits(z, target.double()))


def _checked(logits: Tensor, target: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """``(logits, target)`` in float64, or a clear error for an empty or non-finite input."""
    z, y = logits.double(), target.double()
    if len(z) == 0:
        raise ValueError(f"{what} needs at least one labelled prediction")
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{what} got non-finite logits")
    return z, y


def fit_temperature(logits: Tensor, target: Tensor, iterations: int = 100, tol: float = 1e-12) -> float:
    """The temperature ``T`` minimising :func:`scaled_nll` over ``β = 1/T ≥ 1e-3``.

    Args:
        logits: ``[N]`` zero-shot logits. target: ``[N]`` labels in {0, 1} (unknown ones removed).

    Raises:
        ValueError: no labelled logit, or non-finite logits.
    """
    z, y = _checked(logits, target, "temperature scaling")
    beta = 1.0
    for _ in range(iterations):
        p = torch.sigmoid(beta * z)
        grad = float((z * (p - y)).mean())
        hess = float((z * z * p * (1 - p)).mean())
        if hess <= 1e-300:
            break
        new = max(MIN_INVERSE_TEMPERATURE, beta - grad / hess)
        # a Newton step on a convex 1-D function may overshoot far out on the flat sigmoid tails: halve until the
        # objective does not increase
        while scaled_nll(z, y, new) > scaled_nll(z, y, beta) + 1e-15 and abs(new - beta) > tol:
            new = (new + beta) / 2
        if abs(new - beta) <= tol * max(1.0, beta):
            beta = new
            break
        beta = new
    return 1.0 / beta


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``[N]`` float32 probabilities ``sigmoid(logits / T)``."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    return torch.sigmoid(logits.double() / temperature).float()


def fit_platt(logits: Tensor, target: Tensor, iterations: int = 100, l2: float = 1e-4) -> tuple[float, float]:
    """``(a, b)`` minimising the mean BCE of ``sigmoid(a · logits + b)`` (+ ``l2 · b²``) with ``a ≥ 1e-3``.

    Args:
        logits: ``[N]`` zero-shot logits of one finding. target: ``[N]`` labels in {0, 1} (unknown ones removed).

    Raises:
        ValueError: no labelled logit, or non-finite logits.
    """
    z, y = _checked(logits, target, "Platt scaling")
    x = torch.stack([z, torch.ones_like(z)], 1)  # [N, 2]
    reg = torch.tensor([0.0, l2], dtype=torch.float64)

    def objective(w: Tensor) -> float:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y)) + float((reg * w * w).sum())

    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    for _ in range(iterations):
        p = torch.sigmoid(x @ w)
        grad = x.t() @ (p - y) / len(y) + 2 * reg * w
        hess = (x * (p * (1 - p))[:, None]).t() @ x / len(y) + torch.diag(2 * reg + 1e-12)
        new = w - torch.linalg.solve(hess, grad)
        new[0] = new[0].clamp_min(MIN_INVERSE_TEMPERATURE)
        while objective(new) > objective(w) + 1e-15 and float((new - w).abs().max()) > 1e-12:
            new = (new + w) / 2  # damped: halve the step until the objective does not increase
        done = float((new - w).abs().max()) <= 1e-12
        w = new
        if done:
            break
    return float(w[0]), float(w[1])


def apply_platt(logits: Tensor, slope: float, intercept: float) -> Tensor:
    """``[N]`` float32 probabilities ``sigmoid(slope · logits + intercept)``."""
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise ValueError(f"Platt parameters must be finite, got ({slope}, {intercept})")
    return torch.sigmoid(slope * logits.double() + intercept).float()
