"""TensorBoard as a Lightning / open_clip user reads it, from the event files of a real smoke run (configs/smoke.yaml,
whose trainer lists only the Throughput callback): validation loss, the learning rate, per-modality variance
histograms and quantiles, one samples/s figure, an HParams tab with the run's choices (no ``hp_metric = -1``, no
``_instantiator``), val scalars and figures at one step, and steps that never go back when ``validate`` runs twice."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import run_probmed, smoke_fit_args

MODALITIES = ("cxr", "ecg", "echo", "text")


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def _hparams(run: Path) -> tuple[dict, list[str]]:
    """The HParams plugin's session-start values and the experiment's metric names, read from the raw events."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    values, metrics = {}, []
    for path in sorted(run.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    for key, v in data.session_start_info.hparams.items():
                        values[key] = v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                if data.HasField("experiment"):
                    metrics = [m.name.tag for m in data.experiment.metric_infos]
    return values, metrics


@pytest.fixture(scope="module")
def smoke_run(smoke_corpus, tmp_path_factory) -> Path:
    """A smoke fit, then `validate` twice on its checkpoint (both into the same run folder)."""
    root = tmp_path_factory.mktemp("tb")
    fit = run_probmed(["fit", *smoke_fit_args(smoke_corpus, root)], cwd=root, timeout=1200)
    assert fit.returncode == 0, fit.output[-4000:]
    (ckpt,) = (root / "smoke").glob("version_0/checkpoints/*.ckpt")
    for _ in range(2):
        done = run_probmed(["validate", *smoke_fit_args(smoke_corpus, root), "--ckpt_path", str(ckpt)], cwd=root,
                           timeout=1200)
        assert done.returncode == 0, done.output[-4000:]
    assert sorted(p.name for p in (root / "smoke").iterdir()) == ["version_0"]
    return root / "smoke" / "version_0"


def test_validation_loss_has_the_training_parts(smoke_run):
    scalars = _events(smoke_run).Tags()["scalars"]
    train_parts = {t.split("/", 1)[1] for t in scalars if t.startswith("train/infonce/") or t in ("train/vib",)}
    assert "val/loss" in scalars
    assert {f"val/{p}" for p in train_parts} <= set(scalars), sorted(scalars)
    values = [e.value for e in _events(smoke_run).Scalars("val/loss")]
    assert all(math.isfinite(v) and v > 0 for v in values)


def test_learning_rate_is_logged_without_a_monitor_in_the_config(smoke_run):
    events = _events(smoke_run)
    (lr,) = [t for t in events.Tags()["scalars"] if t.startswith("lr-")]
    points = events.Scalars(lr)
    assert [p.step for p in points] == [0, 1, 2] and all(p.value > 0 for p in points)


def test_variance_histograms_and_quantiles_per_modality(smoke_run):
    events = _events(smoke_run)
    tags = events.Tags()
    for m in MODALITIES:
        assert f"val/variance/{m}" in tags["histograms"], tags["histograms"]
        p05, p50, p95 = (events.Scalars(f"val/variance/{m}/p{q}")[-1].value for q in ("05", "50", "95"))
        assert 0 < p05 <= p50 <= p95
        hist = events.Histograms(f"val/variance/{m}")[-1].histogram_value
        assert hist.min <= p05 and p95 <= hist.max and hist.num > 1


def test_one_throughput_figure(smoke_run):
    scalars = set(_events(smoke_run).Tags()["scalars"])
    assert "train/device/samples_per_sec" in scalars and "perf/data_wait_fraction" in scalars
    assert not {s for s in scalars if "samples_per_s" in s and not s.endswith("samples_per_sec")}


def test_hparams_hold_the_key_choices_and_no_placeholders(smoke_run):
    values, metrics = _hparams(smoke_run)
    assert values["embed_dim"] == 16 and values["similarity"] == "hellinger"
    assert values["batch_size"] == 8 and values["seed"] == "0" and values["optimizer"] == "AdamW"
    assert values["lr"] > 0 and "ProbabilisticInfoNCE" not in values["objective"]  # term names, not classes
    assert "infonce/text-cxr" in values["objective"] and "vib" in values["objective"]
    assert [t.split("=")[0] for t in values["towers"].split(", ")] == list(MODALITIES)
    assert not any("_instantiator" in k or "_class_path" in k for k in values)
    assert "val/loss" in metrics and "val/rsum" in metrics and "test/rsum" in metrics
    assert "hp_metric" not in _events(smoke_run).Tags()["scalars"]


def test_steps_are_monotone_and_val_scalars_sit_with_the_figures(smoke_run):
    events = _events(smoke_run)
    tags = events.Tags()
    for tag in tags["scalars"]:
        steps = [e.step for e in events.Scalars(tag)]
        assert steps == sorted(steps), (tag, steps)
    for tag in ("validate/samples", "validate/batches", "validate/time"):
        steps = [e.step for e in events.Scalars(tag)]
        # the fit's validation, then the two validates at the checkpoint's step (not 1, 2, ... again)
        assert len(steps) == 3 and steps[0] <= steps[1] == steps[2] >= 2, (tag, steps)
    val_steps = {e.step for e in events.Scalars("val/rsum")}
    image_steps = {e.step for tag in tags["images"] for e in events.Images(tag)}
    histogram_steps = {e.step for tag in tags["histograms"] for e in events.Histograms(tag)}
    assert val_steps == image_steps == histogram_steps == {e.step for e in events.Scalars("data/val/skipped_total")}
    assert {"val/similarity", "val/reliability", "val/risk_coverage"} <= set(tags["images"])


def test_variance_quantiles_match_torch_on_known_values():
    from probmed.embedding import GaussianEmbedding
    from probmed.evaluation.uncertainty import variance_quantiles

    var = torch.arange(1, 101, dtype=torch.float32) / 100  # per-row variances 0.01 ... 1.00
    emb = GaussianEmbedding(torch.zeros(100, 4), var.log()[:, None].expand(100, 4).clone(),
                            torch.ones(100, dtype=torch.bool))
    empty = emb.select(torch.tensor([], dtype=torch.long))
    out = variance_quantiles({"cxr": (emb, [str(i) for i in range(100)]), "ecg": (empty, [])}, "val")
    assert set(out) == {f"val/variance/cxr/{q}" for q in ("p05", "p50", "p95", "mean")}  # no row: no entry
    # numpy's linear interpolation on 0.01 .. 1.00: q · 99 / 100 + 0.01
    assert out["val/variance/cxr/p05"] == pytest.approx(0.05 * 0.99 + 0.01, abs=1e-6)
    assert out["val/variance/cxr/p50"] == pytest.approx(0.505, abs=1e-6)
    assert out["val/variance/cxr/p95"] == pytest.approx(0.95 * 0.99 + 0.01, abs=1e-6)
    assert out["val/variance/cxr/mean"] == pytest.approx(0.505, abs=1e-6)


def test_validation_loss_is_the_objective_without_advancing_its_step():
    """EvalLoss scores a batch with the objective's own terms, locally, and leaves its step (the seed of its
    random draws) where it was; the epoch value is the row-weighted mean of the batches."""
    from probmed.embedding import GaussianEmbedding
    from probmed.losses import Objective
    from probmed.losses.contrastive import ProbabilisticInfoNCE
    from probmed.training.eval_loss import EvalLoss

    torch.manual_seed(0)
    objective = Objective([ProbabilisticInfoNCE(["text", "cxr"], similarity="hellinger")])

    def batch(n):
        return {m: GaussianEmbedding(torch.randn(n, 8), torch.randn(n, 8) * 0.1, torch.ones(n, dtype=torch.bool))
                for m in ("text", "cxr")}, torch.arange(n)

    (b1, g1), (b2, g2) = batch(4), batch(6)
    with torch.no_grad():
        expected = [float(objective(b, g).total) for b, g in ((b1, g1), (b2, g2))]
    objective.step = 7
    loss = EvalLoss()
    loss.add(objective, b1, g1)
    loss.add(objective, b2, g2)
    loss.add(objective, {"text": b1["text"]}, g1)  # a batch without the cxr tower's input: not scored
    assert objective.step == 7 and objective.distributed == "auto"
    out = loss.scalars("val")
    assert out["val/loss"] == pytest.approx((4 * expected[0] + 6 * expected[1]) / 10, rel=1e-5)
    (part,) = [k for k in out if k != "val/loss"]
    assert out[part] == pytest.approx(out["val/loss"], rel=1e-5)  # one term of weight 1
    assert loss.scalars("val") == {}  # reset after reading


def test_similarity_figure_has_a_panel_per_pair_with_a_labelled_colour_bar():
    from probmed.evaluation import plots

    pairs = [f"{a}->{b}" for i, a in enumerate(MODALITIES) for b in MODALITIES[i + 1:]]
    fig = plots.similarity_figure({p: torch.rand(5, 5) for p in pairs})
    panels = [ax for ax in fig.axes if ax.get_title()]
    bars = [ax for ax in fig.axes if ax.get_ylabel().startswith("similarity score")]
    assert sorted(ax.get_title().split(" ")[0] for ax in panels) == sorted(pairs) and len(bars) == 6


def test_monitoring_callbacks_are_added_once_before_the_checkpoints(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from probmed.training import Throughput
    from probmed.training.monitoring import add_monitoring

    bare = Trainer(logger=TensorBoardLogger(tmp_path), accelerator="cpu", enable_progress_bar=False)
    added = add_monitoring(bare)
    assert [type(c) for c in added] == [LearningRateMonitor, Throughput]
    assert isinstance(bare.callbacks[-1], ModelCheckpoint)  # still last
    assert add_monitoring(bare) == []  # present now: never a second
    listed = Trainer(logger=TensorBoardLogger(tmp_path), accelerator="cpu", callbacks=[LearningRateMonitor()])
    assert [type(c) for c in add_monitoring(listed)] == [Throughput]
    assert add_monitoring(Trainer(logger=False, accelerator="cpu")) == []  # nowhere to log
