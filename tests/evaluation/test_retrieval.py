"""Retrieval metrics against hand-computed examples: ties are pessimistic, missing modalities excluded."""
from __future__ import annotations

import pytest
import torch

from probmed.embedding import GaussianEmbedding
from probmed.evaluation.retrieval import chance_recall, format_table, rank_of_true, recall_at_k, retrieval_metrics


def test_rank_counts_ties_against_the_model():
    scores = torch.tensor([[0.9, 0.1, 0.5],    # true item 0 is best → rank 0
                           [0.2, 0.2, 0.2],    # all tied → rank 2 (last), never first
                           [0.7, 0.3, 0.7]])   # true item 2 ties with item 0 → rank 1
    ranks = rank_of_true(scores, torch.tensor([0, 1, 2]))
    assert ranks.tolist() == [0, 2, 1]
    assert recall_at_k(ranks, (1, 2, 3)) == {1: pytest.approx(100 / 3), 2: pytest.approx(200 / 3), 3: 100.0}
    assert chance_recall(3, 1) == pytest.approx(100 / 3) and chance_recall(3, 5) == 100.0


def _emb(rows):
    mean = torch.tensor(rows, dtype=torch.float32)
    return GaussianEmbedding(mean, torch.zeros(len(rows), 1), torch.ones(len(rows), dtype=torch.bool))


def test_only_studies_with_both_modalities_are_queried_and_ranked():
    dot = lambda q, g, a, b: q.mean @ g.mean.T  # noqa: E731 — a transparent similarity for the hand example
    embeddings = {
        "cxr": (_emb([[1, 0], [0, 1], [1, 1]]), ["s1", "s2", "s3"]),
        "text": (_emb([[1, 0], [1, 1], [5, 5]]), ["s1", "s3", "s4"]),  # s2 has no text, s4 no cxr
    }
    rows = {(r["query"], r["gallery"]): r for r in retrieval_metrics(embeddings, dot, ks=(1, 2))}
    cxr_text = rows[("cxr", "text")]
    # galleries hold only the common studies s1, s3: cxr s1=[1,0] scores text s1=1, s3=1 → tie → rank 1;
    # cxr s3=[1,1] scores text s1=1, s3=2 → rank 0
    assert cxr_text["queries"] == 2 and cxr_text["gallery_size"] == 2
    assert cxr_text["R@1"] == 50.0 and cxr_text["R@2"] == 100.0 and cxr_text["chance@1"] == 50.0
    text_cxr = rows[("text", "cxr")]
    # text s1=[1,0] scores cxr s1=1, s3=1 → tie → rank 1; text s3=[1,1] scores 1, 2 → rank 0
    assert text_cxr["R@1"] == 50.0
    assert "cxr -> text" in format_table(list(rows.values()), ks=(1,))
