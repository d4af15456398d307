"""What ``probmed`` prints: one line per epoch when the output goes to a log, and none of Lightning's noise.

Lightning's progress bar draws only on a terminal. Captured to a file (``make demo > demo.log``, a Slurm job's
``.out``) a whole training printed nothing until it ended. When stdout is not a terminal the CLI therefore drops the
default bar and adds :class:`EpochLine`, which prints, on global rank 0::

    epoch 3/14  train loss 3.8125  val mean R@5 12.40  elapsed 0:04:10

Noise that says nothing about the run is removed (:func:`silence_lightning_noise`, :class:`ParameterSummary`):
Lightning's advertising tips (litlogger, litmodels), its ``srun`` hint (it fires only *outside* any Slurm
allocation, where it cannot be the problem: inside one, ``SLURM_NTASKS`` is set and the hint is silent), a
``FutureWarning`` Lightning triggers in torch's pytree module, and the model summary's FLOPs column (Lightning counts
FLOPs only through ``example_input_array``, which a batch of modalities does not have, so it printed ``0``;
:class:`probmed.training.Throughput` counts them on real steps).
"""
from __future__ import annotations

import logging
import math
import re
import sys
import time
import warnings
from collections.abc import Mapping
from datetime import timedelta

import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelSummary, RichModelSummary
from lightning.pytorch.callbacks.model_summary import log as summary_log
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import get_formatted_model_size, get_human_readable_count

#: loggers Lightning's ``rank_zero_info`` writes to (pytorch and fabric halves)
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
#: warnings (regex matched at the start of the message) that are Lightning's own business, not the user's
_QUIET_WARNINGS = (
    re.escape("The `srun` command is available on your system but is not used"),
    re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
)


class _DropTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" advertisements."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


def silence_lightning_noise() -> None:
    """Install the log filter and warning filters (idempotent; call before the trainer is built)."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def format_elapsed(seconds: float) -> str:
    """``3725.4`` -> ``"1:02:05"`` (hours:minutes:seconds, whole seconds)."""
    return str(timedelta(seconds=int(seconds)))


class EpochLine(Callback):
    """One line per training epoch on global rank 0: epoch, mean training loss, a validation metric, elapsed time.

    Args:
        metric: the validation metric to show (a key of ``trainer.callback_metrics``; ``val/mean_R@5`` is the mean
            Recall@5 in percent over every ordered modality pair). Shown as ``-`` in an epoch without validation.

    The training loss is the mean of the finite losses of this rank's steps in the epoch (the loss
    ``training_step`` returned); steps skipped as non-finite are counted instead of averaged. Elapsed time is wall
    time since this process started fitting.
    """

    #: a validation gallery smaller than this many times K leaves chance (K / N) above 10 %: Recall@K there says
    #: little about learning, and the line says so
    MIN_GALLERY_PER_K = 10

    def __init__(self, metric: str = "val/mean_R@5") -> None:
        self.metric = metric
        self._galleries: list[int] = []
        self._fit_start = time.monotonic()
        self._losses: list[torch.Tensor] = []
        self._value: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.monotonic()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._losses, self._value = [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss.detach().reshape(()))  # stays on its device: no sync per step

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        self._value = None if value is None else float(value)
        rows = (getattr(pl_module, "retrieval_rows", None) or {}).get("val") or []
        self._galleries = [int(r["gallery_size"]) for r in rows if r.get("gallery_size")]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            print(self.line(trainer.current_epoch, trainer.max_epochs, time.monotonic() - self._fit_start),
                  flush=True)

    def line(self, epoch: int, max_epochs: int | None, elapsed: float) -> str:
        """The epoch's line (``epoch`` counted from 0, as Lightning does; printed from 1)."""
        losses = torch.stack(self._losses).float().cpu() if self._losses else torch.empty(0)
        finite = losses[torch.isfinite(losses)]
        head = f"epoch {epoch + 1}/{max_epochs}" if max_epochs and max_epochs > 0 else f"epoch {epoch + 1}"
        loss = f"{finite.mean().item():.4f}" if len(finite) else "-"
        skipped = len(losses) - len(finite)
        if skipped:
            loss += f" ({skipped} non-finite step{'s' if skipped > 1 else ''} skipped)"
        name = self.metric.replace("/", " ").replace("_", " ")
        value = "-" if self._value is None or math.isnan(self._value) else f"{self._value:.2f}"
        if value != "-":
            value += self.chance_note()
        return f"{head}  train loss {loss}  {name} {value}  elapsed {format_elapsed(elapsed)}"

    def chance_note(self) -> str:
        """`` (chance 2.20, N 227)``: the metric's chance level, the mean over pairs of K / N in percent (N: each
        pair's validation gallery, studies having both modalities), and a warning when N < 10·K; ``""`` for a
        metric without a K or before any validation gallery is known."""
        k = re.search(r"R@(\d+)$", self.metric)
        if not k or not self._galleries:
            return ""
        k = int(k[1])
        chance = sum(100.0 * min(k, n) / n for n in self._galleries) / len(self._galleries)
        low, high = min(self._galleries), max(self._galleries)
        span = f"{low}" if low == high else f"{low}-{high}"
        small = "; val split too small to mean anything" if low < self.MIN_GALLERY_PER_K * k else ""
        return f" (chance {chance:.2f}, N {span}{small})"


