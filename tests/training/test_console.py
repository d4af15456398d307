"""What `probmed fit` prints when its output is captured (not a terminal): one line per epoch, no Lightning noise."""
from __future__ import annotations

import logging
import math
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar, RichModelSummary, TQDMProgressBar
from lightning.pytorch.utilities.model_summary import summarize
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, run_probmed
from probmed.training.console import EpochLine, ParameterSummary, adapt_console, format_elapsed

LINE = re.compile(r"^epoch (\d+)/(\d+)  train loss (\S+)  val mean R@5 (\S+)(?: \(chance [^)]*\))?  elapsed (\d+):(\d\d):(\d\d)$")


def _fake_srun(tmp_path: Path) -> str:
    """A PATH on which `srun` exists, so Lightning's "srun is available but not used" hint would fire here too."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IXUSR)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def test_captured_fit_prints_one_line_per_epoch_and_none_of_lightnings_noise(smoke_corpus, tmp_path):
    args = ["fit", "--config", str(REPO / "configs" / "smoke.yaml"), "--data.data_dir", str(smoke_corpus),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "null",  # Lightning's default bar
            "--trainer.enable_model_summary", "true"]
    fit = run_probmed(args, cwd=tmp_path, PATH=_fake_srun(tmp_path))
    assert fit.returncode == 0, fit.output[-4000:]

    lines = [m for m in map(LINE.match, fit.stdout.splitlines()) if m]
    assert [(m[1], m[2]) for m in lines] == [("1", "2"), ("2", "2")], fit.output[-4000:]
    # the printed numbers are the ones TensorBoard holds: mean training loss of the epoch's 3 steps, val mean R@5
    events = EventAccumulator(str(tmp_path / "smoke" / "version_0"))
    events.Reload()
    losses = [e.value for e in sorted(events.Scalars("train/loss"), key=lambda e: e.step)]
    r5 = [e.value for e in sorted(events.Scalars("val/mean_R@5"), key=lambda e: e.step)]
    assert len(losses) == 6 and len(r5) == 2
    for epoch, m in enumerate(lines):
        assert float(m[3]) == pytest.approx(sum(losses[3 * epoch:3 * epoch + 3]) / 3, abs=5e-5)
        assert float(m[4]) == pytest.approx(r5[epoch], abs=5e-3)
    assert int(m[5]) * 3600 + int(m[6]) * 60 + int(m[7]) < 600

    assert "Total params" in fit.output  # the model summary is still there, without its FLOPs
    for noise in ("💡", "litlogger", "litmodels", "srun", "FLOPs", "Flops", "LeafSpec", "━"):
        assert noise not in fit.output, f"{noise!r} in the output:\n{fit.output[-4000:]}"


def _trainer(**kwargs) -> Trainer:
    return Trainer(**{"logger": False, "enable_checkpointing": False, "accelerator": "cpu", **kwargs})


def _kinds(trainer: Trainer) -> list[type]:
    return [type(cb) for cb in trainer.callbacks if isinstance(cb, (ProgressBar, ModelSummary, EpochLine))]


def test_not_a_tty_swaps_the_default_bar_for_epoch_lines_and_a_terminal_keeps_it():
    on_tty = _trainer()
    adapt_console(on_tty, [], progress_bar_requested=False, tty=True)
    assert isinstance(on_tty.progress_bar_callback, ProgressBar)
    assert not any(isinstance(cb, EpochLine) for cb in on_tty.callbacks)
    assert type(next(cb for cb in on_tty.callbacks if isinstance(cb, ModelSummary))) is ParameterSummary

    in_log = _trainer()
    adapt_console(in_log, [], progress_bar_requested=False, tty=False)
    assert in_log.progress_bar_callback is None
    assert sum(isinstance(cb, EpochLine) for cb in in_log.callbacks) == 1

    with_checkpoint = _trainer(enable_checkpointing=True)
    adapt_console(with_checkpoint, [], progress_bar_requested=False, tty=False)
    assert isinstance(with_checkpoint.callbacks[-1], ModelCheckpoint)  # checkpoints still run last

    asked = _trainer(enable_progress_bar=True)  # the config asked for the bar: it stays, and the lines come too
    adapt_console(asked, [], progress_bar_requested=True, tty=False)
    assert in_log.progress_bar_callback is None and isinstance(asked.progress_bar_callback, ProgressBar)
    assert sum(isinstance(cb, EpochLine) for cb in asked.callbacks) == 1


def test_callbacks_the_config_lists_are_left_as_they_are():
    mine = [TQDMProgressBar(), RichModelSummary(max_depth=2), EpochLine("val/mean_R@1")]
    trainer = _trainer(callbacks=list(mine))
    adapt_console(trainer, mine, progress_bar_requested=False, tty=False)
    assert _kinds(trainer) == [TQDMProgressBar, RichModelSummary, EpochLine]
    assert [cb for cb in trainer.callbacks if isinstance(cb, EpochLine)][0].metric == "val/mean_R@1"


def test_epoch_line_averages_finite_losses_counts_skipped_steps_and_marks_a_missing_metric():
    line = EpochLine()
    line.on_train_epoch_start(None, None)
    for loss in (1.0, math.nan, 2.5, math.inf):
        line.on_train_batch_end(None, None, {"loss": torch.tensor(loss)}, None, 0)
    assert line.line(2, -1, 3725.9) == ("epoch 3  train loss 1.7500 (2 non-finite steps skipped)  val mean R@5 -  "
                                        "elapsed 1:02:05")
    line._value = 12.345
    assert line.line(0, 14, 5) == "epoch 1/14  train loss 1.7500 (2 non-finite steps skipped)  val mean R@5 12.35  " \
                                  "elapsed 0:00:05"
    line.on_train_epoch_start(None, None)
    assert line.line(0, 1, 0).startswith("epoch 1/1  train loss -  val mean R@5 -")
    assert format_elapsed(59.99) == "0:00:59" and format_elapsed(86400 + 61) == "1 day, 0:01:01"


class _Tiny(LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(3, 4)
        self.frozen = torch.nn.Linear(4, 2).requires_grad_(False)


def test_parameter_summary_is_lightnings_table_without_the_flops(caplog):
    summary = summarize(_Tiny(), max_depth=1)
    data = summary._get_summary_data()
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.callbacks.model_summary"):
        ParameterSummary.summarize(data, summary.total_parameters, summary.trainable_parameters, summary.model_size,
                                   summary.total_training_modes, summary.total_flops)
    text = caplog.text
    assert "FLOP" not in text.upper()
    rows = [[c.strip() for c in line.split("|")] for line in text.splitlines() if "|" in line]
    expected = {name: values for name, values in data if name != "FLOPs"}
    assert rows[0] == [name.strip() for name in expected]  # header: every column but FLOPs, in Lightning's order
    assert [r[1] for r in rows[1:]] == ["encoder", "frozen"]
    assert [r[3] for r in rows[1:]] == [p.strip() for p in expected["Params"]]
    assert re.search(r"^16\s+Trainable params$", text, re.M) and re.search(r"^10\s+Non-trainable params$", text, re.M)
    assert re.search(r"^26\s+Total params$", text, re.M)
