"""Test-only callback (imported by child `probmed fit` processes through PYTHONPATH): every rank saves its own
final parameters, so a test can check that DDP ranks did not diverge."""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch


class SaveRankWeights(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # parameters only: DDP broadcasts buffers (batch-norm statistics) from rank 0 at the next forward, so after
        # the last step each rank still holds its own
        state = {k: v.detach().cpu().clone() for k, v in pl_module.named_parameters()}
        buffers = {k: v.detach().cpu().clone() for k, v in pl_module.named_buffers()}
        info = {"global_rank": trainer.global_rank, "world_size": trainer.world_size, "node_rank": trainer.node_rank,
                "skipped_nonfinite": pl_module.nonfinite.skipped,
                "skipped_nonfinite_buffers": pl_module.nonfinite.skipped_buffers, "global_step": trainer.global_step,
                "pid": os.getpid()}
        torch.save({"state": state, "buffers": buffers, "info": info}, self.out_dir / f"rank{trainer.global_rank}.pt")
