"""What TensorBoard shows in every config, whatever its callback list: learning rate, throughput, HParams.

* :func:`add_monitoring` — a trainer with a logger gets Lightning's ``LearningRateMonitor`` (every step; tags
  ``lr-<Optimizer>``, ``lr-<Optimizer>/pg<N>`` with parameter groups) and :class:`probmed.training.Throughput`
  (``train/device/samples_per_sec``, the one samples/s figure) when its callbacks lack them; a config listing its
  own keeps it (never two).
* :func:`without_placeholder_hp_metric` — the TensorBoard logger's ``default_hp_metric`` off: no ``hp_metric = -1``
  scalar, and Lightning's own hyperparameter dump (the module's init arguments, LightningCLI's ``_instantiator``
  among them) stays in ``hparams.yaml`` instead of the HParams tab.
* :class:`HParamsSummary` — the HParams tab: the run's key choices (:func:`key_choices`) beside its final metrics
  (the last value of each tag in :data:`HPARAM_METRICS`), written when a command starts; the tab reads the metric
  values from the scalars as they are logged.
"""
from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.callbacks import Callback, Checkpoint, LearningRateMonitor, ThroughputMonitor

from probmed.training.run_dir import _tensorboard_args
from probmed.training.throughput import Throughput

#: the metrics of the HParams tab, per evaluated stage (``val/loss``, ``test/rsum``, ...)
HPARAM_METRICS = ("loss", "rsum", "mean_R@1", "mean_aurc")
STAGES = ("val", "test")


def add_monitoring(trainer) -> list[Callback]:
    """Add a ``LearningRateMonitor`` and a :class:`Throughput` to ``trainer.callbacks`` where missing, before the
    checkpoint callbacks (only when the trainer has a logger: there is nowhere to log otherwise). Returns the
    callbacks added."""
    if not trainer.loggers:
        return []
    added: list[Callback] = []
    if not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks):
        added.append(LearningRateMonitor(logging_interval="step"))
    if not any(isinstance(c, ThroughputMonitor) for c in trainer.callbacks):
        added.append(Throughput())
    checkpoints = [i for i, c in enumerate(trainer.callbacks) if isinstance(c, Checkpoint)]
    at = checkpoints[0] if checkpoints else len(trainer.callbacks)  # checkpoints keep running last
    trainer.callbacks[at:at] = added
    return added


def without_placeholder_hp_metric(trainer_config) -> None:
    """Set the configured TensorBoard logger's ``default_hp_metric`` to False (no ``hp_metric = -1``)."""
    args = _tensorboard_args(trainer_config)
    if args is not None:
        args.default_hp_metric = False


def _scalar(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def key_choices(trainer, module) -> dict[str, Any]:
    """The choices that tell runs apart, as TensorBoard HParams values (numbers, strings, booleans):

    ``embed_dim``; ``towers`` (``cxr=ResNetTower, ...``); ``objective`` (each term ``name×weight``);
    ``similarity`` (each pair term's); ``optimizer`` and ``lr`` (first parameter group's initial rate);
    ``warmup_steps``; ``batch_size`` (per device), ``devices``, ``precision``, ``max_epochs``, ``max_steps`` and
    ``seed`` (``PL_GLOBAL_SEED`` as ``seed_everything`` set it; ``none`` without one)."""
    hparams = dict(getattr(module, "hparams", {}) or {})
    choices: dict[str, Any] = {"module": type(module).__name__}
    if "embed_dim" in hparams:
        choices["embed_dim"] = int(hparams["embed_dim"])
    encoders = getattr(module, "encoders", None)
    if encoders is not None:
        choices["towers"] = ", ".join(f"{m}={type(e).__name__}" for m, e in sorted(encoders.items()))
    objective = getattr(module, "objective", None)
    terms = list(getattr(objective, "terms", []) or [])
    if terms:
        choices["objective"] = ", ".join(f"{t.name}×{t.weight:g}" for t in terms)
        similarities = sorted({t.similarity_name for t in terms if getattr(t, "similarity_name", None)})
        choices["similarity"] = ", ".join(similarities) or "none"
    optimizers = list(getattr(trainer, "optimizers", []) or [])
    if optimizers:
        group = optimizers[0].param_groups[0]
        choices["optimizer"] = type(optimizers[0]).__name__
        choices["lr"] = float(group.get("initial_lr", group.get("lr")))
    if "warmup_steps" in hparams:
        choices["warmup_steps"] = int(hparams["warmup_steps"])
    datamodule = getattr(trainer, "datamodule", None)
    if getattr(datamodule, "batch_size", None) is not None:
        choices["batch_size"] = int(datamodule.batch_size)
    choices.update(devices=int(trainer.num_devices), precision=str(trainer.precision),
                   max_epochs=int(trainer.max_epochs if trainer.max_epochs is not None else -1),
                   max_steps=int(trainer.max_steps), seed=os.environ.get("PL_GLOBAL_SEED", "none"))
    return {k: _scalar(v) for k, v in choices.items()}


class HParamsSummary(Callback):
    """Writes the TensorBoard HParams summary (:func:`key_choices` and :data:`HPARAM_METRICS` of every stage) once
    per command, on global rank 0, when training (after the optimizers exist), validation or testing starts."""

    def __init__(self) -> None:
        self._done = False

    def _write(self, trainer, module) -> None:
        if self._done or not trainer.is_global_zero:
            return
        self._done = True
        logger = trainer.logger
        experiment = getattr(logger, "experiment", None) if logger is not None else None
        if experiment is None or not hasattr(experiment, "_get_file_writer"):
            return  # not TensorBoard
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"{stage}/{name}": 0.0 for stage in STAGES for name in HPARAM_METRICS}  # names only: the tab
        # reads each metric's values from the scalars of the same tag
        step = int(trainer.fit_loop.epoch_loop._batches_that_stepped)
        writer = experiment._get_file_writer()
        for summary in hparams(key_choices(trainer, module), metrics):
            writer.add_summary(summary, step)
        writer.flush()

    def on_fit_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)


__all__ = ["HPARAM_METRICS", "HParamsSummary", "add_monitoring", "key_choices", "without_placeholder_hp_metric"]
