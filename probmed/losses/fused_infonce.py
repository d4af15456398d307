"""Fused probabilistic InfoNCE direction in Triton: the ``[B, N]`` logits are never stored.

One InfoNCE direction (local rows ``a`` [B, D] against global columns ``b`` [N, D], diagonal Gaussians) needs,
per row ``i``, only

    lse_i = logsumexp_{j present} logit_ij,      pos_i = sum_j t_ij logit_ij,      n_i = #{j present: g_j == g_i}

with ``t_ij = [g_i == g_j, j present] / n_i`` and ``logit_ij = scale * sim(K_ij)``, ``K_ij = log BC_ij`` in the
balanced form of :mod:`probmed.losses.kernels` (exactly 0 for identical Gaussians). ``sim`` is ``K``
(``bhattacharyya``) or ``1 - sqrt(-expm1(K / D))`` (``hellinger``, ProbMED's similarity).

Forward (flash-attention's trick): a program owns ``BLOCK_M`` rows and walks the columns in ``BLOCK_N`` tiles; a
tile of ``K`` is reduced over ``D`` in ``BLOCK_D`` slices in registers, mapped to logits, and folded into a running
max / running sum of exponentials (online log-sum-exp) and into the positives' logit sum and count (from the
group ids, in-tile). Output: three ``[B]`` vectors. Memory is ``O((B + N) D)``.

Backward recomputes each tile. With ``p_ij = exp(logit_ij - lse_i)`` on present columns,

    dlogit_ij = g_lse_i p_ij + (g_pos_i / n_i) [g_i == g_j, j present]
    dscale    = sum_ij dlogit_ij sim_ij
    G_ij      = dlogit_ij * scale * dsim/dK_ij     (hellinger: kappa e^{kappa K} / (2 max(sqrt(1 - e^{kappa K}), 1e-6)),
                                                   the SafeSqrt gradient floor of :mod:`probmed.losses.similarity`)

then the analytic gradient of ``K`` (``alpha = -1/4``, ``beta = -1/2``, ``r = 1/s``, ``T = (mu_a - mu_b) r``):
``dmu_a = 2 alpha sum_j G T`` and, differentiating the balanced log term directly,
``dlv_a = sum_j G (-alpha T^2 v_a + beta (v_a - v_b) r / 2)``; columns likewise (``-2 alpha``, sums over ``i``).
The balanced form matters here too: ``v_a dv_a - beta/2 sum_j G`` is the same number, but for identical Gaussians
its two parts cancel, and under the sqrt gradient floor ``G`` is ~1e5, which leaves float32 errors of ~1e-2.
Two kernels: a row pass (a program owns rows, reduces over all column tiles) and a column pass (a program owns
columns, reduces over all row tiles); each adds its ``[BLOCK, BLOCK_D]`` partials into the gradient rows it owns,
so no atomics are needed.

Numerics: ``expm1`` is Kahan's ``(e^x - 1) x / log(e^x)`` (exact near 0, where ``1 - e^x`` would cancel); the
online log-sum-exp starts from a finite ``-1e30`` and masks absent columns with ``where`` (no ``inf - inf``); a
row without any present column gets ``lse = 0`` (such rows have no positive and are dropped by the caller).
Accumulation is in the input dtype (float32 in training; float64 works too, used by the exactness tests).

Dispatch: :func:`usable` — CUDA float32 tensors with Triton importable, unless ``PROBMED_LOSS_TRITON=0``. On
first use on a device the kernels run once on a small problem and are compared with the torch formula
(:func:`self_check`); a kernel that fails to compile or disagrees turns the fused path off for the process with
one warning, so a training run falls back to the chunked kernel instead of ending. Under ``TRITON_INTERPRET=1``
at import time (Triton's CPU interpreter) CPU tensors of float32/float64 run the same kernels, which is how the
tests exercise them without a GPU.
"""
from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor

from probmed.losses.similarity import (
    SIMILARITY_TABLE, SQRT_GRAD_FLOOR, hellinger_from_log_bc, log_bhattacharyya_naive,
)

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

