"""The memory-linear chunked pairwise kernel: values and gradients against the naive broadcast."""
from __future__ import annotations

import pytest
import torch

from conftest import has_c_compiler
from probmed.losses import kernels as K


def _inputs(b, n, d, seed, dtype=torch.float64, lv_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return mk(b, d), (mk(b, d) * lv_scale), mk(n, d), (mk(n, d) * lv_scale)


@pytest.mark.parametrize("alpha,beta", [(-0.25, -0.5), (0.5, 0.5)])
def test_gradcheck_eager_float64(alpha, beta):
    mu_a, lv_a, mu_b, lv_b = [t.requires_grad_() for t in _inputs(3, 5, 4, 0)]
    fn = lambda *x: K.pairwise_diag_kernel(*x, alpha, beta, chunk=2, fused=False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (mu_a, lv_a, mu_b, lv_b))


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_matches_naive_values_and_grads(chunk):
    mu_a, lv_a, mu_b, lv_b = [t.requires_grad_() for t in _inputs(6, 11, 8, 1)]
    g = torch.randn(6, 11, dtype=torch.float64)
    out = K.pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, -0.25, -0.5, chunk=chunk, fused=False)
    grads = torch.autograd.grad((out * g).sum(), (mu_a, lv_a, mu_b, lv_b))
    ref = K.pairwise_diag_kernel_naive(mu_a, lv_a, mu_b, lv_b, -0.25, -0.5)
    ref_grads = torch.autograd.grad((ref * g).sum(), (mu_a, lv_a, mu_b, lv_b))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for x, y in zip(grads, ref_grads):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lv_scale", [1.0, 8.0])
def test_fused_cpu_path_matches_naive(lv_scale):
    """torch.compile path (grouped logs, rescaling, padded last chunk) vs the float64 naive broadcast.

    ``lv_scale=8`` spreads log-variances over about [-30, 30] so that fewer dimensions share one logarithm."""
    if not has_c_compiler():  # what a user without a compiler gets: the fused path off, so every call is eager
        assert not K._probe_fused("cpu")
        return
    # with a compiler the fused path must work: a silent fall-back to eager would cost ~7x in loss time
    assert K.fused_available() and K._probe_fused("cpu")
    mu_a, lv_a, mu_b, lv_b = _inputs(8, 40, 32, 2, lv_scale=lv_scale)
    k, _ = K._group_plan(lv_a, lv_b, 32)
    assert k == (8 if lv_scale == 1.0 else 2)
    g = torch.randn(8, 40, dtype=torch.float64)
    leaves32 = [t.float().requires_grad_() for t in (mu_a, lv_a, mu_b, lv_b)]
    out = K.pairwise_diag_kernel(*leaves32, -0.25, -0.5, chunk=16, fused=True)
    grads = torch.autograd.grad((out * g.float()).sum(), leaves32)
    leaves64 = [t.requires_grad_() for t in (mu_a, lv_a, mu_b, lv_b)]
    ref = K.pairwise_diag_kernel_naive(*leaves64, -0.25, -0.5)
    ref_grads = torch.autograd.grad((ref * g).sum(), leaves64)
    scale = ref.abs().max()
    torch.testing.assert_close(out.double() / scale, ref / scale, rtol=0, atol=2e-6)
    for x, y in zip(grads, ref_grads):
        torch.testing.assert_close(x.double() / y.abs().max(), y / y.abs().max(), rtol=0, atol=2e-5)


def test_memory_stays_linear():
    """Forward+backward at B=32, N=1024, D=128 float64 never keeps a [B, N, D] tensor (32 MiB) for
    autograd: the saved tensors are just the inputs."""
    mu_a, lv_a, mu_b, lv_b = [t.requires_grad_() for t in _inputs(32, 1024, 128, 3)]
    out = K.pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, -0.25, -0.5, fused=False)
    saved = out.grad_fn.saved_tensors
    assert sum(t.numel() for t in saved) == 2 * (32 + 1024) * 128
    out.sum().backward()
    assert mu_b.grad.shape == (1024, 128)


