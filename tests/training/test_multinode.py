"""Two "nodes" on one machine train as one DDP job (gloo, CPU); a NaN loss on rank 1 only, and an infinite
batch-norm statistic on rank 0 only, are each skipped on both ranks (one run checks all: each 2-process job costs
~a minute on 2 shared cores)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, clean_env, free_port, run_scalars, smoke_fit_args
from probmed.training.nonfinite import INJECT_ENV


@pytest.mark.ddp
def test_two_nodes_one_job_and_a_nan_on_rank1_or_an_inf_buffer_on_rank0_is_skipped_everywhere(smoke_corpus,
                                                                                                  tmp_path):
    weights = tmp_path / "weights"
    args = [sys.executable, "-m", "probmed", "fit", *smoke_fit_args(smoke_corpus, tmp_path),
            "--trainer.strategy", "ddp", "--trainer.num_nodes", "2", "--trainer.devices", "1",
            "--data.batch_size", "4",
            "--trainer.callbacks+=_rank_weights.SaveRankWeights", f"--trainer.callbacks.out_dir={weights}"]
    shared = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
              "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
              INJECT_ENV: "1:1,0:2:buffers"}  # test-only: rank 1's loss at batch 1 becomes NaN; at batch 2 a
    # batch-norm running statistic of rank 0 becomes inf (the loss stays finite)
    nodes = [subprocess.Popen(args, cwd=tmp_path, env=clean_env(NODE_RANK=str(n), **shared), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for n in (0, 1)]
    outputs = []
    for proc in nodes:
        try:
            outputs.append(proc.communicate(timeout=400)[0])
        finally:
            proc.kill()
    for proc, out in zip(nodes, outputs):
        assert proc.returncode == 0, out[-4000:]
    both = "".join(outputs)
    assert "MEMBER: 1/2" in both and "MEMBER: 2/2" in both  # one process group of two ranks, one per "node"

    ranks = [torch.load(weights / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["info"]["node_rank"] for r in ranks] == [0, 1]
    assert all(r["info"]["world_size"] == 2 for r in ranks)
    assert [r["info"]["skipped_nonfinite"] for r in ranks] == [2, 2]  # each rank agreed to the other's skip
    assert [r["info"]["skipped_nonfinite_buffers"] for r in ranks] == [1, 1]
    for r in ranks:  # the poisoned statistic was put back (DDP broadcasts rank 0's buffers to all at each forward)
        assert all(torch.isfinite(v).all() for v in r["buffers"].values() if v.is_floating_point())
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"ranks diverged: {differing[:5]}"  # identical updates on both ranks, skip included

    scalars = run_scalars(tmp_path)
    assert scalars["train/skipped_nonfinite"] == [0.0, 1.0, 2.0]
    assert scalars["train/skipped_nonfinite_buffers"] == [0.0, 0.0, 1.0]
    # the skipped steps log NaN, not the previous step's values again
    assert [math.isfinite(v) for v in scalars["train/loss"]] == [True, False, False]
