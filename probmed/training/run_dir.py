"""One run, one folder: where a command logs, and saying so.

A TensorBoard run is one ``<save_dir>/<name>/<version>`` folder. ``probmed test|validate|predict --ckpt_path C`` and
a resumed ``fit`` write into the run that wrote ``C`` (its version folder, steps continuing from ``C``'s step)
instead of opening ``version_N+1``: the test metrics sit beside the training curves at the step the weights were
trained to, and a resumed run's curves stay one run.

* :func:`checkpoint_run` finds that folder: the log directory the checkpoint recorded when it was saved
  (:class:`RunReport` writes it as ``checkpoint["probmed_log_dir"]``), else the folder above a
  ``<run>/checkpoints/`` directory holding the run's ``hparams.yaml`` / ``config.yaml`` / TensorBoard events.
* :func:`log_into_run` points the configured TensorBoard logger at it.
* :func:`name_logger_after_config` names a logger left at Lightning's default name (``lightning_logs``) after the
  first ``--config`` file (``configs/presets/clip.yaml`` logs to ``runs/clip/version_N``).
* :class:`RunReport` prints, on global rank 0, where logs, checkpoints and outputs go when a command starts, and
  what it wrote when it ends; in evaluation commands it sets the step counters to the checkpoint's.
"""
from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

#: the key a checkpoint records its run's log directory under
LOG_DIR_KEY = "probmed_log_dir"
#: files that mark a folder as a logger run
_RUN_MARKERS = ("hparams.yaml", "config.yaml")
#: Lightning's default TensorBoardLogger name: a config that did not choose one
_DEFAULT_NAME = "lightning_logs"


def _is_run(folder: Path) -> bool:
    return folder.is_dir() and (any((folder / m).is_file() for m in _RUN_MARKERS)
                                or any(folder.glob("events.out.tfevents.*")))


def checkpoint_run(ckpt_path: str | Path, checkpoint: dict) -> Path | None:
    """The log directory of the run that wrote ``ckpt_path`` (``checkpoint`` is its loaded dict), or None.

    The directory the checkpoint recorded wins while it exists; otherwise a checkpoint in ``<run>/checkpoints/``
    belongs to ``<run>`` when that folder holds ``hparams.yaml``, ``config.yaml`` or TensorBoard events (a run
    folder moved or copied elsewhere)."""
    recorded = checkpoint.get(LOG_DIR_KEY)
    if recorded and Path(recorded).is_dir():
        return Path(recorded).resolve()
    ckpt = Path(ckpt_path).resolve()
    if ckpt.parent.name == "checkpoints" and _is_run(ckpt.parent.parent):
        return ckpt.parent.parent
    return None


def _tensorboard_args(trainer_config):
    """The ``init_args`` namespace of the configured TensorBoard logger, or None (no logger, another kind)."""
    logger = (trainer_config or {}).get("logger")
    if isinstance(logger, (list, tuple)):
        logger = logger[0] if len(logger) == 1 else None
    if not hasattr(logger, "get") or "TensorBoardLogger" not in str(logger.get("class_path")):
        return None
    return logger.get("init_args")


def log_into_run(trainer_config, run: Path) -> bool:
    """Point the configured TensorBoard logger (``save_dir``, ``name``, ``version``) at the existing ``run`` folder;
    False (nothing changed) when the config has no single TensorBoard logger."""
    args = _tensorboard_args(trainer_config)
    if args is None:
        return False
    save_dir = run.parent.parent
    if not (args.get("save_dir") and Path(args.save_dir).resolve() == save_dir.resolve()):  # keep the spelling
        args.save_dir = str(save_dir)  # (a checkpoint callback compares its directory as a string)
    args.name, args.version = run.parent.name, run.name
    return True


def name_logger_after_config(trainer_config, config_files) -> None:
    """A TensorBoard logger left at Lightning's default name logs under the stem of the first config file
    (``probmed`` without one), so that runs of different configs and presets are told apart."""
    args = _tensorboard_args(trainer_config)
    if args is None or args.get("name") != _DEFAULT_NAME:
        return
    files = [Path(str(getattr(f, "relative", f))) for f in (config_files or [])]
    args.name = files[0].stem if files else "probmed"


