"""Training throughput of a config: samples/s, step time, counted FLOPs and (on a known GPU) MFU.

Builds the model and data module from the YAML exactly as ``probmed fit`` does, but feeds *synthetic* batches of the
configured input shapes (random pixels/signals, a repeated report for text; each modality present in a random
``--present`` fraction of studies, as in real multimodal batches), so no corpus is needed and the figure is the
model's, not the loader's. Times a full training step (towers, heads, objective, backward, AdamW step) under the
config's precision (``--precision`` overrides), median of ``--steps`` after ``--warmup``.

Usage::

    python benchmarks/bench_train.py --config configs/demo.yaml --batch-size 64 --steps 5
    python benchmarks/bench_train.py --config configs/reference.yaml --batch-size 8 --steps 3
    python benchmarks/bench_train.py --config configs/reference.yaml --device cuda --precision bf16-mixed
    python benchmarks/bench_train.py --config configs/demo.yaml --batch-size 128 --micro-batch 32

``--micro-batch N`` runs every tower in checkpointed chunks of N studies (``TowerCompute(micro_batch_size=...)``,
the exact contrastive form of gradient accumulation); ``--no-step`` builds everything and runs one no-grad forward
only (the memory baseline). The last line reports peak memory: the process's peak resident set on CPU, the peak
allocated device memory on CUDA.

``--micro-sweep M [M ...]`` compares micro-batching with the whole-batch step in the same run: this script again in
a fresh process per setting (the ``--no-step`` baseline, whole batch, then each M), printing step time and the
step's own memory (peak minus the baseline) with their ratios to the whole batch::

    python benchmarks/bench_train.py --config configs/demo.yaml --batch-size 128 --steps 3 --micro-sweep 64 32 16
"""
from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import time

import torch
from lightning.fabric.utilities.throughput import get_available_flops
from torch.utils.flop_counter import FlopCounterMode

from probmed.cli import ProbMedCLI
from probmed.data.datamodule import ProbMedDataModule
from probmed.tasks.binding import ProbMedModule
from probmed.training import TowerCompute

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def random_like(example, gen: torch.Generator):
    """Random float signal of a placeholder's shape; masks (bool) all set: every lead / frame recorded."""
    if isinstance(example, dict):
        return {k: random_like(v, gen) for k, v in example.items()}
    if example.dtype == torch.bool:
        return torch.ones_like(example)
    return torch.randn(example.shape, generator=gen)


def synthetic_batch(data: ProbMedDataModule, batch_size: int, present: float, gen: torch.Generator) -> dict:
    """A collated batch of ``batch_size`` studies with the data module's input shapes."""
    inputs, mask = {}, {}
    for name, modality in data.inputs.items():
        example = modality.placeholder()
        if isinstance(example, str):
            items = ["no acute cardiopulmonary process. " * 64] * batch_size
        else:
            items = [random_like(example, gen) for _ in range(batch_size)]
        inputs[name] = modality.collate(items)
        keep = torch.rand(batch_size, generator=gen) < present
        keep[0] = True
        mask[name] = keep
    return {"inputs": inputs, "present": mask, "group": torch.arange(batch_size)}


