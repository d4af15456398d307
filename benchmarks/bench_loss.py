"""Benchmark of the pairwise Gaussian contrastive losses: fwd+bwd time and peak memory (prints a table).

What is measured is one rank's work in a DDP step with global batch N and local batch B: the symmetric InfoNCE of
B local rows against N global columns in both directions (two ``[B, N]`` logit matrices + cross-entropy + backward),
at embedding size D, float32. Rows:

* ``clip``           open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)`` on the means (cosine), with
                     its ``gather_features`` replaced by a local stand-in that returns the same global columns
                     (the reference; ratios are printed against it);
* ``hellinger-diag`` :class:`probmed.losses.ProbabilisticInfoNCE` (Hellinger, diagonal variances), default path
                     (torch.compile-fused chunked kernel on CPU float32 when large enough);
* ``hellinger-diag-eager`` the same with ``PROBMED_LOSS_COMPILE=0`` (eager chunked kernel);
* ``hellinger-diag-compiled`` CUDA only: the fused kernel compiled by inductor to Triton
                     (``PROBMED_LOSS_COMPILE_CUDA=1``; the CUDA default is the eager chunked kernel);
* ``hellinger-naive`` the same loss through a naive ``[B, N, D]`` broadcast (autograd keeps several of them), or
                     "skipped: would need X GiB" when that exceeds ``--max-naive-gib``;
* ``hellinger-iso``  isotropic variances (``log_var`` [., 1]): matmul + per-sample terms;
* ``medprob-diag``   the MedProbCLIP distance as logit (same chunked kernel).

Each (configuration, size) runs in a fresh subprocess. Time: best and median of ``--reps`` timed runs after one
warm-up run (which includes compilation). Memory on CPU: the peak resident set during the timed runs (the peak is
reset through ``/proc/self/clear_refs`` after warm-up) minus the resident set before them; on CUDA:
``torch.cuda.max_memory_allocated`` minus the memory allocated before the timed runs.

Usage::

    python benchmarks/bench_loss.py                 # 256x4096x512 and 64x512x128 on CPU (+ CUDA if available)
    python benchmarks/bench_loss.py --quick         # small size only, 2 reps
    python benchmarks/bench_loss.py --sizes 128x1024x256 --configs clip,hellinger-diag --device cpu
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = ["clip", "hellinger-diag", "hellinger-diag-eager", "hellinger-diag-compiled", "hellinger-naive",
           "hellinger-iso", "medprob-diag"]


# ---------------------------------------------------------------------------------------------------------------
# child: one configuration
# ---------------------------------------------------------------------------------------------------------------


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _child(cfg: str, b: int, n: int, d: int, reps: int, device: str) -> dict:
    import torch
    import torch.nn.functional as F

    from probmed.embedding import GaussianEmbedding
    from probmed.losses import ProbabilisticInfoNCE
    from probmed.losses.base import LossContext
    from probmed.losses.similarity import hellinger_from_log_bc, log_bhattacharyya_naive

    torch.manual_seed(0)
    dev = torch.device(device)
    impl = ""
    world = max(1, n // b)
    iso = cfg == "hellinger-iso"
    # global columns: this rank's rows are the first B; the other ranks' rows come as constants (as after a gather)
    mu = F.normalize(torch.randn(n, d, device=dev), dim=-1)
    lv = (torch.randn(n, 1 if iso else d, device=dev) * 0.5 - 3.0).clamp(-10, 5)
    mu_b = F.normalize(torch.randn(n, d, device=dev), dim=-1)
    lv_b = (torch.randn(n, 1 if iso else d, device=dev) * 0.5 - 3.0).clamp(-10, 5)
    leaves = [mu[:b].clone().requires_grad_(), lv[:b].clone().requires_grad_(),
              mu_b[:b].clone().requires_grad_(), lv_b[:b].clone().requires_grad_()]
    present = torch.ones(n, dtype=torch.bool, device=dev)
    group = torch.arange(n, device=dev)

    if cfg == "clip":
        def fake_gather(image_features, text_features, local_loss=False, gather_with_grad=False, rank=0,
                        world_size=1, use_horovod=False):
            return (torch.cat([image_features, mu[b:]]), torch.cat([text_features, mu_b[b:]]))

        try:
            import open_clip.loss as ocl

            ocl.gather_features = fake_gather
            clip = ocl.ClipLoss(local_loss=True, gather_with_grad=True, rank=0, world_size=world)
            impl = "open_clip ClipLoss"
        except ImportError:  # e.g. a GPU machine without open_clip: the same local-loss maths, inline
            def clip(x, y, s):
                all_x, all_y = fake_gather(x, y)
                labels = torch.arange(x.shape[0], device=x.device)
                return 0.5 * (F.cross_entropy(s * x @ all_y.T, labels) + F.cross_entropy(s * y @ all_x.T, labels))
            impl = "inline ClipLoss maths (open_clip not installed)"
        scale = torch.tensor(1 / 0.07, device=dev, requires_grad=True)

        def step():
            loss = clip(leaves[0], leaves[2], scale)
            loss.backward()
            return loss
    else:
        similarity = "medprob" if cfg == "medprob-diag" else "hellinger"
        term = ProbabilisticInfoNCE(["a", "b"], similarity=similarity).to(dev)
        if cfg == "hellinger-naive":
            def naive_sim(rows, cols):
                return hellinger_from_log_bc(log_bhattacharyya_naive(rows.mean, rows.log_var, cols.mean,
                                                                     cols.log_var))
            term.similarity = naive_sim  # type: ignore[method-assign]

        def step():
            la = GaussianEmbedding(leaves[0], leaves[1], present[:b])
            lb = GaussianEmbedding(leaves[2], leaves[3], present[:b])
            wa = GaussianEmbedding(torch.cat([leaves[0], mu[b:]]), torch.cat([leaves[1], lv[b:]]), present)
            wb = GaussianEmbedding(torch.cat([leaves[2], mu_b[b:]]), torch.cat([leaves[3], lv_b[b:]]), present)
            ctx = LossContext({"a": la, "b": lb}, {"a": wa, "b": wb}, group[:b], group, 0, world)
            loss, _ = term(ctx)
            loss.backward()
            return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()
    sync()
    warm = time.perf_counter() - t0
    for x in leaves:
        x.grad = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_ok = _reset_peak_rss()
        base = _rss_bytes("VmRSS")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        for x in leaves:
            x.grad = None
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
        mem_note = "cuda max_memory_allocated"
    else:
        peak = _rss_bytes("VmHWM") - base
        mem_note = "peak RSS delta" if reset_ok else "lifetime peak RSS delta (clear_refs unavailable)"
    return {"best": min(times), "median": statistics.median(times), "warmup": warm, "peak_bytes": peak,
            "mem_note": mem_note, "threads": torch.get_num_threads(), "impl": impl}


# ---------------------------------------------------------------------------------------------------------------
# parent: table
# ---------------------------------------------------------------------------------------------------------------


def _naive_bytes(b: int, n: int, d: int) -> int:
    """Rough autograd footprint of the naive broadcast: about six live [B, N, D] float32 tensors."""
    return 6 * b * n * d * 4


def _run(cfg, size, reps, device, timeout):
    b, n, d = size
    env = dict(os.environ)
    if cfg == "hellinger-diag-eager":
        env["PROBMED_LOSS_COMPILE"] = "0"
    if cfg == "hellinger-diag-compiled":
        if device != "cuda":
            return None
        env["PROBMED_LOSS_COMPILE_CUDA"] = "1"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", cfg, "--sizes", f"{b}x{n}x{d}", "--reps",
           str(reps), "--device", device]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1][:120]}


def _fmt_mem(x: int) -> str:
    if x < 0:
        return "n/a"
    return f"{x / 2**20:,.0f} MiB" if x < 2**30 else f"{x / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256x4096x512,64x512x128", help="comma-separated BxNxD (local x global x dim)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {CONFIGS}")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cpu, and cuda too when available)")
    ap.add_argument("--max-naive-gib", type=float, default=None,
                    help="skip the naive broadcast above this estimated footprint (default: half the free RAM)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    ap.add_argument("--quick", action="store_true", help="64x512x128 only, 2 reps")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    if args.child:
        b, n, d = sizes[0]
        print("RESULT " + json.dumps(_child(args.child, b, n, d, args.reps, args.device)), flush=True)
        return
    if args.quick:
        sizes, args.reps = [(64, 512, 128)], 2
    import torch

    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
    if args.max_naive_gib is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        args.max_naive_gib = 0.5 * avail / 2**30
    configs = [c for c in args.configs.split(",") if c]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    print("fwd+bwd of the symmetric InfoNCE of B local rows vs N global columns (both directions), float32")
    header = f"{'device':6} {'B x N x D':>15} {'config':22} {'best s':>9} {'median s':>9} {'vs clip':>9} " \
             f"{'peak mem':>11} {'warm-up s':>9}"
    print(header)
    print("-" * len(header))
    for dev in devices:
        for size in sizes:
            clip_best = None
            for cfg in configs:
                b, n, d = size
                tag = f"{dev:6} {f'{b}x{n}x{d}':>15} {cfg:22}"
                if cfg == "hellinger-naive" and dev == "cpu" and _naive_bytes(b, n, d) > args.max_naive_gib * 2**30:
                    print(f"{tag} skipped: would need ~{_naive_bytes(b, n, d) / 2**30:.1f} GiB", flush=True)
                    continue
                if cfg == "hellinger-diag-eager" and dev == "cuda":
                    continue  # the CUDA default path is the eager chunked kernel already
                reps = args.reps if b * n * d >= 1 << 24 else max(args.reps, 20)
                r = _run(cfg, size, reps, dev, args.timeout)
                if r is None:
                    continue
                if "error" in r:
                    print(f"{tag} error: {r['error']}", flush=True)
                    continue
                if cfg == "clip":
                    clip_best = r["best"]
                    if r.get("impl"):
                        print(f"# {dev} clip reference = {r['impl']}")
                ratio = f"{r['best'] / clip_best:8.1f}x" if clip_best else "      n/a"
                print(f"{tag} {r['best']:9.3f} {r['median']:9.3f} {ratio} {_fmt_mem(r['peak_bytes']):>11} "
                      f"{r['warmup']:9.2f}", flush=True)
    print("peak mem: CPU = peak resident set during the timed runs minus the resident set before them; "
          "CUDA = max_memory_allocated minus allocated before.")


if __name__ == "__main__":
    main()
