"""``probmed`` command line: ``fit | validate | test | predict`` (LightningCLI) and ``data ...`` (corpus tools).

Examples::

    probmed data synth --out data_shards/demo --studies 3000
    probmed fit --config configs/demo.yaml
    probmed test --config configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt
    probmed fit --config configs/demo.yaml --print_config
    probmed predict --config configs/demo.yaml --ckpt_path last.ckpt --embeddings.path emb.npz   # means + variances
"""
from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from probmed.data.datamodule import ProbMedDataModule
from probmed.evaluation.export import EmbeddingWriter
from probmed.module import ProbMedModule

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "probmed"},
    },
}


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


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] == "data":
        from probmed.data.commands import main as data_main

        return data_main(words[1:])
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
