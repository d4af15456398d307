"""Test-only callback for the Slurm tests: observable step markers, and a hold until the requeue signal arrived.

At the start of training step ``at_step`` (global step) each rank writes ``<marker_dir>/step<at_step>.rank<R>``
(the number of its child processes: fork server, resource tracker, loader workers) and then waits until its
:class:`~probmed.training.requeue.SlurmRequeue` has received the signal — so the test signals the job at a known
step (not after a guessed sleep) and the checkpoint step is the same on every run. It then gives the signal a
second to reach the rest of the job step and fails the rank if any of those children died: the checkpoint is
taken at the end of this step from batches already prefetched, so a dead worker would otherwise go unnoticed
(on a real pre-emption the next batch would be lost with it).
With ``after_fit`` the rank writes ``<marker_dir>/fit_ended.rank<R>`` once training has ended (Lightning's handlers
restored) and waits until the signal arrived there, to prove that a late signal does not fail the job.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L

from probmed.training.requeue import SlurmRequeue


def _requeue(trainer) -> SlurmRequeue:
    found = [cb for cb in trainer.callbacks if isinstance(cb, SlurmRequeue)]
    assert found, "no SlurmRequeue callback: not running under Slurm with auto-requeue?"
    return found[0]


def _wait(condition, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s} s for {what}")
        time.sleep(0.05)


def descendants(root: int) -> set[int]:
    """Live descendant processes of ``root`` (from /proc; zombies count as dead)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if state != "Z":
                parents[int(entry.name)] = int(ppid)
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


class StepGate(L.Callback):
    def __init__(self, marker_dir: str, at_step: int = -1, after_fit: bool = False, timeout_s: float = 300):
        self.marker_dir, self.at_step, self.after_fit, self.timeout_s = Path(marker_dir), at_step, after_fit, timeout_s

    def _mark(self, trainer, name: str, value: int = 0) -> None:
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        (self.marker_dir / f"{name}.rank{trainer.global_rank}").write_text(str(value))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.at_step:
            return
        requeue = _requeue(trainer)
        children = descendants(os.getpid())
        self._mark(trainer, f"step{self.at_step}", len(children))
        _wait(lambda: requeue.received, "the requeue signal during training", self.timeout_s)
        time.sleep(1.0)  # Slurm signals the step's processes one after the other
        dead = children - descendants(os.getpid())
        if dead:
            raise RuntimeError(f"{len(dead)} of {len(children)} child processes died of the requeue signal")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if not self.after_fit or stage != "fit":
            return
        requeue = _requeue(trainer)
        self._mark(trainer, "fit_ended")
        _wait(lambda: requeue.after_training > 0, "the requeue signal after training", self.timeout_s)
