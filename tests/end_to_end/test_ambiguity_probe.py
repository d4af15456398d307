"""experiments/ambiguity_probe.py --embeddings: the variance-against-ambiguity breakdown reads the shards' recorded
ambiguity and mechanisms by study id, and the oracle 10-bin test ranks by the recorded ambiguity itself."""
from __future__ import annotations

import io
import json
import sys
import tarfile

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import ambiguity_probe  # noqa: E402


def _shard(path, metas):
    with tarfile.open(path, "w") as tar:
        for i, meta in enumerate(metas):
            data = json.dumps(meta).encode()
            info = tarfile.TarInfo(f"s{i:05d}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_variance_breakdown_matches_scipy_on_the_studies_that_have_the_modality(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    amb = rng.uniform(0, 1, n)
    metas = [{"study_id": f"s{i:05d}", "ambiguity": {"ecg": float(amb[i])},
              "quality": {"ecg": {"static_noise": float(0.5 * amb[i]), "electrodes": "flat" if i % 4 == 0 else "none"}}}
             for i in range(n)]
    _shard(tmp_path / "test-000000.tar", metas)
    var = np.exp(rng.normal(size=(n, 3)) + 2 * amb[:, None]).astype(np.float32)
    present = np.ones(n, bool)
    present[:5] = False  # five studies without an ECG are left out
    ids = np.array([m["study_id"] for m in metas])[::-1]  # the .npz's own order, not the shards'
    labels = (np.arange(n) % 2).astype(np.float32)[:, None]  # odd studies positive
    np.savez(tmp_path / "emb.npz", study_id=ids, labels=labels[::-1], label_names=np.array(["lvh"]),
             **{"ecg/var": var[::-1], "ecg/present": present[::-1]})
    got = ambiguity_probe.variance_against_ambiguity(tmp_path / "emb.npz", tmp_path)["ecg"]
    log_var = np.log(var).mean(1)
    assert got["n"] == 35
    assert got["rho"] == pytest.approx(spearmanr(log_var[5:], amb[5:]).correlation, abs=1e-3)
    assert got["mechanisms"]["static_noise"] == pytest.approx(got["rho"], abs=1e-3)  # a monotone function of it
    flat = [i for i in range(5, n) if i % 4 == 0]
    assert got["mechanisms"]["electrodes"]["flat"] == pytest.approx(np.median(log_var[flat]), abs=0.01)
    assert sum(b[0] for b in got["bands"]) == 35
    odd, even = [i for i in range(5, n) if i % 2], [i for i in range(5, n) if i % 2 == 0]
    assert got["findings"]["lvh"] == pytest.approx((np.median(log_var[odd]), np.median(log_var[even])), abs=0.01)


def test_oracle_recall_bins_each_modality_by_its_own_recorded_ambiguity(tmp_path):
    n = 20
    # cxr query i finds its own ecg exactly when i < 10; the ambiguity rises with i: R@1 100 % then 0 %
    gallery = np.eye(n, dtype=np.float32)
    query = gallery.copy()
    query[10:] = np.roll(gallery[10:], 1, axis=0)
    amb = np.linspace(0, 1, n, dtype=np.float32)
    np.savez(tmp_path / "emb.npz", study_id=np.array([f"s{i}" for i in range(n)]),
             **{"cxr/mean": query, "cxr/present": np.ones(n, bool), "cxr/ambiguity": amb,
                "ecg/mean": gallery, "ecg/present": np.ones(n, bool), "ecg/ambiguity": amb[::-1].copy()})
    got = ambiguity_probe.oracle_binned_recall(tmp_path / "emb.npz")
    assert got["cxr"]["recall"] == [100.0] * 5 + [0.0] * 5
    assert got["cxr"]["pearson"] == pytest.approx(np.corrcoef(np.arange(10), [1] * 5 + [0] * 5)[0, 1], abs=1e-3)
    # ecg query i finds cxr i for i < 10 (the rolled rows answer the others), and ecg's ambiguity falls with i
    assert got["ecg"]["queries"] == n and got["ecg"]["recall"] == [0.0] * 5 + [100.0] * 5
