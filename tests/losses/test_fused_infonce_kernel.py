"""The fused Triton InfoNCE kernel (probmed.losses.fused_infonce) against the float64 naive formula.

The kernels run under Triton's CPU interpreter in one child process (tests/_fused_infonce_worker.py, with
``TRITON_INTERPRET=1`` set only there); this process recomputes every reference from the saved inputs with the
naive ``[B, N, D]`` log Bhattacharyya, ``hellinger_from_log_bc`` and ``F.cross_entropy`` with probability targets
over the present columns, and compares values and gradients (means, log-variances, logit scale).
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, clean_env
from probmed.losses.similarity import hellinger_from_log_bc, log_bhattacharyya_naive

triton = pytest.importorskip("triton", reason="the fused InfoNCE kernel is written in Triton")
sys.path.insert(0, str(REPO / "tests"))
from _fused_infonce_worker import KERNEL_CASES  # noqa: E402

LEAVES = ("mu_a", "lv_a", "mu_b", "lv_b", "scale")


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Everything the worker computed under the interpreter (one child process for the whole module)."""
    out = tmp_path_factory.mktemp("fused") / "out.pt"
    env = clean_env(TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    env.pop("PROBMED_LOSS_TRITON", None)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "_fused_infonce_worker.py"), str(out)], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return torch.load(out, weights_only=True)


def reference(x: dict[str, torch.Tensor], similarity: str):
    """``(loss [B], pos [B], n_pos [B], grads)`` in float64, computed another way than the kernel."""
    leaves = [x[k].double().requires_grad_() for k in LEAVES]
    mu_a, lv_a, mu_b, lv_b, scale = leaves
    log_bc = log_bhattacharyya_naive(mu_a, lv_a, mu_b, lv_b)
    sim = hellinger_from_log_bc(log_bc, 1.0 / mu_a.shape[1]) if similarity == "hellinger" else log_bc
    logits = scale * sim
    keep = x["col_mask"]
    same = (x["row_group"][:, None] == x["col_group"][None, :])[:, keep].double()
    n_pos = same.sum(1)
    valid = n_pos > 0
    targets = same[valid] / n_pos[valid, None]
    loss = torch.zeros_like(n_pos).index_put((valid,), F.cross_entropy(logits[:, keep][valid], targets,
                                                                       reduction="none"))
    pos = torch.zeros_like(n_pos).index_put((valid,), (logits[:, keep][valid] * targets).sum(1))
    total = (loss * x["w_loss"].double()).sum() + (pos * x["w_pos"].double()).sum()
    return loss.detach(), pos.detach(), n_pos, torch.autograd.grad(total, leaves)


@pytest.mark.parametrize("case", KERNEL_CASES, ids=[c[0] for c in KERNEL_CASES])
def test_values_and_gradients_match_float64_naive(interpreted, case):
    name, similarity, dtype = case[:3]
    x = {k.split("/", 1)[1]: v for k, v in interpreted.items() if k.startswith(name + "/")}
    ref_loss, ref_pos, ref_n, ref_grads = reference(x, similarity)
    tol = 1e-11 if dtype == torch.float64 else 3e-6  # relative to the largest magnitude of each quantity
    assert x["out_loss"].dtype == dtype
    assert torch.equal(x["out_n_pos"].long(), ref_n.long())
    valid = ref_n > 0
    logit_size = max(1.0, ref_pos.abs().max().item())  # float32 rounds each logit, whatever the loss size
    for got, want in ((x["out_loss"][valid], ref_loss[valid]), (x["out_pos"], ref_pos)):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=tol * logit_size)
    for k, want in zip(LEAVES, ref_grads):
        got = x[f"grad_{k}"]
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=0, atol=tol * want.abs().max(), msg=f"d/d{k}")


def test_special_rows_in_the_cases(interpreted):
    """The masks and groups the exactness cases cover: two positives, an absent positive, no positive."""
    n_pos = interpreted["hellinger_f64/out_n_pos"].tolist()
    assert n_pos[:5] == [2, 1, 0, 1, 0]
    assert interpreted["hellinger_f64/grad_mu_b"][[3, -1]].abs().max() == 0  # absent columns get no gradient


def test_identical_gaussians_give_similarity_exactly_one(interpreted):
    """Rows as their own columns: log BC of each diagonal pair is exactly 0 in float32, so the mean positive
    logit (the row itself) is exactly ``scale * 1``, and the gradient (through the sqrt floor) is finite."""
    x = {k.split("/", 1)[1]: v for k, v in interpreted.items() if k.startswith("hellinger_identical_f32/")}
    assert torch.equal(x["out_pos"], x["scale"].expand_as(x["out_pos"]))
    assert all(torch.isfinite(x[f"grad_{k}"]).all() for k in LEAVES)


E2E = [f"e2e/{s}/w{w}/paired{p}" for s in ("hellinger", "bhattacharyya") for w in (1, 2) for p in (0, 1)]


@pytest.mark.parametrize("key", E2E)
def test_probabilistic_infonce_dispatches_and_keeps_the_loss(interpreted, key):
    """ProbabilisticInfoNCE through the kernel (two calls: both directions) vs PROBMED_LOSS_TRITON=0 (existing
    path, no call): loss, positive logit, and gradients of every embedding and of the logit scale agree."""
    assert interpreted[f"{key}/fused/calls"].item() == 2
    assert interpreted[f"{key}/reference/calls"].item() == 0
    for part in ["loss", "pos_logit"] + [f"grad{i}" for i in range(5)]:
        got, want = interpreted[f"{key}/fused/{part}"], interpreted[f"{key}/reference/{part}"]
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6 * max(1.0, want.abs().max().item()), msg=part)