def test_fused_path_survives_many_shapes_in_one_process(monkeypatch):
    """Evaluation scores blocks of every size (each pair's leftover query block differs), and training sees other
    batch sizes: 14 row counts x both coefficient pairs x two log-variance spreads (two group sizes k) at D = 512,
    forward and backward, in one process. Before, every new row count recompiled and the 9th raised
    FailOnRecompileLimitHit; now rows are dynamic and alpha/beta are tensors, and the fused path stays on."""
    if not has_c_compiler():
        assert not K._probe_fused("cpu")
        return
    monkeypatch.setattr(K, "FUSED_MIN_TRIPLES", 0)
    assert K._probe_fused("cpu")
    g = torch.Generator().manual_seed(5)
    cols = [torch.randn(300, 512, generator=g) for _ in range(2)]
    for i, rows in enumerate([1, 3, 17, 64, 65, 100, 127, 128, 129, 200, 255, 256, 257, 301]):
        for alpha, beta, balanced in ((-0.25, -0.5, True), (0.5, 0.5, False)):
            spread = 1.0 if i % 2 else 6.0
            mu_a = torch.randn(rows, 512, generator=g).requires_grad_()
            lv_a = (torch.randn(rows, 512, generator=g) * spread).requires_grad_()
            mu_b, lv_b = [c.clone().requires_grad_() for c in (cols[0], cols[1] * spread)]
            out = K.pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, alpha, beta, balanced, fused=True)
            grads = torch.autograd.grad(out.sum(), (mu_a, lv_a, mu_b, lv_b))
            ref = K.pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, alpha, beta, balanced, fused=False)
            ref_grads = torch.autograd.grad(ref.sum(), (mu_a, lv_a, mu_b, lv_b))
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-2)
            for x, y in zip(grads, ref_grads):
                torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-3 * y.abs().max().item())
    assert not K._compile_state.get("failed_cpu", False), "the fused path fell back to eager"


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    """Any error from the compiler (here: a forced one) redoes the call eagerly, warns once, and the fused path
    stays off afterwards; forward and backward agree with the eager kernel."""
    def broken(name):
        raise RuntimeError("simulated inductor failure")

    monkeypatch.setattr(K, "_compiled_fn", broken)
    monkeypatch.setattr(K, "_compile_state", {"probed_cpu": True})
    mu_a, lv_a, mu_b, lv_b = [t.float().requires_grad_() for t in _inputs(5, 9, 16, 4)]
    with pytest.warns(RuntimeWarning, match="simulated inductor failure") as record:
        out = K.pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, -0.25, -0.5, True, fused=True)
        out.sum().backward()
        again = K.pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, -0.25, -0.5, True, fused=True)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert K._compile_state["failed_cpu"] and not K.use_fused(mu_a, 10**9)
    ref = K.pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, -0.25, -0.5, True, fused=False)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(again, ref)


def test_backward_compile_failure_falls_back(monkeypatch):
    """A forward that compiled and a backward whose compilation fails: the gradient comes from the eager kernel."""
    if not has_c_compiler():
        assert not K._probe_fused("cpu")
        return
    assert K._probe_fused("cpu")
    mu_a, lv_a, mu_b, lv_b = [t.float().requires_grad_() for t in _inputs(6, 10, 16, 6)]
    out = K.pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, 0.5, 0.5, False, fused=True)
    real = K._compiled_fn

    def fail_backward(name):
        if name in ("rows", "cols"):
            raise RuntimeError("simulated backward compile failure")
        return real(name)

    monkeypatch.setattr(K, "_compiled_fn", fail_backward)
    monkeypatch.setattr(K, "_compile_state", {"probed_cpu": True})
    with pytest.warns(RuntimeWarning, match="backward compile failure"):
        grads = torch.autograd.grad(out.sum(), (mu_a, lv_a, mu_b, lv_b))
    ref = K.pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, 0.5, 0.5, False, fused=False)
    ref_grads = torch.autograd.grad(ref.sum(), (mu_a, lv_a, mu_b, lv_b))
    for x, y in zip(grads, ref_grads):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alpha,beta", [(-0.25, -0.5), (0.5, 0.5)])
