"""The sbatch template on a real one-machine Slurm cluster (slurm-wlm + munge, no cgroups): 2 tasks = 2 DDP ranks on
CPU (gloo), each with 2 DataLoader workers (started from the fork server); then SIGUSR1 mid-run → checkpoint at a
step boundary → requeue → automatic resume, in one TensorBoard run, to the uninterrupted run's weights bit for bit;
and a SIGUSR1 after training ended leaves the job COMPLETED. The signals are sent when the run reaches a marked step
(tests/_slurm_gate.py), never after a guessed sleep.

Needs root and Debian's slurm-wlm/munge (tests/slurm/cluster.sh install); skipped, with the reason, where the
cluster cannot be installed or started."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, clean_env, free_port

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
TEMPLATE = REPO / "configs" / "slurm" / "one_node.sbatch"
SMOKE = REPO / "configs" / "smoke.yaml"
STEPS = 6  # one epoch of 6 steps per rank
SIGNAL_AT = 3  # the mid-run signal arrives during this step; the checkpoint is taken at its end (step 4)
#: 2 ranks × 2 loader workers each, one epoch, no validation (what the requeue jobs run)
RUN_ARGS = ["--data.num_workers", "2", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(STEPS),
            "--trainer.limit_val_batches", "0"]
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL")

pytestmark = [pytest.mark.ddp, pytest.mark.slurm]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running localhost cluster; yields the environment for Slurm clients. Daemons are always stopped."""
    if os.geteuid() != 0:
        pytest.skip("the test Slurm cluster needs root (slurmd runs jobs as their user)")
    if shutil.which("slurmctld") is None:
        install = subprocess.run([str(CLUSTER), "install"], capture_output=True, text=True, timeout=900)
        if install.returncode != 0:
            pytest.skip(f"slurm-wlm/munge could not be installed: {install.stderr[-500:]}")
    state = tmp_path_factory.mktemp("slurm")
    ports = {"SLURMCTLD_PORT": str(free_port()), "SLURMD_PORT": str(free_port())}  # another test cluster may run
    started = subprocess.run([str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **ports})
    try:
        if started.returncode != 0:
            pytest.skip(f"Slurm daemons did not start: {(started.stdout + started.stderr)[-1500:]}")
        yield clean_env(SLURM_CONF=str(state / "slurm.conf"), PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}",
                        PROBMED=f"{sys.executable} -m probmed")
    finally:
        subprocess.run([str(CLUSTER), "stop", str(state)], capture_output=True, timeout=60)


def _submit(env: dict, run_dir: Path, corpus: Path, extra: list[str]) -> tuple[str, Path]:
    """sbatch the template with 2 tasks on this node, CPU only (no wait); returns (job id, output file)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "slurm.out"
    cmd = ["sbatch", "--parsable", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
           f"--output={out}", f"--error={out}", str(TEMPLATE),
           "--data.data_dir", str(corpus), "--data.batch_size", "4", "--trainer.default_root_dir", str(run_dir),
           "--trainer.logger.init_args.save_dir", str(run_dir), *extra]
    proc = subprocess.run(cmd, cwd=run_dir, env={**env, "CONFIG": str(SMOKE)}, capture_output=True, text=True,
                          timeout=120)
    job = proc.stdout.strip().split(";")[0]
    assert job.isdigit(), f"sbatch failed: {proc.stdout}{proc.stderr}"
    return job, out


def _gate(run_dir: Path, **init_args) -> list[str]:
    """Extra CLI arguments adding the test's StepGate callback (markers under run_dir/markers)."""
    path = run_dir / "gate.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    gate = {"class_path": "_slurm_gate.StepGate", "init_args": {"marker_dir": str(run_dir / "markers"), **init_args}}
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [gate]}}))
    return ["--config", str(path)]


def _job_field(env: dict, job: str, field: str) -> str:
    show = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    match = re.search(rf"\b{field}=(\S+)", show)
    return match.group(1) if match else ""


def _log(out: Path) -> str:
    return out.read_text()[-6000:] if out.exists() else "(no output yet)"


def _signal_when_marked(env: dict, job: str, out: Path, markers: list[Path], timeout_s: float = 300) -> None:
    """scancel --signal=USR1 (what #SBATCH --signal=SIGUSR1@90 sends: every task of the job's steps, loader
    workers included) as soon as every marker exists."""
    deadline = time.monotonic() + timeout_s
    while not all(m.exists() for m in markers):
        assert time.monotonic() < deadline and _job_field(env, job, "JobState") not in FINAL, \
            f"job {job} never reached {[m.name for m in markers]}:\n{_log(out)}"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True, timeout=60)


def _wait_final(env: dict, job: str, out: Path, timeout_s: float = 400) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := _job_field(env, job, "JobState")) not in FINAL:
        assert time.monotonic() < deadline, f"job {job} still {state}:\n{_log(out)}"
        time.sleep(0.5)
    return state


