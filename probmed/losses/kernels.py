"""Memory-linear pairwise kernel between two sets of diagonal Gaussians.

Both the Bhattacharyya coefficient and the MedProbCLIP distance between diagonal Gaussians are built from one
pairwise reduction over the embedding dimension,

    K_ij = sum_d [ alpha * (mu_id - mu_jd)^2 / s_ijd  +  beta * log s_ijd ],   s_ijd = v_id + v_jd,

    log BC_ij = D/2 log 2 + 1/4 (sum_d log v_id + sum_d log v_jd) + K_ij(alpha=-1/4, beta=-1/2)
    d^MedProbCLIP_ij = K_ij(alpha=1/2, beta=1/2).

A naive broadcast materialises several ``[B, N, D]`` tensors (256 x 4096 x 512 fp32 = 2 GiB each) for autograd.
:class:`PairwiseDiagKernel` computes ``K`` in column chunks and saves only its ``[B, D]`` / ``[N, D]`` inputs;
the backward pass recomputes each chunk and applies the analytic gradient

    dK/dmu_i = 2 alpha T,   dK/dmu_j = -2 alpha T,   dK/dv_i = dK/dv_j = beta r - alpha T^2,
    with r = 1/s and T = (mu_i - mu_j) r      (then dK/dlog v = v dK/dv),

contracted with the incoming ``[B, N]`` gradient ``G``: ``grad mu_i = 2 alpha sum_j G_ij T_ijd`` etc.

Speed (CPU). The cost is elementwise work on B x N x D triples, dominated by the logarithm. Two tricks:

* **Fewer logarithms.** ``sum_d log s_d = sum_groups log(prod_{d in group} s_d)``: the dimensions are split in
  ``k`` (1, 2, 4 or 8) interleaved blocks and ``k`` factors are multiplied before one ``log``. To keep the
  product inside the float range, both variances are rescaled by ``exp(-c)`` with ``c`` the mid-point of the
  log-variance range of the call (and the means by ``exp(-c/2)``, which leaves ``(mu_i - mu_j)^2 / s`` unchanged),
  so that ``|log s'| <= (max lv - min lv) / 2``; ``k`` is the largest power of two with
  ``k * (max lv - min lv) / 2 <= 80`` (fp32 normal range is about e^+-87). ``D c`` is added back outside.
* **Fusion without temporaries.** On CPU (float32) the chunk functions are compiled with ``torch.compile``
  (inductor emits one vectorised C++ reduction loop per output, no ``[B, chunk, D]`` buffer). The backward is
  split into a row-side function (reduce over columns j) and a column-side function (reduce over rows i), each
  recomputing ``r`` and ``T`` in registers: recomputation is cheaper than writing and re-reading a buffer.

Elsewhere (float64, CUDA unless ``PROBMED_LOSS_COMPILE_CUDA=1`` or ``fused=True``, small problems, or when
compilation fails) an eager chunked
implementation of the same maths runs, with chunks sized to keep ``[B, chunk, D]`` temporaries near 1 MiB.
Set ``PROBMED_LOSS_COMPILE=0`` to force the eager path.
"""
from __future__ import annotations

import math
import os
import warnings

import torch
from torch import Tensor

LOG2 = math.log(2.0)

#: Below this many B x N x D triples the eager path is used (compiling would cost more than it saves).
FUSED_MIN_TRIPLES = 1 << 24
#: Columns per compiled chunk (forward and backward); the last chunk is padded to this size (one compilation).
FUSED_CHUNK = 256
#: Bound on |log of a product of k rescaled s values| (fp32 normal numbers reach about e^-87.3 .. e^88.7).
_LOG_RANGE = 80.0


# ----------------------------------------------------------------------------------------------------------------
# eager chunk functions
# ----------------------------------------------------------------------------------------------------------------


def _fwd_chunk_eager(mu_a: Tensor, v_a: Tensor, mu_b: Tensor, v_b: Tensor, alpha: float, beta: float) -> Tensor:
    """``K`` for rows ``a`` [B, D] x columns ``b`` [Nc, D] -> [B, Nc] (plain, in-place ops)."""
    s = v_a[:, None, :] + v_b[None, :, :]
    out = torch.log(s).sum(-1).mul_(beta)
    t = mu_a[:, None, :] - mu_b[None, :, :]
    t.square_().div_(s)
    return out.add_(t.sum(-1), alpha=alpha)


