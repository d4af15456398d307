"""Confidence baselines of selective retrieval (probmed.evaluation.confidence) against brute-force references:
oracle / random AURC over all orderings, each signal's AURC from an explicit loop, the binned-recall test, the
logistic rule against scikit-learn, and the suite's scalars and summary built from them."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression

from probmed.embedding import GaussianEmbedding
from probmed.evaluation.collect import EmbeddingCollector
from probmed.evaluation.confidence import (
    ConfidenceRule, binned_recall, confidence_signals, fit_logistic, oracle_aurc, random_aurc, rule_features,
    selective_scores,
)
from probmed.evaluation.retrieval import pair_ranks
from probmed.evaluation.suite import NO_FITTED_STATE, Evaluator, format_uncertainty_summary


def _aurc_loop(uncertainty: list[float], error: list[float]) -> float:
    """AURC by the definition: keep the i most certain queries (distinct uncertainties), mean risk over i."""
    order = sorted(range(len(error)), key=lambda i: uncertainty[i])
    risks = [sum(error[j] for j in order[:i]) / i for i in range(1, len(order) + 1)]
    return sum(risks) / len(risks)


def _emb(mean, log_var) -> GaussianEmbedding:
    mean, log_var = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(log_var, dtype=torch.float32)
    return GaussianEmbedding(mean, log_var, torch.ones(len(mean), dtype=torch.bool))


@pytest.mark.parametrize("error", [[0, 1, 0, 0, 1, 1], [1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 1]])
def test_oracle_and_random_aurc_are_the_best_and_the_mean_over_every_ordering(error):
    aurcs = [_aurc_loop(list(perm), error) for perm in itertools.permutations(range(len(error)))]
    e = torch.tensor(error, dtype=torch.float64)
    assert oracle_aurc(e) == pytest.approx(min(aurcs), abs=1e-12)
    assert random_aurc(e) == pytest.approx(sum(aurcs) / len(aurcs), abs=1e-12)


def test_oracle_aurc_closed_form_by_hand_and_bad_errors():
    # N = 4, one miss: risks 0, 0, 0, 1/4 -> AURC 1/16
    assert oracle_aurc(torch.tensor([0.0, 1, 0, 0])) == pytest.approx(1 / 16)
    assert math.isnan(oracle_aurc(torch.zeros(0)))
    with pytest.raises(ValueError, match="binary"):
        oracle_aurc(torch.tensor([0.5, 1.0]))


def _scored_pair(seed: int = 0, n: int = 30, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    q = _emb(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) * 0.5 - 1)
    gal = _emb(torch.randn(n, d, generator=g) + 0.0, torch.randn(n, d, generator=g) * 0.5 - 1)
    gal = _emb(q.mean + 1.2 * gal.mean, gal.log_var)  # partners correlated: some hits, some misses
    ids = [f"s{i:02d}" for i in range(n)]
    embeddings = {"a": (q, ids), "b": (gal, ids)}
    dot = lambda x, y, a, b: x.mean @ y.mean.T  # noqa: E731
    return embeddings, dot


def test_each_signal_matches_an_explicit_loop_over_the_score_matrix():
    embeddings, dot = _scored_pair()
    found = pair_ranks(embeddings, dot, "a", "b", chunk=7)
    (q, _), (gal, _) = embeddings["a"], embeddings["b"]
    scores = (q.mean @ gal.mean.T).tolist()
    qvar = q.log_var.exp().mean(1).tolist()
    gvar = gal.log_var.exp().mean(1).tolist()
    ref = {"variance": [], "variance_pair": [], "margin": [], "top1": []}
    error = []
    for i, row in enumerate(scores):
        ranked = sorted(range(len(row)), key=lambda j: -row[j])
        top, second = ranked[0], ranked[1]
        error.append(0.0 if top == i else 1.0)
        ref["variance"].append(qvar[i])
        ref["variance_pair"].append(qvar[i] + gvar[top])
        ref["margin"].append(-(row[top] - row[second]))
        ref["top1"].append(-row[top])
    assert 0 < sum(error) < len(error)
    assert ((found["ranks"] > 0).double().tolist()) == error
    signals = confidence_signals(found)
    err = torch.tensor(error, dtype=torch.float64)
    for name, values in ref.items():
        np.testing.assert_allclose(signals[name].numpy(), values, rtol=1e-5, atol=1e-6)
        got = selective_scores(signals[name], err)
        assert got["aurc"] == pytest.approx(_aurc_loop(values, error), abs=1e-9), name
        assert got["e_aurc"] == pytest.approx(got["aurc"] - got["oracle_aurc"], abs=1e-12)
        assert got["random_aurc"] == pytest.approx(sum(error) / len(error))
    x = rule_features(found)
    np.testing.assert_allclose(x[:, 0].numpy(), [-m for m in ref["margin"]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x[:, 3].exp().numpy(), [v - w for v, w in zip(ref["variance_pair"], ref["variance"])],
                               rtol=1e-4)


def test_binned_recall_equal_count_bins_and_pearson_by_hand():
    g = torch.Generator().manual_seed(1)
    u = torch.rand(25, generator=g, dtype=torch.float64)
    hit = (torch.rand(25, generator=g) < 1 - u.float()).double()  # more uncertain, fewer hits
    out = binned_recall(u, hit, bins=10)
    order = sorted(range(25), key=lambda i: float(u[i]))
    sizes = [3] * 5 + [2] * 5  # 25 = 10 bins, the first 25 mod 10 get one more
    recall, start = [], 0
    for size in sizes:
        recall.append(100.0 * sum(float(hit[i]) for i in order[start : start + size]) / size)
        start += size
    np.testing.assert_allclose(out["recall"].numpy(), recall, atol=1e-9)
    assert out["count"].tolist() == sizes
    assert out["pearson"] == pytest.approx(float(np.corrcoef(np.arange(10), recall)[0, 1]), abs=1e-9)
    # ties: a constant uncertainty gives every bin the mean recall (tie-averaged) -> undefined Pearson
    flat = binned_recall(torch.zeros(20, dtype=torch.float64), hit[:20])
    assert torch.allclose(flat["recall"], torch.full((10,), 100.0 * float(hit[:20].mean()), dtype=torch.float64))
    assert math.isnan(flat["pearson"]) and math.isnan(binned_recall(u[:5], hit[:5])["pearson"])


def test_logistic_rule_matches_scikit_learn_and_round_trips():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    y = (torch.rand(200, generator=g, dtype=torch.float64) < torch.sigmoid(x @ torch.tensor([1.5, -1.0, 0.5, 0.0],
                                                                                            dtype=torch.float64))).double()
    l2 = 0.01
    w, b = fit_logistic(x, y, l2)
    # scikit-learn minimises C·sum(BCE) + |w|²/2 with an unpenalised intercept: C = 1 / (l2·N) is the same objective
    ref = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(w.numpy(), ref.coef_[0], atol=1e-5)
    assert b == pytest.approx(ref.intercept_[0], abs=1e-5)
    with pytest.raises(ValueError, match="both hits and misses"):
        fit_logistic(x, torch.ones(200, dtype=torch.float64))

    embeddings, dot = _scored_pair(seed=3, n=40)
    found = pair_ranks(embeddings, dot, "a", "b")
    rule = ConfidenceRule.fit(found)
    again = ConfidenceRule.from_state(rule.state())
    torch.testing.assert_close(again.probability(found), rule.probability(found))
    feats = rule_features(found)
    z = (feats - feats.mean(0)) / feats.std(0, unbiased=False)
    w, b = fit_logistic(z, (found["ranks"] == 0).double())
    torch.testing.assert_close(rule.probability(found), torch.sigmoid(z @ w + b))
    with pytest.raises(ValueError, match="features"):
        ConfidenceRule.from_state({**rule.state(), "weight": [1.0]})
    with pytest.raises(ValueError, match="lacks"):
        ConfidenceRule.from_state({"mean": []})


def test_suite_fits_on_validation_applies_on_test_and_warns_without_a_fit():
    embeddings, dot = _scored_pair(seed=4, n=40)
    ranks = {("a", "b"): pair_ranks(embeddings, dot, "a", "b"), ("b", "a"): pair_ranks(embeddings, dot, "b", "a")}
    evaluator = Evaluator()
    with pytest.warns(UserWarning, match="no validation-fitted"):
        scalars: dict = {}
        evaluator._uncertainty(ranks, "test", scalars, None)
    assert not any("variance_aware" in k for k in scalars) and NO_FITTED_STATE.startswith("no validation-fitted")
    summary = format_uncertainty_summary(scalars)
    assert "variance-aware: n/a" in summary and "(the shards record no ambiguity)" in summary

    fitted: dict = {}
    evaluator._uncertainty(ranks, "val", {}, fitted)
    assert set(fitted) == {"a->b", "b->a"}
    evaluator.fitted = {"confidence": fitted, "temperature": {}}
    scalars = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluator._uncertainty(ranks, "test", scalars, None)
    found = ranks[("a", "b")]
    err = (found["ranks"] > 0).double()
    p_hit = ConfidenceRule.from_state(fitted["a->b"]).probability(found)
    assert scalars["test/confidence/variance_aware/aurc/a->b"] == pytest.approx(
        _aurc_loop((-p_hit).tolist(), err.tolist()), abs=1e-9)
    assert scalars["test/aurc/a->b"] == scalars["test/confidence/variance/aurc/a->b"]  # the old name is kept
    assert scalars["test/confidence/oracle_aurc/a->b"] == pytest.approx(oracle_aurc(err))
    assert scalars["test/confidence/margin/binned_pearson/a"] == scalars["test/confidence/margin/binned_pearson/a->b"]
    summary = format_uncertainty_summary({**scalars, "test/ambiguity_spearman/a": 0.25})
    lines = summary.splitlines()
    assert "a 0.250" in lines[1] and "b n/a" in lines[1]
    assert len(lines) == 3 + 2 + 1
    better = sum(scalars[f"test/confidence/variance_aware/aurc/{p}"] < scalars[f"test/confidence/margin/aurc/{p}"]
                 for p in ("a->b", "b->a"))
    assert f"variance-aware beats the margin on {better} of 2 pairs" in lines[-1]


def test_spearman_of_variance_with_recorded_ambiguity_from_batches():
    """Batches carry ``ambiguity`` ``{modality: [B]}`` (NaN unknown); the collector keeps the known values of the
    present rows and the suite correlates them with each study's mean σ² (scipy as the reference)."""
    g = torch.Generator().manual_seed(5)
    collector = EmbeddingCollector()
    n = 24
    ids = [f"s{i:02d}" for i in range(n)]
    log_var = torch.randn(n, 4, generator=g)
    present = torch.ones(n, dtype=torch.bool)
    present[3] = False
    amb = torch.rand(n, generator=g)
    amb[5] = float("nan")
    emb = GaussianEmbedding(torch.randn(n, 4, generator=g), log_var, present)  # s03 has no cxr
    for s in (slice(0, 10), slice(10, n)):  # two batches
        collector.add({"cxr": GaussianEmbedding(emb.mean[s], emb.log_var[s], present[s])},
                      ids[s], torch.zeros(len(ids[s]), 2), {"cxr": amb[s], "ecg": amb[s]})
    gathered, _, ambiguity = collector.gather_all()
    assert set(ambiguity) == {"cxr"}  # no ecg embedding in the batches: its ambiguity has nothing to go with
    assert set(ambiguity["cxr"]) == set(ids) - {"s03", "s05"}
    scalars: dict = {}
    Evaluator()._ambiguity(gathered, ambiguity, "test", scalars)
    keep = [i for i in range(n) if i not in (3, 5)]
    ref = spearmanr(log_var[keep].exp().mean(1).numpy(), amb[keep].numpy()).statistic
    assert scalars["test/ambiguity_spearman/cxr"] == pytest.approx(ref, abs=1e-6)