#: the similarities the fused kernel implements (``SIM`` constexpr codes of the kernels), from the one table
SIMILARITY_CODES = {name: k.fused_code for name, k in SIMILARITY_TABLE.items() if k.fused_code is not None}
#: ``(BLOCK_M, BLOCK_N, BLOCK_D)``: rows, columns and dimensions of one register tile, and warps per program: the
#: largest tiles whose sm_90 build spills no registers (compiled ahead of time without a GPU; not timed)
DEFAULT_BLOCKS = (32, 32, 8)
NUM_WARPS = 8
# Launches pass enable_fp_fusion=True (FMA contraction; Triton 3.9 warns when it is left to a changing default):
# the one place where contraction could break an exact result, log BC of identical Gaussians, is written so that
# it cannot (see _log_bc_tile).
#: Triton runs interpreted on CPU tensors (decided when Triton decorates the kernels, i.e. at import)
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
#: per device: whether :func:`self_check` passed there (absent: not run yet)
_checked: dict[str, bool] = {}


def usable(*xs: Tensor) -> bool:
    """Whether :func:`fused_infonce_rows` runs on these tensors: Triton present, not disabled, and CUDA float32
    (or CPU float32/float64 under the interpreter), all of one device and dtype."""
    if triton is None or os.environ.get("PROBMED_LOSS_TRITON", "1") == "0" or torch.compiler.is_compiling():
        return False  # under torch.compile: the chunked kernel, which dynamo traces
    dev, dtype = xs[0].device, xs[0].dtype
    if any(x.device != dev or x.dtype != dtype for x in xs):
        return False
    if dev.type == "cuda":
        return dtype == torch.float32 and checked(dev)
    return INTERPRETED and dev.type == "cpu" and all(x.dtype in (torch.float32, torch.float64) for x in xs)


