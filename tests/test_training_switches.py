"""Activation checkpointing is exact, and gradient accumulation is refused for a contrastive loss. (bf16-mixed,
TowerCompute and Throughput through the CLI are exercised by tests/test_resume.py's runs.)"""
from __future__ import annotations

import torch

from conftest import run_probmed
from probmed.encoders import ImageEncoder
from probmed.training.compute import checkpoint_forward
from test_cli import _overrides


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


def test_gradient_accumulation_is_refused_with_the_reason(smoke_corpus, tmp_path):
    fit = run_probmed(["fit", *_overrides(smoke_corpus, tmp_path), "--trainer.accumulate_grad_batches", "2"],
                      cwd=tmp_path)
    assert fit.returncode != 0
    assert "accumulate_grad_batches=2" in fit.output and "negatives" in fit.output
