"""Cross-modal zero-shot (MEDBind): queries of one modality classified on another modality's label space.

Scores are checked against AUROCs computed another way (scikit-learn on hand-made score differences); the
Evaluator refuses label spaces and pairs it cannot evaluate; MEDBind's tiny preset trains and tests through the CLI
and logs the cross-modal AUROCs."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from conftest import REPO
from probmed.embedding import GaussianEmbedding
from probmed.evaluation.config import DEFAULT_PROMPTS, CrossModalZeroShotConfig, EvaluationConfig
from probmed.evaluation.crossmodal import cross_modal_zero_shot, pair_findings
from probmed.evaluation.suite import Evaluator

FINDINGS = ["cardiomegaly", "atrial_fibrillation", "lvh"]
SPACES = {"cxr": ["cardiomegaly", "lvh"], "ecg": ["atrial_fibrillation", "lvh"]}


def _emb(mean: torch.Tensor) -> GaussianEmbedding:
    return GaussianEmbedding(mean, torch.zeros_like(mean), torch.ones(len(mean), dtype=torch.bool))


def _dot(query: GaussianEmbedding, gallery: GaussianEmbedding, a: str, b: str) -> torch.Tensor:
    return query.mean @ gallery.mean.T


def _data(n: int = 40, d: int = 6):
    gen = torch.Generator().manual_seed(0)
    embeddings = {m: (_emb(torch.randn(n, d, generator=gen)), [f"s{i}" for i in range(n)]) for m in ("cxr", "ecg")}
    labels = {f"s{i}": torch.tensor([float(i % 2), float(i % 3 == 0), float(i % 5 < 2)]) for i in range(n)}
    labels["s7"][1] = math.nan  # unknown: left out of that finding only
    prompts = {f: (_emb(torch.randn(2, d, generator=gen)), _emb(torch.randn(3, d, generator=gen))) for f in FINDINGS}
    return embeddings, labels, prompts


def test_a_query_is_scored_on_the_other_modalitys_findings_with_the_auroc_of_its_prompt_margin():
    embeddings, labels, prompts = _data()
    res = cross_modal_zero_shot(embeddings, labels, FINDINGS, prompts, SPACES, [["cxr", "ecg"], ["ecg", "cxr"]],
                                _dot, {"cxr": 2.0, "ecg": 3.0})
    assert set(res) == {"cxr->ecg", "ecg->cxr"}
    assert set(res["cxr->ecg"]) == {"atrial_fibrillation", "lvh"} and set(res["ecg->cxr"]) == {"cardiomegaly", "lvh"}
    for pair, per_finding in res.items():
        query = pair.split("->")[0]
        emb, ids = embeddings[query]
        for finding, got in per_finding.items():
            col = FINDINGS.index(finding)
            pos, neg = prompts[finding]
            margin = (emb.mean @ pos.mean.T).mean(1) - (emb.mean @ neg.mean.T).mean(1)
            known = [i for i, s in enumerate(ids) if not math.isnan(float(labels[s][col]))]
            target = [int(labels[ids[i]][col]) for i in known]
            assert len(got["target"]) == len(known) == (39 if finding == "atrial_fibrillation" else 40)
            assert got["auroc"] == pytest.approx(roc_auc_score(target, margin[known].numpy()), abs=1e-6)


def test_exclusive_drops_the_findings_the_query_modality_defines_itself():
    assert pair_findings(SPACES, "cxr", "ecg", exclusive=False) == ["atrial_fibrillation", "lvh"]
    assert pair_findings(SPACES, "cxr", "ecg", exclusive=True) == ["atrial_fibrillation"]
    embeddings, labels, prompts = _data()
    res = cross_modal_zero_shot(embeddings, labels, FINDINGS, prompts, SPACES, [["cxr", "ecg"]], _dot,
                                {"cxr": 1.0}, exclusive=True)
    assert set(res["cxr->ecg"]) == {"atrial_fibrillation"}
    # a pair whose query modality has no embeddings (not in the data) is left out, not an error
    assert cross_modal_zero_shot({}, labels, FINDINGS, prompts, SPACES, [["cxr", "ecg"]], _dot, {}) == {}


@pytest.mark.parametrize("spaces, pairs, message", [
    ({"cxr": ["cardiomegaly"], "ecg": ["st_elevation"]}, [["cxr", "ecg"]], "st_elevation"),
    ({"cxr": ["cardiomegaly"]}, [["cxr", "ecg"]], "the target one of label_spaces"),
    ({"cxr": ["cardiomegaly"]}, [["cxr", "cxr"]], "two modalities"),
])
def test_label_spaces_and_pairs_it_cannot_evaluate_are_refused_at_construction(spaces, pairs, message):
    config = EvaluationConfig(cross_zero_shot=CrossModalZeroShotConfig(label_spaces=spaces, pairs=pairs))
    with pytest.raises(ValueError, match=message):
        Evaluator(config)


def test_a_finding_without_prompts_is_refused():
    config = EvaluationConfig(cross_zero_shot=CrossModalZeroShotConfig(label_spaces={"cxr": ["cardiomegaly"]}, pairs=[]))
    config.zero_shot.prompts = {f: p for f, p in DEFAULT_PROMPTS.items() if f != "cardiomegaly"}
    with pytest.raises(ValueError, match="no zero-shot prompts"):
        Evaluator(config)


def test_medbind_trains_tiny_through_the_cli_and_tests_cxr_to_ecg_zero_shot(smoke_corpus, tmp_path, monkeypatch):
    from probmed.cli import main

    presets = REPO / "configs" / "presets"
    extra = tmp_path / "cross.yaml"
    extra.write_text(yaml.safe_dump({"model": {"evaluation": {"cross_zero_shot": {"stages": ["val", "test"]}}}}))
    args = ["--config", str(presets / "medbind.yaml"), "--config", str(presets / "tiny" / "medbind.yaml"),
            "--config", str(extra), "--data.data_dir", str(smoke_corpus), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path)]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    assert main(["fit", *args]) == 0
    ckpt = tmp_path / "medbind" / "version_0" / "checkpoints" / "last.ckpt"
    assert main(["test", *args, "--ckpt_path", str(ckpt)]) == 0
    (metrics_file,) = sorted(Path(tmp_path).glob("medbind/version_0/test_metrics.json"))
    metrics = json.loads(metrics_file.read_text())
    cross = metrics["zero_shot_cross"]
    assert set(cross) == {"cxr->ecg", "ecg->cxr"}
    assert set(cross["cxr->ecg"]) == {"atrial_fibrillation", "bradycardia", "tachycardia", "lvh"}
    assert set(cross["ecg->cxr"]) == {"cardiomegaly", "pleural_effusion"}
    for per_finding in cross.values():
        for v in per_finding.values():
            assert v["n"] > 0 and (v["auroc"] is None or 0.0 <= v["auroc"] <= 1.0)
    defined = [k for k in metrics["scalars"] if k.startswith("test/zeroshot_cross/")]
    assert "test/zeroshot_cross/mean_auroc" in defined and "test/zeroshot_cross/cxr->ecg/mean_auroc" in defined