if triton is not None:
    _FLOOR = tl.constexpr(SQRT_GRAD_FLOOR)

    @triton.jit
    def _load_side(mu_ptr, lv_ptr, offs, mask, offs_d, mask_d, D):
        """``(mu, v, u)`` of a ``[BLOCK, BLOCK_D]`` slice; padding reads ``mu = 0``, ``log v = 0``."""
        m2 = mask[:, None] & mask_d[None, :]
        idx = offs[:, None] * D + offs_d[None, :]
        mu = tl.load(mu_ptr + idx, mask=m2, other=0.0)
        lv = tl.load(lv_ptr + idx, mask=m2, other=0.0)
        u = tl.exp(0.5 * lv)
        return mu, u * u, u

    @triton.jit
    def _log_bc_tile(ma_ptr, la_ptr, mb_ptr, lb_ptr, offs_m, mask_m, offs_n, mask_n, D,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """``[BLOCK_M, BLOCK_N]`` balanced log BC, reduced over ``D`` in ``BLOCK_D`` slices."""
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ma_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            mu_a, v_a, u_a = _load_side(ma_ptr, la_ptr, offs_m, mask_m, offs_d, mask_d, D)
            mu_b, v_b, u_b = _load_side(mb_ptr, lb_ptr, offs_n, mask_n, offs_d, mask_d, D)
            s = v_a[:, None, :] + v_b[None, :, :]
            t = mu_a[:, None, :] - mu_b[None, :, :]
            du = u_a[:, None, :] - u_b[None, :, :]
            # s / (2 u_a u_b) = 1 + (u_a - u_b)^2 / (2 u_a u_b): exactly 1 for equal variances whatever FMA
            # contraction or approximate division the compiler picks (s / (2 u_a u_b) relies on both rounding alike)
            f = 1.0 + du * du / (2.0 * u_a[:, None, :] * u_b[None, :, :])
            acc += tl.sum(-0.25 * (t * t / s) - 0.5 * tl.log(f), axis=2)
        return acc

    @triton.jit
    def _expm1(x):
        """Kahan's accurate ``exp(x) - 1`` from ``exp`` and ``log`` only."""
        e = tl.exp(x)
        em1 = e - 1.0
        log_e = tl.log(tl.where(e == 0.0, 1.0, e))
        ratio = x / tl.where(log_e == 0.0, 1.0, log_e)
        return tl.where(em1 == 0.0, x, tl.where(e == 0.0, -1.0, em1 * ratio))

    @triton.jit
    def _similarity(k, kappa, SIM: tl.constexpr):
        """``(sim, dsim/dK)`` of a tile of ``K = log BC``."""
        if SIM == 1:
            h2 = tl.maximum(-_expm1(kappa * k), 0.0)
            root = tl.sqrt(h2)
            return 1.0 - root, kappa * (1.0 - h2) / (2.0 * tl.maximum(root, _FLOOR))
        else:
            return k, tl.full(k.shape, 1.0, k.dtype)

    @triton.jit
    def _tile_logits(ma_ptr, la_ptr, mb_ptr, lb_ptr, cmask_ptr, offs_m, mask_m, offs_n, mask_n, D, scale, kappa,
                     SIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """``(logit, sim, dsim/dK, present)`` of one tile; ``present`` [1, BLOCK_N] marks real present columns."""
        k = _log_bc_tile(ma_ptr, la_ptr, mb_ptr, lb_ptr, offs_m, mask_m, offs_n, mask_n, D,
                         BLOCK_M, BLOCK_N, BLOCK_D)
        sim, dsim = _similarity(k, kappa, SIM)
        present = (tl.load(cmask_ptr + offs_n, mask=mask_n, other=0) != 0)[None, :]
        return scale * sim, sim, dsim, present

    @triton.jit
    def _forward_kernel(ma_ptr, la_ptr, mb_ptr, lb_ptr, rg_ptr, cg_ptr, cmask_ptr, scale_ptr,
                        lse_ptr, pos_ptr, npos_ptr, B, N, D, kappa,
                        SIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < B
        rg = tl.load(rg_ptr + offs_m, mask=mask_m, other=-1)
        scale = tl.load(scale_ptr)
        dt = ma_ptr.dtype.element_ty
        run_max = tl.full((BLOCK_M,), -1e30, dt)
        run_sum = tl.zeros((BLOCK_M,), dt)
        pos_sum = tl.zeros((BLOCK_M,), dt)
        n_pos = tl.zeros((BLOCK_M,), tl.int32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            logit, sim, dsim, present = _tile_logits(ma_ptr, la_ptr, mb_ptr, lb_ptr, cmask_ptr, offs_m, mask_m,
                                                     offs_n, mask_n, D, scale, kappa, SIM,
                                                     BLOCK_M, BLOCK_N, BLOCK_D)
            new_max = tl.maximum(run_max, tl.max(tl.where(present, logit, -1e30), axis=1))
            p = tl.where(present, tl.exp(logit - new_max[:, None]), 0.0)
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(p, axis=1)
            run_max = new_max
            cg = tl.load(cg_ptr + offs_n, mask=mask_n, other=-1)
            pos = present & (rg[:, None] == cg[None, :])
            pos_sum += tl.sum(tl.where(pos, logit, 0.0), axis=1)
            n_pos += tl.sum(pos.to(tl.int32), axis=1)
        lse = tl.where(run_sum > 0.0, run_max + tl.log(tl.where(run_sum > 0.0, run_sum, 1.0)), 0.0)
        tl.store(lse_ptr + offs_m, lse, mask=mask_m)
        tl.store(pos_ptr + offs_m, pos_sum / tl.maximum(n_pos, 1).to(dt), mask=mask_m)
        tl.store(npos_ptr + offs_m, n_pos, mask=mask_m)

    @triton.jit
    def _grad_tile(ma_ptr, la_ptr, mb_ptr, lb_ptr, cmask_ptr, rg_ptr, cg_ptr, lse_ptr, glse_ptr, w_ptr,
                   offs_m, mask_m, offs_n, mask_n, D, scale, kappa,
                   SIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """``(G, dlogit * sim)`` of one tile: ``G = dloss/dK``, the second term sums to ``dloss/dscale``."""
        logit, sim, dsim, present = _tile_logits(ma_ptr, la_ptr, mb_ptr, lb_ptr, cmask_ptr, offs_m, mask_m,
                                                 offs_n, mask_n, D, scale, kappa, SIM, BLOCK_M, BLOCK_N, BLOCK_D)
        lse = tl.load(lse_ptr + offs_m, mask=mask_m, other=0.0)
        g_lse = tl.load(glse_ptr + offs_m, mask=mask_m, other=0.0)
        w = tl.load(w_ptr + offs_m, mask=mask_m, other=0.0)
        rg = tl.load(rg_ptr + offs_m, mask=mask_m, other=-1)
        cg = tl.load(cg_ptr + offs_n, mask=mask_n, other=-2)
        live = present & mask_m[:, None]
        soft = tl.exp(tl.where(live, logit - lse[:, None], 0.0))
        dlogit = tl.where(live, g_lse[:, None] * soft + tl.where(rg[:, None] == cg[None, :], w[:, None], 0.0), 0.0)
        return dlogit * scale * dsim, dlogit * sim

    @triton.jit
    def _slice_terms(ma_ptr, la_ptr, mb_ptr, lb_ptr, offs_m, mask_m, offs_n, mask_n, offs_d, mask_d, D):
        """``(T, dK/dlv_a, dK/dlv_b)`` per pair and dimension of a ``[BLOCK_M, BLOCK_N, BLOCK_D]`` slice."""
        mu_a, v_a, u_a = _load_side(ma_ptr, la_ptr, offs_m, mask_m, offs_d, mask_d, D)
        mu_b, v_b, u_b = _load_side(mb_ptr, lb_ptr, offs_n, mask_n, offs_d, mask_d, D)
        va, vb = v_a[:, None, :], v_b[None, :, :]
        r = 1.0 / (va + vb)
        t = (mu_a[:, None, :] - mu_b[None, :, :]) * r
        half_gap = 0.25 * (va - vb) * r  # exactly 0 for equal variances: no cancellation against sum_j G
        return t, 0.25 * t * t * va - half_gap, 0.25 * t * t * vb + half_gap

    @triton.jit
    def _add_rows(ptr, offs, mask, offs_d, mask_d, D, value):
        """``ptr[offs, offs_d] += value`` for the rows this program owns (no other program writes them)."""
        idx = offs[:, None] * D + offs_d[None, :]
        m2 = mask[:, None] & mask_d[None, :]
        tl.store(ptr + idx, tl.load(ptr + idx, mask=m2, other=0.0) + value, mask=m2)

    @triton.jit
    def _backward_rows_kernel(ma_ptr, la_ptr, mb_ptr, lb_ptr, cmask_ptr, rg_ptr, cg_ptr, lse_ptr, glse_ptr, w_ptr,
                              scale_ptr, gmu_ptr, glv_ptr, gscale_ptr, B, N, D, kappa,
                              SIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_D: tl.constexpr):
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < B
        scale = tl.load(scale_ptr)
        gscale = tl.zeros((BLOCK_M,), ma_ptr.dtype.element_ty)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            g, gs = _grad_tile(ma_ptr, la_ptr, mb_ptr, lb_ptr, cmask_ptr, rg_ptr, cg_ptr, lse_ptr, glse_ptr, w_ptr,
                               offs_m, mask_m, offs_n, mask_n, D, scale, kappa, SIM, BLOCK_M, BLOCK_N, BLOCK_D)
            gscale += tl.sum(gs, axis=1)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                mask_d = offs_d < D
                t, wa, _wb = _slice_terms(ma_ptr, la_ptr, mb_ptr, lb_ptr, offs_m, mask_m, offs_n, mask_n, offs_d,
                                        mask_d, D)
                _add_rows(gmu_ptr, offs_m, mask_m, offs_d, mask_d, D, -0.5 * tl.sum(g[:, :, None] * t, axis=1))
                _add_rows(glv_ptr, offs_m, mask_m, offs_d, mask_d, D, tl.sum(g[:, :, None] * wa, axis=1))
        tl.store(gscale_ptr + offs_m, gscale, mask=mask_m)

    @triton.jit
    def _backward_cols_kernel(ma_ptr, la_ptr, mb_ptr, lb_ptr, cmask_ptr, rg_ptr, cg_ptr, lse_ptr, glse_ptr, w_ptr,
                              scale_ptr, gmu_ptr, glv_ptr, B, N, D, kappa,
                              SIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_D: tl.constexpr):
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        scale = tl.load(scale_ptr)
        for m0 in range(0, B, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            mask_m = offs_m < B
            g, _gs = _grad_tile(ma_ptr, la_ptr, mb_ptr, lb_ptr, cmask_ptr, rg_ptr, cg_ptr, lse_ptr, glse_ptr, w_ptr,
                              offs_m, mask_m, offs_n, mask_n, D, scale, kappa, SIM, BLOCK_M, BLOCK_N, BLOCK_D)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                mask_d = offs_d < D
                t, _wa, wb = _slice_terms(ma_ptr, la_ptr, mb_ptr, lb_ptr, offs_m, mask_m, offs_n, mask_n, offs_d,
                                        mask_d, D)
                _add_rows(gmu_ptr, offs_n, mask_n, offs_d, mask_d, D, 0.5 * tl.sum(g[:, :, None] * t, axis=0))
                _add_rows(glv_ptr, offs_n, mask_n, offs_d, mask_d, D, tl.sum(g[:, :, None] * wb, axis=0))


class FusedInfoNCEDirection(torch.autograd.Function):
    """``(lse [B], pos [B], n_pos [B])`` of one InfoNCE direction (module docstring); differentiable in the means,
    log-variances (``[B, D]`` / ``[N, D]``) and the 0-dim ``scale``; ``n_pos`` (int32) is not."""

    @staticmethod
    def forward(ctx, mu_a, lv_a, mu_b, lv_b, scale, row_group, col_group, col_mask, sim_code: int, blocks):
        (b, d), n = mu_a.shape, mu_b.shape[0]
        mu_a, lv_a, mu_b, lv_b = (x.contiguous() for x in (mu_a, lv_a, mu_b, lv_b))
        scale = scale.to(mu_a.dtype).reshape(())
        row_group, col_group = row_group.contiguous(), col_group.contiguous()
        col_mask = col_mask.to(torch.int8).contiguous()
        lse, pos = mu_a.new_empty(b), mu_a.new_empty(b)
        n_pos = torch.empty(b, dtype=torch.int32, device=mu_a.device)
        bm, bn, bd = blocks
        kappa = 1.0 / d
        _forward_kernel[(triton.cdiv(b, bm),)](mu_a, lv_a, mu_b, lv_b, row_group, col_group, col_mask, scale,
                                               lse, pos, n_pos, b, n, d, kappa,
                                               SIM=sim_code, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
                                               num_warps=NUM_WARPS, enable_fp_fusion=True)
        ctx.save_for_backward(mu_a, lv_a, mu_b, lv_b, scale, row_group, col_group, col_mask, lse, n_pos)
        ctx.sim_code, ctx.blocks, ctx.kappa = sim_code, blocks, kappa
        ctx.mark_non_differentiable(n_pos)
        return lse, pos, n_pos

    @staticmethod
    def backward(ctx, g_lse, g_pos, _g_n_pos):
        mu_a, lv_a, mu_b, lv_b, scale, row_group, col_group, col_mask, lse, n_pos = ctx.saved_tensors
        (b, d), n = mu_a.shape, mu_b.shape[0]
        g_lse = torch.zeros_like(lse) if g_lse is None else g_lse.contiguous()
        g_pos = torch.zeros_like(lse) if g_pos is None else g_pos
        w = (g_pos / n_pos.clamp_min(1).to(g_pos.dtype)).contiguous()  # d pos_i / d logit_ij = t_ij
        bm, bn, bd = ctx.blocks
        common = (mu_a, lv_a, mu_b, lv_b, col_mask, row_group, col_group, lse, g_lse, w, scale)
        const = dict(SIM=ctx.sim_code, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=NUM_WARPS,
                     enable_fp_fusion=True)
        g_mu_a, g_lv_a, g_mu_b, g_lv_b = (torch.zeros_like(x) for x in (mu_a, lv_a, mu_b, lv_b))
        gscale = lse.new_empty(b)
        _backward_rows_kernel[(triton.cdiv(b, bm),)](*common, g_mu_a, g_lv_a, gscale, b, n, d, ctx.kappa, **const)
        _backward_cols_kernel[(triton.cdiv(n, bn),)](*common, g_mu_b, g_lv_b, b, n, d, ctx.kappa, **const)
        return g_mu_a, g_lv_a, g_mu_b, g_lv_b, gscale.sum(), None, None, None, None, None


def fused_infonce_rows(
    similarity: str,
    mu_a: Tensor,
    lv_a: Tensor,
    mu_b: Tensor,
    lv_b: Tensor,
    scale: Tensor,
    row_group: Tensor,
    col_group: Tensor,
    col_mask: Tensor,
    blocks: tuple[int, int, int] = DEFAULT_BLOCKS,
) -> tuple[Tensor, Tensor, Tensor]:
    """One InfoNCE direction without the ``[B, N]`` logits: ``(loss [B], pos [B], n_pos [B])``.

    ``loss_i = lse_i - pos_i`` is the multi-positive soft cross-entropy of row ``i`` (meaningful where
    ``n_pos_i > 0``), ``pos_i`` the mean logit of its positives, ``logit = scale * sim``.

    Args:
        similarity: ``hellinger`` or ``bhattacharyya`` (:data:`SIMILARITY_CODES`).
        mu_a, lv_a: ``[B, D]`` row means and log-variances; ``mu_b, lv_b``: ``[N, D]`` columns.
        scale: 0-dim logit scale (differentiable).
        row_group: ``[B]`` / ``col_group``: ``[N]`` integer group ids; ``col_mask``: ``[N]`` bool, column present.
        blocks: ``(BLOCK_M, BLOCK_N, BLOCK_D)`` tile sizes (powers of two).
    """
    if similarity not in SIMILARITY_CODES:
        raise ValueError(f"the fused InfoNCE kernel implements {tuple(SIMILARITY_CODES)}, not {similarity!r}")
    if lv_a.shape != mu_a.shape or lv_b.shape != mu_b.shape or mu_a.shape[1] != mu_b.shape[1]:
        raise ValueError(f"the fused InfoNCE kernel needs diagonal [., D] inputs of one D, got means "
                         f"{tuple(mu_a.shape)}, {tuple(mu_b.shape)} and log-variances {tuple(lv_a.shape)}, "
                         f"{tuple(lv_b.shape)}")
    if triton is None:
        raise RuntimeError("the fused InfoNCE kernel needs triton (pip install triton)")
    lse, pos, n_pos = FusedInfoNCEDirection.apply(mu_a, lv_a, mu_b, lv_b, scale, row_group, col_group, col_mask,
                                                  SIMILARITY_CODES[similarity], tuple(int(x) for x in blocks))
    return lse - pos, pos, n_pos


def self_check(device: torch.device | str) -> None:
    """Run both similarities forward and backward on a small ragged problem on ``device`` and compare the per-row
    parts and all gradients with the torch formula; raises ``RuntimeError`` when they disagree."""
    g = torch.Generator().manual_seed(0)
    b, n, d = 5, 11, 12
    base = [torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) - 1.0,
            torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) - 1.0, torch.tensor(3.0)]
    row_group, col_group = torch.arange(b).to(device), (torch.arange(n) % 7).to(device)
    col_mask = (torch.arange(n) != 2).to(device)
    for similarity in SIMILARITY_CODES:
        leaves = [x.to(device).requires_grad_() for x in base]
        loss, pos, n_pos = fused_infonce_rows(similarity, *leaves, row_group, col_group, col_mask)
        got = [loss, pos, *torch.autograd.grad(loss.sum() + pos.sum(), leaves)]
        log_bc = log_bhattacharyya_naive(*leaves[:4])
        exponent_base = SIMILARITY_TABLE[similarity].exponent_base  # Hellinger on BC^(1/D), or log BC itself
        sim = log_bc if exponent_base is None else hellinger_from_log_bc(log_bc, exponent_base(d))
        logits = leaves[4] * sim
        same = ((row_group[:, None] == col_group[None, :]) & col_mask[None, :]).to(logits.dtype)
        ref_pos = (same * logits).sum(1) / same.sum(1).clamp_min(1)
        ref_loss = torch.logsumexp(logits.masked_fill(~col_mask[None, :], -1e30), 1) - ref_pos
        want = [ref_loss, ref_pos, *torch.autograd.grad(ref_loss.sum() + ref_pos.sum(), leaves)]
        for name, x, y in zip(("loss", "pos", "mu_a", "lv_a", "mu_b", "lv_b", "scale"), got, want):
            x, y = x.detach(), y.detach()
            if not torch.allclose(x, y, rtol=1e-3, atol=1e-3 * float(y.abs().max().clamp_min(1.0))):
                raise RuntimeError(f"{similarity} {name}: max difference {float((x - y).abs().max()):.3g} from the "
                                   "torch formula")


def checked(device: torch.device | str) -> bool:
    """Whether the kernels passed :func:`self_check` on ``device`` (run once per device and process; a failure
    warns once and keeps the fused path off there)."""
    key = str(torch.device(device))
    if key not in _checked:
        try:
            with torch.inference_mode(False), torch.enable_grad():  # may first be reached under no_grad
                self_check(key)
            _checked[key] = True
        except Exception as exc:  # noqa: BLE001 - compiler, driver or numerics: fall back, never end the run
            warnings.warn(f"probmed.losses: the fused Triton InfoNCE kernel is off on {key} ({type(exc).__name__}: "
                          f"{str(exc)[:300]}); using the chunked kernel", RuntimeWarning, stacklevel=2)
            _checked[key] = False
    return _checked[key]
