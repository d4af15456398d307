"""Gaussian heads configured per modality: ``model.head`` for all, ``model.heads.<modality>`` for the differences."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probmed.encoders import GaussianHead, HeadOptions
from probmed.losses import Objective, ProbabilisticInfoNCE
from probmed.tasks.binding import ProbMedModule


class _Tower(nn.Linear):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(in_dim, out_dim)
        self.output_dim = out_dim


def _module(**kwargs) -> ProbMedModule:
    encoders = {"cxr": _Tower(4, 6), "ecg": _Tower(3, 5), "text": _Tower(2, 7)}
    return ProbMedModule(encoders, Objective([ProbabilisticInfoNCE(["text", "cxr"])]), embed_dim=8, **kwargs)


def test_each_modality_gets_the_common_head_with_its_own_changes():
    module = _module(head=HeadOptions(clamp="hard", log_var_min=-6.0, log_var_max=6.0, normalize_mean=False),
                     heads={"ecg": {"clamp": "soft", "log_var_init": -1.0}, "text": {"variance": "isotropic"}})
    cxr, ecg, text = module.heads["cxr"], module.heads["ecg"], module.heads["text"]
    assert (cxr.clamp, cxr.log_var_min, cxr.log_var_max, cxr.normalize_mean) == ("hard", -6.0, 6.0, False)
    assert (ecg.clamp, ecg.log_var_min, ecg.log_var_max, ecg.normalize_mean) == ("soft", -6.0, 6.0, False)
    assert text.variance == "isotropic" and text.log_var.out_features == 1 and cxr.log_var.out_features == 8
    # zero features: the log-variance is the initial one, through each head's own clamp
    assert module.heads["cxr"](torch.zeros(2, 6))[1].tolist() == [[-2.0] * 8] * 2
    assert torch.allclose(module.heads["ecg"](torch.zeros(1, 5))[1], torch.full((1, 8), -1.0), atol=1e-6)
    # the soft clamp of [-6, 6] maps 7 to 6 tanh(7/6) (= 4.94), the hard one to 6
    assert math.isclose(float(ecg.clamp_log_var(torch.tensor(7.0))), 6 * math.tanh(7 / 6), rel_tol=1e-6)
    assert float(cxr.clamp_log_var(torch.tensor(7.0))) == 6.0 and float(cxr.clamp_log_var(torch.tensor(-9.0))) == -6


def test_shared_layers_feed_mean_and_log_variance_from_one_hidden_layer():
    torch.manual_seed(0)
    head = HeadOptions(layers="shared", clamp="hard", log_var_min=-20.0, log_var_max=20.0).build(5, 3)
    x = torch.randn(4, 5)
    hidden = F.gelu(x @ head.hidden[0].weight.T + head.hidden[0].bias)
    mean, log_var = head(x)
    assert torch.allclose(mean, F.normalize(hidden @ head.mean.weight.T + head.mean.bias, dim=-1), atol=1e-6)
    assert torch.allclose(log_var, hidden @ head.log_var.weight.T + head.log_var.bias, atol=1e-6)
    separate = HeadOptions().build(5, 3)
    assert isinstance(separate.hidden, nn.Identity) and sum(p.numel() for p in separate.parameters()) == 2 * (5 * 3 + 3)


def test_a_head_rebuilt_from_its_options_has_the_same_settings():
    head = GaussianHead(6, 4, variance="isotropic", log_var_min=-3.0, log_var_max=2.0, normalize_mean=False,
                        log_var_init=-1.5, clamp="hard", layers="shared", row_level="quality", quality_range=3.0)
    assert head.options.build(9, 4).options == head.options


def test_a_quality_head_sets_each_rows_mean_variance_apart_from_which_dimensions_are_uncertain():
    """row_level="quality": log σ² = c − log mean_D exp(c) + level + R·tanh(w·h / R), c the clamped log-variance
    layer, computed here by hand; the row's mean variance is exp(level + quality) exactly."""
    torch.manual_seed(0)
    head = HeadOptions(row_level="quality", quality_range=3.0, log_var_weight_std=0.5).build(5, 4)
    with torch.no_grad():
        head.quality.weight.normal_(std=2.0)
        head.level.fill_(-1.0)
    x = torch.randn(6, 5)
    mean, log_var, quality = head.parts(x)
    z = x @ head.log_var.weight.T + head.log_var.bias
    c = -2.5 + 7.5 * torch.tanh((z + 2.5) / 7.5)  # the soft clamp of [-10, 5]
    shape = c - c.exp().mean(-1, keepdim=True).log()
    expected_quality = 3.0 * torch.tanh((x @ head.quality.weight.T + head.quality.bias) / 3.0)
    torch.testing.assert_close(quality, expected_quality)
    torch.testing.assert_close(log_var, shape - 1.0 + expected_quality)
    assert quality.abs().max() < 3.0 and quality.std() > 0.5 and shape.std(-1).min() > 0.1
    torch.testing.assert_close(log_var.exp().mean(-1, keepdim=True).log(), -1.0 + quality)
    torch.testing.assert_close(head(x)[1], log_var)
    # at initialisation every row starts at log_var_init, as the objective's head does; isotropic: level + quality
    fresh = HeadOptions(row_level="quality").build(5, 4)
    torch.testing.assert_close(fresh(torch.zeros(2, 5))[1], torch.full((2, 4), -2.0))
    iso = HeadOptions(row_level="quality", variance="isotropic").build(5, 4)
    _, iso_log_var, iso_quality = iso.parts(x)
    torch.testing.assert_close(iso_log_var, iso.level + iso_quality)
    assert HeadOptions().build(5, 4).parts(x)[2] is None


