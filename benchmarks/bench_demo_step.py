"""Where a training step's time goes, for a config (default: the demo), on this machine.

Builds the model and data module from the YAML exactly as ``probmed fit`` does, takes real batches from the
training stream, then times (median of ``--steps`` after ``--warmup``):

* ``step``         towers + heads + objective forward, backward, optimizer step (what one training step costs);
* ``towers``       towers + heads forward and backward through a stand-in scalar (no objective);
* ``tower <m>``    the same for modality ``m`` alone;
* ``objective``    the objective's forward + backward on detached embeddings that require grad;
* ``step, other layout`` (``--layouts``) the step of a copy of the model with ``channels_last`` the other way (same
  weights, same batches, interleaved with ``step``);
* ``step, workers decoding`` (``--loader``) the step on batches taken live from the data module's DataLoader while
  its workers decode the next ones, beside ``step, workers idle`` on batches fetched before (the workers' queue
  full, so they wait); both interleaved, ``--data.worker_nice`` sets the workers' niceness.

Usage::

    python benchmarks/bench_demo_step.py                       # configs/demo.yaml on CPU
    python benchmarks/bench_demo_step.py --layouts --loader    # what channels_last and worker_nice change
    python benchmarks/bench_demo_step.py --loader --data.worker_nice 0
    python benchmarks/bench_demo_step.py --config configs/smoke.yaml --data.data_dir DIR
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from probmed.cli import ProbMedCLI
from probmed.data.datamodule import ProbMedDataModule
from probmed.embedding import GaussianEmbedding
from probmed.tasks.binding import ProbMedModule

#: batches the workers' queue holds (2 workers × prefetch 2): fetched ahead, they leave the workers idle
QUEUE = 4


def _median_time(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _stepper(model: ProbMedModule, names: list[str]):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: dict) -> None:
        out = model.objective(model.embed(batch, names), batch["group"])
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()

    return step


def other_layout(model: ProbMedModule) -> ProbMedModule:
    """A copy of ``model`` (same weights) whose towers' 4-D weights are in the other memory layout."""
    twin = copy.deepcopy(model)
    convs = [p for p in model.encoders.parameters() if p.dim() == 4]
    nhwc = bool(convs) and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs) \
        and not all(p.is_contiguous() for p in convs)
    twin.encoders.to(memory_format=torch.contiguous_format if nhwc else torch.channels_last)
    return twin


def loader_rows(step, data: ProbMedDataModule, rounds: int) -> dict[str, float]:
    """Median step on live batches (workers decoding meanwhile) and on batches fetched ahead (workers idle)."""
    it = iter(data.train_dataloader())
    ahead = [next(it) for _ in range(QUEUE)]
    live, idle = [], []
    for _ in range(rounds):
        idle += [_timed(step, b) for b in ahead]
        time.sleep(2.0)  # the workers refill their queue, then wait
        for _ in range(QUEUE):
            live.append(_timed(step, next(it)))
    return {"step, workers decoding": statistics.median(live), "step, workers idle": statistics.median(idle)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--layouts", action="store_true", help="also time the step with channels_last the other way")
    ap.add_argument("--loader", action="store_true", help="also time steps while the loader workers decode")
    args, overrides = ap.parse_known_args()
    sys.argv = sys.argv[:1]  # our own flags are parsed above; LightningCLI gets only `args`
    cli = ProbMedCLI(ProbMedModule, ProbMedDataModule, run=False,
                     args=["--config", args.config, "--trainer.logger", "false", *overrides])
    model, data = cli.model, cli.datamodule
    data.setup("fit")
    batches = [b for b, _ in zip(data.train_dataloader(), range(args.steps + args.warmup))]
    model.train()
    names = sorted(model.objective.modalities)
    it = iter(range(10**9))

    def batch():
        return batches[next(it) % len(batches)]

    step_on = _stepper(model, names)
    rows: dict[str, float] = {"step": _median_time(lambda: step_on(batch()), args.steps, args.warmup)}

    def towers(which: list[str]):
        b = batch()
        emb = model.embed(b, which)
        sum(e.mean.sum() + e.log_var.sum() for e in emb.values()).backward()

    rows["towers"] = _median_time(lambda: towers(names), args.steps, args.warmup)
    for name in names:
        rows[f"tower {name}"] = _median_time(lambda n=name: towers([n]), args.steps, args.warmup)

    with torch.no_grad():  # the objective's inputs, computed once outside the timed region
        embedded = [(model.embed(b, names), b["group"]) for b in batches]

    def objective():
        emb, group = embedded[next(it) % len(embedded)]
        leaf = {k: GaussianEmbedding(e.mean.clone().requires_grad_(), e.log_var.clone().requires_grad_(), e.present)
                for k, e in emb.items()}
        model.objective(leaf, group).total.backward()

    rows["objective"] = _median_time(objective, args.steps, args.warmup)
    if args.layouts:
        twin = other_layout(model)
        twin.train()
        step_twin = _stepper(twin, names)
        mine, theirs = [], []
        for b in batches:  # interleaved: the same batch through both layouts, one after the other
            mine.append(_timed(step_on, b))
            theirs.append(_timed(step_twin, b))
        rows["step (interleaved)"] = statistics.median(mine[args.warmup:])
        rows["step, other layout"] = statistics.median(theirs[args.warmup:])
    if args.loader:
        rows.update(loader_rows(step_on, data, rounds=max(1, args.steps // QUEUE)))
    n = len(batches[0]["group"])
    convs = [p for p in model.encoders.parameters() if p.dim() == 4]
    layout = "channels_last" if convs and not all(p.is_contiguous() for p in convs) else "contiguous"
    print(f"config {args.config}  batch {n}  threads {torch.get_num_threads()}  terms {len(model.objective.terms)}  "
          f"layout {layout}  workers {data.num_workers} (nice +{data.worker_nice})")
    print(f"{'what':<26}{'median s':>10}{'share of step':>15}")
    for name, t in rows.items():
        print(f"{name:<26}{t:>10.4f}{100 * t / rows['step']:>14.1f}%")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
