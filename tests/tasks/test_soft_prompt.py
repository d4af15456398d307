"""Binding embeddings as soft prompts of a causal LM (probmed.tasks.soft_prompt): the forward pass equals the LM run by
hand on [projected embeddings + question], the binding stays frozen, metrics match scikit-learn, bad settings are
refused, and the whole thing trains tiny through `probmed prompt fit` / `test` on a tiny MEDBind model."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO
from probmed.tasks.distill import TeacherSpec
from probmed.tasks.soft_prompt import SoftPromptQA, balanced_accuracy, build_causal_lm, class_counts

PRESETS = REPO / "configs" / "presets"
LM = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64}
DATA = ["--data.batch_size", "8", "--data.num_workers", "0", "--data.inputs.cxr.init_args.size", "32",
        "--data.inputs.ecg.init_args.seconds", "5"]


@pytest.fixture(scope="module")
def binding(smoke_corpus, tmp_path_factory) -> TeacherSpec:
    """A tiny MEDBind model trained 3 steps through the CLI: its saved config and last checkpoint."""
    from probmed.cli import main

    run = tmp_path_factory.mktemp("binding")
    saved = sys.argv
    sys.argv = ["probmed"]
    try:
        assert main(["fit", "--config", str(PRESETS / "medbind.yaml"), "--config", str(PRESETS / "tiny" / "medbind.yaml"),
                     "--data.data_dir", str(smoke_corpus), "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0",
                     "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run)]) == 0
    finally:
        sys.argv = saved
    (version,) = (run / "medbind").glob("version_*")
    return TeacherSpec(str(version / "config.yaml"), str(version / "checkpoints" / "last.ckpt"))


def _batch(model: SoftPromptQA, smoke_corpus):
    from probmed.data.datamodule import ProbMedDataModule
    from probmed.data.inputs import CXRInput, ECGInput

    dm = ProbMedDataModule(str(smoke_corpus), modalities=["cxr", "ecg"], batch_size=8, num_workers=0,
                           inputs=dict(cxr=CXRInput(size=32), ecg=ECGInput(rate=100, seconds=5)))
    dm.setup("test")
    return next(iter(dm.test_dataloader()))


def test_answer_logits_are_the_lm_run_by_hand_on_projected_embeddings_and_the_question(binding, smoke_corpus):
    torch.manual_seed(0)
    model = SoftPromptQA(binding, modalities=["cxr", "ecg"], findings=["atrial_fibrillation", "lvh"],
                         tokens_per_modality=3, use_variance=True, lm_config=LM, lora={"r": 4, "target_modules": ["c_attn"]})
    model.eval()
    batch = _batch(model, smoke_corpus)
    logits, targets = model.answer_logits(batch)
    rows = (batch["present"]["cxr"] & batch["present"]["ecg"]).nonzero().squeeze(1)
    assert logits.shape[:2] == (2, len(rows)) and len(rows) > 0
    parts = []
    for m in ("cxr", "ecg"):
        emb = model.binding.embed_modality(m, batch["inputs"][m], batch["present"][m])
        x = torch.cat([emb.mean, emb.log_var], 1)[rows]
        parts.append((x @ model.projectors[m].weight.T + model.projectors[m].bias).view(len(rows), 3, 16))
    for i, (finding, col) in enumerate((("atrial fibrillation", 2), ("lvh", 6))):
        ids = model.tokenizer(f"Is there {finding}? Answer:", add_special_tokens=False, return_tensors="pt").input_ids
        words = model.lm.get_input_embeddings()(ids).expand(len(rows), -1, -1)
        expected = model.lm(inputs_embeds=torch.cat([*parts, words], 1)).logits[:, -1]
        torch.testing.assert_close(logits[i], expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(targets[i].nan_to_num(-1), batch["labels"][rows, col].nan_to_num(-1))
    # the loss: cross-entropy of the right answer among the "yes" and "no" logits, over the labelled (row, finding)
    loss, margin, _ = model._step(batch)
    yes, no = (model._single_token(w) for w in ("yes", "no"))
    log_p = torch.log_softmax(torch.stack([logits[..., yes], logits[..., no]], -1), -1)
    right = torch.where(targets > 0.5, log_p[..., 0], log_p[..., 1])
    torch.testing.assert_close(loss, -right[~torch.isnan(targets)].mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(margin, logits[..., yes] - logits[..., no])
    # only the projectors and the LoRA adapters train: the binding towers and the LM's base weights are frozen
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projectors.") or "lora_" in n for n in trainable)


def test_counts_and_balanced_accuracy_match_scikit_learn():
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.rand(50, generator=gen) > 0.4, torch.rand(50, generator=gen) > 0.7
    c = class_counts(pred, target)
    assert int(c.sum()) == 50 and int(c[0] + c[2]) == int((pred == target).sum())
    assert balanced_accuracy(c) == pytest.approx(balanced_accuracy_score(target.numpy(), pred.numpy()))
    assert math.isnan(balanced_accuracy(class_counts(pred, torch.zeros(50, dtype=torch.bool))))


def test_bad_settings_are_refused(binding):
    with pytest.raises(ValueError, match="among the labels"):
        SoftPromptQA(binding, findings=["st_elevation"], lm_config=LM)
    with pytest.raises(ValueError, match="no tower for"):
        SoftPromptQA(binding, modalities=["cxr", "echo"], lm_config=LM)
    with pytest.raises(ValueError, match="need the binding model"):
        SoftPromptQA(None, modalities=["cxr"], lm_config=LM)
    with pytest.raises(ValueError, match="exactly one"):
        SoftPromptQA(binding, lm_config=None)
    with pytest.raises(ValueError, match="one-token answers"):
        SoftPromptQA(binding, lm_config=LM, answers=("yes", "atrial fibrillation"))
    with pytest.raises(ValueError, match="needs lora"):
        SoftPromptQA(None, modalities=[], require=["cxr", "ecg"], lm_config=LM).configure_optimizers()
    with pytest.raises(ValueError, match="model_type"):
        build_causal_lm(None, {"n_layer": 1}, 100)


@pytest.mark.parametrize("modalities", [["cxr", "ecg"], []])
def test_soft_prompts_train_tiny_through_the_cli_and_test_reports_accuracy(modalities, binding, smoke_corpus,
                                                                           tmp_path, monkeypatch):
    from probmed.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    common = ["--config", str(REPO / "configs" / "medbind_soft_prompt.yaml"), "--data.data_dir", str(smoke_corpus),
              "--model.binding.config", binding.config, "--model.binding.checkpoint", binding.checkpoint,
              "--model.modalities", json.dumps(modalities), "--model.lm_config", json.dumps(LM), *DATA,
              "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.callbacks.init_args.dirpath", str(tmp_path / "ckpt"), "--trainer.enable_progress_bar", "false"]
    before = torch.load(binding.checkpoint, weights_only=True)["state_dict"]
    assert main(["prompt", "fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                 "--trainer.limit_val_batches", "1"]) == 0
    assert main(["prompt", "test", *common, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")]) == 0
    versions = sorted((tmp_path / "medbind_soft_prompt").glob("version_*"))
    events = EventAccumulator(str(versions[-1]))
    events.Reload()
    scalars = {t: events.Scalars(t)[-1].value for t in events.Tags()["scalars"]}
    for f in ("atrial_fibrillation", "lvh"):
        assert 0.0 <= scalars[f"test/qa/{f}/accuracy"] <= 1.0 and scalars[f"test/qa/{f}/n"] > 0
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    for k, v in before.items():  # the frozen binding model inside the prompt model is the one trained before
        if modalities:
            assert torch.equal(saved[f"binding.{k}"], v), k
