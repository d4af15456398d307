"""Memory-linear pairwise kernel between two sets of diagonal Gaussians.

Both the Bhattacharyya coefficient and the MedProbCLIP distance between diagonal Gaussians are one pairwise
reduction over the embedding dimension,

    K_ij = sum_d [ alpha * (mu_id - mu_jd)^2 / s_ijd  +  beta * L_ijd ],   s_ijd = v_id + v_jd,

    L_ijd = log s_ijd                                          (plain)
    L_ijd = log( s_ijd / (2 sqrt(v_id v_jd)) ) = log cosh((log v_id - log v_jd) / 2)      (balanced)

    log BC_ij            = K_ij(alpha=-1/4, beta=-1/2, balanced)
    d^MedProbCLIP_ij     = K_ij(alpha=1/2,  beta=1/2,  plain).

*Balanced* is the form in which every per-dimension term is exactly zero for two identical Gaussians
(``s / (2 sqrt(v_i v_j))`` is evaluated as ``(u_i^2 + u_j^2) / (2 u_i u_j)`` with ``u = exp(log v / 2)``, which is
exactly 1 when ``u_i == u_j``), so log BC of identical inputs is exactly 0 in float32. Splitting it instead into
per-sample sums and ``sum_d log s`` adds two numbers of size ~D (about +-600 at D = 512) and leaves a float32
error of ~1e-4 in log BC — enough to move ``1 - sqrt(1 - BC)`` from 1 to 0.99.

A naive broadcast materialises several ``[B, N, D]`` tensors (256 x 4096 x 512 fp32 = 2 GiB each) for autograd.
:class:`PairwiseDiagKernel` computes ``K`` in column chunks and saves only its ``[B, D]`` / ``[N, D]`` inputs;
the backward pass recomputes each chunk and applies the analytic gradient

    dK/dmu_i = 2 alpha T,   dK/dmu_j = -2 alpha T,   dK/dlog v_i = beta P_i - alpha T^2 v_i,
    with r = 1/s, T = (mu_i - mu_j) r, and P_i = d L / d log v_i = v_i r (plain) or tanh((log v_i - log v_j) / 2) / 2
    (balanced: L = log cosh(Δ/2)),

contracted with the incoming ``[B, N]`` gradient ``G``: ``grad mu_i = 2 alpha sum_j G_ij T_ijd`` etc. The balanced
``P`` is the tanh of the log-variance difference, formed from the inputs themselves: exactly 0 for identical
Gaussians and float32-accurate for nearly identical ones. Writing it as ``v_i r - 1/2`` (the chain rule through
``v = exp(log v)``) subtracts two rounded terms of size 1/2 and loses about three digits when ``Δ`` is 1e-4.

Speed (CPU). The cost is elementwise work on B x N x D triples, dominated by the logarithm. Two tricks:

* **Fewer logarithms.** ``sum_d L_d = sum_groups log(prod_{d in group} exp(L_d))``: the dimensions are split in
  ``k`` (1, 2, 4 or 8) interleaved blocks and ``k`` factors are multiplied before one ``log``. Balanced factors
  are ``cosh`` values in ``[1, exp(|log v_i - log v_j| / 2)]``; plain factors ``s`` are rescaled by ``exp(-c)``
  with ``c`` the mid-point of the log-variance range of the call (means by ``exp(-c/2)``, which leaves
  ``(mu_i - mu_j)^2 / s`` unchanged, and ``D c`` added back outside). Either way ``|log factor| <= (max log v -
  min log v) / 2``, and ``k`` is the largest power of two with ``k * (max - min) / 2 <= 80`` (fp32 normal range
  is about e^+-87).
* **Fusion without temporaries.** On CPU (float32) the chunk functions are compiled with ``torch.compile``
  (inductor emits one vectorised C++ reduction loop per output, no ``[B, chunk, D]`` buffer). The backward is
  split into a row-side function (reduce over columns j) and a column-side function (reduce over rows i), each
  recomputing ``r`` and ``T`` in registers. The row count is a dynamic dimension and ``alpha``/``beta`` are
  tensor inputs, so any batch size, evaluation block or coefficient pair reuses one compiled graph per
  ``(k, D / k)``; columns are padded to one fixed chunk size.

Elsewhere (float64, CUDA unless ``PROBMED_LOSS_COMPILE_CUDA=1`` or ``fused=True``, small problems) an eager
chunked implementation of the same maths runs, with chunks sized to keep ``[B, chunk, D]`` temporaries near
1 MiB. A compiled call that fails for any reason (no compiler, recompile limit, backend error) is redone eagerly,
with one warning, and the fused path stays off for the rest of the process: a compiler never ends a run.
Set ``PROBMED_LOSS_COMPILE=0`` to force the eager path.
"""
from __future__ import annotations

