"""``probmed`` command line: ``fit | validate | test | predict`` (LightningCLI) and ``data ...`` (corpus tools).

Examples::

    probmed data synth --out data_shards/demo --studies 3000
    probmed fit --config configs/demo.yaml
    probmed test --config configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt
    probmed fit --config configs/demo.yaml --print_config
    probmed predict --config configs/demo.yaml --ckpt_path last.ckpt --embeddings.path emb.npz   # means + variances
    probmed distill fit --config configs/presets/m3bind_distill.yaml      (M3Bind stage 2, see probmed.distill)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from probmed.data.datamodule import ProbMedDataModule
from probmed.evaluation.export import EmbeddingWriter
from probmed.module import ProbMedModule
from probmed.training.checkpoint_io import AtomicCheckpointIO, check_checkpoint_file
from probmed.training.requeue import SlurmRequeue, catch_early_requeue_signal, requeue_signal, slurm_requeue_wanted

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "probmed"},
    },
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


class ProbMedCLI(LightningCLI):
    """LightningCLI with ProbMed's module and data module fixed and TensorBoard logging by default."""

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

    def _parse_ckpt_path(self) -> None:
        """Refuse a truncated ``--ckpt_path`` with a clear error before LightningCLI reads its hyperparameters."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry") and Path(ckpt_path).is_file():
            check_checkpoint_file(ckpt_path)
        super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs):
        """The configured trainer, with checkpoints written atomically unless the config chose its own IO."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if slurm_requeue_wanted(trainer):
            trainer.callbacks.append(SlurmRequeue(requeue_signal(trainer)))
        return trainer


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("SLURM_JOB_ID") and words[:1] == ["fit"]:  # a requeue signal during start-up must not kill
        catch_early_requeue_signal()
    if words and words[0] == "data":
        from probmed.data.commands import main as data_main

        return data_main(words[1:])
    if words and words[0] == "distill":  # M3Bind stage 2: `probmed distill fit --config ...`
        from probmed.distill import TextDistillation

        if argv is None:  # LightningCLI reads sys.argv itself: drop the `distill` word from it
            sys.argv = [sys.argv[0], *words[1:]]
        LightningCLI(TextDistillation, ProbMedDataModule, args=None if argv is None else words[1:],
                     trainer_defaults=TRAINER_DEFAULTS, save_config_kwargs={"overwrite": True})
        return 0
    ProbMedCLI(
        ProbMedModule,
        ProbMedDataModule,
        args=argv,  # None: LightningCLI reads sys.argv itself
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