class ParameterSummary(ModelSummary):
    """Lightning's plain-text model summary (layers, parameters, size, train/eval modules) without the FLOPs
    column and total, which read 0 for this module (see the module docstring)."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops=0, **summarize_kwargs) -> None:
        summary_log.info("\n" + format_parameter_table(summary_data, total_parameters, trainable_parameters,
                                                       model_size, total_training_modes))


def format_parameter_table(summary_data: list[tuple[str, list[str]]], total_parameters: int,
                           trainable_parameters: int, model_size: float, modes: Mapping[str, int]) -> str:
    """The summary table: one column per ``(name, values)`` of ``summary_data`` except ``FLOPs``, then totals."""
    columns = [(name, [str(v) for v in values]) for name, values in summary_data if name != "FLOPs"]
    widths = [max([len(name), *map(len, values)]) for name, values in columns]
    rows = [" | ".join(name.ljust(w) for (name, _), w in zip(columns, widths)).rstrip()]
    rule = "-" * (sum(widths) + 3 * (len(widths) - 1))
    for i in range(len(columns[0][1]) if columns else 0):
        rows.append(" | ".join(values[i].ljust(w) for (_, values), w in zip(columns, widths)).rstrip())
    totals = [
        (get_human_readable_count(int(trainable_parameters)), "Trainable params"),
        (get_human_readable_count(int(total_parameters - trainable_parameters)), "Non-trainable params"),
        (get_human_readable_count(int(total_parameters)), "Total params"),
        (get_formatted_model_size(model_size), "Total estimated model params size (MB)"),
        (str(modes.get("train", 0)), "Modules in train mode"),
        (str(modes.get("eval", 0)), "Modules in eval mode"),
    ]
    return "\n".join([rows[0], rule, *rows[1:], rule, *(f"{value:<10}{label}" for value, label in totals)])


def adapt_console(trainer, configured: list, progress_bar_requested: bool, tty: bool | None = None) -> None:
    """Fit a built trainer's console output to where stdout goes.

    Args:
        trainer: the trainer as Lightning built it (its default progress bar and model summary included).
        configured: the callbacks the config listed; those are the user's and stay as they are.
        progress_bar_requested: the config set ``trainer.enable_progress_bar`` explicitly (to true).
        tty: whether stdout is a terminal (default: ask ``sys.stdout``).
    """
    tty = sys.stdout.isatty() if tty is None else tty
    mine = {id(cb) for cb in configured}
    callbacks = []
    for cb in trainer.callbacks:
        if id(cb) not in mine and type(cb) in (ModelSummary, RichModelSummary):  # Lightning's default summary
            cb = ParameterSummary(max_depth=cb._max_depth)
        elif id(cb) not in mine and isinstance(cb, ProgressBar) and not tty and not progress_bar_requested:
            continue  # a default bar draws nothing in a log; EpochLine below replaces it
        callbacks.append(cb)
    if not tty and not any(isinstance(cb, EpochLine) for cb in callbacks):
        # before the checkpoint callbacks, which Lightning keeps last
        first_checkpoint = next((i for i, cb in enumerate(callbacks) if isinstance(cb, Checkpoint)), len(callbacks))
        callbacks.insert(first_checkpoint, EpochLine())
    trainer.callbacks[:] = callbacks