import math
import os
import warnings

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

LOG2 = math.log(2.0)

#: Below this many B x N x D triples the eager path is used (compiling would cost more than it saves);
#: ``PROBMED_LOSS_FUSED_MIN_TRIPLES`` sets it (0: the fused path for every float32 CPU problem).
FUSED_MIN_TRIPLES = int(os.environ.get("PROBMED_LOSS_FUSED_MIN_TRIPLES", 1 << 24))
#: Columns per compiled chunk (forward and backward); the last chunk is padded to this size.
FUSED_CHUNK = 256
#: Bound on |log of a product of k factors| (fp32 normal numbers reach about e^-87.3 .. e^88.7).
_LOG_RANGE = 80.0


# ----------------------------------------------------------------------------------------------------------------
# per-dimension log term
# ----------------------------------------------------------------------------------------------------------------


def _log_factor(v_a: Tensor, u_a: Tensor, v_b: Tensor, u_b: Tensor, balanced: bool) -> Tensor:
    """``exp(L)`` for broadcastable rows/columns: ``s`` (plain) or ``s / (2 u_a u_b)`` >= 1 (balanced)."""
    s = v_a + v_b
    if not balanced:
        return s
    return (s / (2.0 * u_a * u_b)).clamp_min(1.0)


def _sqrt_var(lv: Tensor) -> tuple[Tensor, Tensor]:
    """``(v, u)`` with ``u = exp(lv / 2)`` and ``v = u * u`` (so that ``v_i + v_j == 2 u_i u_j`` when equal)."""
    u = torch.exp(0.5 * lv)
    return u * u, u


# ----------------------------------------------------------------------------------------------------------------
# eager chunk functions
# ----------------------------------------------------------------------------------------------------------------


def _fwd_chunk_eager(mu_a, v_a, u_a, mu_b, v_b, u_b, alpha: float, beta: float, balanced: bool) -> Tensor:
    """``K`` for rows ``a`` [B, D] x columns ``b`` [Nc, D] -> [B, Nc]."""
    f = _log_factor(v_a[:, None, :], u_a[:, None, :], v_b[None, :, :], u_b[None, :, :], balanced)
    out = torch.log(f).sum(-1).mul_(beta)
    t = mu_a[:, None, :] - mu_b[None, :, :]
    t.square_().div_(v_a[:, None, :] + v_b[None, :, :])
    return out.add_(t.sum(-1), alpha=alpha)


def _log_term_grad(v_own: Tensor, lv_own: Tensor, lv_other: Tensor, r: Tensor, balanced: bool) -> Tensor:
    """``P = dL / dlog v_own`` (module docstring), broadcast like ``r``: ``v_own r`` or ``tanh(Δ/2) / 2``."""
    return 0.5 * torch.tanh(0.5 * (lv_own - lv_other)) if balanced else v_own * r


