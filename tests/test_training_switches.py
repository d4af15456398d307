"""YAML compute switches: activation checkpointing and torch.compile per tower, bf16-mixed on CPU, throughput/FLOPs
logging, and the refusal of gradient accumulation for a contrastive loss."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from conftest import run_probmed
from probmed.encoders import ImageEncoder
from probmed.training.compute import checkpoint_forward
from test_cli import _overrides, _scalars


def _tiny_cxr() -> ImageEncoder:
    return ImageEncoder(model_name="resnet18", model_kwargs={"layers": [1, 1, 1, 1], "channels": [8, 8, 16, 16],
                                                             "stem_type": "deep", "stem_width": 8})


def test_checkpointed_tower_gives_the_same_output_and_gradients():
    torch.manual_seed(0)
    plain = _tiny_cxr()
    ckpt = _tiny_cxr()
    ckpt.load_state_dict(plain.state_dict())
    checkpoint_forward(ckpt)
    x = torch.randn(4, 1, 32, 32)
    out_plain, out_ckpt = plain(x), ckpt(x)
    out_plain.square().sum().backward()
    out_ckpt.square().sum().backward()
    assert torch.equal(out_plain, out_ckpt)
    # recomputation replays the same kernels on the same inputs (batch statistics included): equal up to the
    # order of floating-point accumulation, which can differ between the two backward graphs
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_checkpointing_compile_and_throughput_through_the_cli(smoke_corpus, tmp_path):
    callbacks = {"trainer": {"callbacks": [
        {"class_path": "probmed.training.TowerCompute",
         "init_args": {"checkpoint": ["cxr", "echo"], "compile": ["ecg"], "compile_kwargs": {"backend": "eager"}}},
        {"class_path": "probmed.training.Throughput", "init_args": {"flop_steps": 2, "window_size": 2}},
    ]}}
    extra = tmp_path / "switches.yaml"
    extra.write_text(yaml.safe_dump(callbacks))
    fit = run_probmed(["fit", *_overrides(smoke_corpus, tmp_path), "--config", str(extra),
                       "--trainer.precision", "bf16-mixed"], cwd=tmp_path)
    assert fit.returncode == 0, fit.output[-4000:]
    scalars = _scalars(tmp_path)
    assert len(scalars["train/loss"]) == 3 and all(math.isfinite(v) for v in scalars["train/loss"])
    rates = {k: v for k, v in scalars.items() if "samples_per_sec" in k}
    assert "train/device/samples_per_sec" in rates, rates  # global rates appear when world size > 1
    assert all(v > 0 for vs in rates.values() for v in vs)
    flops = scalars.get("train/device/flops_per_sec")
    assert flops and all(v > 0 for v in flops), sorted(scalars)
    assert not any("mfu" in k for k in scalars)  # Lightning knows no peak FLOPs for a CPU: no made-up MFU


def test_gradient_accumulation_is_refused_with_the_reason(smoke_corpus, tmp_path):
    fit = run_probmed(["fit", *_overrides(smoke_corpus, tmp_path), "--trainer.accumulate_grad_batches", "2"],
                      cwd=tmp_path)
    assert fit.returncode != 0
    assert "accumulate_grad_batches=2" in fit.output and "negatives" in fit.output