def test_gradcheck_balanced_float64(alpha, beta):
    """The balanced form (log BC's) against finite differences, eager kernel, float64."""
    mu_a, lv_a, mu_b, lv_b = [t.requires_grad_() for t in _inputs(3, 5, 4, 7)]
    fn = lambda *x: K.pairwise_diag_kernel(*x, alpha, beta, True, chunk=2, fused=False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (mu_a, lv_a, mu_b, lv_b))
    ref = K.pairwise_diag_kernel_naive(mu_a, lv_a, mu_b, lv_b, alpha, beta, balanced=True)
    torch.testing.assert_close(fn(mu_a, lv_a, mu_b, lv_b), ref, rtol=1e-12, atol=1e-12)


def test_flop_counting_takes_the_eager_path_and_leaves_the_compiled_one_on(monkeypatch):
    """Throughput counts the first steps' FLOPs under FlopCounterMode, which torch.compile cannot trace: those calls
    run the eager kernel (the same arithmetic as ``fused=False``), and the compiled path stays on afterwards (before,
    the counted step's compile error turned it off for the rest of the run)."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.setattr(K, "FUSED_MIN_TRIPLES", 0)
    mu_a, lv_a, mu_b, lv_b = _inputs(8, 40, 32, 3, dtype=torch.float32)
    with FlopCounterMode(display=False):
        assert not K.use_fused(mu_a, 40)
        counted = K.pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, -0.25, -0.5)
    eager = K.pairwise_diag_kernel(mu_a, lv_a, mu_b, lv_b, -0.25, -0.5, fused=False)
    assert torch.equal(counted, eager)
    if has_c_compiler():
        assert K.use_fused(mu_a, 40) and not K._compile_state.get("failed_cpu", False)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-4, 1e-2])
def test_float32_log_variance_gradient_of_near_identical_gaussians(fused, eps):
    """log BC's float32 gradient for (nearly) identical Gaussians, D = 512, log-variances over [-6, 6]: within 1e-6
    (relative to the largest entry) of the float64 naive broadcast's autograd on the same float32-rounded inputs,
    and exactly 0 for the log-variances of identical ones (tanh of an exact zero difference; the earlier chain rule
    through v = exp(log v) left a difference of two rounded halves, 9e-3 relative)."""
    if fused and not has_c_compiler():
        pytest.skip("the compiled path needs a C compiler (without one every call is eager: the other case)")
    g = torch.Generator().manual_seed(3)
    b, d = 32, 512
    mu = torch.randn(1, d, generator=g, dtype=torch.float64).expand(b, d)
    lv = (torch.rand(1, d, generator=g, dtype=torch.float64) * 12 - 6).expand(b, d)
    inputs = [x.float().double() for x in (mu, lv, mu + eps * torch.randn(b, d, generator=g, dtype=torch.float64),
                                           lv + eps * torch.randn(b, d, generator=g, dtype=torch.float64))]
    weights = torch.randn(b, b, generator=g, dtype=torch.float64)
    leaves64 = [x.clone().requires_grad_() for x in inputs]
    ref = torch.autograd.grad((K.pairwise_diag_kernel_naive(*leaves64, -0.25, -0.5, balanced=True) * weights).sum(),
                              leaves64)
    leaves32 = [x.float().requires_grad_() for x in inputs]
    out = K.pairwise_diag_kernel(*leaves32, -0.25, -0.5, balanced=True, fused=fused)
    got = torch.autograd.grad((out * weights.float()).sum(), leaves32)
    if eps == 0.0:
        assert all(float(x.abs().max()) == 0.0 for x in got)
        return
    for x, y in zip(got, ref):
        assert float((x.double() - y).abs().max() / y.abs().max()) < 1e-6
