"""Runs the fused Triton InfoNCE kernel under Triton's CPU interpreter and saves what it computed.

Started by tests/losses/test_fused_infonce_kernel.py in a child process with ``TRITON_INTERPRET=1`` (Triton picks the
interpreter when the kernels are decorated, so the variable must be set before the kernel module is imported,
and must not reach the test process). ``python tests/_fused_infonce_worker.py OUT.pt`` writes a dict of tensors:
per kernel case its inputs, upstream weights, outputs and input gradients (the test computes the float64
references from those inputs), and per end-to-end case the loss and gradients of ``ProbabilisticInfoNCE`` with
the fused kernel and with ``PROBMED_LOSS_TRITON=0`` (the existing path), plus how often the kernel ran, and
whether the kernels pass their own start-up self-check.
"""
from __future__ import annotations

import os
import sys

import torch

#: (name, similarity, dtype, B, N, D, blocks): ragged tiles in every dimension (B, N, D not multiples of blocks)
KERNEL_CASES = [
    ("hellinger_f64", "hellinger", torch.float64, 7, 13, 10, (4, 8, 4)),
    ("bhattacharyya_f64", "bhattacharyya", torch.float64, 7, 13, 10, (4, 8, 4)),
    ("hellinger_f32", "hellinger", torch.float32, 9, 22, 12, (8, 8, 8)),
    ("bhattacharyya_f32", "bhattacharyya", torch.float32, 9, 22, 12, (8, 8, 8)),
    ("hellinger_identical_f32", "hellinger", torch.float32, 6, 6, 16, (4, 4, 8)),
]


