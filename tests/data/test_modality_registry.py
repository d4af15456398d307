"""One modality registry: every modality list derives from it, and a new modality is added by config alone.

The fifth-modality test trains (through ``probmed fit``, tiny, CPU) a model on CXR, ECG, echo, text and ``mri``,
where ``mri`` exists only in the test's config and in the shards it writes: no registry entry, no code (the
generated ``ct`` of ``probmed data synth --extra-modalities ct`` is registered: tests/data/test_synthetic_ct.py).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO
from shardkit import dicom_bytes, study, write_split

from probmed.data import manifest, registry, schema
from probmed.data.datamodule import ProbMedDataModule
from probmed.data.inputs import ImageInput
from probmed.data.studies import SkipCounter, StudyDecoder

TINY = REPO / "configs" / "presets" / "tiny"


def test_the_lists_that_name_modalities_are_derived_from_the_registry():
    stored = tuple(n for n, s in registry.SPECS.items() if s.view_of is None and s.default)
    assert registry.default_modalities() == stored == registry.default_modalities() == ("cxr", "ecg", "echo", "text")
    # the opt-in ct (written by `probmed data synth --extra-modalities ct`) is stored but loaded only when named
    assert registry.stored_modalities() == (*stored, "ct") and registry.SPECS["ct"].build is None
    views = {n: s.view_of for n, s in registry.SPECS.items() if s.view_of}
    assert views == {"cxr_view2": "cxr", "text_impression": "text"}
    # every registered pipeline's default files map back to its modality (views map to what they view)
    assert registry.modality_of("cxr.1.dcm") == "cxr" and registry.modality_of("ecg.npy") == "ecg"
    assert registry.modality_of("echo.npy") == "echo" and registry.modality_of("report.txt") == "text"
    assert registry.modality_of("ct.0.dcm") == "ct"
    assert registry.modality_of("json") is None and registry.modality_of("retina.0.png") is None
    # manifest columns: the required ones, the acquisition time, then each built modality's path and value columns
    assert manifest.COLUMNS == ("study_id", "patient_id", "split", "acquired_at", "cxr", "cxr_views", "ecg", "echo",
                                "echo_fps", "report", "report_text")
    assert manifest.FILE_COLUMNS == ("cxr", "ecg", "echo", "report")
    # the data module's defaults are the registry's
    dm = ProbMedDataModule("unused")
    assert list(dm.inputs) == list(stored)
    assert all(type(dm.inputs[n]) is registry.SPECS[n].pipeline for n in stored)


def test_a_registered_modality_joins_every_derived_list(tmp_path):
    """register() is the one place a new format is declared: manifest column, builder, MODALITIES, decoder."""

    def convert(entry, ctx):
        (path,) = entry.paths["retina"]
        return {"retina.0.png": path.read_bytes()}, {}

    class RetinaInput(ImageInput):
        def __init__(self, size: int = 16):
            super().__init__("retina", size)

    spec = registry.ModalitySpec("retina", RetinaInput, build=registry.BuildSpec("retina", convert))
    registry.register(spec)
    try:
        assert registry.default_modalities()[-1] == "retina" and manifest.COLUMNS[-1] == "retina"
        assert registry.modality_of("retina.0.png") == "retina"
        from probmed.evaluation.corruptions import get_corruption

        assert get_corruption("retina", "blur") is get_corruption("cxr", "blur")  # an image input's corruptions
        with pytest.raises(ValueError, match="already registered"):
            registry.register(spec)
        from PIL import Image

        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3).save(tmp_path / "eye.png")
        manifest.write_manifest(tmp_path / "m.csv", [{"study_id": "s1", "patient_id": "p1", "split": "train",
                                                     "retina": "eye.png", "report_text": "FINDINGS: ok."}])
        from probmed.data.builder import build_dataset

        summary = build_dataset(tmp_path / "m.csv", tmp_path / "out", salt="x", progress=False)
        assert summary["written"] == 1 and summary["skipped"] == {}
        import webdataset as wds

        (sample,) = list(wds.WebDataset(str(tmp_path / "out" / "train-000000.tar"), shardshuffle=False))
        assert sorted(k for k in sample if not k.startswith("__")) == ["json", "report.txt", "retina.0.png"]
        decoded = StudyDecoder({"retina": RetinaInput()})(sample, np.random.default_rng(0), False, SkipCounter())
        assert decoded["present"]["retina"] and decoded["inputs"]["retina"].shape == (1, 16, 16)
    finally:
        registry.SPECS.pop("retina")
    assert "retina" not in registry.default_modalities() and "retina" not in manifest.COLUMNS


def test_an_unknown_modality_without_a_pipeline_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown modality 'mri'.*data\.inputs\.mri"):
        ProbMedDataModule("unused", modalities=["cxr", "mri"])
    with pytest.raises(ValueError, match="listed twice"):
        ProbMedDataModule("unused", modalities=["cxr", "cxr"])


def test_a_config_modality_is_decoded_from_its_own_files_and_not_counted_as_unknown():
    rng = np.random.default_rng(0)
    sample = study("s1", rng=rng)
    sample["mri.0.dcm"] = dicom_bytes(rng.integers(0, 4096, (24, 24)).astype(np.uint16))
    skips = SkipCounter()
    inputs = {"cxr": ImageInput("cxr", 16), "mri": ImageInput("mri", 16)}
    decoded = StudyDecoder(inputs)(sample, rng, False, skips)
    assert decoded["present"] == {"cxr": True, "mri": True} and dict(skips) == {}
    assert not np.allclose(decoded["inputs"]["cxr"].numpy(), decoded["inputs"]["mri"].numpy())
    # without an mri pipeline the mri file is a file nobody reads: counted, never decoded as CXR
    skips = SkipCounter()
    decoded = StudyDecoder({"cxr": ImageInput("cxr", 16)})(sample, rng, False, skips)
    assert dict(skips) == {"unknown_extension": 1} and decoded["present"] == {"cxr": True}


def _mri_corpus(root: Path) -> None:
    """Shards of studies with CXR, ECG, echo, text and — in three of every four studies — an MRI slice ``mri.0.dcm``
    whose brightness follows the study's first finding (so mri and text share something to learn)."""
    rng = np.random.default_rng(5)
    for split, shards, per_shard in (("train", 2, 16), ("val", 1, 12), ("test", 1, 12)):
        samples = []
        for s in range(shards):
            batch = []
            for i in range(per_shard):
                key = f"{split}{s}x{i}"
                sample = study(key, split=split, rng=rng)
                if i % 4:
                    meta = json.loads(sample["json"])
                    level = 3000 if meta["findings"][schema.FINDINGS[0]] else 800
                    sample["mri.0.dcm"] = dicom_bytes(rng.integers(0, 400, (32, 32)).astype(np.uint16) + level)
                batch.append(sample)
            samples.append(batch)
        write_split(root, split, samples)


