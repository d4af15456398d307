"""The `probmed` command line end to end, in child processes: fit → test → TensorBoard, DDP, config handling."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from conftest import SMOKE, run_probmed, run_scalars, smoke_fit_args



def test_fit_then_test_through_the_cli(smoke_corpus, tmp_path):
    fit = run_probmed(["fit", *smoke_fit_args(smoke_corpus, tmp_path)], cwd=tmp_path)
    assert fit.returncode == 0, fit.output[-4000:]
    scalars = run_scalars(tmp_path)
    assert len(scalars["train/loss"]) == 3 and all(math.isfinite(v) for v in scalars["train/loss"])
    for tag in ("train/infonce/text-cxr", "train/synthetic/cxr", "train/vib", "train/logit_scale/infonce/text-cxr",
                "variance/cxr", "variance/text", "train/device/samples_per_sec", "perf/data_wait_fraction",
                "val/mean_R@1", "val/R@1/cxr->text", "data/train/skipped_total", "data/val/skipped_total"):
        assert tag in scalars, f"{tag} missing from TensorBoard; have {sorted(scalars)}"
    assert all(0 < v < 1 for v in scalars["variance/cxr"])
    # one series per stage, one value per epoch each (they shared a counter, logged twice, the second time as 0)
    assert len(scalars["data/train/skipped_total"]) == 1 and len(scalars["data/val/skipped_total"]) == 1
    assert "data/skipped_total" not in scalars

    (ckpt,) = (tmp_path / "smoke").glob("version_0/checkpoints/*.ckpt")
    test = run_probmed(["test", *smoke_fit_args(smoke_corpus, tmp_path), "--ckpt_path", str(ckpt)], cwd=tmp_path)
    assert test.returncode == 0, test.output[-4000:]
    assert "Cross-modal retrieval on the test split" in test.stdout and "text -> cxr" in test.stdout
    (result,) = (tmp_path / "smoke").glob("version_0/test_retrieval.json")  # the checkpoint's run
    rows = json.loads(result.read_text())
    pairs = {(r["query"], r["gallery"]) for r in rows}
    assert ("text", "cxr") in pairs and ("cxr", "ecg") in pairs and len(pairs) == 12
    assert all(r["chance@1"] == pytest.approx(100 / r["gallery_size"]) for r in rows)


def test_fit_validate_test_at_d512_with_the_compiled_kernel_on_every_call(smoke_corpus, tmp_path):
    """The compiled loss kernel forced for every problem (PROBMED_LOSS_FUSED_MIN_TRIPLES=0) at D = 512: training
    batches, then validation and test scoring of twelve pairs whose blocks all have other row counts (the smoke
    splits are uneven). Before, each new row count recompiled and the 9th raised FailOnRecompileLimitHit; now the
    run ends normally and the kernel never falls back."""
    args = [*smoke_fit_args(smoke_corpus, tmp_path), "--model.embed_dim", "512"]
    fit = run_probmed(["fit", *args], cwd=tmp_path, PROBMED_LOSS_FUSED_MIN_TRIPLES="0")
    assert fit.returncode == 0, fit.output[-4000:]
    (ckpt,) = (tmp_path / "smoke").glob("version_0/checkpoints/*.ckpt")
    test = run_probmed(["test", *args, "--ckpt_path", str(ckpt)], cwd=tmp_path, PROBMED_LOSS_FUSED_MIN_TRIPLES="0")
    assert test.returncode == 0, test.output[-4000:]
    for out in (fit.output, test.output):
        assert "compiled pairwise kernel failed" not in out and "FailOnRecompileLimitHit" not in out


@pytest.mark.ddp
def test_two_process_ddp_fit_on_cpu(smoke_corpus, tmp_path):
    """Two gloo ranks, with the CXR and text towers micro-batched (checkpointed chunks inside DDP's backward)."""
    micro = tmp_path / "micro_batch.yaml"
    micro.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "probmed.training.TowerCompute", "init_args": {"micro_batch_size": {"cxr": 2, "text": 3}}}]}}))
    args = [*smoke_fit_args(smoke_corpus, tmp_path), "--config", str(micro), "--trainer.strategy", "ddp",
            "--trainer.devices", "2", "--data.batch_size", "4"]
    fit = run_probmed(["fit", *args], cwd=tmp_path, timeout=400)
    assert fit.returncode == 0, fit.output[-4000:]
    assert "MEMBER: 1/2" in fit.output and "MEMBER: 2/2" in fit.output  # both ranks joined one process group
    scalars = run_scalars(tmp_path)
    assert len(scalars["train/loss"]) == 3 and all(math.isfinite(v) for v in scalars["train/loss"])
    assert "val/mean_R@1" in scalars


def test_print_config_resolves_the_whole_tree(tmp_path):
    out = run_probmed(["fit", "--config", SMOKE, "--print_config"], cwd=tmp_path)
    assert out.returncode == 0, out.output[-3000:]
    config = yaml.safe_load(out.stdout)
    assert config["model"]["encoders"]["cxr"]["class_path"] == "probmed.encoders.ImageEncoder"
    pairs = config["model"]["objective"]["init_args"]["pairs"]
    assert pairs[0]["term"] == "probmed.losses.ProbabilisticInfoNCE"
    assert config["data"]["inputs"]["cxr"]["init_args"]["size"] == 32  # from presets/tiny/_data.yaml


def test_config_errors_are_reported_not_crashed(smoke_corpus, tmp_path):
    bad_modality = run_probmed(["fit", *smoke_fit_args(smoke_corpus, tmp_path), "--data.modalities", "[cxr, mri]"],
                               cwd=tmp_path)
    assert bad_modality.returncode != 0 and "unknown modality" in bad_modality.output
    no_data = run_probmed(["fit", *smoke_fit_args(tmp_path / "absent", tmp_path)], cwd=tmp_path)
    assert no_data.returncode != 0 and "probmed data synth" in no_data.output


def test_python_dash_m_and_data_subcommand_help(tmp_path):
    for args in (["--help"], ["data", "--help"], ["data", "synth", "--help"]):
        out = run_probmed(args, cwd=tmp_path)
        assert out.returncode == 0, out.output[-2000:]
