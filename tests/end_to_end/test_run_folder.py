"""One run, one folder: fit, then test / validate / predict from its checkpoint and a resumed fit all write into the
fit's TensorBoard version, at the checkpoint's step; each command says where its logs and outputs went; presets log
under their own names; `probmed predict` embeds the split asked for."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, run_probmed, smoke_fit_args


def _scalars(version) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(version))
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def fitted(smoke_corpus, tmp_path_factory):
    """A finished smoke fit (3 steps, a checkpoint in version_0/checkpoints): (run directory, fit arguments)."""
    tmp = tmp_path_factory.mktemp("one_run")
    args = smoke_fit_args(smoke_corpus, tmp)
    fit = run_probmed(["fit", *args], cwd=tmp)
    assert fit.returncode == 0, fit.output[-4000:]
    version = tmp / "smoke" / "version_0"
    assert f"[probmed] fit: logs {version}" in fit.stdout and f"checkpoints {version / 'checkpoints'}" in fit.stdout
    assert f"[probmed] fit done: wrote {version}/: " in fit.stdout and "best checkpoint " in fit.stdout
    return tmp, args


def test_evaluation_commands_write_into_the_checkpoints_run_at_its_step(fitted):
    tmp, args = fitted
    version = tmp / "smoke" / "version_0"
    (ckpt,) = version.glob("checkpoints/*.ckpt")
    step = torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"]
    assert step == 3
    assert torch.load(ckpt, weights_only=True, map_location="cpu")["probmed_log_dir"] == str(version.resolve())
    for command in ("test", "validate"):
        out = run_probmed([command, *args, "--ckpt_path", str(ckpt)], cwd=tmp)
        assert out.returncode == 0, out.output[-4000:]
        assert f"[probmed] {command}: logs {version}" in out.stdout and f"(step {step})" in out.stdout
        assert f"[probmed] {command} done: wrote {version}/: " in out.stdout
        assert "dirpath has changed" not in out.output
    predict = run_probmed(["predict", *args, "--ckpt_path", str(ckpt)], cwd=tmp)
    assert predict.returncode == 0, predict.output[-4000:]
    assert f"[probmed] predict done: wrote {version}/: embeddings.npz" in predict.stdout
    assert sorted(p.name for p in (tmp / "smoke").iterdir()) == ["version_0"]  # no version_1, no empty folder
    for name in ("config.yaml", "test_config.yaml", "validate_config.yaml", "predict_config.yaml",
                 "test_retrieval.json", "test_metrics.json", "val_metrics.json", "embeddings.npz"):
        assert (version / name).is_file(), name
    assert yaml.safe_load((version / "config.yaml").read_text())["ckpt_path"] is None  # fit's own config kept
    scalars = _scalars(version)
    assert [s for s, _ in scalars["test/mean_R@1"]] == [step]  # beside the training curves, at the trained step
    assert [s for s, _ in scalars["train/loss"]] == [0, 1, 2]
    assert max(s for s, _ in scalars["val/mean_R@1"]) == step  # the validate command's value
    test_r1 = json.loads((version / "test_metrics.json").read_text())
    assert test_r1  # the test command's outputs landed in the run


def test_a_resumed_fit_continues_the_same_run(fitted):
    tmp, args = fitted
    version = tmp / "smoke" / "version_0"
    out = run_probmed(["fit", *args, "--ckpt_path", "last", "--trainer.max_epochs", "2"], cwd=tmp)
    assert out.returncode == 0, out.output[-4000:]
    assert "dirpath has changed" not in out.output
    assert f"[probmed] fit: logs {version}" in out.stdout and "resuming from " in out.stdout
    assert sorted(p.name for p in (tmp / "smoke").iterdir()) == ["version_0"]
    assert [s for s, _ in _scalars(version)["train/loss"]] == [0, 1, 2, 3, 4, 5]  # one curve, steps continue


def test_predict_without_a_checkpoint_run_opens_no_tensorboard_folder(smoke_corpus, tmp_path):
    out_file = tmp_path / "emb.npz"
    out = run_probmed(["predict", *smoke_fit_args(smoke_corpus, tmp_path), "--embeddings.path", str(out_file)],
                      cwd=tmp_path)
    assert out.returncode == 0, out.output[-4000:]
    assert not (tmp_path / "smoke").exists() and out_file.is_file()
    assert f"[probmed] predict done: wrote {out_file}" in out.stdout


@pytest.mark.parametrize("split", ["train", "val", "test", "all"])
def test_predict_embeds_the_split_asked_for(split, smoke_corpus, tmp_path):
    sizes = json.loads((smoke_corpus / "sizes.json").read_text())
    expected = sum(n for name, n in sizes.items() if split == "all" or name.startswith(f"{split}-"))
    out_file = tmp_path / "emb.npz"
    out = run_probmed(["predict", *smoke_fit_args(smoke_corpus, tmp_path), "--embeddings.path", str(out_file),
                       "--data.predict_split", split], cwd=tmp_path)
    assert out.returncode == 0, out.output[-4000:]
    ids = np.load(out_file)["study_id"]
    assert len(ids) == len(set(ids)) == expected


def test_an_unknown_predict_split_is_refused(smoke_corpus):
    from probmed.data.datamodule import ProbMedDataModule

    with pytest.raises(ValueError, match="predict_split must be one of train, val, test, all"):
        ProbMedDataModule(data_dir=str(smoke_corpus), predict_split="everything")


def test_presets_log_under_their_own_names(smoke_corpus, tmp_path, monkeypatch):
    """configs/presets/_trainer.yaml names no logger: each preset's run is named after its file."""
    from probmed.cli import main

    presets = REPO / "configs" / "presets"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["probmed"])
    for preset in ("clip", "siglip"):
        assert main(["validate", "--config", str(presets / f"{preset}.yaml"), "--config",
                     str(presets / "tiny" / f"{preset}.yaml"), "--data.data_dir", str(smoke_corpus),
                     "--trainer.limit_val_batches", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["clip", "siglip"]
    assert (tmp_path / "runs" / "clip" / "version_0" / "validate_config.yaml").is_file()
