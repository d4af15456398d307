"""Loader child processes (the fork server and DataLoader workers) under a cluster's signals and the OOM killer.

Two promises, both kernel-level so they hold whatever the Python code of a child is doing:

* **Requeue signals never reach a child.** ``scancel --signal=USR1`` and ``#SBATCH --signal=SIGUSR1@90`` signal
  every process of the job step, loader workers included; a worker has no handler, dies, and the DataLoader fails
  the run. :func:`requeue_signals_blocked` blocks SIGUSR1 and SIGUSR2 in the training process's main thread while
  children are started: a child inherits the blocked mask (across fork and exec), so the signal stays pending
  there for ever and is never acted on, while the training process unblocks it right after and receives a
  signal that arrived meanwhile (a blocked signal is held, not lost).
* **Children die with the trainer.** Workers are forked from the fork server, not from the trainer; they hold the
  fork server's "alive" pipe and watch only their parent (the fork server), so a trainer killed with SIGKILL (the
  OOM killer) used to leave the fork server and its workers running. The fork server imports this module first
  (its preload list, :func:`probmed.data.streams.worker_context`) and asks the kernel for SIGKILL when its parent
  dies (``prctl(PR_SET_PDEATHSIG)``); each worker does the same (:func:`init_worker`), so killing the trainer takes
  the fork server and then every worker down at once.

``PR_SET_PDEATHSIG`` fires when the parent *thread* that started the child exits, so the fork server is started
from the main thread (:func:`start_fork_server`); where it is started from another thread, it is not tied to it.
Linux only; elsewhere these are no-ops.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Iterator

#: signals a child ignores: Slurm's requeue signal (SIGUSR1 in the sbatch templates; SIGUSR2 is its usual
#: alternative in ``SLURMEnvironment(requeue_signal=...)``)
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
#: the pid of the process that started the fork server from its main thread (read by the fork server itself)
PARENT_ENV = "PROBMED_FORK_SERVER_PARENT"
_PR_SET_PDEATHSIG = 1


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def requeue_signals_blocked() -> Iterator[None]:
    """Block :data:`REQUEUE_SIGNALS` in this thread for the duration (children started meanwhile inherit the
    block); a signal arriving meanwhile is delivered when the block is lifted."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, REQUEUE_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def die_with_parent(expected_parent: int | None = None) -> bool:
    """Ask the kernel to SIGKILL this process when its parent (thread) dies; if ``expected_parent`` is given and
    is no longer the parent (it died before the request), exit now. False where unsupported (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)
    return True


def init_worker(worker_id: int, nice: int = 0) -> None:
    """DataLoader ``worker_init_fn``: ignore the requeue signals (also where the worker did not inherit the block),
    die with the parent (the fork server, or the trainer under ``spawn``) and add ``nice`` to this worker's
    niceness (where the platform has ``os.nice``)."""
    for signum in REQUEUE_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    die_with_parent()
    if nice and hasattr(os, "nice"):
        os.nice(nice)


def start_fork_server(ctx) -> None:
    """Start ``ctx``'s fork server now (from the main thread: tied to this process's life) with the requeue
    signals blocked; no-op if it runs already or ``ctx`` is not a fork-server context."""
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    if _in_main_thread():
        os.environ[PARENT_ENV] = str(os.getpid())
    else:
        os.environ.pop(PARENT_ENV, None)
    with requeue_signals_blocked():
        forkserver.ensure_running()


def _configure_fork_server() -> None:
    """Run when the fork server imports this module (its first preload): die with the trainer that started it."""
    parent = os.environ.get(PARENT_ENV)
    is_fork_server = sys.argv == ["-c"] and "multiprocessing.forkserver" in sys.modules
    if is_fork_server and parent and parent.isdigit():
        die_with_parent(int(parent))


_configure_fork_server()