def test_compare_presets_reads_the_suites_baselines_and_per_modality_severity_rho():
    import sys

    from conftest import REPO
    from probmed.data.registry import SPECS
    from probmed.evaluation.corruptions import all_corruptions, corruptions_for

    sys.path.insert(0, str(REPO / "experiments"))
    import compare_presets

    scalars = {"test/pmrp/cxr->text": 30.0, "test/pmrp/text->cxr": 50.0, "test/confidence/margin/mean_aurc": 0.8,
               "test/confidence/variance/mean_e_aurc": 0.1, "test/confidence/margin/mean_e_aurc": 0.05,
               "test/confidence/variance/mean_binned_pearson": -0.9, "test/zeroshot/mean_ece_scaled": 0.03}
    got = compare_presets.summarise(scalars, ["cxr", "text"])
    assert got["PMRP"] == 40.0 and got["AURC margin"] == 0.8 and got["ECE scaled"] == 0.03
    assert (got["E-AURC"], got["E-AURC margin"], got["10-bin Pearson"]) == (0.1, 0.05, -0.9)
    kinds = corruptions_for(SPECS["cxr"].pipeline)
    assert all_corruptions(["cxr", "nope"], (1, 2)) == [
        {"modality": "cxr", "kind": kind, "severities": [1.0, 2.0]} for kind in kinds]


def test_a_fitted_state_of_another_version_is_dropped_with_a_warning():
    from probmed.evaluation.suite import FITTED_VERSION

    evaluator = Evaluator()
    state = {"version": FITTED_VERSION, "step": 3, "confidence": {}, "temperature": {"cxr": 2.0}}
    evaluator.load_fitted(state)
    assert evaluator.fitted == state
    with pytest.warns(UserWarning, match="version 99"):
        evaluator.load_fitted({**state, "version": 99})
    assert evaluator.fitted is None
