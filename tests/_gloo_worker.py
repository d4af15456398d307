"""Command line shared by the gloo worker scripts of the DDP tests: ``--rank R --world-size W --port P --out FILE``,
and joining the process group on loopback."""
from __future__ import annotations

import argparse

import torch.distributed as dist


def join_gloo_group() -> argparse.Namespace:
    """Parse the worker's arguments and join a CPU (gloo) process group on 127.0.0.1:port; returns the arguments."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world-size", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world_size)
    return args
