"""Benchmark of the pairwise Gaussian contrastive losses: fwd+bwd time and peak memory, all in one process.

What is measured is one rank's work in a DDP step with global batch N and local batch B: the symmetric InfoNCE of
B local rows against N global columns in both directions (two ``[B, N]`` logit matrices + cross-entropy + backward),
at embedding size D, float32. Rows:

* ``clip``           open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)`` on the means (cosine), with
                     its ``gather_features`` replaced by a local stand-in that returns the same global columns
                     (the reference; ratios are printed against it);
* ``hellinger-diag`` :class:`probmed.losses.ProbabilisticInfoNCE` (Hellinger, diagonal variances) through the
                     chunked pairwise kernel (``PROBMED_LOSS_TRITON=0``): torch.compile-fused on CPU float32 when
                     large enough (the CPU default), eager chunked on CUDA;
* ``hellinger-triton`` CUDA only: the same loss through the fused Triton InfoNCE kernel
                     (:mod:`probmed.losses.fused_infonce`, the CUDA default); without a GPU the table says it was
                     not timed;
* ``hellinger-online-lse`` CPU experiment: the Triton kernel's online log-sum-exp written in torch over
                     ``[B, 1024]`` logit blocks on the compiled chunk functions, recomputing them in backward;
* ``hellinger-diag-eager`` CPU only, ``hellinger-diag`` with ``PROBMED_LOSS_COMPILE=0`` (eager chunked kernel;
                     only when named in ``--configs``);
* ``hellinger-diag-compiled`` CUDA only: the chunked kernel compiled by inductor to Triton
                     (``PROBMED_LOSS_COMPILE_CUDA=1``);
* ``hellinger-naive`` the same loss through a naive ``[B, N, D]`` broadcast, only where that fits in
                     ``--max-naive-gib``;
* ``hellinger-iso``  isotropic variances (``log_var`` [., 1]): matmul + per-sample terms;
* ``medprob-diag``   the MedProbCLIP distance as logit (same chunked kernel).

Above ``--extra-max-n`` columns only ``clip``, ``hellinger-diag`` and ``hellinger-triton`` run (the others are
slow or were measured at the reference size; the full mode stays a few minutes long). Everything runs in this one
process, so the rows share the machine's load: per size, each row is warmed up once
(compilation included), its peak memory is taken in one more run, then ``--reps`` rounds time every row once each,
the order rotating from round to round. ``vs clip`` is the median over rounds of (row time / ClipLoss time of the
same round): a ratio measured side by side; ``CPU-time`` is the same ratio of this process's CPU time, the one to
read on cores that other jobs keep busy (they stretch elapsed times, not CPU time). Memory on CPU: the peak resident set of one run (reset through
``/proc/self/clear_refs``) minus the resident set before it, taken with glibc's mmap threshold fixed at 128 KiB
(``mallopt``) so that freed tensors leave the resident set and no row hides in another's freed heap; the timed
rounds then run with the threshold at 32 MiB, the ceiling glibc's own adaptive threshold reaches in a long run.
On CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the run.

Usage::

    python benchmarks/bench_loss.py                 # B 256 x D 512 at N 4096, 16384, 65536 on CPU (+ CUDA)
    python benchmarks/bench_loss.py --quick         # 64x512x128 only, 3 rounds
    python benchmarks/bench_loss.py --threads 1     # on a machine shared with other jobs
    python benchmarks/bench_loss.py --sizes 128x1024x256 --configs clip,hellinger-diag --device cpu
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import statistics
import time

CONFIGS = ["clip", "hellinger-diag", "hellinger-triton", "hellinger-online-lse", "hellinger-diag-eager",
           "hellinger-diag-compiled", "hellinger-naive", "hellinger-iso", "medprob-diag"]
#: rows that run at every size (the others up to --extra-max-n columns)
CORE = ("clip", "hellinger-diag", "hellinger-triton")
#: rows for one device only
DEVICE_ONLY = {"hellinger-triton": "cuda", "hellinger-diag-compiled": "cuda", "hellinger-online-lse": "cpu",
               "hellinger-diag-eager": "cpu"}
#: environment each row runs under (read by probmed.losses at every call)
ROW_ENV = {"hellinger-diag": {"PROBMED_LOSS_TRITON": "0"},
           "hellinger-triton": {"PROBMED_LOSS_TRITON": "1"},
           "hellinger-diag-eager": {"PROBMED_LOSS_COMPILE": "0", "PROBMED_LOSS_TRITON": "0"},
           "hellinger-diag-compiled": {"PROBMED_LOSS_COMPILE_CUDA": "1", "PROBMED_LOSS_TRITON": "0"}}
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@contextlib.contextmanager
def row_env(cfg: str):
    saved = {k: os.environ.get(k) for k in ROW_ENV.get(cfg, {})}
    os.environ.update(ROW_ENV.get(cfg, {}))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------------------------
# one row: a closure that runs forward + backward once
# ---------------------------------------------------------------------------------------------------------------


def online_lse_rows(block: int = 1024):
    """Experiment (CPU): the fused kernel's online log-sum-exp in torch, on top of the compiled chunk functions of
    :mod:`probmed.losses.kernels`: ``[B, block]`` logits at a time, recomputed in backward. Returns the
    ``rows_fn`` factory that :meth:`ProbabilisticInfoNCE._fused_rows_fn` would return (Hellinger only)."""
    import torch

    from probmed.losses import kernels as K
    from probmed.losses.similarity import SQRT_GRAD_FLOOR

    def tile(mu_a, lv_a, mu_b, lv_b, scale, kappa):
        k = K._fused_forward(mu_a, lv_a, mu_b, lv_b, -0.25, -0.5, True, K.FUSED_CHUNK)
        e = torch.exp(kappa * k)
        root = (1.0 - e).clamp_min(0.0).sqrt()
        return scale * (1.0 - root), 1.0 - root, kappa * e / (2.0 * root.clamp_min(SQRT_GRAD_FLOOR))

    class OnlineLSE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, mu_a, lv_a, mu_b, lv_b, scale, rg, cg, cm):
            kappa = 1.0 / mu_a.shape[1]
            run_max = mu_a.new_full((mu_a.shape[0],), -1e30)
            run_sum, pos_sum, n_pos = torch.zeros_like(run_max), torch.zeros_like(run_max), torch.zeros_like(run_max)
            for c0 in range(0, mu_b.shape[0], block):
                c = slice(c0, c0 + block)
                logit, _, _ = tile(mu_a, lv_a, mu_b[c], lv_b[c], scale, kappa)
                logit = logit.masked_fill(~cm[c][None, :], -1e30)
                new_max = torch.maximum(run_max, logit.max(1).values)
                run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(logit - new_max[:, None]).sum(1)
                run_max = new_max
                pos = (rg[:, None] == cg[c][None, :]) & cm[c][None, :]
                pos_sum += torch.where(pos, logit, 0.0).sum(1)
                n_pos += pos.sum(1)
            lse = run_max + run_sum.log()
            ctx.save_for_backward(mu_a, lv_a, mu_b, lv_b, scale, rg, cg, cm, lse, n_pos)
            return lse, pos_sum / n_pos.clamp_min(1), n_pos

        @staticmethod
        def backward(ctx, g_lse, g_pos, _):
            mu_a, lv_a, mu_b, lv_b, scale, rg, cg, cm, lse, n_pos = ctx.saved_tensors
            kappa, w = 1.0 / mu_a.shape[1], g_pos / n_pos.clamp_min(1)
            v_a, v_b = lv_a.exp(), lv_b.exp()
            g_mu_a, g_lv_a, g_mu_b, g_lv_b = (torch.zeros_like(x) for x in (mu_a, lv_a, mu_b, lv_b))
            g_scale = scale.new_zeros(())
            for c0 in range(0, mu_b.shape[0], block):
                c = slice(c0, c0 + block)
                logit, sim, dsim = tile(mu_a, lv_a, mu_b[c], lv_b[c], scale, kappa)
                pos = (rg[:, None] == cg[c][None, :]) & cm[c][None, :]
                dlogit = torch.where(cm[c][None, :], g_lse[:, None] * torch.exp(logit - lse[:, None]), 0.0)
                dlogit += pos * w[:, None]
                g_scale += (dlogit * sim).sum()
                g = dlogit * scale * dsim
                gma, gva, gmb, gvb = K._fused_backward(mu_a, v_a, mu_b[c], v_b[c], g, -0.25, -0.5, K.FUSED_CHUNK)
                g_mu_a += gma
                g_lv_a += gva * v_a + 0.25 * g.sum(1)[:, None]
                g_mu_b[c] = gmb
                g_lv_b[c] = gvb * v_b[c] + 0.25 * g.sum(0)[:, None]
            return g_mu_a, g_lv_a, g_mu_b, g_lv_b, g_scale, None, None, None

    def factory(ctx, scale):
        def rows_fn(x, y, col_mask):
            r, c = ctx.local[x], ctx.world[y]
            lse, pos, n_pos = OnlineLSE.apply(r.mean, r.log_var, c.mean, c.log_var, scale, ctx.local_group,
                                              ctx.world_group, col_mask)
            return lse - pos, pos, n_pos
        return rows_fn

    return factory


def make_step(cfg: str, b: int, n: int, d: int, dev):
    """``(step, note)``: ``step()`` runs one forward + backward of row ``cfg`` at ``B × N × D`` on ``dev``."""
    import torch
    import torch.nn.functional as F

    from probmed.embedding import GaussianEmbedding
    from probmed.losses import ProbabilisticInfoNCE
    from probmed.losses.base import LossContext
    from probmed.losses.similarity import hellinger_from_log_bc, log_bhattacharyya_naive

    g = torch.Generator().manual_seed(0)
    world = max(1, n // b)
    iso = cfg == "hellinger-iso"
    # global columns: this rank's rows are the first B; the other ranks' rows come as constants (as after a gather)
    mu = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(dev)
    lv = (torch.randn(n, 1 if iso else d, generator=g) * 0.5 - 3.0).clamp(-10, 5).to(dev)
    mu_b = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(dev)
    lv_b = (torch.randn(n, 1 if iso else d, generator=g) * 0.5 - 3.0).clamp(-10, 5).to(dev)
    leaves = [mu[:b].clone().requires_grad_(), lv[:b].clone().requires_grad_(),
              mu_b[:b].clone().requires_grad_(), lv_b[:b].clone().requires_grad_()]
    present = torch.ones(n, dtype=torch.bool, device=dev)
    group = torch.arange(n, device=dev)
    note = ""

    if cfg == "clip":
        def fake_gather(image_features, text_features, local_loss=False, gather_with_grad=False, rank=0,
                        world_size=1, use_horovod=False):
            return torch.cat([image_features, mu[b:]]), torch.cat([text_features, mu_b[b:]])

        try:
            import open_clip.loss as ocl

            ocl.gather_features = fake_gather
            clip = ocl.ClipLoss(local_loss=True, gather_with_grad=True, rank=0, world_size=world)
            note = "open_clip ClipLoss"
        except ImportError:  # e.g. a GPU machine without open_clip: the same local-loss maths, inline
            def clip(x, y, s):
                all_x, all_y = fake_gather(x, y)
                labels = torch.arange(x.shape[0], device=x.device)
                return 0.5 * (F.cross_entropy(s * x @ all_y.T, labels) + F.cross_entropy(s * y @ all_x.T, labels))
            note = "inline ClipLoss maths (open_clip not installed)"
        scale = torch.tensor(1 / 0.07, device=dev, requires_grad=True)

        def loss():
            return clip(leaves[0], leaves[2], scale)
    else:
        term = ProbabilisticInfoNCE(["a", "b"], similarity="medprob" if cfg == "medprob-diag" else "hellinger").to(dev)
        if cfg == "hellinger-online-lse":
            term._fused_rows_fn = online_lse_rows()  # type: ignore[method-assign]
        if cfg == "hellinger-naive":
            def naive_sim(rows, cols):
                return hellinger_from_log_bc(log_bhattacharyya_naive(rows.mean, rows.log_var, cols.mean,
                                                                     cols.log_var))
            term.similarity = naive_sim  # type: ignore[method-assign]

        def loss():
            la = GaussianEmbedding(leaves[0], leaves[1], present[:b])
            lb = GaussianEmbedding(leaves[2], leaves[3], present[:b])
            wa = GaussianEmbedding(torch.cat([leaves[0], mu[b:]]), torch.cat([leaves[1], lv[b:]]), present)
            wb = GaussianEmbedding(torch.cat([leaves[2], mu_b[b:]]), torch.cat([leaves[3], lv_b[b:]]), present)
            return term(LossContext({"a": la, "b": lb}, {"a": wa, "b": wb}, group[:b], group, 0, world))[0]

    def step():
        with row_env(cfg):
            loss().backward()
        for x in leaves:
            x.grad = None

    return step, note


# ---------------------------------------------------------------------------------------------------------------
# timing and memory
# ---------------------------------------------------------------------------------------------------------------


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def timed(step, dev) -> float:
    """Seconds of one ``step()`` (CUDA: synchronised)."""
    return timed_both(step, dev)[0]


def timed_both(step, dev) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of one ``step()``: elapsed (CUDA: synchronised) and this process's CPU time, which
    other jobs on the cores do not inflate the way they inflate elapsed time."""
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def peak_bytes(step, dev) -> int:
    """Peak memory of one ``step()`` above what was in use before it (-1: not measurable here)."""
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current resident set
    except OSError:
        return -1
    base = _status_bytes("VmRSS")
    step()
    return _status_bytes("VmHWM") - base