def _bwd_chunk_eager(
    mu_a: Tensor, v_a: Tensor, mu_b: Tensor, v_b: Tensor, g: Tensor, alpha: float, beta: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``sum(g * K)`` w.r.t. ``mu_a, v_a`` [B, D] and ``mu_b, v_b`` [Nc, D]."""
    r = (v_a[:, None, :] + v_b[None, :, :]).reciprocal_()  # [B, Nc, D]
    t = (mu_a[:, None, :] - mu_b[None, :, :]).mul_(r)  # T = delta / s
    g_mu_a = torch.bmm(g[:, None, :], t).squeeze(1).mul_(2 * alpha)
    g_mu_b = torch.bmm(g.t()[:, None, :], t.transpose(0, 1)).squeeze(1).mul_(-2 * alpha)
    w = r.mul_(beta).addcmul_(t, t, value=-alpha)  # beta r - alpha T^2
    g_v_a = torch.bmm(g[:, None, :], w).squeeze(1)
    g_v_b = torch.bmm(g.t()[:, None, :], w.transpose(0, 1)).squeeze(1)
    return g_mu_a, g_v_a, g_mu_b, g_v_b


def default_chunk(rows: int, dim: int, itemsize: int = 4, budget_bytes: int = 1 << 20) -> int:
    """Columns per eager chunk so that one ``[rows, chunk, dim]`` temporary takes about ``budget_bytes``
    (1 MiB: cache-sized on CPU; callers pass 64 MiB on CUDA, where launches, not caches, dominate)."""
    return max(1, min(4096, budget_bytes // max(1, rows * dim * itemsize)))


# ----------------------------------------------------------------------------------------------------------------
# fused (torch.compile) chunk functions
# ----------------------------------------------------------------------------------------------------------------


def _fwd_grouped(ma: Tensor, va: Tensor, mb: Tensor, vb: Tensor, alpha: float, beta: float) -> Tensor:
    """``alpha sum t^2/s + beta sum log s`` on grouped ``[., k, D/k]`` (rescaled) inputs -> ``[B, Nc]``."""
    k = ma.shape[1]
    q = None
    p = None
    for i in range(k):
        s = va[:, None, i] + vb[None, :, i]
        t = ma[:, None, i] - mb[None, :, i]
        qi = t * t / s
        q = qi if q is None else q + qi
        p = s if p is None else p * s
    return (alpha * q + beta * torch.log(p)).sum(-1)


def _bwd_rows(mu_a: Tensor, v_a: Tensor, mu_b: Tensor, v_b: Tensor, g: Tensor, alpha: float, beta: float):
    """Row-side gradients ``(d/dmu_a, d/dv_a)`` [B, D] of ``sum(g * K)``; reduces over the chunk's columns."""
    r = 1.0 / (v_a[:, None, :] + v_b[None, :, :])
    t = (mu_a[:, None, :] - mu_b[None, :, :]) * r
    gg = g[:, :, None]
    return (2 * alpha) * (gg * t).sum(1), (gg * (beta * r - alpha * t * t)).sum(1)


def _bwd_cols(mu_a: Tensor, v_a: Tensor, mu_b: Tensor, v_b: Tensor, g_t: Tensor, alpha: float, beta: float):
    """Column-side gradients ``(d/dmu_b, d/dv_b)`` [Nc, D]; ``g_t`` is the transposed gradient [Nc, B]."""
    r = 1.0 / (v_b[:, None, :] + v_a[None, :, :])
    t = (mu_a[None, :, :] - mu_b[:, None, :]) * r
    gg = g_t[:, :, None]
    return (-2 * alpha) * (gg * t).sum(1), (gg * (beta * r - alpha * t * t)).sum(1)


_compiled: dict[str, object] = {}
_compile_state: dict[str, bool] = {}


def _compiled_fn(name: str):
    if name not in _compiled:
        fn = {"fwd": _fwd_grouped, "rows": _bwd_rows, "cols": _bwd_cols}[name]
        _compiled[name] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _compiled[name]


def _group_plan(lv_a: Tensor, lv_b: Tensor, dim: int) -> tuple[int, float]:
    """``(k, c)``: dimensions per log and the log-scale shift (see module docstring)."""
    lo = float(torch.minimum(lv_a.min(), lv_b.min()))
    hi = float(torch.maximum(lv_a.max(), lv_b.max()))
    c = 0.5 * (lo + hi) + LOG2
    half_width = 0.5 * (hi - lo) + 1e-3
    for k in (8, 4, 2):
        if dim % k == 0 and k * half_width <= _LOG_RANGE:
            return k, c
    return 1, c


def _pad_rows(x: Tensor, n: int, value: float) -> Tensor:
    if x.shape[0] == n:
        return x
    return torch.cat([x, x.new_full((n - x.shape[0],) + tuple(x.shape[1:]), value)], dim=0)


def fused_available() -> bool:
    """Whether the compiled CPU path may be used (not disabled, not failed before)."""
    return os.environ.get("PROBMED_LOSS_COMPILE", "1") != "0"


def _fused_forward(mu_a, lv_a, mu_b, lv_b, alpha, beta, chunk):
    dim = mu_a.shape[1]
    k, c = _group_plan(lv_a, lv_b, dim)
    ma = (mu_a * math.exp(-0.5 * c)).reshape(mu_a.shape[0], k, dim // k)
    va = torch.exp(lv_a - c).reshape(mu_a.shape[0], k, dim // k)
    mb = mu_b * math.exp(-0.5 * c)
    vb = torch.exp(lv_b - c)
    fwd = _compiled_fn("fwd")
    n = mu_b.shape[0]
    out = mu_a.new_empty(mu_a.shape[0], n)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        mbc = _pad_rows(mb[c0:c1], chunk, 0.0).reshape(chunk, k, dim // k)
        vbc = _pad_rows(vb[c0:c1], chunk, 1.0).reshape(chunk, k, dim // k)
        out[:, c0:c1] = fwd(ma, va, mbc, vbc, alpha, beta)[:, : c1 - c0]
    return out.add_(beta * dim * c)


def _fused_backward(mu_a, v_a, mu_b, v_b, grad, alpha, beta, chunk):
    rows, cols = _compiled_fn("rows"), _compiled_fn("cols")
    n = mu_b.shape[0]
    g_mu_a = torch.zeros_like(mu_a)
    g_v_a = torch.zeros_like(v_a)
    g_mu_b = torch.empty_like(mu_b)
    g_v_b = torch.empty_like(v_b)
    grad_t = grad.t().contiguous()
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        mbc = _pad_rows(mu_b[c0:c1], chunk, 0.0)
        vbc = _pad_rows(v_b[c0:c1], chunk, 1.0)
        gtc = _pad_rows(grad_t[c0:c1], chunk, 0.0)
        gma, gva = rows(mu_a, v_a, mbc, vbc, gtc.t().contiguous(), alpha, beta)
        g_mu_a += gma
        g_v_a += gva
        gmb, gvb = cols(mu_a, v_a, mbc, vbc, gtc, alpha, beta)
        g_mu_b[c0:c1] = gmb[: c1 - c0]
        g_v_b[c0:c1] = gvb[: c1 - c0]
    return g_mu_a, g_v_a, g_mu_b, g_v_b


# ----------------------------------------------------------------------------------------------------------------
# autograd function and entry point
# ----------------------------------------------------------------------------------------------------------------


class PairwiseDiagKernel(torch.autograd.Function):
    """``K_ij = sum_d [alpha (mu_a_id - mu_b_jd)^2 / s + beta log s]``, ``s = exp(lv_a_id) + exp(lv_b_jd)``."""

    @staticmethod
    def forward(ctx, mu_a, lv_a, mu_b, lv_b, alpha: float, beta: float, chunk: int, fused: bool):
        if fused:
            out = _fused_forward(mu_a, lv_a, mu_b, lv_b, alpha, beta, chunk)
        else:
            v_a, v_b = lv_a.exp(), lv_b.exp()
            n = mu_b.shape[0]
            out = mu_a.new_empty(mu_a.shape[0], n)
            for c0 in range(0, n, chunk):
                c1 = min(n, c0 + chunk)
                out[:, c0:c1] = _fwd_chunk_eager(mu_a, v_a, mu_b[c0:c1], v_b[c0:c1], alpha, beta)
        ctx.save_for_backward(mu_a, lv_a, mu_b, lv_b)
        ctx.alpha, ctx.beta, ctx.chunk, ctx.fused = alpha, beta, chunk, fused
        return out

    @staticmethod
    def backward(ctx, grad):
        mu_a, lv_a, mu_b, lv_b = ctx.saved_tensors
        alpha, beta, chunk = ctx.alpha, ctx.beta, ctx.chunk
        v_a, v_b = lv_a.exp(), lv_b.exp()
        grad = grad.contiguous()
        if ctx.fused:
            g_mu_a, g_v_a, g_mu_b, g_v_b = _fused_backward(mu_a, v_a, mu_b, v_b, grad, alpha, beta, chunk)
        else:
            n = mu_b.shape[0]
            g_mu_a = torch.zeros_like(mu_a)
            g_v_a = torch.zeros_like(v_a)
            g_mu_b = torch.empty_like(mu_b)
            g_v_b = torch.empty_like(v_b)
            for c0 in range(0, n, chunk):
                c1 = min(n, c0 + chunk)
                gma, gva, gmb, gvb = _bwd_chunk_eager(
                    mu_a, v_a, mu_b[c0:c1], v_b[c0:c1], grad[:, c0:c1].contiguous(), alpha, beta
                )
                g_mu_a += gma
                g_v_a += gva
                g_mu_b[c0:c1] = gmb
                g_v_b[c0:c1] = gvb
        # chain rule through v = exp(log_var)
        return g_mu_a, g_v_a * v_a, g_mu_b, g_v_b * v_b, None, None, None, None


def _probe_fused(device: torch.device | str = "cpu") -> bool:
    """Compile and run the fused path once on a small problem on ``device``; disable it there if that fails."""
    dev = torch.device(device).type
    key = f"probed_{dev}"
    if key in _compile_state:
        return not _compile_state.get(f"failed_{dev}", False)
    try:
        # may be first reached under no_grad / inference_mode (retrieval scoring): re-enable autograd here
        with torch.inference_mode(False), torch.enable_grad():
            g = torch.Generator().manual_seed(0)
            args = [torch.randn(4, 16, generator=g).to(dev).requires_grad_() for _ in range(4)]
            out = PairwiseDiagKernel.apply(*args, -0.25, -0.5, FUSED_CHUNK, True)
            out.sum().backward()
    except Exception as exc:  # pragma: no cover - depends on the machine's compiler
        warnings.warn(f"probmed.losses: torch.compile of the pairwise kernel failed on {dev} ({exc!r}); "
                      "using eager chunks")
        _compile_state[f"failed_{dev}"] = True
    _compile_state[key] = True
    return not _compile_state.get(f"failed_{dev}", False)


def use_fused(mu_a: Tensor, n_cols: int) -> bool:
    """Default choice: fused for float32 problems of at least :data:`FUSED_MIN_TRIPLES` triples on CPU, and on
    CUDA only when ``PROBMED_LOSS_COMPILE_CUDA=1`` (inductor then emits Triton kernels; opt-in)."""
    dev = mu_a.device.type
    on_device = dev == "cpu" or (dev == "cuda" and os.environ.get("PROBMED_LOSS_COMPILE_CUDA", "0") == "1")
    return (
        on_device
        and mu_a.dtype == torch.float32
        and mu_a.shape[0] * n_cols * mu_a.shape[1] >= FUSED_MIN_TRIPLES
        and fused_available()
        and not torch.compiler.is_compiling()
        and _probe_fused(mu_a.device)
    )


def pairwise_diag_kernel(
    mu_a: Tensor,
    lv_a: Tensor,
    mu_b: Tensor,
    lv_b: Tensor,
    alpha: float,
    beta: float,
    chunk: int | None = None,
    fused: bool | None = None,
) -> Tensor:
    """Memory-linear ``[B, N]`` kernel ``K`` (see module docstring); ``lv_*`` must be ``[., D]`` (diagonal).

    Args:
        chunk: columns per chunk (default: :data:`FUSED_CHUNK` fused, about 1 MiB temporaries eager).
        fused: use the ``torch.compile``-fused chunk functions (default: :func:`use_fused`).
    """
    if fused is None:
        fused = use_fused(mu_a, mu_b.shape[0])
    if chunk is None:
        budget = (64 << 20) if mu_a.device.type == "cuda" else (1 << 20)
        chunk = FUSED_CHUNK if fused else default_chunk(mu_a.shape[0], mu_a.shape[1], mu_a.element_size(), budget)
    return PairwiseDiagKernel.apply(mu_a, lv_a, mu_b, lv_b, float(alpha), float(beta), int(chunk), bool(fused))


def pairwise_diag_kernel_naive(mu_a: Tensor, lv_a: Tensor, mu_b: Tensor, lv_b: Tensor, alpha: float, beta: float):
    """Reference broadcast implementation (materialises ``[B, N, D]``; for tests and benchmarks)."""
    s = lv_a.exp()[:, None, :] + lv_b.exp()[None, :, :]
    d2 = (mu_a[:, None, :] - mu_b[None, :, :]) ** 2
    return (alpha * d2 / s + beta * torch.log(s)).sum(-1)