def _bwd_chunk_eager(
    mu_a: Tensor, lv_a: Tensor, mu_b: Tensor, lv_b: Tensor, g: Tensor, alpha: float, beta: float, balanced: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``sum(g * K)`` w.r.t. ``mu_a, log v_a`` [B, D] and ``mu_b, log v_b`` [Nc, D]."""
    va, vb = lv_a.exp()[:, None, :], lv_b.exp()[None, :, :]
    la, lb = lv_a[:, None, :], lv_b[None, :, :]
    r = (va + vb).reciprocal_()  # [B, Nc, D]
    t = (mu_a[:, None, :] - mu_b[None, :, :]).mul_(r)  # T = delta / s
    g_mu_a = torch.bmm(g[:, None, :], t).squeeze(1).mul_(2 * alpha)
    g_mu_b = torch.bmm(g.t()[:, None, :], t.transpose(0, 1)).squeeze(1).mul_(-2 * alpha)
    t2 = t.square_()
    w_a = _log_term_grad(va, la, lb, r, balanced).mul(beta).sub_(t2 * va, alpha=alpha)  # beta P - alpha T^2 v
    w_b = _log_term_grad(vb, lb, la, r, balanced).mul(beta).sub_(t2 * vb, alpha=alpha)
    g_lv_a = torch.bmm(g[:, None, :], w_a).squeeze(1)
    g_lv_b = torch.bmm(g.t()[:, None, :], w_b.transpose(0, 1)).squeeze(1)
    return g_mu_a, g_lv_a, g_mu_b, g_lv_b


def default_chunk(rows: int, dim: int, itemsize: int = 4, budget_bytes: int = 1 << 20) -> int:
    """Columns per eager chunk so that one ``[rows, chunk, dim]`` temporary takes about ``budget_bytes``
    (1 MiB: cache-sized on CPU; callers pass 64 MiB on CUDA, where launches, not caches, dominate)."""
    return max(1, min(4096, budget_bytes // max(1, rows * dim * itemsize)))


def _eager_forward(mu_a, lv_a, mu_b, lv_b, alpha, beta, balanced, chunk):
    (v_a, u_a), (v_b, u_b) = _sqrt_var(lv_a), _sqrt_var(lv_b)
    n = mu_b.shape[0]
    out = mu_a.new_empty(mu_a.shape[0], n)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        out[:, c0:c1] = _fwd_chunk_eager(mu_a, v_a, u_a, mu_b[c0:c1], v_b[c0:c1], u_b[c0:c1], alpha, beta, balanced)
    return out


def _eager_backward(mu_a, lv_a, mu_b, lv_b, grad, alpha, beta, balanced, chunk):
    n = mu_b.shape[0]
    g_mu_a = torch.zeros_like(mu_a)
    g_lv_a = torch.zeros_like(lv_a)
    g_mu_b = torch.empty_like(mu_b)
    g_lv_b = torch.empty_like(lv_b)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        gma, glva, gmb, glvb = _bwd_chunk_eager(
            mu_a, lv_a, mu_b[c0:c1], lv_b[c0:c1], grad[:, c0:c1].contiguous(), alpha, beta, balanced
        )
        g_mu_a += gma
        g_lv_a += glva
        g_mu_b[c0:c1] = gmb
        g_lv_b[c0:c1] = glvb
    return g_mu_a, g_lv_a, g_mu_b, g_lv_b


# ----------------------------------------------------------------------------------------------------------------
# fused (torch.compile) chunk functions; alpha and beta arrive as 0-dim tensors (no recompile per value)
# ----------------------------------------------------------------------------------------------------------------


def _grouped_sum(ma, va, mb, vb, alpha, beta, factor):
    """``alpha sum t^2/s + beta sum log(prod factor)`` on grouped ``[., k, D/k]`` inputs -> ``[B, Nc]``;
    ``factor(s, i)`` is the group-``i`` factor whose logs are summed (one ``log`` per group of ``k``)."""
    k = ma.shape[1]
    q = None
    p = None
    for i in range(k):
        s = va[:, None, i] + vb[None, :, i]
        t = ma[:, None, i] - mb[None, :, i]
        qi = t * t / s
        q = qi if q is None else q + qi
        f = factor(s, i)
        p = f if p is None else p * f
    return (alpha * q + beta * torch.log(p)).sum(-1)


def _fwd_grouped(ma, va, mb, vb, alpha, beta):
    """Plain form on (rescaled) inputs: the factors are ``s``."""
    return _grouped_sum(ma, va, mb, vb, alpha, beta, lambda s, i: s)


def _fwd_grouped_balanced(ma, va, ua, mb, vb, ub, alpha, beta):
    """Balanced form: the factors are ``s / (2 u_a u_b)`` >= 1 (``ua`` ``[B, k, D/k]`` holds ``2 u``). A separate
    compiled function from :func:`_fwd_grouped`, so that each keeps its own recompile budget."""
    return _grouped_sum(ma, va, mb, vb, alpha, beta,
                        lambda s, i: torch.clamp_min(s / (ua[:, None, i] * ub[None, :, i]), 1.0))


def _bwd_side(mu_own: Tensor, lv_own: Tensor, mu_other: Tensor, lv_other: Tensor, g: Tensor, alpha, beta,
              balanced: bool):
    """Gradients ``(d/dmu, d/dlog v)`` [M, D] of ``sum(g * K)`` for the ``M`` items of one side (rows, or the
    chunk's columns) against the items of the other (``g`` [M, N], reduced over N); ``K`` is symmetric in its two
    sides, so one function serves both."""
    lo, lt = lv_own[:, None, :], lv_other[None, :, :]
    vo = torch.exp(lo)
    r = 1.0 / (vo + torch.exp(lt))
    t = (mu_own[:, None, :] - mu_other[None, :, :]) * r
    gg = g[:, :, None]
    p = _log_term_grad(vo, lo, lt, r, balanced)
    return (2 * alpha) * (gg * t).sum(1), (gg * (beta * p - alpha * t * t * vo)).sum(1)


def _bwd_rows(mu_a, lv_a, mu_b, lv_b, g, alpha, beta):
    """Row side, plain form: ``(d/dmu_a, d/dlog v_a)`` [B, D]; reduces over the chunk's columns."""
    return _bwd_side(mu_a, lv_a, mu_b, lv_b, g, alpha, beta, False)


def _bwd_rows_balanced(mu_a, lv_a, mu_b, lv_b, g, alpha, beta):
    """Row side, balanced form."""
    return _bwd_side(mu_a, lv_a, mu_b, lv_b, g, alpha, beta, True)


def _bwd_cols(mu_a, lv_a, mu_b, lv_b, g_t, alpha, beta):
    """Column side, plain form: ``(d/dmu_b, d/dlog v_b)`` [Nc, D]; ``g_t`` is the transposed gradient [Nc, B]."""
    return _bwd_side(mu_b, lv_b, mu_a, lv_a, g_t, alpha, beta, False)


def _bwd_cols_balanced(mu_a, lv_a, mu_b, lv_b, g_t, alpha, beta):
    """Column side, balanced form."""
    return _bwd_side(mu_b, lv_b, mu_a, lv_a, g_t, alpha, beta, True)


_FUSED_FNS = {"fwd": _fwd_grouped, "fwd_balanced": _fwd_grouped_balanced, "rows": _bwd_rows, "cols": _bwd_cols,
              "rows_balanced": _bwd_rows_balanced, "cols_balanced": _bwd_cols_balanced}
_compiled: dict[str, object] = {}
_compile_state: dict[str, bool] = {}


def _compiled_fn(name: str):
    if name not in _compiled:
        _compiled[name] = torch.compile(_FUSED_FNS[name], dynamic=False, fullgraph=True)
    return _compiled[name]


def _rows_dynamic(*xs: Tensor) -> None:
    """Mark dim 0 (rows: local batch, evaluation block) of each tensor dynamic: one graph for every row count."""
    for x in xs:
        torch._dynamo.maybe_mark_dynamic(x, 0)


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
    """Whether the compiled CPU path may be used (not disabled by ``PROBMED_LOSS_COMPILE=0``)."""
    return os.environ.get("PROBMED_LOSS_COMPILE", "1") != "0"


def _fused_forward(mu_a, lv_a, mu_b, lv_b, alpha, beta, balanced, chunk):
    mu_a, lv_a, mu_b, lv_b = (x.detach() for x in (mu_a, lv_a, mu_b, lv_b))  # requires_grad is a compile guard
    dim = mu_a.shape[1]
    k, c = _group_plan(lv_a, lv_b, dim)
    rows, n = mu_a.shape[0], mu_b.shape[0]
    al, be = mu_a.new_tensor(alpha), mu_a.new_tensor(beta)
    if balanced:  # scale-free factor: no rescaling; ua holds 2 u so that the kernel divides by ua * ub
        (va, ua), (vb, ub) = _sqrt_var(lv_a), _sqrt_var(lv_b)
        ma, ua, mb = mu_a, 2.0 * ua, mu_b
        shift = 0.0
    else:
        ma, mb = mu_a * math.exp(-0.5 * c), mu_b * math.exp(-0.5 * c)
        va, vb = torch.exp(lv_a - c), torch.exp(lv_b - c)
        shift = beta * dim * c
    group = lambda x, m: x.reshape(m, k, dim // k)  # noqa: E731
    row_args = [group(ma, rows), group(va, rows)] + ([group(ua, rows)] if balanced else [])
    _rows_dynamic(*row_args)
    fwd = _compiled_fn("fwd_balanced" if balanced else "fwd")
    out = mu_a.new_empty(rows, n)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        col_args = [group(_pad_rows(mb[c0:c1], chunk, 0.0), chunk), group(_pad_rows(vb[c0:c1], chunk, 1.0), chunk)]
        if balanced:
            col_args.append(group(_pad_rows(ub[c0:c1], chunk, 1.0), chunk))
        out[:, c0:c1] = fwd(*row_args, *col_args, al, be)[:, : c1 - c0]
    return out.add_(shift) if shift else out


def _fused_backward(mu_a, lv_a, mu_b, lv_b, grad, alpha, beta, balanced, chunk):
    mu_a, lv_a, mu_b, lv_b, grad = (x.detach() for x in (mu_a, lv_a, mu_b, lv_b, grad))
    suffix = "_balanced" if balanced else ""
    rows, cols = _compiled_fn("rows" + suffix), _compiled_fn("cols" + suffix)
    al, be = mu_a.new_tensor(alpha), mu_a.new_tensor(beta)
    n = mu_b.shape[0]
    g_mu_a = torch.zeros_like(mu_a)
    g_lv_a = torch.zeros_like(lv_a)
    g_mu_b = torch.empty_like(mu_b)
    g_lv_b = torch.empty_like(lv_b)
    grad_t = grad.t().contiguous()
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        mbc = _pad_rows(mu_b[c0:c1], chunk, 0.0)
        lvbc = _pad_rows(lv_b[c0:c1], chunk, 0.0)
        gtc = _pad_rows(grad_t[c0:c1], chunk, 0.0)
        g_c = gtc.t().contiguous()
        _rows_dynamic(mu_a, lv_a, g_c)
        gma, glva = rows(mu_a, lv_a, mbc, lvbc, g_c, al, be)
        g_mu_a += gma
        g_lv_a += glva
        torch._dynamo.maybe_mark_dynamic(gtc, 1)  # [chunk, rows]
        gmb, glvb = cols(mu_a, lv_a, mbc, lvbc, gtc, al, be)
        g_mu_b[c0:c1] = gmb[: c1 - c0]
        g_lv_b[c0:c1] = glvb[: c1 - c0]
    return g_mu_a, g_lv_a, g_mu_b, g_lv_b


def _disable_fused(dev: str, exc: BaseException) -> None:
    """Turn the compiled path off for this process on ``dev``, with one warning naming the cause."""
    if not _compile_state.get(f"failed_{dev}", False):
        warnings.warn(f"probmed.losses: the compiled pairwise kernel failed on {dev} ({type(exc).__name__}: "
                      f"{str(exc)[:300]}); using the eager kernel from now on", RuntimeWarning, stacklevel=3)
    _compile_state[f"failed_{dev}"] = True
    _compile_state[f"probed_{dev}"] = True


# ----------------------------------------------------------------------------------------------------------------
# autograd function and entry point
# ----------------------------------------------------------------------------------------------------------------


class PairwiseDiagKernel(torch.autograd.Function):
    """``K_ij = sum_d [alpha (mu_a_id - mu_b_jd)^2 / s + beta L]`` (see module docstring for ``L``)."""

    @staticmethod
    def forward(ctx, mu_a, lv_a, mu_b, lv_b, alpha: float, beta: float, balanced: bool, chunk: int, fused: bool):
        out = None
        fused = fused and mu_a.shape[0] >= 2  # dynamo specialises a row count of 1: one row is eager anyway
        if fused:
            try:
                out = _fused_forward(mu_a, lv_a, mu_b, lv_b, alpha, beta, balanced, chunk)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: redo eagerly
                _disable_fused(mu_a.device.type, exc)
                fused, chunk = False, default_chunk(mu_a.shape[0], mu_a.shape[1], mu_a.element_size())
        if out is None:
            out = _eager_forward(mu_a, lv_a, mu_b, lv_b, alpha, beta, balanced, chunk)
        ctx.save_for_backward(mu_a, lv_a, mu_b, lv_b)
        ctx.alpha, ctx.beta, ctx.balanced, ctx.chunk, ctx.fused = alpha, beta, balanced, chunk, fused
        return out

    @staticmethod
    def backward(ctx, grad):
        mu_a, lv_a, mu_b, lv_b = ctx.saved_tensors
        alpha, beta, chunk = ctx.alpha, ctx.beta, ctx.chunk
        grad = grad.contiguous()
        result = None
        if ctx.fused and not _compile_state.get(f"failed_{mu_a.device.type}", False):
            try:
                result = _fused_backward(mu_a, lv_a, mu_b, lv_b, grad, alpha, beta, ctx.balanced, chunk)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: redo eagerly
                _disable_fused(mu_a.device.type, exc)
        if result is None:
            eager_chunk = default_chunk(mu_a.shape[0], mu_a.shape[1], mu_a.element_size()) if ctx.fused else chunk
            result = _eager_backward(mu_a, lv_a, mu_b, lv_b, grad, alpha, beta, ctx.balanced, eager_chunk)
        g_mu_a, g_lv_a, g_mu_b, g_lv_b = result
        return g_mu_a, g_lv_a, g_mu_b, g_lv_b, None, None, None, None, None


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
            _fused_forward(*[a.detach() for a in args], -0.25, -0.5, True, FUSED_CHUNK)
            out = _fused_forward(*[a.detach() for a in args], 0.5, 0.5, False, FUSED_CHUNK)
            for balanced in (True, False):
                _fused_backward(*[a.detach() for a in args], torch.ones_like(out), -0.25, -0.5, balanced, FUSED_CHUNK)
    except Exception as exc:  # noqa: BLE001 - depends on the machine's compiler
        _disable_fused(dev, exc)
    _compile_state[key] = True
    return not _compile_state.get(f"failed_{dev}", False)


def use_fused(mu_a: Tensor, n_cols: int) -> bool:
    """Default choice: fused for float32 problems of at least :data:`FUSED_MIN_TRIPLES` triples on CPU, and on
    CUDA only when ``PROBMED_LOSS_COMPILE_CUDA=1`` (inductor then emits Triton kernels; opt-in); eager under a
    Python dispatch mode (``FlopCounterMode`` while :class:`probmed.training.Throughput` counts the first steps),
    which ``torch.compile`` cannot trace — it would otherwise turn the compiled path off for the whole run."""
    dev = mu_a.device.type
    on_device = dev == "cpu" or (dev == "cuda" and os.environ.get("PROBMED_LOSS_COMPILE_CUDA", "0") == "1")
    return (
        on_device
        and mu_a.dtype == torch.float32
        and mu_a.shape[0] * n_cols * mu_a.shape[1] >= FUSED_MIN_TRIPLES
        and fused_available()
        and not torch.compiler.is_compiling()
        and not is_in_torch_dispatch_mode(include_infra_modes=False)  # e.g. FLOP counting: compile refuses it
        and _probe_fused(mu_a.device)
    )


def pairwise_diag_kernel(
    mu_a: Tensor,
    lv_a: Tensor,
    mu_b: Tensor,
    lv_b: Tensor,
    alpha: float,
    beta: float,
    balanced: bool = False,
    chunk: int | None = None,
    fused: bool | None = None,
) -> Tensor:
    """Memory-linear ``[B, N]`` kernel ``K`` (see module docstring); ``lv_*`` must be ``[., D]`` (diagonal).

    Args:
        balanced: use ``L = log(s / (2 sqrt(v_a v_b)))`` (exactly 0 for equal variances) instead of ``log s``.
        chunk: columns per chunk (default: :data:`FUSED_CHUNK` fused, about 1 MiB temporaries eager).
        fused: use the ``torch.compile``-fused chunk functions (default: :func:`use_fused`).
    """
    if fused is None:
        fused = use_fused(mu_a, mu_b.shape[0])
    if chunk is None:
        budget = (64 << 20) if mu_a.device.type == "cuda" else (1 << 20)
        chunk = FUSED_CHUNK if fused else default_chunk(mu_a.shape[0], mu_a.shape[1], mu_a.element_size(), budget)
    return PairwiseDiagKernel.apply(
        mu_a, lv_a, mu_b, lv_b, float(alpha), float(beta), bool(balanced), int(chunk), bool(fused)
    )


def pairwise_diag_kernel_naive(
    mu_a: Tensor, lv_a: Tensor, mu_b: Tensor, lv_b: Tensor, alpha: float, beta: float, balanced: bool = False
) -> Tensor:
    """Reference broadcast implementation (materialises ``[B, N, D]``; for tests and benchmarks)."""
    s = lv_a.exp()[:, None, :] + lv_b.exp()[None, :, :]
    d2 = (mu_a[:, None, :] - mu_b[None, :, :]) ** 2
    log_term = torch.log(s)
    if balanced:
        log_term = log_term - LOG2 - 0.5 * (lv_a[:, None, :] + lv_b[None, :, :])
    return (alpha * d2 / s + beta * log_term).sum(-1)
