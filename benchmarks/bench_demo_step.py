"""What share of a training step the loss takes, for a config (default: the demo), on this machine.

Builds the model and data module from the YAML exactly as ``probmed fit`` does, takes real batches from the
training stream, then times (median of ``--steps`` after ``--warmup``):

* ``step``      towers + heads + objective forward, backward, optimizer step (what one training step costs);
* ``towers``    towers + heads forward and backward through a stand-in scalar (no objective);
* ``objective`` the objective's forward + backward on detached embeddings that require grad.

Usage::

    python benchmarks/bench_demo_step.py                       # configs/demo.yaml on CPU
    python benchmarks/bench_demo_step.py --config configs/smoke.yaml --data.data_dir DIR
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from probmed.cli import ProbMedCLI
from probmed.data.datamodule import ProbMedDataModule
from probmed.embedding import GaussianEmbedding
from probmed.module import ProbMedModule


def _median_time(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    args, overrides = ap.parse_known_args()
    sys.argv = sys.argv[:1]  # our own flags are parsed above; LightningCLI gets only `args`
    cli = ProbMedCLI(ProbMedModule, ProbMedDataModule, run=False,
                     args=["--config", args.config, "--trainer.logger", "false", *overrides])
    model, data = cli.model, cli.datamodule
    data.setup("fit")
    batches = [b for b, _ in zip(data.train_dataloader(), range(args.steps + args.warmup))]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    names = sorted(model.objective.modalities)
    it = iter(range(10**9))

    def batch():
        return batches[next(it) % len(batches)]

    def step():
        b = batch()
        out = model.objective(model.embed(b, names), b["group"])
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()

    def towers():
        b = batch()
        emb = model.embed(b, names)
        sum(e.mean.sum() + e.log_var.sum() for e in emb.values()).backward()

    with torch.no_grad():  # the objective's inputs, computed once outside the timed region
        embedded = [(model.embed(b, names), b["group"]) for b in batches]

    def objective():
        emb, group = embedded[next(it) % len(embedded)]
        leaf = {k: GaussianEmbedding(e.mean.clone().requires_grad_(), e.log_var.clone().requires_grad_(), e.present)
                for k, e in emb.items()}
        model.objective(leaf, group).total.backward()

    t_step = _median_time(step, args.steps, args.warmup)
    t_towers = _median_time(towers, args.steps, args.warmup)
    t_loss = _median_time(objective, args.steps, args.warmup)
    n = len(batches[0]["group"])
    print(f"config {args.config}  batch {n}  threads {torch.get_num_threads()}  terms {len(model.objective.terms)}")
    print(f"{'what':<12}{'median s':>10}{'share of step':>15}")
    for name, t in (("step", t_step), ("towers", t_towers), ("objective", t_loss)):
        print(f"{name:<12}{t:>10.4f}{100 * t / t_step:>14.1f}%")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
