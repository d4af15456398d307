"""The memory-linear chunked pairwise kernel: values and gradients against the naive broadcast."""
from __future__ import annotations

import shutil

import pytest
import torch

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
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler on PATH: torch.compile's CPU backend needs one; the eager kernel is used instead")
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
