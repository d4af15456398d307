"""Evaluation through the CLI in child processes: `probmed test` with corruptions → TensorBoard scalars, images
and projector, PNGs and JSON; `probmed predict` → .npz that loads back and matches the projector's embeddings."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, run_probmed
from probmed.evaluation.export import load_embeddings

SMOKE = str(REPO / "configs" / "smoke.yaml")
EVALUATION = {"model": {"evaluation": {
    "untrained_similarity": "cosine",
    "few_shot": {"ks": [1, 0], "repeats": 1},
    "prognosis": {"label": "cardiomegaly", "subsets": [["cxr", "ecg", "echo"], ["ecg"]], "support_fraction": 0.5},
    "corruptions": [{"modality": "cxr", "kind": "noise", "severities": [1, 3]},
                    {"modality": "ecg", "kind": "lead_dropout", "severities": [2]},
                    {"modality": "text", "kind": "word_dropout", "severities": [3]}],
}}}


def _test_studies(corpus: Path) -> int:
    return sum(n for name, n in json.loads((corpus / "sizes.json").read_text()).items() if name.startswith("test-"))


def _args(corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--config", SMOKE, "--data.data_dir", str(corpus), "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir), *extra]


def test_test_stage_logs_every_metric_figure_and_the_projector_and_predict_exports(smoke_corpus, tmp_path):
    extra = tmp_path / "evaluation.yaml"
    extra.write_text(yaml.safe_dump(EVALUATION))
    test = run_probmed(["test", *_args(smoke_corpus, tmp_path, "--config", str(extra))], cwd=tmp_path)
    assert test.returncode == 0, test.output[-4000:]
    (run,) = (tmp_path / "smoke").glob("version_0")
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("test/R@1/cxr->ecg", "test/rsum/text->echo", "test/mean_aurc", "test/aurc/ecg->cxr",
                "test/mean_selective_R@1@0.5", "test/selective_R@1@0.8/cxr->text", "test/zeroshot/cxr/mean_auroc",
                "test/zeroshot/echo/ece", "test/zeroshot/mean_ece", "test/fewshot/ecg/k1_mean_auroc",
                "test/fewshot/cxr/kall_mean_auroc", "test/robustness/cxr/noise/s3/mean_R@1",
                "test/robustness/ecg/lead_dropout/s0/variance", "test/robustness/text/word_dropout/s3/variance"):
        assert tag in scalars, f"{tag} missing; have {sorted(scalars)[:80]}"
    images = set(events.Tags()["images"])
    assert {"test/reliability", "test/risk_coverage", "test/similarity", "test/variance_vs_severity"} <= images
    for name in ("reliability", "risk_coverage", "similarity", "variance_vs_severity"):
        assert (run / "plots" / "test" / f"{name}.png").stat().st_size > 1000
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert set(metrics["robustness"]) == {"cxr/noise", "ecg/lead_dropout", "text/word_dropout"}
    assert set(metrics["robustness"]["cxr/noise"]) == {"0.0", "1.0", "3.0"}
    assert set(metrics["prognosis"]["auroc"]) == {"cxr+ecg+echo", "ecg"}
    assert all(0 <= v <= 100 for k, v in metrics["scalars"].items() if "/R@" in k)

    # the projector: every present embedding, labelled by modality, study and findings
    (meta,) = run.glob("*/test_embeddings/metadata.tsv")
    lines = meta.read_text().splitlines()
    assert lines[0].split("\t") == ["modality", "study", "findings", "variance"]
    projected = np.loadtxt(meta.parent / "tensors.tsv", delimiter="\t", ndmin=2)
    assert len(projected) == len(lines) - 1

    out = tmp_path / "embeddings.npz"
    pred = run_probmed(["predict", *_args(smoke_corpus, tmp_path, "--embeddings.path", str(out))], cwd=tmp_path)
    assert pred.returncode == 0, pred.output[-4000:]
    data = load_embeddings(out)
    ids = data["study_id"].tolist()
    assert ids == sorted(set(ids)) and len(ids) == _test_studies(smoke_corpus)
    for m in ("cxr", "ecg", "echo", "text"):
        assert data[f"{m}/mean"].shape == (len(ids), 16) and data[f"{m}/var"].shape == (len(ids), 16)
        assert (data[f"{m}/var"][data[f"{m}/present"]] > 0).all() and (data[f"{m}/var"][~data[f"{m}/present"]] == 0).all()
    # same seed, same untrained model: predict's means equal the ones the test run put in the projector
    rows = [line.split("\t") for line in lines[1:]]
    for (modality, sid, *_), vector in zip(rows, projected):
        i = ids.index(sid)
        assert data[f"{modality}/present"][i]
        np.testing.assert_allclose(data[f"{modality}/mean"][i], vector, atol=1e-5)


@pytest.mark.ddp
def test_test_and_predict_under_two_process_ddp_count_each_study_once(smoke_corpus, tmp_path):
    """Under 2-process DDP (the single test shard: one rank reads every batch, the other none) `test` with
    corruptions evaluates each study once — every pair's query count equals the number of studies that have both
    modalities in predict's export — and `predict` writes each study once."""
    ddp = ("--trainer.devices", "2", "--trainer.strategy", "ddp")
    extra = tmp_path / "evaluation.yaml"
    extra.write_text(yaml.safe_dump(EVALUATION))
    test = run_probmed(["test", *_args(smoke_corpus, tmp_path, "--config", str(extra), *ddp)], cwd=tmp_path, timeout=400)
    assert test.returncode == 0, test.output[-4000:]
    out = tmp_path / "embeddings.npz"
    pred = run_probmed(["predict", *_args(smoke_corpus, tmp_path, "--embeddings.path", str(out), *ddp)], cwd=tmp_path,
                       timeout=400)
    assert pred.returncode == 0, pred.output[-4000:]
    data = load_embeddings(out)
    ids = data["study_id"].tolist()
    assert len(ids) == len(set(ids)) == _test_studies(smoke_corpus)
    (metrics_file,) = (tmp_path / "smoke").glob("version_*/test_metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert len(metrics["retrieval"]) == 12
    for row in metrics["retrieval"]:
        both = int((data[f"{row['query']}/present"] & data[f"{row['gallery']}/present"]).sum())
        assert row["queries"] == row["gallery_size"] == both, row
    assert set(metrics["robustness"]) == {"cxr/noise", "ecg/lead_dropout", "text/word_dropout"}