def test_bad_head_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"heads\.ecg: unknown head option\(s\) \['log_var_maximum'\]"):
        _module(heads={"ecg": {"log_var_maximum": 3.0}})
    with pytest.raises(ValueError, match=r"heads gives settings for \['echo'\], which have no encoder"):
        _module(heads={"echo": {"clamp": "hard"}})
    with pytest.raises(ValueError, match="layers must be"):
        HeadOptions(layers="tied").build(3, 2)
    with pytest.raises(ValueError, match="row_level must be"):
        HeadOptions(row_level="content").build(3, 2)
    with pytest.raises(ValueError, match="quality_range must be positive"):
        HeadOptions(row_level="quality", quality_range=0.0).build(3, 2)
    with pytest.raises(ValueError, match=r"heads of \['ecg'\] have row_level: quality.*quality_augmentation"):
        _module(heads={"ecg": {"row_level": "quality"}})
    with pytest.raises(ValueError, match="must lie strictly inside"):
        _module(head=HeadOptions(log_var_min=-1.0, log_var_max=1.0))  # log_var_init -2 outside


def test_a_checkpoint_with_the_old_head_arguments_is_evaluated_with_them(smoke_corpus, tmp_path, monkeypatch):
    """Checkpoints written when the module took normalize_mean / log_var_min / log_var_max / variance itself:
    ``probmed test --ckpt_path`` reads those settings into ``model.head`` instead of refusing the checkpoint."""
    import sys

    import lightning

    from conftest import REPO
    from probmed.cli import TRAINER_DEFAULTS, ProbMedCLI
    from probmed.data.datamodule import ProbMedDataModule

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    args = ["--config", str(REPO / "configs" / "smoke.yaml"), "--data.data_dir", str(smoke_corpus),
            "--trainer.logger", "false"]
    built = ProbMedCLI(ProbMedModule, ProbMedDataModule, run=False, trainer_defaults=TRAINER_DEFAULTS, args=args)
    legacy = {"embed_dim": 16, "variance": "diagonal", "normalize_mean": False, "log_var_min": -6.0,
              "log_var_max": 6.0, "warmup_steps": 1, "min_lr_ratio": 0.05, "retrieval_ks": [1, 5, 10], "shared": None,
              "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": built.model.state_dict(), "hyper_parameters": legacy, "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": lightning.__version__}, path)
    cli = ProbMedCLI(ProbMedModule, ProbMedDataModule, trainer_defaults=TRAINER_DEFAULTS,
                     args=["test", *args, "--trainer.limit_test_batches", "1", "--ckpt_path", str(path)])
    assert {n: (h.normalize_mean, h.log_var_min, h.log_var_max) for n, h in cli.model.heads.items()} == {
        n: (False, -6.0, 6.0) for n in ("cxr", "ecg", "echo", "text")}
