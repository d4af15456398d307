"""Shared fixtures: one ECG-bank cache and one tiny corpus per test session, and a clean subprocess runner."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The synthetic ECG bank is cached under $PROBMED_CACHE: one private cache per session, shared by every test
# that generates a corpus (the bank costs ~15 s to simulate; the user's own cache is never touched).
os.environ["PROBMED_CACHE"] = tempfile.mkdtemp(prefix="probmed-test-cache-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# `probmed data build` reads burned-in text with Tesseract (probmed.data.burned_in_text). Where it is not installed
# and this is not CI (whose .ci/run installs it), every build in the suite runs with the OCR off, said in the header;
# tests/hostile/test_hostile_burned_in_text.py then skips, naming the package to install.
from probmed.data.burned_in_text import engine as _ocr_engine  # noqa: E402

OCR_OFF = _ocr_engine() is None and not os.environ.get("CI")
if OCR_OFF:
    os.environ.setdefault("PROBMED_BURNED_IN_TEXT", "off")


def pytest_report_header(config):
    if OCR_OFF:
        return ("no Tesseract with its English model: data builds run with --burned-in-text off and the OCR tests "
                "skip (apt-get install tesseract-ocr tesseract-ocr-eng to run them)")
    return None

#: the smoke config every quick CLI test trains
SMOKE = str(REPO / "configs" / "smoke.yaml")

#: arguments of `probmed data synth` matching configs/smoke.yaml
SMOKE_SYNTH = ["--studies", "120", "--seed", "0", "--cxr-size", "64", "--echo-size", "32", "--echo-frames", "8",
               "--ecg-rate", "100", "--shard-size", "20", "--workers", "1", "--quiet"]


@pytest.fixture(scope="session")
def smoke_corpus(tmp_path_factory) -> Path:
    """A 120-study corpus (train 5 shards, val 1, test 1) in the sizes configs/smoke.yaml reads."""
    from probmed.data.commands import main

    out = tmp_path_factory.mktemp("corpus") / "smoke"
    assert main(["synth", "--out", str(out), *SMOKE_SYNTH]) == 0
    return out


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child `probmed` process: no inherited launcher/cluster variables (a stray
    LOCAL_RANK or SLURM_* would make Lightning think it is already inside a distributed job)."""
    drop = ("SLURM_", "LOCAL_RANK", "MASTER_", "WORLD_SIZE", "NODE_RANK", "RANK", "GROUP_RANK", "PL_", "TORCHELASTIC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def run_probmed(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m probmed ARGS` in a clean child process; the output is kept for assertions."""
    proc = subprocess.run([sys.executable, "-m", "probmed", *args], cwd=cwd, env=clean_env(**env), text=True,
                          capture_output=True, timeout=timeout)
    proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    return proc


def free_port() -> int:
    """A TCP port free on the loopback interface now (for a gloo rendezvous of test processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_c_compiler() -> bool:
    """Whether torch.compile's CPU backend can build kernels here (it needs a C compiler on PATH)."""
    return bool(shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))


def smoke_fit_args(corpus: Path, run_dir: Path) -> list[str]:
    """`probmed fit|test` arguments: the smoke config on ``corpus``, logs and checkpoints under ``run_dir``."""
    return ["--config", SMOKE, "--data.data_dir", str(corpus), "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir)]


def run_scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every TensorBoard scalar of the newest smoke run under ``run_dir``: ``{tag: [values in step order]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (version,) = sorted((run_dir / "smoke").glob("version_*"))[-1:]
    events = EventAccumulator(str(version))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


#: environment variables a DDP child must not inherit (they would make it think it is inside another job)
_DDP_SCRUB = {"LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT", "TORCHELASTIC_RUN_ID"}


def ddp_child_env() -> dict[str, str]:
    """The environment of a hand-launched gloo worker (tests/_ddp_*_worker.py): no launcher variables, the eager
    loss kernel, one thread, and the repository and tests/ importable."""
    env = {k: v for k, v in os.environ.items()
           if k not in _DDP_SCRUB and not k.startswith("SLURM_") and not k.startswith("MASTER_")}
    env["PROBMED_LOSS_COMPILE"] = "0"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env
