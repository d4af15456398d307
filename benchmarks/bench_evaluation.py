"""What evaluation costs at the end of an epoch, per part, on random Gaussian embeddings of a given size.

    python benchmarks/bench_evaluation.py --studies 300 --dim 64      # the demo's validation/test split size

Times (seconds, this machine, ± contention from other jobs) for: retrieval over all 12 ordered pairs with the
demo's Bhattacharyya scoring (first call, which includes compiling the fused pairwise kernel, and again), the uncertainty metrics, zero-shot over 6 findings × 3 prompts per set, few-shot
probes (k = 1, 5, 10, all; 3 draws), prognosis, and the figures. Figures are relative to retrieval, measured in
the same run.
"""
from __future__ import annotations

import argparse
import time

import torch

from probmed.data.schema import FINDINGS
from probmed.embedding import GaussianEmbedding
from probmed.evaluation import plots
from probmed.evaluation.fewshot import few_shot
from probmed.evaluation.prognosis import prognosis
from probmed.evaluation.retrieval import retrieval_metrics
from probmed.evaluation.scoring import make_scorer
from probmed.evaluation.uncertainty import aurc, risk_coverage, selective_risk, spearman
from probmed.evaluation.zeroshot import zero_shot
from probmed.losses import Objective, ProbabilisticInfoNCE

MODALITIES = ("cxr", "ecg", "echo", "text")


def _gaussians(n: int, dim: int, g: torch.Generator) -> GaussianEmbedding:
    mean = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    return GaussianEmbedding(mean, torch.randn(n, dim, generator=g) * 0.3 - 2.0, torch.ones(n, dtype=torch.bool))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=300)
    p.add_argument("--dim", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    ids = [f"s{i:05d}" for i in range(args.studies)]
    embeddings = {m: (_gaussians(args.studies, args.dim, g), ids) for m in MODALITIES}
    labels = {sid: (torch.rand(len(FINDINGS), generator=g) < 0.3).float() for sid in ids}
    pairs = [("text", "cxr"), ("text", "ecg"), ("text", "echo"), ("cxr", "echo"), ("ecg", "echo")]
    objective = Objective([ProbabilisticInfoNCE(list(pr), similarity="bhattacharyya") for pr in pairs])
    score = make_scorer(objective, None, torch.device("cpu"))
    prompts = {f: (_gaussians(3, args.dim, g), _gaussians(3, args.dim, g)) for f in FINDINGS}
    times: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - start
        return out

    details: dict = {}
    timed("retrieval, 1st call", lambda: retrieval_metrics(embeddings, score, (1, 5, 10)))  # incl. kernel compile
    timed("retrieval (12 pairs)", lambda: retrieval_metrics(embeddings, score, (1, 5, 10), details=details))

    def uncertainty():
        for found in details.values():
            var, err = found["query_variance"], (found["ranks"] > 0).double()
            aurc(var, err), spearman(var, found["ranks"].double()), risk_coverage(var, err)
            [selective_risk(var, err, c) for c in (0.5, 0.8, 1.0)]

    timed("uncertainty", uncertainty)
    timed("zero-shot", lambda: zero_shot(embeddings, labels, list(FINDINGS), prompts, score, {m: 10.0 for m in MODALITIES}))
    timed("few-shot probes", lambda: few_shot(embeddings, labels, list(FINDINGS), [1, 5, 10, 0], "mean", 3))
    timed("prognosis", lambda: prognosis(embeddings, labels, list(FINDINGS), "reduced_ef", [["cxr", "ecg", "echo"]]))

    def figures():
        curves = {}
        for (a, b), f in details.items():
            var, err = f["query_variance"], (f["ranks"] > 0).double()
            curves[f"{a}->{b}"] = {"oracle": risk_coverage(err, err), "random": float(err.mean()),
                                   "variance": (*risk_coverage(var, err), aurc(var, err))}
        figs = {"risk_coverage": plots.risk_coverage_figure(curves),
                "similarity": plots.similarity_figure({"cxr->text": score(embeddings["cxr"][0].select(slice(0, 32)),
                                                                          embeddings["text"][0].select(slice(0, 32)), "cxr", "text")})}
        plots.publish(figs, None, None, "bench", 0)

    timed("figures (2)", figures)
    ref = times["retrieval (12 pairs)"]
    print(f"{args.studies} studies per modality, D = {args.dim}, 2 threads")
    for name, sec in times.items():
        print(f"{name:<22}{sec:>9.3f} s{sec / ref:>9.2f}x retrieval")
    print(f"{'total':<22}{sum(times.values()):>9.3f} s")


if __name__ == "__main__":
    main()
