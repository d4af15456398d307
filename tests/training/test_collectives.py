"""Collectives per training step, counted in a real 2-rank gloo fit (so extra host-syncing collectives cannot creep
back): the embeddings' two gathers, one small all-reduce (non-finite + requeue flags), and one packed all-reduce of
the logged metrics only on logging steps."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, clean_env, free_port, run_probmed

SMOKE = str(REPO / "configs" / "smoke.yaml")
TESTS = str(REPO / "tests")

#: per step: the no-grad gather of masks/group ids (all_gather), the differentiable gather of means and
#: log-variances (functional), the non-finite + requeue flags (all_reduce); no batch-size check (ranks pad their
#: rows to the data module's batch size)
EVERY_STEP = {"all_gather": 1, "functional.all_gather_single_autograd": 1, "all_reduce": 1}
#: a logging step adds the one packed reduction of the logged metrics
LOGGING_STEP = {**EVERY_STEP, "all_reduce": 2}


@pytest.mark.ddp
def test_two_rank_fit_runs_one_small_all_reduce_per_step_and_one_more_on_logging_steps(smoke_corpus, tmp_path):
    extra = tmp_path / "count.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {
        "log_every_n_steps": 2, "limit_train_batches": 4, "limit_val_batches": 0, "enable_checkpointing": False,
        "default_root_dir": str(tmp_path),
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": str(tmp_path), "name": "smoke"}},
        "callbacks": [{"class_path": "probmed.training.SlurmRequeue", "init_args": {"signum": 10}},
                      {"class_path": "_collective_counter.CollectiveCounter",
                       "init_args": {"out": str(tmp_path / "counts")}}],
    }}))
    path = os.pathsep.join(p for p in (TESTS, str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    fit = run_probmed(["fit", "--config", SMOKE, "--config", str(extra), "--data.data_dir", str(smoke_corpus),
                       "--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.batch_size", "4"],
                      cwd=tmp_path, timeout=400, PYTHONPATH=path)
    assert fit.returncode == 0, fit.output[-4000:]
    for rank in (0, 1):
        steps = json.loads((tmp_path / f"counts.rank{rank}.json").read_text())
        assert len(steps) == 4
        # log_every_n_steps 2: steps 1 and 3 (0-based) are logged
        assert steps == [EVERY_STEP, LOGGING_STEP, EVERY_STEP, LOGGING_STEP], f"rank {rank}: {steps}"


@pytest.mark.ddp
def test_metric_means_and_step_flags_agree_across_two_gloo_ranks(tmp_path):
    """The packed metric mean equals the per-metric mean (NaN stays NaN, bf16 comes back float32), and a rider
    flag raised on one rank only is agreed on both, in the same all-reduce as the (finite) loss flag."""
    port, out = free_port(), tmp_path / "sync"
    env = clean_env(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "_step_sync_worker.py"), "--rank", str(r),
                               "--world-size", "2", "--port", str(port), "--out", str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(logs)
    for r in range(2):
        got = json.loads(out.with_name(f"sync.rank{r}").read_text())
        assert got["means"] == {"a": 1.5, "b": None, "c": 0.25}
        assert got["dtypes"] == ["torch.float32"]
        assert got["finite"] is True and got["skipped"] == 0
        assert got["agreed"] == {"requeue": True}
