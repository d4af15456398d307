"""experiments/compare_presets.py: each row's preset + the shared override is a valid config that keeps the preset's
objective and data keys and swaps in the small towers, budget and corruptions; the table's columns are the means
they say they are."""
from __future__ import annotations

import argparse
import math
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import compare_presets  # noqa: E402
from probmed.data.registry import SPECS  # noqa: E402
from probmed.evaluation.corruptions import corruptions_for  # noqa: E402


def _args(**kw):
    base = dict(lr=5e-3, epochs=3, batch_size=16, workers=0)
    return argparse.Namespace(**{**base, **kw})


def _build(row: str, tmp_path, monkeypatch):
    import yaml

    from probmed.cli import TRAINER_DEFAULTS, ProbMedCLI
    from probmed.data.datamodule import ProbMedDataModule
    from probmed.tasks.binding import ProbMedModule

    preset_file, similarity, objective_file, *extra = compare_presets.ROWS[row]
    preset = compare_presets.preset_config(preset_file, objective_file)
    over = compare_presets.override(preset, similarity, _args(), 7,
                                    tmp_path / "data", tmp_path / "run", *extra)
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(over, sort_keys=False))
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    cli = ProbMedCLI(ProbMedModule, ProbMedDataModule, run=False, trainer_defaults=TRAINER_DEFAULTS,
                     args=["--config", str(compare_presets.CONFIGS / preset_file), "--config", str(path),
                           "--trainer.logger", "false"])
    return cli, preset


@pytest.mark.parametrize("row", list(compare_presets.ROWS))
def test_every_row_is_its_preset_with_the_small_tower_override(row, tmp_path, monkeypatch):
    cli, preset = _build(row, tmp_path, monkeypatch)
    model, data = cli.model, cli.datamodule
    preset_inputs = set(preset["data"]["inputs"])
    assert set(data.inputs) == preset_inputs  # MedProbCLIP's second view and impression section stay
    assert cli.trainer.max_epochs == 3 and data.batch_size == 16
    assert {h.embed_dim for h in model.heads.values()} == {preset["model"]["embed_dim"]}
    # the small towers: every tower is the demo's (a few million parameters in all, not ViT-B + BERT)
    assert sum(p.numel() for p in model.parameters()) < 20_000_000
    expected = {(k, kind) for k in preset_inputs for kind in corruptions_for(SPECS[k].pipeline)}
    got = {(c.modality, c.kind) for c in model.evaluator.config.corruptions}
    assert got == expected and expected
    kinds = {getattr(t, "similarity_name", None) for t in model.objective.terms}
    if row.endswith("-logbc"):
        assert "bhattacharyya" in kinds and "hellinger" not in kinds
    if row in ("probmed", "demo", "demo-difficulty"):
        assert "hellinger" in kinds
    if row == "demo-clip":
        assert kinds - {None} == {"cosine"} and sum(len(t.pairs) for t in model.objective.terms) == 6
    terms = {type(t).__name__ for t in model.objective.terms}
    assert ("DifficultyVariance" in terms) == row.startswith("demo-difficulty")
    assert (model.quality_augmentation is not None) == ("quality" in row)
    row_levels = {h.row_level for h in model.heads.values()}
    assert row_levels == ({"quality"} if "quality-head" in row else {"objective"})
    if row == "demo-pcme++":
        assert terms == {"PCMEpp", "VIB"} and sum(len(t.pairs) for t in model.objective.terms) == 6


def test_summary_columns_are_the_means_they_name():
    scalars = {"test/R@1/text->cxr": 10.0, "test/R@1/cxr->text": 20.0, "test/R@5/text->cxr": 30.0,
               "test/R@5/cxr->text": 50.0, "test/R@1/ecg->cxr": 4.0, "test/R@1/cxr->ecg": 6.0,
               "test/R@5/ecg->cxr": 8.0, "test/R@5/cxr->ecg": 12.0, "test/zeroshot/mean_auroc": 0.7,
               "test/zeroshot/mean_ece": 0.2, "test/mean_aurc": 0.9,
               "test/robustness/mean_variance_spearman": 0.5, "test/confidence/variance_aware/aurc/cxr->text": 0.5,
               "test/confidence/margin/aurc/cxr->text": 0.6, "test/confidence/variance_aware/aurc/text->cxr": 0.7,
               "test/confidence/margin/aurc/text->cxr": 0.6}
    got = compare_presets.summarise(scalars, ["cxr", "text", "ecg", "cxr_view2"])
    # pairs of {cxr, ecg, text}: text<->cxr and ecg<->cxr reported; ecg<->text absent from the scalars
    assert got["R@1 text<->cxr"] == 15.0 and got["R@5 text<->cxr"] == 40.0
    assert got["mean R@1"] == pytest.approx((10 + 20 + 4 + 6) / 4)
    assert got["mean R@5"] == pytest.approx((30 + 50 + 8 + 12) / 4)
    assert (got["zero-shot AUROC"], got["ECE"], got["AURC"], got["var~severity rho"]) == (0.7, 0.2, 0.9, 0.5)
    assert got["var-aware wins"] == 1.0  # of the two reported ordered pairs, cxr->text
    assert math.isnan(compare_presets.summarise({}, ["cxr", "text"])["mean R@1"])
    assert compare_presets.mean_sd([1.0, 2.0, 3.0]) == "2.000 ± 1.000"
    assert compare_presets.mean_sd([math.nan]) == "n/a"