def set_mmap_threshold(nbytes: int) -> None:
    """glibc: allocations of at least ``nbytes`` are mmapped (and unmapped when freed), and the free heap is given
    back to the system now (else a freed block still resident would serve the next row unseen); a no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, nbytes)
        libc.malloc_trim(0)


def measure(steps: dict, reps: int, dev, warm: set[str]) -> dict[str, dict]:
    """Warm-up (rows not in ``warm``, i.e. not yet compiled in this process), peak memory, then ``reps`` rounds
    timing every row once each in a rotating order; adds the rows to ``warm``."""
    out = {cfg: {"warmup": float("nan") if cfg in warm else timed(step, dev)} for cfg, step in steps.items()}
    warm.update(steps)
    for cfg, step in steps.items():
        set_mmap_threshold(128 << 10)
        out[cfg]["peak"] = peak_bytes(step, dev)
    set_mmap_threshold(32 << 20)
    names = list(steps)
    rounds = []
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        rounds.append({cfg: timed_both(steps[cfg], dev) for cfg in order})
    for cfg in names:
        times = [t[cfg][0] for t in rounds]
        out[cfg].update(best=min(times), median=statistics.median(times))
        if "clip" in steps:
            out[cfg]["ratio"] = statistics.median(t[cfg][0] / t["clip"][0] for t in rounds)
            out[cfg]["cpu_ratio"] = statistics.median(t[cfg][1] / t["clip"][1] for t in rounds)
    return out


# ---------------------------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------------------------


def _naive_bytes(b: int, n: int, d: int) -> int:
    """Rough autograd footprint of the naive broadcast: about six live [B, N, D] float32 tensors."""
    return 6 * b * n * d * 4


def _fmt_mem(x: int) -> str:
    if x < 0:
        return "n/a"
    return f"{x / 2**20:,.0f} MiB" if x < 2**30 else f"{x / 2**30:.2f} GiB"


def rows_for(configs: list[str], size: tuple[int, int, int], dev: str, args) -> tuple[list[str], list[str]]:
    """The rows that run on ``dev`` at ``size``, and a note for each one left out."""
    import torch

    b, n, d = size
    keep, notes = [], []
    for cfg in configs:
        if cfg == "hellinger-triton" and dev == "cpu" and not torch.cuda.is_available():
            notes.append(f"{cfg}: not timed (no GPU here; the Triton kernel runs on CUDA)")
            continue
        if DEVICE_ONLY.get(cfg, dev) != dev:
            continue
        if cfg not in CORE and n > args.extra_max_n:
            notes.append(f"{cfg}: left out above N {args.extra_max_n} (--extra-max-n)")
            continue
        if cfg == "hellinger-naive" and _naive_bytes(b, n, d) > args.max_naive_gib * 2**30:
            notes.append(f"{cfg}: skipped, would need ~{_naive_bytes(b, n, d) / 2**30:.1f} GiB")
            continue
        keep.append(cfg)
    return keep, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256x4096x512,256x16384x512,256x65536x512",
                    help="comma-separated BxNxD (local x global x dim)")
    ap.add_argument("--configs", default=",".join(c for c in CONFIGS if c != "hellinger-diag-eager"),
                    help=f"comma-separated subset of {CONFIGS} (default: all but the eager row, ~25x slower than "
                         "the fused one)")
    ap.add_argument("--reps", type=int, default=5, help="timed rounds per size")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cpu, and cuda too when available)")
    ap.add_argument("--large-reps", type=int, default=3, help="timed rounds above --extra-max-n columns")
    ap.add_argument("--extra-max-n", type=int, default=4096,
                    help=f"largest N of the rows other than {', '.join(CORE)}")
    ap.add_argument("--max-naive-gib", type=float, default=None,
                    help="skip the naive broadcast above this estimated footprint (default: half the free RAM)")
    ap.add_argument("--quick", action="store_true", help="64x512x128 only, 3 rounds")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: torch's); 1 on a machine whose cores other jobs keep busy, where "
                         "OpenMP threads waiting for each other slow every multi-threaded row by several times")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    if args.quick:
        sizes, args.reps = [(64, 512, 128)], 3
    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
    if args.max_naive_gib is None:
        args.max_naive_gib = 0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    configs = [c for c in args.configs.split(",") if c]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    print(f"fwd+bwd of the symmetric InfoNCE of B local rows vs N global columns (both directions), float32; "
          f"one process, {args.reps} interleaved rounds ({args.large_reps} above N {args.extra_max_n})")
    header = (f"{'device':6} {'B x N x D':>15} {'config':24} {'best s':>9} {'median s':>9} {'vs clip':>8} "
              f"{'CPU-time':>8} {'peak mem':>11} {'warm-up s':>9}")
    print(header + "\n" + "-" * len(header), flush=True)
    started = time.perf_counter()
    for dev in devices:
        warm: set[str] = set()  # rows compiled at an earlier size: the peak-memory run is their warm-up
        for size in sizes:
            cfgs, notes = rows_for(configs, size, dev, args)
            steps, impl = {}, {}
            for cfg in cfgs:
                steps[cfg], impl[cfg] = make_step(cfg, *size, torch.device(dev))
            reps = args.reps if size[1] <= args.extra_max_n else min(args.reps, args.large_reps)
            result = measure(steps, reps, torch.device(dev), warm)
            b, n, d = size
            for cfg in cfgs:
                r = result[cfg]
                ratio = f"{r['ratio']:7.1f}x" if "ratio" in r else "     n/a"
                cpu_ratio = f"{r['cpu_ratio']:7.1f}x" if "ratio" in r and dev == "cpu" else "     n/a"
                warmup = "-" if math.isnan(r["warmup"]) else f"{r['warmup']:.2f}"
                print(f"{dev:6} {f'{b}x{n}x{d}':>15} {cfg:24} {r['best']:9.3f} {r['median']:9.3f} {ratio} "
                      f"{cpu_ratio} {_fmt_mem(r['peak']):>11} {warmup:>9}", flush=True)
            for note in notes:
                print(f"{dev:6} {f'{b}x{n}x{d}':>15} {note}", flush=True)
            if impl.get("clip"):
                print(f"# clip reference = {impl['clip']}", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s. vs clip: median over rounds of row time / ClipLoss time of "
          "the same round; CPU-time: the same ratio of process CPU time (CPU rows). warm-up -: compiled at a smaller size, the peak-memory run warmed it up. "
          "peak mem: CPU = peak resident set of one run minus the resident set before it; "
          "CUDA = max_memory_allocated minus allocated before.")


if __name__ == "__main__":
    main()
