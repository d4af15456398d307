"""``probmed`` command line: ``fit | validate | test | predict`` (LightningCLI) and ``data ...`` (corpus tools).

Examples::

    probmed data synth --out data_shards/demo --studies 3000
    probmed fit --config configs/demo.yaml
    probmed test --config configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt
    probmed fit --config configs/demo.yaml --print_config
    probmed distill fit --config configs/presets/m3bind_distill.yaml      (M3Bind stage 2, see probmed.distill)
"""
from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from probmed.data.datamodule import ProbMedDataModule
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

    def before_instantiate_classes(self) -> None:
        import torch

        config = self.config.get(self.subcommand, self.config)
        torch.set_float32_matmul_precision(config.get("float32_matmul_precision", "high"))


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
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
