"""Every model preset in configs/presets/ trains on the embedded corpus through the CLI.

Tiny variants (the preset merged with configs/presets/tiny/<preset>.yaml) run two steps in the default suite; the
full-size towers (Swin-T / ViT-B/16, XResNet1d-101, ConvNeXt-B echo frames, BERT-base) build and take one step in
the slow-marked test.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO

PRESETS = REPO / "configs" / "presets"

#: preset → loss parts and validation pairs its TensorBoard log must show (what makes it that method).
EXPECTED = {
    "probmed": ["train/infonce/text-echo", "train/infonce/cxr-ecg", "train/synthetic/echo", "train/vib",
                "val/R@1/ecg->echo"],
    "medprobclip": ["train/medprobclip/cxr-text", "train/pair/medprobclip/cxr-text/cxr_view2-text_impression",
                    "train/pair/medprobclip/cxr-text/cxr-cxr_view2", "train/pair/medprobclip/cxr-text/text-text_impression",
                    "val/R@1/cxr_view2->text_impression"],
    "medbind": ["train/infonce/text-cxr", "train/infonce/text-ecg", "train/emcl/cxr-ecg", "val/R@1/cxr->ecg"],
    "pcmepp": ["train/pcmepp/cxr-text", "train/logit_shift/pcmepp/cxr-text", "val/R@1/text->cxr"],
    "clip": ["train/infonce/cxr-text", "train/logit_scale/infonce/cxr-text", "val/R@1/text->cxr"],
    "siglip": ["train/siglip/cxr-text", "train/logit_bias/siglip/cxr-text", "val/R@1/text->cxr"],
}


def _fit(args: list[str], run_dir: Path, monkeypatch) -> dict[str, list[float]]:
    """`probmed fit ARGS` in this process (one interpreter start for all presets); TensorBoard scalars back."""
    from probmed.cli import main

    monkeypatch.chdir(run_dir)
    monkeypatch.setattr(sys, "argv", ["probmed"])  # LightningCLI warns when pytest's own arguments are there
    assert main(["fit", *args, "--trainer.default_root_dir", str(run_dir),
                 "--trainer.logger.init_args.save_dir", str(run_dir)]) == 0
    (version,) = sorted((run_dir / Path(args[args.index("--config") + 1]).stem).glob("version_*"))
    events = EventAccumulator(str(version))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_every_preset_has_a_tiny_variant():
    presets = {p.stem for p in PRESETS.glob("*.yaml") if not p.stem.startswith("_")}
    assert presets == set(EXPECTED) | {"m3bind_distill"}  # the distillation stage is tested in test_distill.py
    tiny = {p.stem for p in (PRESETS / "tiny").glob("*.yaml") if not p.stem.startswith("_")}
    assert tiny == set(EXPECTED) | {"m3bind_distill"}  # the tiny distillation runs in tests/tasks/test_distill_cli.py


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_tiny_preset_trains_through_the_cli(preset, smoke_corpus, tmp_path, monkeypatch):
    scalars = _fit(["--config", str(PRESETS / f"{preset}.yaml"), "--config", str(PRESETS / "tiny" / f"{preset}.yaml"),
                    "--data.data_dir", str(smoke_corpus)], tmp_path, monkeypatch)
    assert len(scalars["train/loss"]) == 2 and all(math.isfinite(v) for v in scalars["train/loss"])
    for tag in EXPECTED[preset]:
        assert tag in scalars, f"{tag} missing; have {sorted(scalars)}"
        assert all(math.isfinite(v) for v in scalars[tag])
    assert "val/rsum" in scalars


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~200 M parameters per preset on a shared 2-core CPU
@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_full_size_preset_builds_and_takes_one_step_on_cpu(preset, smoke_corpus, tmp_path, monkeypatch):
    texts = ["text", "text_impression"] if preset == "medprobclip" else ["text"]
    short = [arg for key in texts for arg in (f"--data.inputs.{key}.init_args.max_length", "64")]
    scalars = _fit(["--config", str(PRESETS / f"{preset}.yaml"), "--data.data_dir", str(smoke_corpus),
                    "--data.batch_size", "2", "--data.num_workers", "0", *short, "--trainer.accelerator", "cpu",
                    "--trainer.max_epochs", "1", "--trainer.max_steps", "1",
                    "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
                    "--trainer.enable_progress_bar", "false"], tmp_path, monkeypatch)
    assert len(scalars["train/loss"]) == 1 and math.isfinite(scalars["train/loss"][0])
    for tag in EXPECTED[preset]:
        if tag.startswith("train/"):
            assert tag in scalars, f"{tag} missing; have {sorted(scalars)}"


def test_a_hub_id_offline_names_what_to_download_and_where(smoke_corpus, tmp_path, monkeypatch):
    """A preset pointed at a hub id on an offline machine stops before training with the download command."""
    from probmed.encoders import PretrainedNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotFoundError) as err:
        _fit(["--config", str(PRESETS / "clip.yaml"), "--config", str(PRESETS / "tiny" / "clip.yaml"),
              "--data.data_dir", str(smoke_corpus), "--model.encoders.text.init_args.pretrained",
              "dmis-lab/biobert-base-cased-v1.2", "--model.encoders.text.init_args.config", "null"],
             tmp_path, monkeypatch)
    message = str(err.value)
    assert "hf download dmis-lab/biobert-base-cased-v1.2 --local-dir" in message
    assert "point the config at that directory" in message
    assert not list(tmp_path.rglob("*.ckpt"))