def kernel_inputs(name: str, dtype: torch.dtype, b: int, n: int, d: int) -> dict[str, torch.Tensor]:
    """Inputs of one kernel case. Columns 3 and the last are absent; groups: rows 0 and 1 have two positives
    (one absent in row 1's group), row 2 none, row 4's only positive is absent; ``identical`` cases use the
    rows as their own columns (every pair on the diagonal has log BC exactly 0)."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    mu_a, lv_a = rnd(b, d), rnd(b, d) * 0.7 - 1.0
    if "identical" in name:
        mu_b, lv_b = mu_a.clone(), lv_a.clone()
        row_group, col_group = torch.arange(b), torch.arange(n)
        col_mask = torch.ones(n, dtype=torch.bool)
    else:
        mu_b, lv_b = rnd(n, d), rnd(n, d) * 0.7 - 1.0
        row_group = torch.arange(b) + 100
        col_group = torch.arange(n) + 1000
        col_group[[0, 1]] = 100  # row 0: two positives
        col_group[[2, 3]] = 101  # row 1: one present, one absent positive
        col_group[5] = 103
        col_group[n - 1] = 104  # row 4: its only positive is absent
        row_group[2] = 7  # row 2: no positive at all
        col_mask = torch.ones(n, dtype=torch.bool)
        col_mask[[3, n - 1]] = False
    return {"mu_a": mu_a.to(dtype), "lv_a": lv_a.to(dtype), "mu_b": mu_b.to(dtype), "lv_b": lv_b.to(dtype),
            "scale": torch.tensor(7.5 if "hellinger" in name else 1.3, dtype=dtype), "row_group": row_group,
            "col_group": col_group, "col_mask": col_mask, "w_loss": rnd(b).to(dtype), "w_pos": rnd(b).to(dtype)}


def run_kernel_case(name, similarity, dtype, b, n, d, blocks, out):
    from probmed.losses.fused_infonce import fused_infonce_rows

    x = kernel_inputs(name, dtype, b, n, d)
    leaves = [x[k].clone().requires_grad_() for k in ("mu_a", "lv_a", "mu_b", "lv_b", "scale")]
    loss, pos, n_pos = fused_infonce_rows(similarity, *leaves, x["row_group"], x["col_group"], x["col_mask"],
                                          blocks=blocks)
    valid = n_pos > 0
    total = (torch.where(valid, loss, torch.zeros_like(loss)) * x["w_loss"]).sum() + (pos * x["w_pos"]).sum()
    grads = torch.autograd.grad(total, leaves)
    out.update({f"{name}/{k}": v for k, v in x.items()})
    out.update({f"{name}/out_loss": loss.detach(), f"{name}/out_pos": pos.detach(), f"{name}/out_n_pos": n_pos})
    for k, gr in zip(("mu_a", "lv_a", "mu_b", "lv_b", "scale"), grads):
        out[f"{name}/grad_{k}"] = gr


def end_to_end_context(world_size: int, rank: int, leaves):
    """A LossContext of 2 modalities, 6 rows per rank: absent rows per modality, a group spanning two rows."""
    from probmed.embedding import GaussianEmbedding
    from probmed.losses.base import LossContext, sanitize

    n = leaves[0].shape[0]
    b = n // world_size
    present = {"a": torch.ones(n, dtype=torch.bool), "b": torch.ones(n, dtype=torch.bool)}
    present["a"][[1, n - 2]] = False
    present["b"][[4, n - 1]] = False
    group = torch.arange(n)
    group[3] = group[2]  # rows 2 and 3: one patient, two studies (multi-positive)
    world = {m: sanitize(GaussianEmbedding(leaves[2 * i], leaves[2 * i + 1], present[m]))
             for i, m in enumerate(("a", "b"))}
    sl = slice(rank * b, (rank + 1) * b)
    local = {m: GaussianEmbedding(e.mean[sl], e.log_var[sl], e.present[sl]) for m, e in world.items()}
    return LossContext(local, world, group[sl], group, rank, world_size)


def run_end_to_end(out):
    """ProbabilisticInfoNCE with and without the fused kernel: one rank, and rank 1 of 2 (world columns)."""
    from probmed.losses import ProbabilisticInfoNCE, fused_infonce

    calls = []
    apply = fused_infonce.FusedInfoNCEDirection.apply
    fused_infonce.FusedInfoNCEDirection.apply = lambda *a: calls.append(1) or apply(*a)
    g = torch.Generator().manual_seed(5)
    base = [torch.randn(12, 10, generator=g) * (0.6 if i % 2 else 1.0) - (1.0 if i % 2 else 0.0) for i in range(4)]
    for similarity in ("hellinger", "bhattacharyya"):
        for world_size, rank in ((1, 0), (2, 1)):
            for paired_only in (False, True):
                key = f"e2e/{similarity}/w{world_size}/paired{int(paired_only)}"
                for path, env in (("fused", "1"), ("reference", "0")):
                    os.environ["PROBMED_LOSS_TRITON"] = env
                    term = ProbabilisticInfoNCE(["a", "b"], similarity=similarity, paired_only=paired_only)
                    leaves = [x.clone().requires_grad_() for x in base]
                    before = len(calls)
                    loss, extras = term(end_to_end_context(world_size, rank, leaves))
                    grads = torch.autograd.grad(loss, leaves + [term.logit_scale.log_scale])
                    out[f"{key}/{path}/calls"] = torch.tensor(len(calls) - before)
                    out[f"{key}/{path}/loss"] = loss.detach()
                    out[f"{key}/{path}/pos_logit"] = extras[f"pos_logit/{term.name}"]
                    for i, gr in enumerate(grads):
                        out[f"{key}/{path}/grad{i}"] = gr
    os.environ.pop("PROBMED_LOSS_TRITON")


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 (the kernels must be decorated for the interpreter)")
    out: dict[str, torch.Tensor] = {}
    from probmed.losses import fused_infonce

    out["self_check_cpu"] = torch.tensor(fused_infonce.checked("cpu"))
    for case in KERNEL_CASES:
        run_kernel_case(*case, out)
    run_end_to_end(out)
    torch.save(out, sys.argv[1])


if __name__ == "__main__":
    main()
