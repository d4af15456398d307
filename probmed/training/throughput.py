"""Throughput and MFU: Lightning's :class:`ThroughputMonitor` with ProbMed's batch size and measured FLOPs.

Logged (every ``log_every_n_steps``, by rank 0, once the window is full): ``train/device/samples_per_sec`` and
``train/device/flops_per_sec`` (per device), ``train/samples_per_sec`` and ``train/flops_per_sec`` (global, when
world size > 1) and, where Lightning knows the device's peak (``get_available_flops``: CUDA GPUs; not CPUs),
``train/device/mfu``. These are the run's only samples/s figure (rows per wall-clock second over the window, data
loading included); the module itself logs ``perf/data_wait_fraction`` (time waiting for the loader / step time).

Validation and test log their ``validate/*`` / ``test/*`` figures (time, batches, samples, and the rates once the
window is full) once, when the evaluation ends, at the step of the evaluation's metrics
(``_batches_that_stepped``): a ``validate`` or ``test`` command run twice on a checkpoint adds points at that
checkpoint's step instead of restarting at step 1.

FLOPs per batch are *counted* (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions, attention) over
the first ``flop_steps`` real training steps — forward, backward and optimizer — and averaged, so towers that see only
the studies holding their modality (masked / variable modality counts) are measured as they actually run, not
assumed from a full batch. Counting runs only during the run's global steps ``0 .. flop_steps - 1`` (the counts are
saved in checkpoints), so a resumed run counts — and, under the counter, computes (the compiled loss kernel steps
aside for it) — exactly the steps an uninterrupted run does.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor
from torch.utils.flop_counter import FlopCounterMode


def studies_in_batch(batch: dict) -> int:
    """Samples = studies (rows) in a ProbMed batch."""
    return len(batch["group"])


class Throughput(ThroughputMonitor):
    """``ThroughputMonitor`` for ProbMed batches, with FLOPs measured on the first ``flop_steps`` training steps.

    Args:
        flop_steps: training steps whose FLOPs are counted and averaged into ``flops_per_batch`` (0: no MFU).
        window_size: batches in the sliding window of the rates (Lightning's default 100 is long for short runs);
            nothing is logged before the window is full.
    """

    def __init__(self, flop_steps: int = 3, window_size: int = 20, **kwargs: Any):
        super().__init__(batch_size_fn=studies_in_batch, window_size=window_size, **kwargs)
        self.flop_steps = flop_steps
        self._counted: list[int] = []
        self._counter: FlopCounterMode | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not hasattr(pl_module, "flops_per_batch"):
            pl_module.flops_per_batch = None  # set once measured; None: no FLOPs yet

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step < self.flop_steps and len(self._counted) < self.flop_steps:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        elif self._counted and pl_module.flops_per_batch is None:  # restored from a checkpoint
            pl_module.flops_per_batch = sum(self._counted) // len(self._counted)

    def state_dict(self) -> dict[str, Any]:
        return {"flops_counted": list(self._counted)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._counted = [int(f) for f in state_dict.get("flops_counted", [])]

    def stop_counting(self, pl_module) -> None:
        """End this step's count, if one runs, and update ``pl_module.flops_per_batch`` (the mean so far)."""
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._counted.append(self._counter.get_total_flops())
            self._counter = None
            pl_module.flops_per_batch = sum(self._counted) // len(self._counted)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stop_counting(pl_module)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    # -- evaluation: one point per evaluation, at the step of its metrics ----------------------------------------
    def _update_eval(self, trainer, pl_module, batch) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._update(trainer, pl_module, batch, trainer._evaluation_loop.batch_progress.total.ready)

    def _log_eval(self, trainer) -> None:
        stage = trainer.state.stage
        if trainer.sanity_checking or not trainer.is_global_zero or not self._batches.get(stage):
            return
        throughput = self._throughputs[stage]
        metrics = {f"{stage.value}{throughput.separator}{k}": v for k, v in throughput.compute().items()}
        trainer._logger_connector.log_metrics(metrics, step=int(trainer.fit_loop.epoch_loop._batches_that_stepped))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args: Any, **kwargs: Any) -> None:
        self._update_eval(trainer, pl_module, batch)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._log_eval(trainer)
        super().on_validation_end(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, *args: Any, **kwargs: Any) -> None:
        self._update_eval(trainer, pl_module, batch)

    def on_test_end(self, trainer, pl_module) -> None:
        self._log_eval(trainer)
