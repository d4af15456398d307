"""Worker for tests/losses/test_loss_ddp.py: one rank of a real multi-process (gloo, CPU) run of the loss Objective.

Every rank builds the same tiny deterministic model (per-modality linear maps from fixed inputs to mean and
log-variance, float64) and the same Objective with every loss term, takes its slice of the global batch, runs
forward + backward, averages the parameter gradients over ranks the way DDP does (all-reduce sum / world size)
and averages the logged parts (``sync_dist`` mean). Rank 0 writes the results with torch.save.

Run: ``python tests/_ddp_loss_worker.py --rank R --world-size W --port P --out FILE``.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from _gloo_worker import join_gloo_group

GLOBAL_BATCH = 12
FEATURES = 5
DIM = 6

#: presence per modality key over the 12 global rows. With 2 ranks rows 0-5 / 6-11, with 3 ranks 0-3 / 4-7 / 8-11:
#: ecg is absent on all of rank 2's rows (W=3), echo on all of rank 0's rows (W=3); cxr_view2 only on rank 1 (W=2).
PRESENT = {
    "cxr": [1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1],
    "cxr_view2": [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    "ecg": [1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    "echo": [0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1],
    "text": [1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 1],
    "text_impression": [1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}
#: positive groups; groups 0 (rows 0, 6), 3 (rows 3, 9) and 5 (rows 5, 7, 10) span ranks.
GROUPS = [0, 1, 2, 3, 4, 5, 0, 5, 6, 3, 5, 7]
ISOTROPIC = {"echo"}


#: per world size, an uneven split of the global batch (rows per rank) and the bound every rank pads to
UNEVEN = {2: ([5, 7], 8), 3: ([3, 5, 4], 6)}


def make_terms(seeded_sampling: bool = True):
    from probmed.losses import (
        VIB,
        DifficultyVariance,
        EdgeModalityContrastive,
        MedProbCLIP,
        PCMEpp,
        ProbabilisticInfoNCE,
        SigLIP,
        SyntheticSampling,
    )

    return [
        ProbabilisticInfoNCE(["text", "cxr"], similarity="hellinger", chunk=5),
        ProbabilisticInfoNCE(["text", "ecg"], similarity="bhattacharyya"),
        ProbabilisticInfoNCE(["text", "echo"], similarity="cosine"),
        ProbabilisticInfoNCE(["cxr", "echo"], similarity="csd", name="infonce_csd/cxr-echo"),
        EdgeModalityContrastive(["cxr", "ecg"]),
        SigLIP(["text", "cxr"], similarity="hellinger", init_logit_scale=5.0, init_bias=-2.0),
        PCMEpp(["cxr", "text"], infonce_weight=0.5),
        MedProbCLIP(["cxr", "cxr_view2"], ["text", "text_impression"], chunk=4),
        VIB(["cxr", "ecg", "echo", "text"], weight=0.01),
        DifficultyVariance(["cxr", "echo", "text"], partners={"echo": ["ecg"]}, weight=0.3, scale=4.0),
    ] + ([SyntheticSampling("cxr", num_samples=3, seed=11),
          SyntheticSampling("echo", num_samples=2, seed=12, positives="group")] if seeded_sampling else [])


class TinyModel(nn.Module):
    """Per-modality linear maps from fixed inputs to (mean, log_var)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads = nn.ModuleDict(
            {k: nn.Linear(FEATURES, DIM + (1 if k in ISOTROPIC else DIM)) for k in PRESENT}
        ).double()
        g = torch.Generator().manual_seed(1)
        self.inputs = {k: torch.randn(GLOBAL_BATCH, FEATURES, generator=g, dtype=torch.float64) for k in PRESENT}

    def forward(self, rows: slice):
        from probmed.embedding import GaussianEmbedding

        out = {}
        for k, head in self.heads.items():
            h = head(self.inputs[k][rows])
            out[k] = GaussianEmbedding(h[:, :DIM], h[:, DIM:], torch.tensor(PRESENT[k][rows], dtype=torch.bool))
        return out


def build(seeded_sampling: bool = True, max_local_rows: int | None = None):
    from probmed.losses import Objective

    model = TinyModel()
    torch.manual_seed(2)
    objective = Objective(make_terms(seeded_sampling), max_local_rows=max_local_rows).double()
    return model, objective


def named_grads(model, objective) -> dict[str, torch.Tensor]:
    out = {f"model.{n}": p.grad.detach().clone() for n, p in model.named_parameters()}
    for n, p in objective.named_parameters():
        out[f"objective.{n}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
    return out


def single_process_reference(seeded_sampling: bool = True):
    """The whole global batch on one process, no torch.distributed."""
    model, objective = build(seeded_sampling)
    out = objective(model(slice(0, GLOBAL_BATCH)), torch.tensor(GROUPS))
    out.total.backward()
    return {
        "total": out.total.detach(),
        "parts": dict(out.parts),
        "extras": dict(out.extras),
        "grads": named_grads(model, objective),
    }


def rank_run(rows: slice, world: int, **build_args) -> dict:
    """This rank's forward + backward on ``rows``, with DDP's gradient averaging and sync_dist's mean of the
    logged values."""
    import torch.distributed as dist

    model, objective = build(**build_args)
    out = objective(model(rows), torch.tensor(GROUPS[rows]))
    out.total.backward()
    grads = named_grads(model, objective)
    for g in grads.values():  # what DDP does: all-reduce sum, divide by world size
        dist.all_reduce(g)
        g /= world
    logged = {"total": out.total.detach().clone()}
    logged.update({f"parts/{k}": v.clone() for k, v in out.parts.items()})
    logged.update({f"extras/{k}": v.clone() for k, v in out.extras.items()})
    for v in logged.values():  # sync_dist mean
        dist.all_reduce(v)
        v /= world
    return {
        "total": logged["total"],
        "parts": {k[6:]: v for k, v in logged.items() if k.startswith("parts/")},
        "extras": {k[7:]: v for k, v in logged.items() if k.startswith("extras/")},
        "grads": grads,
    }


def main() -> None:
    import torch.distributed as dist

    args = join_gloo_group()
    w, r = args.world_size, args.rank
    b = GLOBAL_BATCH // w
    result = rank_run(slice(r * b, (r + 1) * b), w)

    # uneven local batch sizes without a row bound: a clear error on every rank (the batch-size check)
    uneven_error = ""
    if w > 1:
        n = 2 if r == 0 else 3
        model, objective = build()
        try:
            objective(model(slice(0, n)), torch.tensor(GROUPS[:n]))
        except ValueError as exc:
            uneven_error = str(exc)
        # with a bound, ranks pad to it: uneven splits give the single-process result (no seeded sampling: its
        # noise is drawn per row of the padded world tensors)
        sizes, bound = UNEVEN[w]
        start = sum(sizes[:r])
        result["padded"] = rank_run(slice(start, start + sizes[r]), w, seeded_sampling=False, max_local_rows=bound)

    if r == 0:
        torch.save({**result, "uneven_error": uneven_error, "world_size": dist.get_world_size()}, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("PROBMED_LOSS_COMPILE", "0")
    main()