def to_device(value, device):
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value.to(device) if torch.is_tensor(value) else value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's data.batch_size")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--present", type=float, default=0.8, help="fraction of studies holding each modality")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default=None, help="32-true | bf16-mixed | 16-mixed (default: the config's)")
    ap.add_argument("--micro-batch", type=int, default=None, help="studies per checkpointed tower chunk")
    ap.add_argument("--no-step", action="store_true", help="one no-grad forward only: the memory baseline")
    ap.add_argument("--micro-sweep", type=int, nargs="+", default=None, metavar="M",
                    help="compare whole-batch and micro-batched steps, one fresh process per setting")
    args, overrides = ap.parse_known_args()
    if args.micro_sweep:
        return micro_sweep(args, overrides)
    sys.argv = sys.argv[:1]
    cli = ProbMedCLI(ProbMedModule, ProbMedDataModule, run=False,
                     args=["--config", args.config, "--trainer.logger", "false", "--trainer.callbacks", "[]",
                           *overrides])
    model, data = cli.model, cli.datamodule
    precision = args.precision or str(cli.config.trainer.precision or "32-true")
    batch_size = args.batch_size or data.batch_size
    device = torch.device(args.device)
    if args.micro_batch:
        TowerCompute(micro_batch_size={name: args.micro_batch for name in model.encoders}).setup(None, model, "fit")
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    batches = [to_device(synthetic_batch(data, batch_size, args.present, gen), device) for _ in range(2)]
    names = sorted(model.objective.modalities)
    dtype = AUTOCAST.get(precision)

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model.objective(model.embed(b, names), b["group"]).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.no_step:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model.objective(model.embed(batches[0], names), batches[0]["group"])
        report_memory(device)
        return
    for i in range(args.warmup):
        step(i)
    counter = FlopCounterMode(display=False)
    with counter:
        step(0)
    flops = counter.get_total_flops()
    times = []
    for i in range(args.steps):
        sync()
        start = time.perf_counter()
        step(i)
        sync()
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    params = sum(p.numel() for p in model.parameters())
    peak = get_available_flops(device, dtype or torch.float32)
    mfu = f"{100 * flops / t / peak:.1f}%" if peak else "n/a (no peak FLOPs known for this device)"
    print(f"config {args.config}  device {device}  precision {precision}  threads {torch.get_num_threads()}  "
          f"params {params / 1e6:.1f} M  batch {batch_size}  modality present {args.present:.0%}")
    print(f"step {t:.3f} s (median of {args.steps}; min {min(times):.3f})  samples/s {batch_size / t:.2f}  "
          f"GFLOP/step {flops / 1e9:.1f}  achieved TFLOP/s {flops / t / 1e12:.3f}  MFU {mfu}")
    report_memory(device)


def _child(common: list[str], extra: list[str]) -> tuple[float | None, float]:
    """(step seconds or None for the baseline, peak MiB) of one run of this script in a fresh process."""
    out = subprocess.run([sys.executable, __file__, *common, *extra], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_train.py {' '.join(extra)} failed:\n{out.stderr[-3000:]}")
    step = re.search(r"^step ([\d.]+) s", out.stdout, re.M)
    peak = re.search(r"^peak memory (\d+) MiB", out.stdout, re.M)
    return (float(step.group(1)) if step else None), float(peak.group(1))


def micro_sweep(args, overrides: list[str]) -> None:
    """The ``--micro-sweep`` table: whole batch vs towers in chunks of M, time and memory as ratios."""
    common = ["--config", args.config, "--steps", str(args.steps), "--warmup", str(args.warmup), "--device",
              args.device, "--present", str(args.present), *overrides]
    common += (["--batch-size", str(args.batch_size)] if args.batch_size else [])
    common += (["--precision", args.precision] if args.precision else [])
    _, base = _child(common, ["--no-step"])
    plain_step, plain_peak = _child(common, [])
    plain_mem = plain_peak - base
    print(f"config {args.config}  batch {args.batch_size or 'config'}  device {args.device}  baseline {base:.0f} MiB")
    print(f"{'towers run on':>16} {'step s':>8} {'vs plain':>9} {'step MiB':>9} {'vs plain':>9}")
    print(f"{'whole batch':>16} {plain_step:8.3f} {1.0:9.2f} {plain_mem:9.0f} {1.0:9.2f}")
    for m in args.micro_sweep:
        step, peak = _child(common, ["--micro-batch", str(m)])
        mem = peak - base
        print(f"{f'chunks of {m}':>16} {step:8.3f} {step / plain_step:9.2f} {mem:9.0f} {mem / max(plain_mem, 1):9.2f}")


def report_memory(device: torch.device) -> None:
    """``peak memory <MiB> MiB (<what>)``: device allocations on CUDA, the process's peak resident set on CPU."""
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB (CUDA allocated)")
    else:  # ru_maxrss is in KiB on Linux
        print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (process RSS)")


if __name__ == "__main__":
    main()
