"""``probmed`` command line: ``fit | validate | test | predict`` (LightningCLI) and ``data ...`` (corpus tools).

Examples::

    probmed data synth --out data_shards/demo --studies 3000
    probmed fit --config configs/demo.yaml
    probmed test --config configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt
    probmed fit --config configs/demo.yaml --print_config
    probmed predict --config configs/demo.yaml --ckpt_path last.ckpt --embeddings.path emb.npz   # means + variances
    probmed distill fit --config configs/presets/m3bind_distill.yaml      (M3Bind stage 2, see probmed.tasks.distill)
    probmed prompt fit --config configs/medbind_soft_prompt.yaml          (soft prompts, see probmed.tasks.soft_prompt)
"""
from __future__ import annotations

import importlib
import os
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import NoReturn

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from probmed import config_yaml
from probmed.data.datamodule import ProbMedDataModule
from probmed.evaluation.export import EmbeddingWriter
from probmed.tasks.binding import ProbMedModule
from probmed.training.checkpoint_io import AtomicCheckpointIO, check_checkpoint_file
from probmed.training.console import adapt_console, silence_lightning_noise
from probmed.training.requeue import SlurmRequeue, catch_early_requeue_signal, requeue_signal, slurm_requeue_wanted
from probmed.training.monitoring import HParamsSummary, add_monitoring, without_placeholder_hp_metric
from probmed.training.run_dir import RunReport, checkpoint_run, log_into_run, name_logger_after_config
from probmed.training.resume import (candidate_checkpoints, hparams_differences, newest_complete_checkpoint,
                                     require_lightning_checkpoint, stale_temp_files)

config_yaml.install()  # every YAML the CLI reads is checked for alias bombs before it is built

#: Module arguments of checkpoints written before the Gaussian heads were configured as ``model.head``.
LEGACY_HEAD_ARGS = ("variance", "normalize_mean", "log_var_min", "log_var_max")

#: a config without a logger logs to TensorBoard under runs/<first config file's name> (run_dir.name_logger_after_config)
TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
}


