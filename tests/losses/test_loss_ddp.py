"""World-size exactness with real processes (CPU, gloo): loss and every parameter gradient of a multi-rank run,
with DDP-style gradient averaging, equal the single-process computation on the whole global batch (float64).

One launch per world size runs every loss term at once (see tests/_ddp_loss_worker.py); the batch has a modality
missing on one rank only and positive groups that span ranks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import _ddp_loss_worker as worker
from conftest import REPO, ddp_child_env, free_port

WORKERS = REPO / "tests"


def _launch(world_size: int, out: Path, timeout: float = 240.0) -> dict:
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKERS / "_ddp_loss_worker.py"), "--rank", str(r), "--world-size", str(world_size),
             "--port", str(port), "--out", str(out)],
            env=ddp_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(world_size)
    ]
    logs = []
    try:
        for p in procs:
            stdout, _ = p.communicate(timeout=timeout)
            logs.append(stdout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    assert codes == [0] * world_size, "rank failures:\n" + "\n----\n".join(logs)
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def reference():
    return worker.single_process_reference()


@pytest.fixture(scope="module")
def reference_unseeded():
    return worker.single_process_reference(seeded_sampling=False)


@pytest.mark.ddp
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_multi_rank_equals_single_process(world_size, reference, reference_unseeded, tmp_path):
    got = _launch(world_size, tmp_path / f"ddp{world_size}.pt")
    assert got["world_size"] == world_size
    assert_equals_reference(got, reference)
    if world_size > 1:
        assert "same local batch size" in got["uneven_error"]
        # ranks holding 5 and 7 rows (3, 5 and 4 with three ranks), padded to a common bound for the gathers
        assert_equals_reference(got["padded"], reference_unseeded)


def assert_equals_reference(got: dict, reference: dict) -> None:
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["total"], reference["total"], **tol)
    assert set(got["parts"]) == set(reference["parts"])
    for k, v in reference["parts"].items():
        torch.testing.assert_close(got["parts"][k], v, **tol, msg=lambda m, k=k: f"part {k}: {m}")
    for k, v in reference["extras"].items():
        if k.startswith(("logit_scale", "logit_shift", "logit_bias", "pos_logit", "kl/", "pair/", "infonce/")):
            torch.testing.assert_close(got["extras"][k], v, **tol, msg=lambda m, k=k: f"extra {k}: {m}")
    assert set(got["grads"]) == set(reference["grads"])
    nonzero = 0
    for k, v in reference["grads"].items():
        torch.testing.assert_close(got["grads"][k], v, **tol, msg=lambda m, k=k: f"grad {k}: {m}")
        nonzero += int(v.abs().max() > 0)
    # every head and every learnable temperature / scale / shift received a gradient
    assert nonzero >= len(reference["grads"]) - 2  # MedProbCLIP's shift and SigLIP-free shifts may be exactly 0


def test_reference_sanity(reference):
    """The reference itself: finite, every part present, the learnable temperatures get gradients."""
    assert torch.isfinite(reference["total"])
    names = set(reference["parts"])
    assert {"infonce/text-cxr", "emcl/cxr-ecg", "siglip/text-cxr", "pcmepp/cxr-text", "medprobclip/cxr-text",
            "synthetic/cxr", "synthetic/echo", "vib"} <= names
    for k, g in reference["grads"].items():
        if k.startswith("objective.") and ("log_scale" in k or k.endswith((".scale", ".bias"))):
            assert g.abs() > 0, k
