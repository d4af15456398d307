"""Activation checkpointing and micro-batching are exact; Lightning's gradient accumulation is refused for a
contrastive loss, pointing to the exact form. (bf16-mixed, TowerCompute and Throughput through the CLI are exercised
by tests/training/test_resume.py's runs; micro-batching under DDP by tests/end_to_end/test_cli.py's two-process fit.)"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from conftest import run_probmed, smoke_fit_args
from probmed.encoders import ECGEncoder, ImageEncoder, TextEncoder
from probmed.losses import VIB, Objective, ProbabilisticInfoNCE, SyntheticSampling
from probmed.tasks.binding import ProbMedModule
from probmed.training import TowerCompute
from probmed.training.compute import checkpoint_forward


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
    fit = run_probmed(["fit", *smoke_fit_args(smoke_corpus, tmp_path), "--trainer.accumulate_grad_batches", "2"],
                      cwd=tmp_path)
    assert fit.returncode != 0
    assert "accumulate_grad_batches=2" in fit.output and "negatives" in fit.output
    assert "multiply data.batch_size by 2" in fit.output and "micro_batch_size" in fit.output


# -- micro-batching: the exact form of gradient accumulation for a contrastive loss ---------------------------------
def _tiny_module(seed: int = 0) -> ProbMedModule:
    """Text (tiny BERT, no dropout: its forward treats studies independently) and ECG (tiny XResNet1d) towers,
    contrasted by InfoNCE, with the synthetic-sampling and VIB terms."""
    torch.manual_seed(seed)
    encoders = {
        "text": TextEncoder(config={"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16,
                                    "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}),
        "ecg": ECGEncoder(depth=None, layers=[1, 1], widths=[8, 16], expansion=1, stem_widths=[8, 8, 8]),
    }
    objective = Objective([ProbabilisticInfoNCE(["text", "ecg"], similarity="bhattacharyya"),
                           SyntheticSampling("ecg", weight=0.5, num_samples=3), VIB(["text", "ecg"], weight=1e-3)])
    return ProbMedModule(encoders, objective, embed_dim=8)


def _batch(n: int = 10) -> dict:
    g = torch.Generator().manual_seed(1)
    attention = (torch.arange(12)[None] < torch.randint(4, 13, (n, 1), generator=g)).long()
    lead_mask = torch.ones(n, 12, dtype=torch.bool)
    lead_mask[3, 6:] = False  # an 6-lead record among 12-lead ones: the mask must travel with its chunk
    return {
        "inputs": {"text": {"input_ids": torch.randint(1, 50, (n, 12), generator=g) * attention,
                            "attention_mask": attention},
                   "ecg": {"signal": torch.randn(n, 12, 200, generator=g), "lead_mask": lead_mask}},
        "present": {"text": torch.ones(n, dtype=torch.bool),
                    "ecg": torch.tensor([True, True, False, True, True, True, False, True, True, True])[:n]},
        "group": torch.arange(n),
    }


def _loss_and_grads(module: ProbMedModule, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
    module.train()
    for m in module.modules():  # frozen batch-norm statistics: the ECG tower's forward is per-study too
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    module.zero_grad()
    torch.manual_seed(7)  # the synthetic-sampling draws
    out = module.objective(module.embed(batch), batch["group"])
    out.total.backward()
    return out.total.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_micro_batched_towers_give_the_whole_batch_loss_and_gradients():
    batch = _batch()
    whole = _tiny_module()
    chunked = _tiny_module()
    calls, stem_calls = [], []
    chunked.encoders["ecg"].register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs["signal"].shape[0]),
                                                      with_kwargs=True)
    chunked.encoders["ecg"].stem.register_forward_pre_hook(lambda m, args: stem_calls.append(args[0].shape[0]))
    TowerCompute(micro_batch_size={"text": 4, "ecg": 3}).setup(None, chunked, "fit")
    loss_whole, grads_whole = _loss_and_grads(whole, batch)
    loss_chunked, grads_chunked = _loss_and_grads(chunked, batch)
    # 8 ECG studies present → chunks of 3, 3, 2; the outer forward hook sees the whole call once, the inner
    # forward runs per chunk (and again per chunk in the backward's recomputation)
    assert calls == [8] and stem_calls[:3] == [3, 3, 2] and len(stem_calls) > 3
    torch.testing.assert_close(loss_chunked, loss_whole, rtol=1e-6, atol=1e-6)
    assert grads_whole.keys() == grads_chunked.keys() and any(k.startswith("encoders.ecg") for k in grads_whole)
    for name in grads_whole:
        torch.testing.assert_close(grads_chunked[name], grads_whole[name], rtol=1e-5, atol=1e-7, msg=name)


def test_micro_batched_batch_norm_updates_its_statistics_once_per_chunk():
    """Checkpoint recomputation leaves no trace in the running statistics: after forward + backward they equal a
    plain tower's run on the same chunks in order (whole batch = one chunk; a one-study remainder joins the chunk
    before it, since batch statistics of one study are undefined)."""
    torch.manual_seed(0)
    plain = ECGEncoder(depth=None, layers=[1, 1], widths=[8, 16], expansion=1, stem_widths=[8, 8, 8])
    x = torch.randn(7, 12, 200)
    for size, chunks in ((None, [x]), (2, [x[:2], x[2:4], x[4:]]), (4, [x[:4], x[4:]])):
        tower = copy.deepcopy(plain)
        checkpoint_forward(tower, size)
        tower(x).square().sum().backward()
        reference = copy.deepcopy(plain)
        with torch.no_grad():
            for chunk in chunks:
                reference(chunk)
        for (name, want), got in zip(reference.named_buffers(), tower.buffers()):
            assert torch.equal(got, want), (size, name)


def test_micro_batch_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="positive"):
        TowerCompute(micro_batch_size={"ecg": 0})
    module = _tiny_module()
    compute = TowerCompute(checkpoint=["text"], micro_batch_size={"ecg": 4})
    compute.setup(None, module, "fit")
    wrapped = {name: tower.forward for name, tower in module.encoders.items()}
    for stage in ("validate", "test"):  # setup runs per stage: the towers are wrapped once
        compute.setup(None, module, stage)
    checkpoint_forward(module.encoders["ecg"], 4)
    assert all(module.encoders[name].forward is forward for name, forward in wrapped.items())
    with pytest.raises(ValueError, match="already checkpointed"):
        checkpoint_forward(module.encoders["text"], 4)
    with pytest.raises(ValueError, match="both checkpoint and micro_batch_size"):
        TowerCompute(checkpoint=["ecg"], micro_batch_size={"ecg": 4})
    with pytest.raises(ValueError, match="batch-norm tower"):
        checkpoint_forward(ECGEncoder(depth=None, layers=[1], widths=[8], expansion=1, stem_widths=[8]), 1)
    with pytest.raises(ValueError, match=r"\['eeg'\], which are not towers"):
        TowerCompute(micro_batch_size={"eeg": 4}).setup(None, _tiny_module(), "fit")


@pytest.mark.parametrize("package", ["probmed.training", "probmed.encoders", "probmed.losses", "probmed.data",
                                     "probmed.evaluation", "probmed.tasks.binding"])
def test_each_package_imports_first_in_a_fresh_interpreter(package):
    """No import cycle depends on which package a user (or a test file) imports first."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", f"import {package}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_throughput_counts_flops_on_the_runs_first_global_steps_only_and_keeps_them_across_a_resume():
    """A resumed run counts FLOPs on exactly the global steps an uninterrupted run counts (steps under the counter
    compute on other kernel paths, so this keeps resume exact) and takes the rest from the checkpoint."""
    from types import SimpleNamespace

    from probmed.training import Throughput

    def steps(callback, module, global_steps):
        for step in global_steps:
            trainer = SimpleNamespace(global_step=step)
            callback.on_train_batch_start(trainer, module, None, step)
            torch.ones(2, 3) @ torch.ones(3, 4)  # 2·2·3·4 = 48 FLOPs when counted
            callback.stop_counting(module)

    whole, module = Throughput(flop_steps=3), SimpleNamespace(flops_per_batch=None)
    steps(whole, module, range(6))
    assert whole._counted == [48, 48, 48]
    first = Throughput(flop_steps=3)
    steps(first, SimpleNamespace(flops_per_batch=None), range(2))  # killed after step 1
    resumed, module = Throughput(flop_steps=3), SimpleNamespace(flops_per_batch=None)
    resumed.load_state_dict(first.state_dict())
    steps(resumed, module, range(2, 6))
    assert resumed._counted == [48, 48, 48]
    late, module = Throughput(flop_steps=3), SimpleNamespace(flops_per_batch=None)
    late.load_state_dict(whole.state_dict())
    steps(late, module, [4])
    assert late._counted == [48, 48, 48] and module.flops_per_batch == 48