def _events(version_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(version_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _final_weights(version_dir: Path) -> dict[str, torch.Tensor]:
    """state_dict of the checkpoint ModelCheckpoint wrote at the end of the run (the highest step)."""
    ckpts = sorted((version_dir / "checkpoints").glob("*.ckpt"), key=lambda p: int(re.search(r"step=(\d+)", p.name)[1]))
    assert ckpts and f"step={STEPS}" in ckpts[-1].name, ckpts
    return torch.load(ckpts[-1], map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(slurm, smoke_corpus, tmp_path_factory):
    """The reference job: the same run, never interrupted during training; it receives SIGUSR1 only after
    training has ended. Returns (job id, run dir, output file, final state)."""
    run = tmp_path_factory.mktemp("uninterrupted")
    job, out = _submit(slurm, run, smoke_corpus, [*RUN_ARGS, *_gate(run, after_fit=True)])
    _signal_when_marked(slurm, job, out, [run / "markers" / f"fit_ended.rank{r}" for r in (0, 1)])
    return job, run, out, _wait_final(slurm, job, out)


def test_sbatch_template_runs_two_ranks_with_workers_and_survives_a_late_signal(slurm, uninterrupted):
    job, run, out, state = uninterrupted
    log = out.read_text()
    assert state == "COMPLETED" and _job_field(slurm, job, "Restarts") == "0", log[-6000:]
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log, log[-4000:]  # both Slurm tasks joined one group
    assert log.count("SIGUSR1 after training ended: nothing left to checkpoint, ignored") == 2, log[-4000:]
    versions = sorted(p.name for p in (run / "smoke").iterdir())
    assert versions == [f"job_{job}"], versions  # TensorBoard run named after the job
    scalars = _events(run / "smoke" / f"job_{job}")
    assert [s for s, _ in scalars["train/loss"]] == list(range(STEPS)) and "perf/data_wait_fraction" in scalars


def test_sigusr1_with_loader_workers_checkpoints_requeues_and_resumes_bit_exactly(slurm, smoke_corpus, tmp_path,
                                                                                   uninterrupted):
    run = tmp_path / "run"
    job, out = _submit(slurm, run, smoke_corpus, [*RUN_ARGS, *_gate(run, at_step=SIGNAL_AT)])
    _signal_when_marked(slurm, job, out, [run / "markers" / f"step{SIGNAL_AT}.rank{r}" for r in (0, 1)])
    state = _wait_final(slurm, job, out)
    log = out.read_text()
    for rank in (0, 1):  # fork server, resource tracker and 2 workers were running when the signal came
        assert int((run / "markers" / f"step{SIGNAL_AT}.rank{rank}").read_text()) >= 3
    assert "died of the requeue signal" not in log and "exited unexpectedly" not in log, log[-6000:]
    assert state == "COMPLETED", log[-6000:]
    assert _job_field(slurm, job, "Restarts") == "1", log[-6000:]
    saved = re.search(r"\[probmed\] SIGUSR1: saved (\S+hpc_ckpt_1\.ckpt) at step (\d+); .*: requeued", log)
    assert saved and int(saved.group(2)) == SIGNAL_AT + 1, log[-6000:]
    assert f"Restoring states from the checkpoint path at {saved.group(1)}" in log, log[-6000:]
    assert Path(saved.group(1)).is_file()

    versions = sorted(p.name for p in (run / "smoke").iterdir())
    assert versions == [f"job_{job}"], versions  # the requeued job appended to its own run
    logged_steps = sorted(s for s, _ in _events(run / "smoke" / f"job_{job}")["train/loss"])
    assert logged_steps == list(range(STEPS)), logged_steps  # each step once: 0..3 before, 4..5 after the requeue

    ref_job, ref_run, _, ref_state = uninterrupted
    assert ref_state == "COMPLETED"
    reference = _final_weights(ref_run / "smoke" / f"job_{ref_job}")
    resumed = _final_weights(run / "smoke" / f"job_{job}")
    assert reference.keys() == resumed.keys()
    differing = [k for k in reference if not torch.equal(reference[k], resumed[k])]
    assert not differing, f"resumed weights differ from the uninterrupted run's in {differing[:10]}"


def test_requeue_signal_during_start_up_is_kept_and_after_training_is_ignored():
    """No cluster needed: the handlers themselves, in a child process (they change process-wide signal state)."""
    code = """if True:
        import os, signal
        from probmed.training.requeue import SlurmRequeue, catch_early_requeue_signal
        catch_early_requeue_signal()                 # what `probmed fit` does first under Slurm
        os.kill(os.getpid(), signal.SIGUSR1)         # arrives while the process imports and builds the trainer
        callback = SlurmRequeue()
        callback.setup(None, None, "fit")
        print("received at setup:", callback.received)
        callback.on_fit_end(None, None)
        os.kill(os.getpid(), signal.SIGUSR1)         # arrives after training ended
        print("after training:", callback.after_training)
    """
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # neither signal killed the process
    assert "received at setup: True" in proc.stdout and "after training: 1" in proc.stdout
    assert "SIGUSR1 after training ended: nothing left to checkpoint, ignored" in proc.stdout
