"""Slurm pre-emption: on the requeue signal, checkpoint at the next step boundary on every rank, requeue, stop.

Lightning's own auto-requeue handler saves the checkpoint *inside the signal handler*, i.e. wherever the main thread
happens to be — possibly between a DDP collective on one rank and the same collective on another, where the save's
barrier can deadlock, and mid-step, where the weights and the data position disagree. :class:`SlurmRequeue`
replaces that handler with one that only records the signal; at the end of the next training step all ranks agree
(the flag rides in the step's one small all-reduce, :meth:`probmed.training.nonfinite.NonFiniteGuard.ride`, or,
for a module without that guard, an all-reduce MAX of its own; a signal arriving after that all-reduce is acted on
at the next step's end), write Lightning's ``hpc_ckpt_N.ckpt`` in ``default_root_dir`` (atomically, through
the trainer's checkpoint IO), rank 0 runs ``scontrol requeue $SLURM_JOB_ID``, and training stops cleanly. The
requeued job starts with no ``--ckpt_path``; Lightning then resumes from the newest ``hpc_ckpt_*.ckpt`` itself, and
the data stream position inside it makes the resumed run exact.

The ``probmed`` CLI adds this callback whenever it runs under Slurm with auto-requeue on (Lightning's default;
``--trainer.plugins`` with ``SLURMEnvironment(auto_requeue=false)`` turns it off).

Outside a training step the signal must not kill the task either (the job would end FAILED): one arriving while
the process starts (:func:`catch_early_requeue_signal`, before the trainer exists) is acted on at the first step's
end; one arriving after training ended is ignored — there is nothing left to checkpoint, and the job ends with
the training's exit status. Python restores the default action (terminate) of every signal it handles while the
interpreter shuts down, so from ``atexit`` on the signal is set to SIG_IGN. Loader workers and the fork server
never act on it (:mod:`probmed.data.child_processes`).
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment

from probmed.distributed import world_size
from probmed.training.nonfinite import NonFiniteGuard

log = logging.getLogger(__name__)
_early = {"received": False}


def _record_early(signum, frame) -> None:
    _early["received"] = True


def catch_early_requeue_signal(signum: int = signal.SIGUSR1) -> None:
    """From now until :class:`SlurmRequeue` takes over, remember ``signum`` instead of dying of it (main thread)."""
    signal.signal(signum, _record_early)
    atexit.register(signal.signal, signum, signal.SIG_IGN)  # the interpreter's shutdown restores SIG_DFL otherwise


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
        self.after_training = 0  # signals that arrived after training ended (ignored)
        self._guard: NonFiniteGuard | None = None  # the module's step all-reduce that carries the flag, if any

    def _on_signal(self, signum, frame) -> None:
        self.received = True  # acted on at the end of the current training step

    def _after_fit(self, signum, frame) -> None:
        self.after_training += 1
        print(f"[probmed] {self.signum.name} after training ended: nothing left to checkpoint, ignored", flush=True)

    def setup(self, trainer, pl_module, stage: str) -> None:
        # before Lightning's Trainer._run registers its handlers: Lightning then keeps this one (it registers none
        # where one exists) and restores it at its teardown
        self.received = self.received or (_early["received"] and self.signum == signal.SIGUSR1)
        signal.signal(self.signum, self._on_signal)
        atexit.register(signal.signal, self.signum, signal.SIG_IGN)
        self._guard = getattr(pl_module, "nonfinite", None)
        if isinstance(self._guard, NonFiniteGuard):
            self._guard.ride("requeue", lambda: self.received)
        else:
            self._guard = None

    def on_fit_end(self, trainer, pl_module) -> None:
        signal.signal(self.signum, self._after_fit)

    def _agreed(self, trainer) -> bool:
        if self._guard is not None and "requeue" in self._guard.agreed:
            return self._guard.agreed["requeue"]  # decided in this step's all-reduce
        flag = torch.tensor([int(self.received)], device=trainer.strategy.root_device)
        if world_size() > 1:
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


def requeue_signal(trainer) -> int:
    """The signal the trainer's SLURMEnvironment requeues on (SIGUSR1 unless configured otherwise)."""
    env = trainer._accelerator_connector.cluster_environment
    return getattr(env, "requeue_signal", None) or signal.SIGUSR1


def slurm_requeue_wanted(trainer) -> bool:
    """Under Slurm with auto-requeue on (Lightning's default SLURMEnvironment)."""
    env = trainer._accelerator_connector.cluster_environment
    return isinstance(env, SLURMEnvironment) and env.auto_requeue
