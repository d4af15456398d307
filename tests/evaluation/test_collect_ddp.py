"""Evaluation embeddings gathered over real gloo processes equal the single-process set: uneven shards, a rank
with no study, a padding duplicate and a modality present on one rank only."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import _ddp_collect_worker as worker
from conftest import REPO, ddp_child_env, free_port

WORKERS = REPO / "tests"


def _launch(world_size: int, out: Path) -> dict:
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKERS / "_ddp_collect_worker.py"), "--rank", str(r), "--world-size",
                               str(world_size), "--port", str(port), "--out", str(out)],
                              env=ddp_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world_size)]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    return torch.load(out, weights_only=True)


@pytest.mark.ddp
@pytest.mark.parametrize("world_size", [2, 3])
def test_gathered_set_equals_single_process_set(world_size, tmp_path):
    multi = _launch(world_size, tmp_path / "out.pt")
    single, single_labels = worker.collect(worker.SHARES[1][0])
    assert sorted(multi["gathered"]) == sorted(single) == ["cxr", "ecg", "echo"]
    for m, (emb, ids) in single.items():
        mean, log_var, multi_ids = multi["gathered"][m]
        assert multi_ids == ids  # each study once, sorted; no padding row counted twice
        assert len(ids) == sum(worker.PRESENT[m])
        torch.testing.assert_close(mean, emb.mean, rtol=0, atol=0)
        torch.testing.assert_close(log_var, emb.log_var, rtol=0, atol=0)
    assert sorted(multi["labels"]) == sorted(single_labels) and len(single_labels) == worker.N
    for sid, lab in single_labels.items():
        assert torch.equal(multi["labels"][sid], lab)
