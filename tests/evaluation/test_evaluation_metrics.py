"""Evaluation metrics against hand-computed examples: ties, missing modalities and labels, exact numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from probmed.embedding import GaussianEmbedding
from probmed.evaluation.fewshot import few_shot
from probmed.evaluation.fusion import align, precision_weighted_fusion
from probmed.evaluation.probes import draw_shots, probe_auroc, support_mask
from probmed.evaluation.prognosis import prognosis
from probmed.evaluation.retrieval import retrieval_metrics
from probmed.evaluation.scoring import make_scorer
from probmed.evaluation.uncertainty import (
    aurc, expected_calibration_error, reliability_bins, risk_coverage, selective_risk, spearman,
)
from probmed.evaluation.zeroshot import binary_metrics, zero_shot
from probmed.losses import Objective, ProbabilisticInfoNCE
from probmed.losses.similarity import pairwise_similarity


def _emb(rows, log_var=None):
    mean = torch.tensor(rows, dtype=torch.float32)
    lv = torch.zeros(len(rows), 1) if log_var is None else torch.tensor(log_var, dtype=torch.float32)
    return GaussianEmbedding(mean, lv, torch.ones(len(rows), dtype=torch.bool))


# -- uncertainty ----------------------------------------------------------------------------------------------------

def test_risk_coverage_and_aurc_on_a_four_item_toy_with_a_tie():
    # sorted by variance: 0.1 (correct), {0.2 wrong, 0.2 correct} tied, 0.4 (wrong).
    # Tied errors are replaced by their mean (0.5 each): cumulative errors 0, 0.5, 1, 2 over 1..4 kept queries.
    variance = torch.tensor([0.4, 0.2, 0.1, 0.2])
    error = torch.tensor([1.0, 1.0, 0.0, 0.0])
    coverage, risk = risk_coverage(variance, error)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk.tolist() == pytest.approx([0.0, 0.25, 1 / 3, 0.5])
    assert aurc(variance, error) == pytest.approx((0 + 0.25 + 1 / 3 + 0.5) / 4)
    assert selective_risk(variance, error, 0.5) == pytest.approx(0.25)
    assert selective_risk(variance, error, 0.8) == pytest.approx(0.5)  # ceil(3.2) = 4 queries kept
    assert selective_risk(variance, error, 0.01) == 0.0  # at least one query is kept
    # the tie is resolved the same whichever way the sort breaks it
    swapped = risk_coverage(torch.tensor([0.4, 0.2, 0.1, 0.2]), torch.tensor([1.0, 0.0, 0.0, 1.0]))[1]
    torch.testing.assert_close(swapped, risk)
    with pytest.raises(ValueError, match="coverage"):
        selective_risk(variance, error, 1.5)


def test_spearman_matches_scipy_with_ties_and_is_nan_for_constant_input():
    u = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.3])
    r = torch.tensor([0.0, 3.0, 1.0, 4.0, 1.0])
    assert spearman(u, r) == pytest.approx(spearmanr(u.numpy(), r.numpy()).statistic, abs=1e-6)
    assert math.isnan(spearman(u, torch.ones(5)))


def test_ece_and_reliability_bins_on_a_hand_binned_example():
    probs = torch.tensor([0.05, 0.15, 0.95, 0.7, 0.12])
    target = torch.tensor([0, 1, 1, 0, 0])
    # bins of width 0.1, (lo, hi]: {0.05}, {0.15, 0.12}, {0.7}, {0.95}
    # |0.05-0|*1 + |0.135-0.5|*2 + |0.7-0|*1 + |0.95-1|*1 = 0.05 + 0.73 + 0.7 + 0.05 = 1.53 -> / 5
    assert expected_calibration_error(probs, target, n_bins=10) == pytest.approx(1.53 / 5, abs=1e-6)
    bins = reliability_bins(probs, target, n_bins=10)
    assert bins["count"].tolist() == [1, 2, 0, 0, 0, 0, 1, 0, 0, 1]
    assert bins["confidence"][1].item() == pytest.approx(0.135) and bins["frequency"][1].item() == 0.5
    assert math.isnan(bins["frequency"][2].item())


# -- retrieval with the model's own similarity --------------------------------------------------------------------

def test_scorer_uses_the_trained_terms_similarity_and_the_configured_one_for_untrained_pairs():
    objective = Objective([ProbabilisticInfoNCE(["text", "cxr"], similarity="bhattacharyya")])
    q = _emb([[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [-1.0, -1.0]])
    g = _emb([[0.6, 0.8], [1.0, 0.0]], [[-2.0, -2.0], [0.5, 0.5]])
    args = (q.mean, q.log_var, g.mean, g.log_var)
    score = make_scorer(objective, "cosine", torch.device("cpu"))
    torch.testing.assert_close(score(q, g, "text", "cxr"), pairwise_similarity("bhattacharyya", *args))
    torch.testing.assert_close(score(q, g, "cxr", "ecg"), pairwise_similarity("cosine", *args))
    default = make_scorer(objective, None, torch.device("cpu"))  # untrained pairs: the first term's similarity
    torch.testing.assert_close(default(q, g, "cxr", "ecg"), pairwise_similarity("bhattacharyya", *args))
    with pytest.raises(ValueError, match="untrained_similarity"):
        make_scorer(objective, "euclid", torch.device("cpu"))


def test_rsum_per_pair_and_rows_exclude_studies_missing_a_modality():
    dot = lambda q, g, a, b: q.mean @ g.mean.T  # noqa: E731
    embeddings = {
        "cxr": (_emb([[1, 0], [0, 1], [1, 1]]), ["s1", "s2", "s3"]),
        "ecg": (_emb([[1, 0], [0, 1]]), ["s1", "s2"]),  # s3 has no ECG
    }
    details = {}
    rows = {(r["query"], r["gallery"]): r for r in retrieval_metrics(embeddings, dot, ks=(1, 2), details=details)}
    # cxr s1 [1,0] vs ecg s1 1, s2 0 -> rank 0; cxr s2 [0,1] vs 0, 1 -> rank 0
    assert rows[("cxr", "ecg")]["R@1"] == 100.0 and rows[("cxr", "ecg")]["rsum"] == 200.0
    assert details[("cxr", "ecg")]["query_ids"] == ["s1", "s2"]
    assert details[("cxr", "ecg")]["query_variance"].tolist() == [1.0, 1.0]


# -- zero-shot ------------------------------------------------------------------------------------------------------

def test_zero_shot_probabilities_auroc_and_balanced_accuracy_by_hand():
    dot = lambda q, g, a, b: q.mean @ g.mean.T  # noqa: E731
    findings = ["effusion", "afib"]
    # positive prompts average to [1, 0], negatives to [0, 1]: s_pos - s_neg = x0 - x1
    prompts = {"effusion": (_emb([[2, 0], [0, 0]]), _emb([[0, 1], [0, 1]]))}
    cxr = _emb([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.3], [0.5, 0.0]])
    ids = ["a", "b", "c", "d", "e"]
    nan = float("nan")
    labels = {"a": torch.tensor([1.0, nan]), "b": torch.tensor([0.0, 1]), "c": torch.tensor([0.0, 0]),
              "d": torch.tensor([1.0, 0]), "e": torch.tensor([nan, 1])}  # e: effusion unknown -> excluded
    text = _emb([[1, 0]])
    res = zero_shot({"cxr": (cxr, ids), "text": (text, ["a"])}, labels, findings, prompts, dot, {"cxr": 2.0})
    assert set(res) == {"cxr"}  # text is not classified against text prompts
    out = res["cxr"]["effusion"]
    diff = torch.tensor([0.8, -0.6, 0.2, 0.0])
    torch.testing.assert_close(out["probs"], torch.sigmoid(2 * diff))
    assert out["target"].tolist() == [1, 0, 0, 1]
    # scores a .83, b .23, c .60, d .50; positives {a, d}: pairs (a>b, a>c, d>b, d<c) -> AUROC 3/4
    assert out["auroc"] == pytest.approx(0.75)
    # predicted positive (p > 0.5): a, c. sensitivity 1/2 (a), specificity 1/2 (b) -> balanced 0.5
    assert out["balanced_accuracy"] == pytest.approx(0.5)
    assert math.isnan(binary_metrics(torch.tensor([0.2, 0.9]), torch.tensor([1, 1]))["auroc"])
    with pytest.raises(ValueError, match="does not label"):
        zero_shot({"cxr": (cxr, ids)}, labels, findings, {"edema": prompts["effusion"]}, dot, {"cxr": 1.0})


# -- probes, few-shot, fusion, prognosis ---------------------------------------------------------------------------

def _separable(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2).float()
    x = torch.randn(n, 3, generator=g) * 0.1
    x[:, 0] += 2 * y - 1  # class is the sign of the first feature
    return x, y


def test_probe_on_separable_data_reaches_auroc_one_even_from_one_shot_and_is_deterministic():
    x, y = _separable()
    ids = [f"s{i}" for i in range(len(y))]
    support = support_mask(ids, 0.5, seed=0)
    assert support.any() and (~support).any()
    assert torch.equal(support, support_mask(ids, 0.5, seed=0))
    for k in (1, 5, 0):
        assert probe_auroc(x, y, support, k, repeats=2, seed=0) == 1.0
    assert math.isnan(probe_auroc(x, y, support, 100, repeats=1, seed=0))  # the pool has < 100 per class
    shots = draw_shots(y, 2, seed=3)
    assert torch.equal(shots, draw_shots(y, 2, seed=3)) and y[shots].tolist() == [1, 1, 0, 0]
    assert draw_shots(torch.ones(4), 1, seed=0) is None  # one class only


def test_few_shot_per_modality_with_unknown_labels():
    x, y = _separable()
    ids = [f"s{i}" for i in range(len(y))]
    labels = {sid: torch.tensor([float(v), float("nan")]) for sid, v in zip(ids, y)}
    emb = GaussianEmbedding(x, torch.zeros(len(y), 3), torch.ones(len(y), dtype=torch.bool))
    res = few_shot({"ecg": (emb, ids)}, labels, ["brady", "afib"], ks=[1, 0], features="mean_var")
    assert res["ecg"][1]["brady"] == 1.0 and res["ecg"][0]["brady"] == 1.0
    assert math.isnan(res["ecg"][0]["afib"])  # no known label
    with pytest.raises(ValueError, match="mean_var"):
        few_shot({"ecg": (emb, ids)}, labels, ["brady", "afib"], ks=[1], features="variance")


def test_precision_weighted_fusion_by_hand_and_with_a_missing_modality():
    a = GaussianEmbedding(torch.tensor([[0.0], [2.0]]), torch.log(torch.tensor([[1.0], [1.0]])), torch.tensor([True, True]))
    b = GaussianEmbedding(torch.tensor([[4.0], [9.0]]), torch.log(torch.tensor([[3.0], [1.0]])), torch.tensor([True, False]))
    fused = precision_weighted_fusion([a, b])
    # study 0: v = 1 / (1 + 1/3) = 0.75, mu = 0.75 * (0/1 + 4/3) = 1; study 1: b missing -> a alone
    torch.testing.assert_close(fused.log_var.exp(), torch.tensor([[0.75], [1.0]]))
    torch.testing.assert_close(fused.mean, torch.tensor([[1.0], [2.0]]))
    ids, parts = align({"a": (_emb([[1.0]]), ["s2"]), "b": (_emb([[5.0], [6.0]]), ["s1", "s2"])}, ["a", "b", "echo"])
    assert ids == ["s1", "s2"] and [p.present.tolist() for p in parts] == [[False, True], [True, True]]


def test_prognosis_head_on_fused_embeddings():
    x, y = _separable()
    ids = [f"s{i}" for i in range(len(y))]
    labels = {sid: torch.tensor([float(v)]) for sid, v in zip(ids, y)}
    noise = GaussianEmbedding(torch.randn(len(y), 3, generator=torch.Generator().manual_seed(1)),
                              torch.full((len(y), 3), 3.0), torch.ones(len(y), dtype=torch.bool))
    signal = GaussianEmbedding(x, torch.full((len(y), 3), -3.0), torch.ones(len(y), dtype=torch.bool))
    # the confident modality dominates the fusion, so the fused head separates the classes
    res = prognosis({"ecg": (signal, ids), "cxr": (noise, ids)}, labels, ["ref"], "ref", [["cxr", "ecg"], ["echo"]])
    assert res["cxr+ecg"] == 1.0 and math.isnan(res["echo"])
    with pytest.raises(ValueError, match="prognosis label"):
        prognosis({}, labels, ["ref"], "mortality", [["cxr"]])


def test_export_round_trip(tmp_path):
    from probmed.evaluation.export import EmbeddingWriter, load_embeddings

    writer = EmbeddingWriter(str(tmp_path / "emb.npz"))

    class Trainer:  # the attributes the callback reads
        is_global_zero, logger, default_root_dir = True, None, str(tmp_path)

    writer.on_predict_epoch_start(Trainer, None)
    mean = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    log_var = -torch.ones(3, 4)
    out = {"study_id": ["s2", "s1", "s3"], "cxr/mean": mean, "cxr/log_var": log_var,
           "cxr/present": torch.tensor([True, True, False])}
    writer.on_predict_batch_end(Trainer, None, out, None, 0)
    writer.on_predict_batch_end(Trainer, None, {k: (v[:1] if k != "study_id" else v[:1]) for k, v in out.items()}, None, 1)
    writer.on_predict_epoch_end(Trainer, None)
    data = load_embeddings(tmp_path / "emb.npz")
    assert data["study_id"].tolist() == ["s1", "s2", "s3"]  # sorted, s2 once although seen twice
    np.testing.assert_array_equal(data["cxr/mean"], np.stack([mean[1].numpy(), mean[0].numpy(), np.zeros(4)]))
    np.testing.assert_allclose(data["cxr/var"][:2], np.exp(-1.0) * np.ones((2, 4)), rtol=1e-6)
    assert data["cxr/present"].tolist() == [True, True, False] and data["cxr/var"][2].tolist() == [0, 0, 0, 0]


def test_evaluation_config_errors_are_reported_when_the_module_is_built():
    from probmed.evaluation.config import CorruptionConfig, EvaluationConfig, PrognosisConfig, ZeroShotConfig
    from probmed.evaluation.suite import Evaluator

    with pytest.raises(ValueError, match="choose one of"):
        Evaluator(EvaluationConfig(corruptions=[CorruptionConfig("cxr", "rotate")]))
    with pytest.raises(ValueError, match="severities"):
        Evaluator(EvaluationConfig(corruptions=[CorruptionConfig("cxr", "noise", [-1.0])]))
    from probmed.data.schema import FINDINGS

    edema = EvaluationConfig(zero_shot=ZeroShotConfig(prompts={"edema": {"positive": ["x"], "negative": ["y"]}}))
    with pytest.raises(ValueError, match="not among the labels"):
        Evaluator(edema, findings=FINDINGS)
    with pytest.raises(ValueError, match="not among the labels"):
        Evaluator(edema).use_labels(FINDINGS)  # labels handed over by the datamodule at setup
    on_mimic = Evaluator(edema)
    on_mimic.use_labels(["atelectasis", "edema"])  # a dataset labelling edema is fine
    assert on_mimic.prompts == {"edema": {"positive": ["x"], "negative": ["y"]}} and on_mimic.unprompted == ["atelectasis"]
    with pytest.raises(ValueError, match="non-empty"):
        Evaluator(EvaluationConfig(zero_shot=ZeroShotConfig(prompts={"bradycardia": {"positive": ["slow"]}})))
    with pytest.raises(ValueError, match="prognosis label"):
        Evaluator(EvaluationConfig(prognosis=PrognosisConfig(label="mortality")), findings=FINDINGS)


def test_robustness_reports_spearman_of_variance_with_severity():
    """``variance_spearman`` per corruption = scipy's Spearman of (per-sample mean variance, severity) pooled over
    severities 0, 1, 3; the mean over corruptions is logged too."""
    from probmed.evaluation.suite import Evaluator

    g = torch.Generator().manual_seed(0)
    n, d = 40, 8

    def emb(shift):
        lv = torch.randn(n, d, generator=g) * 0.3 + shift
        return GaussianEmbedding(torch.randn(n, d, generator=g), lv, torch.ones(n, dtype=torch.bool))

    ids = [f"s{i}" for i in range(n)]
    clean = {"ecg": (emb(-2.0), ids)}
    corrupted = {("ecg", "noise", 1.0): {"ecg": (emb(-1.8), ids)}, ("ecg", "noise", 3.0): {"ecg": (emb(-1.0), ids)}}
    scalars: dict = {}
    Evaluator()._robustness(clean, corrupted, None, "test", scalars)
    var = torch.cat([clean["ecg"][0].log_var.exp().mean(1)]
                    + [corrupted[k]["ecg"][0].log_var.exp().mean(1) for k in sorted(corrupted)])
    sev = [0.0] * n + [1.0] * n + [3.0] * n
    ref = spearmanr(var.numpy(), sev).statistic
    assert scalars["test/robustness/ecg/noise/variance_spearman"] == pytest.approx(ref, abs=1e-6)
    assert scalars["test/robustness/mean_variance_spearman"] == pytest.approx(ref, abs=1e-6)
    assert ref > 0.5