def one_tensorboard_version_per_slurm_job(config) -> None:
    """Under Slurm, a TensorBoard logger without an explicit version logs to ``job_<SLURM_JOB_ID>``: a requeued job
    (same id) appends to its own run instead of starting ``version_N+1``."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    logger = (config.get("trainer") or {}).get("logger")
    if not job or not logger or not hasattr(logger, "get") or "TensorBoardLogger" not in str(logger.get("class_path")):
        return
    if logger.init_args.get("version") is None:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        logger.init_args.version = f"job_{job}" + (f"_{task}" if task and os.environ.get("SLURM_ARRAY_JOB_ID") else "")


def _init_args(entry) -> dict:
    """``init_args`` of a ``class_path``/``init_args`` config entry as a dict ({} for anything else)."""
    args = entry.get("init_args") if hasattr(entry, "get") else None
    return dict(args.items()) if hasattr(args, "items") else {}


def checkpoint_locations(trainer_config) -> tuple[list[str], Path]:
    """Where the configured run writes checkpoints: directory globs (every ``ModelCheckpoint``'s ``dirpath``, and
    Lightning's default ``<save_dir>/<name>/*/checkpoints`` for those without one, over all logger versions) and
    ``default_root_dir`` (Slurm's ``hpc_ckpt_N.ckpt``)."""
    root = Path(trainer_config.get("default_root_dir") or os.getcwd())
    logger = trainer_config.get("logger")
    logger = logger[0] if isinstance(logger, (list, tuple)) and logger else logger
    if logger is True:
        default = str(root / "lightning_logs" / "*" / "checkpoints")
    elif logger:
        args = _init_args(logger)
        default = str(Path(args.get("save_dir") or root) / str(args.get("name") or "lightning_logs") / "*" /
                      "checkpoints")
    else:
        default = str(root / "checkpoints")
    dirs = [default]
    for callback in trainer_config.get("callbacks") or []:
        if "ModelCheckpoint" in str(callback.get("class_path", "") if hasattr(callback, "get") else callback):
            dirpath = _init_args(callback).get("dirpath")
            if dirpath:
                dirs.append(str(dirpath))
    return dirs, root


def _raise_argument_error(message: str, ex: Exception | None = None) -> NoReturn:
    """A jsonargparse parser's ``error``: raise the error instead of printing the usage and exiting (what
    ``JSONARGPARSE_DEBUG`` does; ``exit_on_error=False`` would also change how nested class arguments parse)."""
    raise ArgumentError(None, message) from ex


class ProbMedCLI(LightningCLI):
    """LightningCLI with ProbMed's module and data module fixed and TensorBoard logging by default.

    Args:
        state: a dict that receives the parser (``state["parser"]``) before the command line is parsed, so that a
            parse error can be explained against the options it knows (:mod:`probmed.user_errors`).
    """

    def __init__(self, *args, state: dict | None = None, **kwargs) -> None:
        self._state = {} if state is None else state
        super().__init__(*args, **kwargs)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        action = getattr(self.parser, "_subcommands_action", None)
        subparsers = dict(action._name_parser_map) if action is not None else {}
        for name, subparser in subparsers.items():
            subparser.prog = f"{self.parser.prog} {name}"  # `usage: probmed distill fit`, not `probmed [options] fit`
        for parser in (self.parser, *subparsers.values()):  # a parse error raises (explained in one line by main)
            parser.error = _raise_argument_error  # instead of printing the whole usage (jsonargparse's debug mode)

    def parse_arguments(self, parser, args) -> None:
        self._state["parser"] = parser
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--float32_matmul_precision", default="high", choices=["highest", "high", "medium"],
            help="torch.set_float32_matmul_precision (TF32 on Ampere+ GPUs when 'high')",
        )
        # `probmed predict` writes every study's mean and variance per modality (--embeddings.path, default
        # <log_dir>/embeddings.npz); the callback does nothing in fit/validate/test
        parser.add_lightning_class_args(EmbeddingWriter, "embeddings")

    def before_instantiate_classes(self) -> None:
        import torch

        config = self.config.get(self.subcommand, self.config)
        torch.set_float32_matmul_precision(config.get("float32_matmul_precision", "high"))
        one_tensorboard_version_per_slurm_job(config)
        if self.subcommand != "fit":  # fit's config.yaml (what a teacher or a resume reads) stays the training one
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"{self.subcommand}_config.yaml"}
        if self.subcommand == "predict" and getattr(self, "_into_run", None) is None:
            config.trainer.logger = False  # embeddings only: no TensorBoard run, no empty version folder
            self.save_config_callback = None

    def _parse_ckpt_path(self) -> None:
        """Before LightningCLI reads the checkpoint's hyperparameters into the configuration: remove temporary
        files of killed checkpoint writes (``fit``), resolve ``--ckpt_path last`` to the run's newest complete
        checkpoint (:mod:`probmed.training.resume`), refuse a truncated file or one that is not a Lightning
        checkpoint, and compare the model settings asked for with the checkpoint's: ``fit`` refuses to resume a
        different model, evaluation warns that it uses the checkpoint's."""
        import torch

        subcommand = self.config.get("subcommand")
        if not subcommand:
            return super()._parse_ckpt_path()
        config = self.config[subcommand]
        self._resume_step, self._into_run = None, None
        name_logger_after_config(config.get("trainer"), config.get("config"))
        without_placeholder_hp_metric(config.get("trainer"))
        dirs, root = checkpoint_locations(config.get("trainer") or {})
        if subcommand == "fit":
            for stale in stale_temp_files([*dirs, root]):
                stale.unlink(missing_ok=True)
                print(f"[probmed] removed {stale}, left by an interrupted checkpoint write", file=sys.stderr)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            found, notes = newest_complete_checkpoint(candidate_checkpoints(dirs, root))
            for note in notes:
                print(f"[probmed] --ckpt_path last: {note}", file=sys.stderr)
            where = ", ".join([*dirs, str(root / "hpc_ckpt_*.ckpt")])
            if found is None:
                print(f"[probmed] --ckpt_path last: no complete checkpoint in {where}: starting from step 0",
                      file=sys.stderr)
                config.ckpt_path = None
                return None
            print(f"[probmed] --ckpt_path last: using {found} (the newest complete checkpoint in {where})",
                  file=sys.stderr)
            config.ckpt_path = ckpt_path = str(found)
        if not ckpt_path or ckpt_path in ("best", "hpc", "registry") or not Path(ckpt_path).is_file():
            return super()._parse_ckpt_path()
        check_checkpoint_file(ckpt_path)
        checkpoint = require_lightning_checkpoint(
            torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True), ckpt_path)
        self._log_into_checkpoint_run(subcommand, config, ckpt_path, checkpoint)
        if self._parse_legacy_head_hparams(subcommand, checkpoint):
            return None
        model = config.get("model")
        requested = dict(model.items()) if hasattr(model, "items") else {}
        differing = hparams_differences(requested, checkpoint.get("hyper_parameters") or {})
        if differing:
            listed = "; ".join(f"model.{k}: config {a!r}, checkpoint {b!r}" for k, a, b in
                               ((k, *v) for k, v in sorted(differing.items())))
            if subcommand == "fit":
                raise ValueError(f"refusing to resume {ckpt_path}: the configured model differs from the "
                                 f"checkpoint's ({listed}). Resume with the settings it was trained with, or start "
                                 "a new run without --ckpt_path.")
            print(f"[probmed] WARNING: {ckpt_path} was trained with other model settings than configured; "
                  f"using the checkpoint's ({listed})", file=sys.stderr)
        super()._parse_ckpt_path()

    def _log_into_checkpoint_run(self, subcommand: str, config, ckpt_path: str, checkpoint: dict) -> None:
        """One run, one folder (:mod:`probmed.training.run_dir`): the command logs into the TensorBoard run that
        wrote the checkpoint, at its step, unless the config fixed a logger version itself."""
        args = (config.get("trainer") or {}).get("logger")
        fixed = hasattr(args, "get") and (args.get("init_args") or {}).get("version") is not None
        run = None if fixed else checkpoint_run(ckpt_path, checkpoint)
        if run is None or not log_into_run(config.get("trainer"), run):
            return
        self._into_run = run
        loops = ((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("epoch_loop.state_dict") or {}
        step = int(checkpoint.get("global_step") or 0)
        if subcommand != "fit":
            self._resume_step = (step, int(loops.get("_batches_that_stepped", step)), int(checkpoint.get("epoch") or 0))

    def _parse_legacy_head_hparams(self, subcommand: str, checkpoint: dict) -> bool:
        """A checkpoint whose module took the head settings as its own arguments (``normalize_mean``,
        ``log_var_min``, ...) is read with them moved under ``model.head``; False for any other checkpoint."""
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        if "_class_path" in hparams or not any(k in hparams for k in LEGACY_HEAD_ARGS):
            return False
        hparams.pop("_instantiator", None)
        hparams["head"] = {k: hparams.pop(k) for k in LEGACY_HEAD_ARGS if k in hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        return True

    def instantiate_trainer(self, **kwargs):
        """The configured trainer, with checkpoints written atomically unless the config chose its own IO, and its
        console output fitted to where stdout goes (one line per epoch in a log: ``probmed.training.console``)."""
        config = self._get(self.config_init, "trainer", default={}) or {}
        listed = config.get("callbacks") or []  # copied now: Lightning appends its defaults to this very list
        configured = list(listed) if isinstance(listed, list) else [listed]
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if slurm_requeue_wanted(trainer):
            trainer.callbacks.append(SlurmRequeue(requeue_signal(trainer)))
        adapt_console(trainer, configured, progress_bar_requested=config.get("enable_progress_bar") is True)
        trainer.callbacks.append(RunReport(getattr(self, "_resume_step", None)))
        add_monitoring(trainer)  # LR and throughput in every config, whatever its callback list
        trainer.callbacks.append(HParamsSummary())  # after RunReport: the counters are the checkpoint's by then
        return trainer


#: every command, with what it does (``probmed --help``)
COMMANDS = {
    "fit": "train a binding model (--config X.yaml; --ckpt_path last resumes the run)",
    "validate": "evaluate a checkpoint on the validation split, into its run",
    "test": "evaluate a checkpoint on the test split: retrieval, zero-shot, uncertainty, ... into its run",
    "predict": "write every study's Gaussian embeddings (--data.predict_split train|val|test|all) to a .npz",
    "data": "corpus tools: synth, manifest, check, build (probmed data --help)",
    "distill": "M3Bind stage 2: distil teachers' text towers into one student (probmed distill fit|... --config)",
    "prompt": "MEDBind: binding embeddings as soft prompts of a causal LM (probmed prompt fit|... --config)",
}
#: the tasks ``probmed distill`` and ``probmed prompt`` train
TASKS = {"distill": ("probmed.tasks.distill", "TextDistillation"), "prompt": ("probmed.tasks.soft_prompt", "SoftPromptQA")}


def program_name() -> str:
    """``probmed``, or ``lightning`` when started as the ``lightning`` console script."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "lightning" if name == "lightning" else "probmed"


def overview(program: str) -> str:
    """``probmed --help``: every command with one line each."""
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items())
    return (f"usage: {program} COMMAND [options]     ({program} COMMAND --help: that command's options)\n\n"
            "Probabilistic multimodal medical binding (CXR, ECG, echo, text as Gaussians) with PyTorch Lightning.\n\n"
            f"commands:\n{rows}\n\n"
            f"e.g. {program} data synth --out data_shards/demo --studies 3000; {program} fit --config configs/demo.yaml\n"
            "--debug (or PROBMED_DEBUG=1) shows the traceback of an error instead of its one-line summary.")


def task_overview(program: str, task: str) -> str:
    """``probmed distill --help``: the task, and the Lightning commands it takes."""
    return (f"usage: {program} {task} {{fit,validate,test,predict}} --config X.yaml [options]\n\n"
            f"{COMMANDS[task]}.\n"
            f"{program} {task} fit --help lists every option.")


def main(argv: list[str] | None = None) -> int:
    """The ``probmed`` (and ``lightning``) command: on the command line (``argv`` None) a user's mistake prints one
    line and returns 2 (see :mod:`probmed.user_errors`), ``--debug`` / ``PROBMED_DEBUG=1`` shows the traceback
    instead; called from Python with ``argv``, the exception reaches the caller."""
    from probmed.user_errors import USER_ERRORS, debug_requested, report

    words = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(words)
    words = [w for w in words if w != "--debug"]
    program = program_name()
    state: dict = {}
    try:
        return _run(words, program, state, from_sys_argv=argv is None)
    except USER_ERRORS as error:
        if debug or argv is not None:
            raise
        return report(error, words, state.get("parser"), program)


def _refuse_trainer_optimizer(words: list[str]) -> None:
    """LightningCLI's ``--optimizer`` / ``--lr_scheduler`` would replace the module's own optimizer setup (warm-up,
    cosine decay, parameter groups) with a plain one: refused, pointing at the module's keys."""
    for word in words:
        option = word.split("=", 1)[0]
        if option in ("--optimizer", "--lr_scheduler"):
            raise ValueError(
                f"{option} would replace the module's optimizer setup (warm-up, cosine schedule, parameter groups): "
                "set the optimizer as --model.optimizer (e.g. --model.optimizer torch.optim.SGD "
                "--model.optimizer.lr 0.01); the schedule is --model.warmup_steps")


def _run(words: list[str], program: str, state: dict, from_sys_argv: bool) -> int:
    silence_lightning_noise()
    if not words or words[0] in ("-h", "--help"):
        print(overview(program))
        return 0
    if os.environ.get("SLURM_JOB_ID") and words[:1] == ["fit"]:  # a requeue signal during start-up must not kill
        catch_early_requeue_signal()
    if words[0] == "data":
        from probmed.data.commands import main as data_main

        return data_main(words[1:])
    model_class, prog = ProbMedModule, program
    if words[0] in TASKS:  # `probmed distill fit ...` (M3Bind stage 2), `probmed prompt fit` (MEDBind soft prompts)
        task, words = words[0], words[1:]
        if not words or words[0] in ("-h", "--help"):
            print(task_overview(program, task))
            return 0
        module, name = TASKS[task]
        model_class, prog = getattr(importlib.import_module(module), name), f"{program} {task}"
    _refuse_trainer_optimizer(words)
    if words[0] not in COMMANDS:
        from probmed.user_errors import did_you_mean

        raise ValueError(f"unknown command {words[0]!r}{did_you_mean(words[0], COMMANDS)}; {program} --help lists them")
    if from_sys_argv:  # LightningCLI then reads the command line itself (without --debug and the task word)
        sys.argv = [sys.argv[0], *words]
    ProbMedCLI(model_class, ProbMedDataModule, args=None if from_sys_argv else words, trainer_defaults=TRAINER_DEFAULTS,
               save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
               parser_kwargs={"prog": prog}, state=state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