def test_cpu_without_interpreter_keeps_the_existing_path(monkeypatch):
    """In a normal process CPU tensors never reach the Triton kernel, and the switch turns CUDA use off."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from probmed.losses import ProbabilisticInfoNCE, fused_infonce
    from probmed.losses.base import LossContext
    from probmed.embedding import GaussianEmbedding

    assert not fused_infonce.INTERPRETED
    x = torch.zeros(4, 8)
    assert not fused_infonce.usable(x, x)
    emb = GaussianEmbedding(x, x, torch.ones(4, dtype=torch.bool))
    ctx = LossContext({"a": emb, "b": emb}, {"a": emb, "b": emb}, torch.arange(4), torch.arange(4), 0, 1)
    assert ProbabilisticInfoNCE(["a", "b"])._fused_rows_fn(ctx, torch.tensor(1.0)) is None
    monkeypatch.setenv("PROBMED_LOSS_TRITON", "0")
    monkeypatch.setattr(fused_infonce, "INTERPRETED", True)
    assert not fused_infonce.usable(x, x)
    monkeypatch.setenv("PROBMED_LOSS_TRITON", "1")
    assert fused_infonce.usable(x, x) and not fused_infonce.usable(x, x.double())  # mixed dtypes: no


def test_bad_inputs_are_refused_with_a_clear_error():
    from probmed.losses.fused_infonce import fused_infonce_rows

    x, iso = torch.zeros(4, 8), torch.zeros(4, 1)
    args = (torch.tensor(1.0), torch.arange(4), torch.arange(4), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="implements"):
        fused_infonce_rows("cosine", x, x, x, x, *args)
    with pytest.raises(ValueError, match="diagonal"):
        fused_infonce_rows("hellinger", x, iso, x, x, *args)
    assert "TRITON_INTERPRET" not in os.environ


def test_start_up_self_check_passes_under_the_interpreter(interpreted):
    assert interpreted["self_check_cpu"].item() is True


def _torch_rows(scale_error: float):
    """A stand-in for the kernel through the existing path (logits from ``pairwise_similarity``), with the logit
    scale off by ``scale_error``: what the self-check must accept (0) or refuse (a wrong kernel)."""
    from probmed.losses.similarity import pairwise_similarity

    def rows(similarity, mu_a, lv_a, mu_b, lv_b, scale, row_group, col_group, col_mask):
        logits = scale * (1 + scale_error) * pairwise_similarity(similarity, mu_a, lv_a, mu_b, lv_b)
        same = (row_group[:, None] == col_group[None, :]) & col_mask[None, :]
        n_pos = same.sum(1)
        pos = (same * logits).sum(1) / n_pos.clamp_min(1)
        return torch.logsumexp(logits.masked_fill(~col_mask[None, :], -1e30), 1) - pos, pos, n_pos

    return rows


@pytest.mark.parametrize("scale_error,accepted", [(0.0, True), (0.01, False)])
def test_self_check_accepts_the_formula_and_refuses_a_wrong_kernel(monkeypatch, scale_error, accepted):
    from probmed.losses import fused_infonce

    monkeypatch.setattr(fused_infonce, "_checked", {})
    monkeypatch.setattr(fused_infonce, "fused_infonce_rows", _torch_rows(scale_error))
    if accepted:
        assert fused_infonce.checked("cpu")
    else:
        with pytest.warns(RuntimeWarning, match="kernel is off on cpu.*max difference"):
            assert not fused_infonce.checked("cpu")


def test_a_kernel_that_cannot_run_turns_the_fused_path_off_with_one_warning(monkeypatch):
    """Compiled Triton on CPU tensors (no GPU driver here) fails at launch: one warning, then off for good."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from probmed.losses import fused_infonce

    monkeypatch.setattr(fused_infonce, "_checked", {})
    with pytest.warns(RuntimeWarning, match="fused Triton InfoNCE kernel is off on cpu"):
        assert not fused_infonce.checked("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not fused_infonce.checked("cpu")


def _signature(fn) -> dict[str, str]:
    """Triton argument types of a kernel from its argument names (float32 data, int64 group ids)."""
    kinds = {"rg_ptr": "*i64", "cg_ptr": "*i64", "cmask_ptr": "*i8", "npos_ptr": "*i32", "kappa": "fp32"}
    return {a: kinds.get(a, "*fp32" if a.endswith("_ptr") else "i32") for a in fn.arg_names
            if a not in ("SIM", "BLOCK_M", "BLOCK_N", "BLOCK_D")}


def test_kernels_compile_for_an_h100_without_a_gpu():
    """The interpreter does not type-check like the compiler (a loop-carried variable changing shape passed it):
    build every kernel ahead of time for sm_90 with the default tiles, through ptxas, as CUDA would."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from probmed.losses import fused_infonce as F

    if F.INTERPRETED:
        pytest.skip("kernels decorated for the interpreter")
    bm, bn, bd = F.DEFAULT_BLOCKS
    for fn in (F._forward_kernel, F._backward_rows_kernel, F._backward_cols_kernel):
        const = dict(SIM=F.SIMILARITY_CODES["hellinger"], BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd)
        sig = {**_signature(fn), **{k: "constexpr" for k in const}}
        compiled = triton.compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": F.NUM_WARPS, "enable_fp_fusion": True})
        assert len(compiled.asm["cubin"]) > 0
