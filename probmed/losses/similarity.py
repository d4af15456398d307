"""Pairwise similarities and distances between batches of diagonal (or isotropic) Gaussians.

Every function takes rows ``a`` (``mu_a`` [B, D], ``lv_a`` [B, D] or [B, 1] log-variances) and columns ``b``
(``mu_b`` [N, D], ``lv_b`` [N, D] or [N, 1]) and returns a ``[B, N]`` matrix. Formulas (v = exp(log_var)):

* log Bhattacharyya coefficient (log space, never underflows)::

      log BC_ij = sum_d [ 1/2 (log 2 + 1/2 (log v_id + log v_jd) - log(v_id + v_jd))
                          - 1/4 (mu_id - mu_jd)^2 / (v_id + v_jd) ]

  diagonal: memory-linear chunked kernel (:mod:`probmed.losses.kernels`); isotropic (both ``[., 1]``):
  matmul + per-sample terms, ``||mu_i - mu_j||^2 = |mu_i|^2 + |mu_j|^2 - 2 mu_i.mu_j``.
* Hellinger similarity (ProbMED) on the Bhattacharyya coefficient raised to a power ``kappa``::

      PS_ij = 1 - sqrt(1 - BC_ij^kappa) = 1 - sqrt(-expm1(kappa log BC_ij))

  ``kappa = 1`` is the paper's ``PS = 1 - sqrt(H^2)`` with ``H^2 = 1 - BC`` (``hellinger_joint``). With diagonal
  Gaussians ``BC = prod_d BC_d`` falls to ~0 for any mismatch once D is in the hundreds (the variance-mismatch
  part alone is about ``-D Var(log v_i - log v_j) / 16``), so PS saturates at 0 and its gradient vanishes.
  ``kappa = 1/D`` (``hellinger``, ProbMED's loss in this project) uses the geometric mean of the per-dimension
  coefficients, ``BC^(1/D) = (prod_d BC_d)^(1/D)``: the Hellinger similarity of the "average dimension". It is
  the paper's PS for D = 1, equals the per-dimension Hellinger similarity when every dimension matches alike, and
  stays in a usable range at any D (see docs/design.md, "The ProbMED similarity").
* PCME++ closed-form sampled distance ``CSD_ij = ||mu_i - mu_j||^2 + sum_d (v_id + v_jd)`` (matmul + sums).
* MedProbCLIP distance ``d_ij = 1/2 sum_d [(mu_id - mu_jd)^2 / (v_id + v_jd) + log(v_id + v_jd)]``
  (same chunked kernel as log BC; isotropic closed form).
* cosine similarity of the (L2-normalised) means.
* Gaussian log-likelihood of points ``z`` [M, D] under each Gaussian ``j``::

      log N(z; mu_j, v_j) = -1/2 sum_d [log 2 pi + log v_jd + (z_d - mu_jd)^2 / v_jd]

  expanded into two matmuls: ``(z^2) @ (1/v)^T - 2 z @ (mu/v)^T + sum_d mu^2/v``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from probmed.user_errors import did_you_mean

from probmed.losses.kernels import LOG2, pairwise_diag_kernel, pairwise_diag_kernel_naive

LOG2PI = math.log(2.0 * math.pi)

#: Floor on sqrt(H^2) used only in the *gradient* of the Hellinger similarity (the value is exact).
SQRT_GRAD_FLOOR = 1e-6


def _is_iso(lv: Tensor, mu: Tensor) -> bool:
    return lv.shape[-1] == 1 and mu.shape[-1] != 1


def _diag(lv: Tensor, mu: Tensor) -> Tensor:
    """Expand an isotropic ``[., 1]`` log-variance to ``[., D]``."""
    return lv.expand(-1, mu.shape[-1]) if _is_iso(lv, mu) else lv


def _sq_dist(mu_a: Tensor, mu_b: Tensor) -> Tensor:
    """``||mu_a_i - mu_b_j||^2`` via one matmul (clamped at 0 against round-off)."""
    sq = (mu_a * mu_a).sum(-1, keepdim=True) + (mu_b * mu_b).sum(-1)[None, :] - 2.0 * mu_a @ mu_b.t()
    return sq.clamp_min(0.0)


def log_bhattacharyya(
    mu_a: Tensor, lv_a: Tensor, mu_b: Tensor, lv_b: Tensor, chunk: int | None = None, fused: bool | None = None
) -> Tensor:
    """``[B, N]`` log Bhattacharyya coefficient; matmul form when both sides are isotropic, else chunked."""
    dim = mu_a.shape[-1]
    if _is_iso(lv_a, mu_a) and _is_iso(lv_b, mu_b):
        la, lb = lv_a[:, 0][:, None], lv_b[:, 0][None, :]
        inv_s = torch.exp(-torch.logaddexp(la, lb))  # 1 / (v_i + v_j)
        return -0.5 * dim * log_cosh(0.5 * (la - lb)) - 0.25 * _sq_dist(mu_a, mu_b) * inv_s
    lv_a, lv_b = _diag(lv_a, mu_a), _diag(lv_b, mu_b)
    return pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, -0.25, -0.5, balanced=True, chunk=chunk, fused=fused)


def log_cosh(x: Tensor) -> Tensor:
    """``log cosh x``, exactly 0 at 0 and finite for any ``x``: ``log1p(2 sinh^2(x/2))``, ``|x| - log 2`` far out."""
    small = x.abs() < 20.0
    xs = torch.where(small, x, torch.zeros_like(x))
    return torch.where(small, torch.log1p(2.0 * torch.sinh(0.5 * xs) ** 2), x.abs() - LOG2)


def log_bhattacharyya_naive(mu_a: Tensor, lv_a: Tensor, mu_b: Tensor, lv_b: Tensor) -> Tensor:
    """Reference broadcast implementation of :func:`log_bhattacharyya` (materialises ``[B, N, D]``)."""
    lv_a, lv_b = _diag(lv_a, mu_a)[:, None, :], _diag(lv_b, mu_b)[None, :, :]
    s = lv_a.exp() + lv_b.exp()
    d2 = (mu_a[:, None, :] - mu_b[None, :, :]) ** 2
    return (0.5 * (LOG2 + 0.5 * (lv_a + lv_b) - torch.log(s)) - 0.25 * d2 / s).sum(-1)


class SafeSqrt(torch.autograd.Function):
    """``sqrt(max(x, 0))`` with gradient ``1 / (2 max(sqrt(x), floor))`` (finite at 0, exact elsewhere)."""

    @staticmethod
    def forward(ctx, x: Tensor, floor: float):
        y = x.clamp_min(0.0).sqrt()
        ctx.save_for_backward(y)
        ctx.floor = floor
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g / (2.0 * y.clamp_min(ctx.floor)), None


def hellinger_from_log_bc(log_bc: Tensor, exponent: float | Tensor = 1.0) -> Tensor:
    """``PS = 1 - sqrt(1 - BC^exponent)`` from ``log BC``; in ``[0, 1]``, exactly 1 for identical Gaussians."""
    h2 = -torch.expm1(exponent * log_bc)  # 1 - BC^kappa, accurate near BC = 1
    return 1.0 - SafeSqrt.apply(h2, SQRT_GRAD_FLOOR)


def hellinger_similarity(
    mu_a: Tensor, lv_a: Tensor, mu_b: Tensor, lv_b: Tensor, exponent: float | Tensor | None = None, **kw
) -> Tensor:
    """``[B, N]`` ProbMED Hellinger similarity with ``BC^exponent`` (default ``1/D``, the per-dimension form)."""
    kappa = 1.0 / mu_a.shape[-1] if exponent is None else exponent
    return hellinger_from_log_bc(log_bhattacharyya(mu_a, lv_a, mu_b, lv_b, **kw), kappa)


def csd(mu_a: Tensor, lv_a: Tensor, mu_b: Tensor, lv_b: Tensor) -> Tensor:
    """PCME++ closed-form sampled distance ``||mu_i - mu_j||^2 + sum_d v_id + sum_d v_jd`` (matmul form)."""
    dim = mu_a.shape[-1]
    sv_a = lv_a.exp().sum(-1) * (dim if _is_iso(lv_a, mu_a) else 1)
    sv_b = lv_b.exp().sum(-1) * (dim if _is_iso(lv_b, mu_b) else 1)
    return _sq_dist(mu_a, mu_b) + sv_a[:, None] + sv_b[None, :]


def medprob_distance(
    mu_a: Tensor, lv_a: Tensor, mu_b: Tensor, lv_b: Tensor, chunk: int | None = None, fused: bool | None = None
) -> Tensor:
    """MedProbCLIP ``d_ij = 1/2 sum_d [(mu_id - mu_jd)^2 / (v_id + v_jd) + log(v_id + v_jd)]``."""
    dim = mu_a.shape[-1]
    if _is_iso(lv_a, mu_a) and _is_iso(lv_b, mu_b):
        log_s = torch.logaddexp(lv_a[:, 0][:, None], lv_b[:, 0][None, :])
        return 0.5 * (_sq_dist(mu_a, mu_b) * torch.exp(-log_s) + dim * log_s)
    lv_a, lv_b = _diag(lv_a, mu_a), _diag(lv_b, mu_b)
    return pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, 0.5, 0.5, chunk=chunk, fused=fused)


def medprob_distance_naive(mu_a: Tensor, lv_a: Tensor, mu_b: Tensor, lv_b: Tensor) -> Tensor:
    return pairwise_diag_kernel_naive(mu_a, _diag(lv_a, mu_a), mu_b, _diag(lv_b, mu_b), 0.5, 0.5)


def cosine(mu_a: Tensor, mu_b: Tensor, normalize: bool = True) -> Tensor:
    """Cosine similarity of the means (``normalize=False``: plain dot product of already-normalised means)."""
    if normalize:
        mu_a, mu_b = F.normalize(mu_a, dim=-1), F.normalize(mu_b, dim=-1)
    return mu_a @ mu_b.t()


def gaussian_log_likelihood(z: Tensor, mu: Tensor, lv: Tensor) -> Tensor:
    """``[M, N]`` log-density of points ``z`` [M, D] under ``N(mu_j, diag exp(lv_j))`` (two matmuls)."""
    dim = z.shape[-1]
    lv = _diag(lv, mu)
    prec = torch.exp(-lv)  # [N, D]
    quad = (z * z) @ prec.t() - 2.0 * z @ (mu * prec).t() + (mu * mu * prec).sum(-1)[None, :]
    return -0.5 * (dim * LOG2PI + lv.sum(-1)[None, :] + quad)


@dataclass(frozen=True)
class SimilarityKind:
    """One similarity a loss term or the evaluation may name.

    Args:
        pairwise: ``(mu_a [B, D], lv_a, mu_b [N, D], lv_b, normalize, chunk) → [B, N]``, higher = more similar.
        init_scale: the initial logit scale ``1 / tau`` of a term that uses it.
        fused_code: the ``SIM`` code of the fused Triton InfoNCE kernel (:mod:`probmed.losses.fused_infonce`), or
            None where the kernel does not implement it.
        exponent_base: for a Hellinger similarity, the exponent on ``BC`` before a learnt factor as a function of
            the dimension D (``1/D`` per-dimension, ``1`` joint); None for the others.
    """

    pairwise: Callable[..., Tensor]
    init_scale: float
    fused_code: int | None = None
    exponent_base: Callable[[int], float] | None = None


#: Name → similarity: the one table every config, loss term, kernel and evaluation reads. The initial logit scales
#: make the logit range at initialisation comparable with CLIP's (cosine in [-1, 1] times 1/0.07): both Hellinger
#: similarities are in [0, 1] (half the range of cosine) -> 2/0.07; -CSD of unit means is -(2 - 2 cos + sum v)
#: (twice as steep as cosine) -> 0.5/0.07; log BC and the MedProbCLIP distance are sums over D dimensions of
#: log-density-like terms -> 1.
SIMILARITY_TABLE: dict[str, SimilarityKind] = {
    "hellinger": SimilarityKind(
        lambda ma, la, mb, lb, normalize, chunk: hellinger_similarity(ma, la, mb, lb, chunk=chunk),
        2 / 0.07, fused_code=1, exponent_base=lambda dim: 1.0 / dim),
    "hellinger_joint": SimilarityKind(
        lambda ma, la, mb, lb, normalize, chunk: hellinger_similarity(ma, la, mb, lb, exponent=1.0, chunk=chunk),
        2 / 0.07, exponent_base=lambda dim: 1.0),
    "bhattacharyya": SimilarityKind(
        lambda ma, la, mb, lb, normalize, chunk: log_bhattacharyya(ma, la, mb, lb, chunk=chunk), 1.0, fused_code=0),
    "csd": SimilarityKind(lambda ma, la, mb, lb, normalize, chunk: -csd(ma, la, mb, lb), 0.5 / 0.07),
    "medprob": SimilarityKind(
        lambda ma, la, mb, lb, normalize, chunk: -medprob_distance(ma, la, mb, lb, chunk=chunk), 1.0),
    "cosine": SimilarityKind(lambda ma, la, mb, lb, normalize, chunk: cosine(ma, mb, normalize), 1 / 0.07),
}
SIMILARITIES = tuple(SIMILARITY_TABLE)
Similarity = Literal[SIMILARITIES]  # type: ignore[valid-type]  # Literal["hellinger", ...] for jsonargparse


def similarity_kind(name: str) -> SimilarityKind:
    """The table entry of ``name``, or a clear error listing the known similarities."""
    if name not in SIMILARITY_TABLE:
        raise ValueError(f"unknown similarity {name!r}{did_you_mean(name, SIMILARITY_TABLE)}; choose one of "
                         f"{SIMILARITIES}")
    return SIMILARITY_TABLE[name]


def pairwise_similarity(
    kind: str,
    mu_a: Tensor,
    lv_a: Tensor,
    mu_b: Tensor,
    lv_b: Tensor,
    normalize: bool = True,
    chunk: int | None = None,
) -> Tensor:
    """``[B, N]`` similarity (higher = more similar) of kind ``hellinger`` (ProbMED, PS on ``BC^(1/D)``, in
    [0, 1]), ``hellinger_joint`` (the paper's PS on ``BC``), ``bhattacharyya`` (log BC <= 0), ``csd`` (-CSD),
    ``medprob`` (-MedProbCLIP distance) or ``cosine`` (of the means); see :data:`SIMILARITY_TABLE`."""
    return similarity_kind(kind).pairwise(mu_a, lv_a, mu_b, lv_b, normalize, chunk)
