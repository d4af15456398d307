"""Many-to-many retrieval (probmed.evaluation.retrieval): label classes with the NaN rule, PMRP and label
precision@K against a brute-force loop, and the rows and table of retrieval_metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probmed.embedding import GaussianEmbedding
from probmed.evaluation.retrieval import format_table, label_classes, plausible_precision, retrieval_metrics

NAN = float("nan")


def test_label_classes_compare_vectors_exactly_with_unknown_equal_only_to_unknown():
    v = torch.tensor([[1, 0], [1, NAN], [1, 0], [1, NAN], [NAN, 0], [0, 0], [-1, 0]])
    c = label_classes(v).tolist()
    assert c[0] == c[2] and c[1] == c[3]
    assert len({c[0], c[1], c[4], c[5], c[6]}) == 5  # (1,NaN) != (1,0); (NaN,0) != (0,0); uncertain -1 its own value
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        label_classes(torch.zeros(3))


def _brute(scores: list[list[float]], qc: list[int], gc: list[int], ks) -> dict:
    out = {"pmrp": [], **{f"P@{k}": [] for k in ks}}
    for i, row in enumerate(scores):
        ranked = sorted(range(len(row)), key=lambda j: (-row[j], j))  # ties: gallery order
        plausible = [gc[j] == qc[i] for j in ranked]
        r = sum(plausible)
        out["pmrp"].append(sum(plausible[:r]) / r if r else NAN)
        for k in ks:
            kk = min(k, len(row))
            out[f"P@{k}"].append(sum(plausible[:kk]) / kk)
    return out


def test_pmrp_and_label_precision_match_a_brute_force_loop_ties_included():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (12, 9), generator=g).float()  # many ties
    qc = torch.randint(0, 3, (12,), generator=g)
    gc = torch.randint(0, 3, (9,), generator=g)
    qc[0] = 7  # a class absent from the gallery: R = 0, PMRP undefined
    got = plausible_precision(scores, qc, gc, (1, 3, 20))
    ref = _brute(scores.tolist(), qc.tolist(), gc.tolist(), (1, 3, 20))
    for key, values in ref.items():
        np.testing.assert_allclose(got[key].numpy(), values, atol=1e-12, equal_nan=True, err_msg=key)
    assert math.isnan(float(got["pmrp"][0]))


def test_retrieval_rows_report_pmrp_over_chunks_and_the_table_shows_it():
    g = torch.Generator().manual_seed(1)
    n, d = 15, 4
    ids = [f"s{i:02d}" for i in range(n)]
    labels = {sid: torch.tensor([float(i % 2), NAN if i % 5 == 0 else float(i % 3 == 0)]) for i, sid in enumerate(ids)}
    emb = lambda: GaussianEmbedding(torch.randn(n, d, generator=g), torch.zeros(n, d), torch.ones(n, dtype=torch.bool))  # noqa: E731
    embeddings = {"cxr": (emb(), ids), "text": (emb(), ids)}
    dot = lambda q, gal, a, b: q.mean @ gal.mean.T  # noqa: E731
    details: dict = {}
    rows = retrieval_metrics(embeddings, dot, ks=(1, 5), chunk=4, details=details, labels=labels)
    classes = label_classes(torch.stack([labels[s] for s in ids])).tolist()
    for row in rows:
        q, gal = embeddings[row["query"]][0], embeddings[row["gallery"]][0]
        ref = _brute((q.mean @ gal.mean.T).tolist(), classes, classes, (1, 5))
        assert row["PMRP"] == pytest.approx(100 * np.nanmean(ref["pmrp"]))
        assert row["P@5"] == pytest.approx(100 * np.mean(ref["P@5"]))
        assert row["P@1"] >= row["R@1"]  # the true partner is always plausible
    assert "PMRP" in format_table(rows).splitlines()[0]
    assert "PMRP" not in format_table(retrieval_metrics(embeddings, dot, ks=(1,)), ks=(1,)).splitlines()[0]