def _files(folder: Path) -> dict[Path, float]:
    if not folder.is_dir():
        return {}
    return {p: p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


def _describe(paths: list[Path], root: Path) -> str:
    """``a.json, plots/test/ (5 files), events.out.tfevents.* (TensorBoard)`` for the files written under root."""
    top: dict[str, int] = {}
    for p in sorted(paths):
        rel = p.relative_to(root)
        key = "TensorBoard events" if rel.name.startswith("events.out.tfevents") else (
            rel.as_posix() if len(rel.parts) == 1 else f"{rel.parent.as_posix()}/")
        top[key] = top.get(key, 0) + 1
    return ", ".join(f"{k} ({n} file{'s' if n > 1 else ''})" if k.endswith("/") else k for k, n in top.items())


class RunReport(Callback):
    """Says where a command's logs, checkpoints and outputs go (at its start) and what it wrote (at its end), on
    global rank 0, to stdout; records the run's log directory in every checkpoint (``probmed_log_dir``).

    Args:
        resume_step: in ``validate|test|predict`` from a checkpoint, ``(global step, batches that stepped,
            epoch)`` of that checkpoint: the trainer's counters are set to them so that metrics and figures are
            logged at the step the weights were trained to (Lightning starts them at 0 outside ``fit``).
    """

    def __init__(self, resume_step: tuple[int, int, int] | None = None) -> None:
        self.resume_step = resume_step
        self._before: dict[Path, float] = {}
        self._started = 0.0

    @staticmethod
    def _log_dir(trainer) -> Path | None:
        """The logger's directory, read from the logger itself: ``trainer.log_dir`` is a collective (a broadcast),
        which this callback's rank-0-only paths must not enter."""
        log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
        return Path(log_dir) if log_dir else None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        log_dir = self._log_dir(trainer)
        if log_dir is not None:
            checkpoint[LOG_DIR_KEY] = str(log_dir.resolve())

    def setup(self, trainer, pl_module, stage: str) -> None:
        log_dir = self._log_dir(trainer) if trainer.is_global_zero else None
        self._before = _files(log_dir) if log_dir else {}
        self._started = time.time()

    def _start(self, trainer, stage: str) -> None:
        if self.resume_step is not None and stage != "fit":
            self._continue_counters(trainer)
        if not trainer.is_global_zero:
            return
        log_dir = self._log_dir(trainer)
        where = [f"logs {log_dir} (tensorboard --logdir {log_dir.parent})" if log_dir else "no logger"]
        ckpt = trainer.checkpoint_callback
        if stage == "fit" and isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
            where.append(f"checkpoints {ckpt.dirpath}")
        if trainer.ckpt_path and stage == "fit":
            where.append(f"resuming from {trainer.ckpt_path}")
        elif trainer.ckpt_path:
            where.append(f"weights {trainer.ckpt_path} (step {trainer.global_step})")
        print(f"[probmed] {stage}: " + "; ".join(where), flush=True)

    def _continue_counters(self, trainer) -> None:
        global_step, stepped, epoch = self.resume_step
        loop = trainer.fit_loop.epoch_loop
        loop.automatic_optimization.optim_progress.optimizer.step.total.completed = global_step
        loop.manual_optimization.optim_step_progress.total.completed = global_step
        loop._batches_that_stepped = stepped
        trainer.fit_loop.epoch_progress.current.completed = epoch

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start(trainer, "fit")

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.training and trainer.state.fn == "validate":
            self._start(trainer, "validate")

    def on_test_start(self, trainer, pl_module) -> None:
        self._start(trainer, "test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._start(trainer, "predict")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        stage = str(getattr(stage, "value", stage))
        if not trainer.is_global_zero:
            return
        wrote = []
        log_dir = self._log_dir(trainer)
        if log_dir is not None:
            changed = [p for p, t in _files(log_dir).items() if self._before.get(p) != t]
            if changed:
                wrote.append(f"{log_dir}/: {_describe(changed, log_dir)}")
        ckpt = trainer.checkpoint_callback
        if stage == "fit" and isinstance(ckpt, ModelCheckpoint):
            for kind, path in (("best", ckpt.best_model_path), ("last", ckpt.last_model_path)):
                if path:
                    wrote.append(f"{kind} checkpoint {path}")
        for callback in trainer.callbacks:  # an output file a callback wrote outside the log directory
            path = getattr(callback, "written", None)
            if path and (log_dir is None or log_dir.resolve() not in Path(path).resolve().parents):  # else listed
                wrote.append(str(path))
        print(f"[probmed] {stage} done: wrote " + ("; ".join(wrote) if wrote else "nothing"), flush=True)


__all__ = ["LOG_DIR_KEY", "RunReport", "checkpoint_run", "log_into_run", "name_logger_after_config"]
