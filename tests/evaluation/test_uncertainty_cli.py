"""The validation-fitted evaluation state through the CLI (child processes on the tiny corpus): `fit` stores the
last validation's variance-aware confidence rules and zero-shot temperatures in last.ckpt, `test` uses them and
prints the uncertainty summary, `test` without them says it falls back, `predict` exports them with the labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from conftest import REPO, run_probmed
from probmed.data.labels import read_vocabulary

SMOKE = str(REPO / "configs" / "smoke.yaml")


def _args(corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--config", SMOKE, "--data.data_dir", str(corpus), "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir), *extra]


def test_fit_stores_the_last_validations_fitted_state_and_test_and_predict_use_it(smoke_corpus, tmp_path):
    ckpt_dir, monitored_dir = tmp_path / "ckpt", tmp_path / "monitored"
    extra = tmp_path / "fit.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"max_epochs": 2, "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(ckpt_dir), "save_last": True}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",  # as configs/demo.yaml: best by val R@5
         "init_args": {"dirpath": str(monitored_dir), "save_last": True, "monitor": "val/mean_R@5", "mode": "max"}},
    ]}}))
    fit = run_probmed(["fit", *_args(smoke_corpus, tmp_path, "--config", str(extra))], cwd=tmp_path, timeout=400)
    assert fit.returncode == 0, fit.output[-4000:]
    (run,) = (tmp_path / "smoke").glob("version_0")
    val = json.loads((run / "val_metrics.json").read_text())  # overwritten by each validation: the last one's
    checkpoint = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    stored = checkpoint["evaluation_fitted"]
    # ModelCheckpoint saves after the validation epoch's end: last.ckpt holds the state of the final validation
    # (step 6 = 2 epochs x 3 batches), identical to what that validation reported
    assert stored["step"] == checkpoint["global_step"] == 6
    assert json.loads(json.dumps(stored)) == val["fitted"]
    # with a monitor, Lightning 2.6 rewrites last.ckpt only when a top-k checkpoint is written (the last improving
    # validation): its fitted state is still the one of the validation of its own weights
    monitored = torch.load(monitored_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert monitored["evaluation_fitted"]["step"] == monitored["global_step"] > 0
    assert set(stored["confidence"]) == {f"{a}->{b}" for a in ("cxr", "ecg", "echo", "text")
                                         for b in ("cxr", "ecg", "echo", "text") if a != b}
    assert set(stored["temperature"]) == {"cxr", "ecg", "echo"} and all(t > 0 for t in stored["temperature"].values())
    fitted_rules = [p for p, r in stored["confidence"].items() if "skipped" not in r]

    test = run_probmed(["test", *_args(smoke_corpus, tmp_path, "--ckpt_path", str(ckpt_dir / "last.ckpt"))],
                       cwd=tmp_path)
    assert test.returncode == 0, test.output[-4000:]
    assert "Uncertainty on the test split" in test.output and "Spearman(variance, recorded ambiguity)" in test.output
    assert "variance-aware beats the margin on" in test.output and f"of {len(fitted_rules)} pairs" in test.output
    assert "PMRP" in test.output
    (tested,) = [p for p in (tmp_path / "smoke").glob("version_*/test_metrics.json")]
    metrics = json.loads(tested.read_text())
    assert metrics["fitted_used"] == val["fitted"]
    scalars = metrics["scalars"]
    for m, t in stored["temperature"].items():
        assert scalars[f"test/zeroshot/{m}/temperature"] == t and f"test/zeroshot/{m}/ece_scaled" in scalars
        assert stored["platt"][m] and f"test/zeroshot/{m}/ece_platt" in scalars  # a slope and intercept per finding
    for p in fitted_rules:
        assert f"test/confidence/variance_aware/aurc/{p}" in scalars
    for p in ("cxr->ecg", "text->echo"):
        for key in ("confidence/margin/aurc", "confidence/top1/e_aurc", "confidence/variance_pair/aurc",
                    "confidence/oracle_aurc", "confidence/random_aurc", "pmrp", "label_P@5"):
            assert f"test/{key}/{p}" in scalars, key

    out = tmp_path / "emb.npz"
    pred = run_probmed(["predict", *_args(smoke_corpus, tmp_path, "--ckpt_path", str(ckpt_dir / "last.ckpt"),
                                          "--embeddings.path", str(out))], cwd=tmp_path)
    assert pred.returncode == 0, pred.output[-4000:]
    with np.load(out, allow_pickle=False) as data:
        names = data["label_names"]
        assert names.dtype.kind == "U" and names.tolist() == list(read_vocabulary(smoke_corpus)["labels"])
        assert data["labels"].shape == (len(data["study_id"]), len(names)) and data["labels"].dtype == np.float32
        recorded = _recorded_ambiguity(smoke_corpus, "test")
        for m in ("cxr", "ecg", "echo", "text"):
            assert data[f"{m}/ambiguity"].shape == data[f"{m}/present"].shape
            want = [recorded.get(str(sid), {}).get(m, np.nan) for sid in data["study_id"]]
            np.testing.assert_array_equal(data[f"{m}/ambiguity"], np.asarray(want, dtype=np.float32))
        assert json.loads(str(data["evaluation_fitted"])) == val["fitted"]


def test_test_without_fitted_state_says_it_falls_back_to_the_margin(smoke_corpus, tmp_path):
    test = run_probmed(["test", *_args(smoke_corpus, tmp_path)], cwd=tmp_path)  # untrained: no checkpoint at all
    assert test.returncode == 0, test.output[-4000:]
    assert "no validation-fitted evaluation state" in test.output  # the warning
    assert "variance-aware: n/a (no rule fitted on validation in this checkpoint; margin only)" in test.output
    (tested,) = (tmp_path / "smoke").glob("version_*/test_metrics.json")
    metrics = json.loads(tested.read_text())
    assert "no validation-fitted" in metrics["fitted_used"]["skipped"]
    assert not any("variance_aware" in k or "ece_scaled" in k for k in metrics["scalars"])
    assert "test/confidence/margin/mean_aurc" in metrics["scalars"]


def _recorded_ambiguity(corpus, split: str) -> dict[str, dict[str, float]]:
    """``{study_id: {modality: ambiguity}}`` as the shards' metadata records it, read with plain tarfile."""
    import tarfile

    out = {}
    for shard in sorted(corpus.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    out[str(meta["study_id"])] = meta.get("ambiguity", {})
    return out
