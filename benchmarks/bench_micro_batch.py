"""Memory and time of micro-batched towers (the exact contrastive form of gradient accumulation) against the plain
whole-batch step, measured in the same run.

Runs ``benchmarks/bench_train.py`` in a fresh process per setting — plain, then ``--micro-batch`` m for each m — on
the same synthetic batch, and a ``--no-step`` baseline (model, optimizer and batch built, one no-grad forward) whose
peak memory is subtracted to give the training step's own memory. On CPU memory is the process's peak resident set
(ru_maxrss), on CUDA the peak allocated device memory.

Usage::

    python benchmarks/bench_micro_batch.py --config configs/demo.yaml --batch-size 128 --micro 64 32 16
    python benchmarks/bench_micro_batch.py --config configs/reference.yaml --batch-size 32 --micro 8 --device cuda
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).with_name("bench_train.py")


def run(common: list[str], extra: list[str]) -> tuple[float | None, float]:
    """(step seconds or None for the baseline, peak MiB) of one bench_train.py process."""
    out = subprocess.run([sys.executable, str(BENCH), *common, *extra], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_train.py {' '.join(extra)} failed:\n{out.stderr[-3000:]}")
    step = re.search(r"^step ([\d.]+) s", out.stdout, re.M)
    peak = re.search(r"^peak memory (\d+) MiB", out.stdout, re.M)
    return (float(step.group(1)) if step else None), float(peak.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--micro", type=int, nargs="+", default=[64, 32, 16])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default=None)
    args = ap.parse_args()
    common = ["--config", args.config, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
              "--device", args.device] + (["--precision", args.precision] if args.precision else [])
    _, base = run(common, ["--no-step"])
    plain_step, plain_peak = run(common, [])
    plain_mem = plain_peak - base
    print(f"config {args.config}  batch {args.batch_size} (negatives per query: {args.batch_size} x world size)  "
          f"device {args.device}  baseline {base:.0f} MiB")
    print(f"{'towers run on':>16} {'step s':>8} {'vs plain':>9} {'step MiB':>9} {'vs plain':>9}")
    print(f"{'whole batch':>16} {plain_step:8.3f} {1.0:9.2f} {plain_mem:9.0f} {1.0:9.2f}")
    for m in args.micro:
        step, peak = run(common, ["--micro-batch", str(m)])
        mem = peak - base
        print(f"{f'chunks of {m}':>16} {step:8.3f} {step / plain_step:9.2f} {mem:9.0f} {mem / max(plain_mem, 1):9.2f}")


if __name__ == "__main__":
    main()