def test_a_fifth_modality_trains_from_config_and_shards_alone(tmp_path, monkeypatch):
    assert "mri" not in registry.SPECS
    data = tmp_path / "shards"
    _mri_corpus(data)
    towers = {m: str(TINY / "towers" / f"{m}.yaml") for m in ("cxr", "ecg", "echo", "text")}
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1,
                    "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path), "name": "five"}}},
        "model": {
            "embed_dim": 16, "warmup_steps": 1,
            "encoders": {**towers, "mri": towers["cxr"]},  # mri: its own copy of the tiny image tower
            "heads": {"mri": {"log_var_init": -1.0, "clamp": "hard"}},
            "objective": {"class_path": "probmed.losses.Objective", "init_args": {
                "pairs": [{"term": "probmed.losses.ProbabilisticInfoNCE", "args": {"similarity": "bhattacharyya"},
                           "over": [["text", "cxr"], ["text", "ecg"], ["text", "echo"], ["text", "mri"],
                                    ["cxr", "mri"]]}],
                "terms": [{"class_path": "probmed.losses.VIB",
                           "init_args": {"modalities": ["cxr", "ecg", "echo", "text", "mri"], "weight": 1.0e-4}}]}},
            "evaluation": {"zero_shot": None, "few_shot": None, "prognosis": None, "plots": [], "projector": []},
        },
        "data": {"data_dir": str(data), "batch_size": 8, "num_workers": 0, "inputs": {
            "cxr": {"class_path": "CXRInput", "init_args": {"size": 32}},
            "ecg": {"class_path": "ECGInput", "init_args": {"rate": 50, "seconds": 10}},
            "echo": {"class_path": "EchoInput", "init_args": {"frames": 4, "size": 32}},
            "text": {"class_path": "TextInput", "init_args": {"max_length": 32}},
            "mri": {"class_path": "probmed.data.inputs.ImageInput", "init_args": {"prefix": "mri", "size": 32}},
        }},
    }
    path = tmp_path / "five.yaml"
    path.write_text(yaml.safe_dump(config))
    from probmed.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    assert main(["fit", "--config", str(path)]) == 0
    (version,) = sorted((tmp_path / "five").glob("version_*"))
    events = EventAccumulator(str(version))
    events.Reload()
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag in ("train/infonce/text-mri", "train/infonce/cxr-mri", "variance/mri", "val/R@1/mri->text",
                "val/R@1/mri->ecg"):
        assert tag in scalars and all(math.isfinite(v) for v in scalars[tag]), (tag, sorted(scalars))
    assert len(scalars["train/loss"]) == 2
    assert "data/skipped/unknown_extension" not in scalars  # mri.0.dcm is read by the mri pipeline, not ignored
    # the per-modality head: mri's clamp and initial log-variance, the others the default head's
    (ckpt,) = (version / "checkpoints").glob("*.ckpt")
    hparams = yaml.safe_load((version / "hparams.yaml").read_text())
    assert hparams["heads"] == {"mri": {"log_var_init": -1.0, "clamp": "hard"}}
    assert ckpt.stat().st_size > 0


def test_a_config_modality_is_corrupted_like_a_registered_one():
    import torch

    from probmed.evaluation.corruptions import corrupt, corruptions_for, get_corruption

    assert get_corruption("mri", "blur", like="cxr") is corruptions_for(registry.SPECS["cxr"].pipeline)["blur"]
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(corrupt("mri", "noise", x, 1.0, seed=3, like="cxr"), corrupt("cxr", "noise", x, 1.0, seed=3))
    with pytest.raises(ValueError, match="no corruptions registered for modality 'mri'.*set `like:`"):
        get_corruption("mri", "noise")
    with pytest.raises(ValueError, match="unknown cxr corruption 'lead_dropout'"):
        get_corruption("mri", "lead_dropout", like="cxr")
