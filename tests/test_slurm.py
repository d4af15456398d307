"""The sbatch template on a real one-machine Slurm cluster (slurm-wlm + munge, no cgroups): 2 tasks = 2 DDP ranks on
CPU (gloo); then SIGUSR1 → checkpoint at a step boundary → requeue → automatic resume, in one TensorBoard run.

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
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, clean_env

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
TEMPLATE = REPO / "configs" / "slurm" / "one_node.sbatch"
SMOKE = REPO / "configs" / "smoke.yaml"

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
    started = subprocess.run([str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=120)
    try:
        if started.returncode != 0:
            pytest.skip(f"Slurm daemons did not start: {(started.stdout + started.stderr)[-1500:]}")
        yield clean_env(SLURM_CONF=str(state / "slurm.conf"), PYTHONPATH=str(REPO),
                        PROBMED=f"{sys.executable} -m probmed")
    finally:
        subprocess.run([str(CLUSTER), "stop", str(state)], capture_output=True, timeout=60)


def _submit(env: dict, run_dir: Path, corpus: Path, extra: list[str], wait: bool) -> tuple[str, Path]:
    """sbatch the template with 2 tasks on this node, CPU only; returns (job id, output file)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "slurm.out"
    cmd = ["sbatch", "--parsable", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
           f"--output={out}", f"--error={out}", *(["--wait"] if wait else []), str(TEMPLATE),
           "--data.data_dir", str(corpus), "--data.batch_size", "4", "--trainer.default_root_dir", str(run_dir),
           "--trainer.logger.init_args.save_dir", str(run_dir), *extra]
    proc = subprocess.run(cmd, cwd=run_dir, env={**env, "CONFIG": str(SMOKE)}, capture_output=True, text=True,
                          timeout=900)
    job = proc.stdout.strip().split(";")[0]
    assert job.isdigit(), f"sbatch failed: {proc.stdout}{proc.stderr}"
    if wait:
        assert proc.returncode == 0, f"job {job} failed:\n{out.read_text()[-5000:]}"
    return job, out


def _job_field(env: dict, job: str, field: str) -> str:
    show = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    match = re.search(rf"\b{field}=(\S+)", show)
    return match.group(1) if match else ""


def _events(version_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(version_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_sbatch_template_runs_two_ranks_as_one_ddp_job(slurm, smoke_corpus, tmp_path):
    job, out = _submit(slurm, tmp_path / "run", smoke_corpus, [], wait=True)
    log = out.read_text()
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log, log[-4000:]  # both Slurm tasks joined one group
    versions = sorted(p.name for p in (tmp_path / "run" / "smoke").iterdir())
    assert versions == [f"job_{job}"], versions  # TensorBoard run named after the job
    scalars = _events(tmp_path / "run" / "smoke" / f"job_{job}")
    assert len(scalars["train/loss"]) == 3 and "perf/samples_per_s" in scalars


@pytest.mark.slow  # ~3 min: two launches plus Slurm's requeue delay
def test_sigusr1_checkpoints_requeues_and_resumes_in_one_tensorboard_run(slurm, smoke_corpus, tmp_path):
    run = tmp_path / "run"
    steps = 24  # 2 epochs × 12 batches per rank
    job, out = _submit(slurm, run, smoke_corpus, ["--trainer.max_epochs", "2", "--trainer.limit_train_batches",
                                                 "12", "--trainer.limit_val_batches", "0"], wait=False)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and not (out.exists() and "MEMBER: 2/2" in out.read_text()):
        time.sleep(0.5)
    assert out.exists() and "MEMBER: 2/2" in out.read_text(), f"job {job} did not start training"
    time.sleep(4)  # some steps in
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm, check=True)  # what --signal=SIGUSR1@90 sends
    while time.monotonic() < deadline and _job_field(slurm, job, "JobState") not in ("COMPLETED", "FAILED",
                                                                                      "CANCELLED", "TIMEOUT"):
        time.sleep(1)
    log = out.read_text()
    assert _job_field(slurm, job, "JobState") == "COMPLETED", log[-5000:]
    assert _job_field(slurm, job, "Restarts") == "1", log[-5000:]
    saved = re.search(r"\[probmed\] SIGUSR1: saved (\S+hpc_ckpt_1\.ckpt) at step (\d+); .*: requeued", log)
    assert saved, log[-5000:]
    assert f"Restoring states from the checkpoint path at {saved.group(1)}" in log, log[-5000:]
    assert Path(saved.group(1)).is_file()

    versions = sorted(p.name for p in (run / "smoke").iterdir())
    assert versions == [f"job_{job}"], versions  # the requeued job appended to its own run
    loss = _events(run / "smoke" / f"job_{job}")["train/loss"]
    logged_steps = sorted(s for s, _ in loss)
    at = int(saved.group(2))
    # both launches logged, the second one continuing after the checkpoint's step, up to the end
    assert logged_steps[-1] == steps - 1 and any(s < at for s in logged_steps) and any(s >= at for s in logged_steps)
