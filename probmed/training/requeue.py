"""Slurm pre-emption: on the requeue signal, checkpoint at the next step boundary on every rank, requeue, stop.

Lightning's own auto-requeue handler saves the checkpoint *inside the signal handler*, i.e. wherever the main thread
happens to be — possibly between a DDP collective on one rank and the same collective on another, where the save's
barrier can deadlock, and mid-step, where the weights and the data position disagree. :class:`SlurmRequeue`
replaces that handler with one that only records the signal; at the end of the next training step all ranks agree
(all-reduce MAX of the flag), write Lightning's ``hpc_ckpt_N.ckpt`` in ``default_root_dir`` (atomically, through
the trainer's checkpoint IO), rank 0 runs ``scontrol requeue $SLURM_JOB_ID``, and training stops cleanly. The
requeued job starts with no ``--ckpt_path``; Lightning then resumes from the newest ``hpc_ckpt_*.ckpt`` itself, and
the data stream position inside it makes the resumed run exact.

The ``probmed`` CLI adds this callback whenever it runs under Slurm with auto-requeue on (Lightning's default;
``--trainer.plugins`` with ``SLURMEnvironment(auto_requeue=false)`` turns it off).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)


def requeue_command() -> list[str]:
    """``scontrol requeue`` for this job (array jobs: ``ARRAYID_TASKID``)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not job.replace("_", "").isdigit():
        raise ValueError(f"unexpected Slurm job id {job!r}")
    return ["scontrol", "requeue", job]


class SlurmRequeue(L.Callback):
    """Checkpoint-and-requeue on ``signum`` (default SIGUSR1, as in ``#SBATCH --signal=SIGUSR1@90``) at a step
    boundary agreed by all ranks."""

    def __init__(self, signum: int = signal.SIGUSR1):
        self.signum = signal.Signals(signum)
        self.received = False

    def _on_signal(self, signum, frame) -> None:
        self.received = True  # acted on at the end of the current training step

    def setup(self, trainer, pl_module, stage: str) -> None:
        # after Lightning registered its own handler (in Trainer._run): replace it; teardown restores the original
        signal.signal(self.signum, self._on_signal)

    def _agreed(self, trainer) -> bool:
        flag = torch.tensor([int(self.received)], device=trainer.strategy.root_device)
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._agreed(trainer):
            return
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # all ranks call it; rank 0 writes (atomic IO)
        if trainer.is_global_zero:
            cmd = requeue_command()
            result = subprocess.run(cmd, capture_output=True, text=True)
            status = "requeued" if result.returncode == 0 else f"requeue FAILED ({result.stderr.strip()})"
            print(f"[probmed] {self.signum.name}: saved {path} at step {trainer.global_step}; {' '.join(cmd)}: "
                  f"{status}", flush=True)
        trainer.should_stop = True


def slurm_requeue_wanted(trainer) -> bool:
    """Under Slurm with auto-requeue on (Lightning's default SLURMEnvironment)."""
    env = trainer._accelerator_connector.cluster_environment
    return isinstance(env, SLURMEnvironment) and env.auto_requeue
