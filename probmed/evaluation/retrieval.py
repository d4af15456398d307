"""Cross-modal retrieval: Recall@K of the true partner (same study) in a gallery, ties counted against the model."""
from __future__ import annotations

import torch
from torch import Tensor


def rank_of_true(scores: Tensor, true_index: Tensor) -> Tensor:
    """0-based rank of each query's true gallery item.

    Args:
        scores: ``[Nq, Ng]`` similarity (higher = more similar).
        true_index: ``[Nq]`` column of each query's true item.

    Returns:
        ``[Nq]`` int64: the number of *other* gallery items scoring at least as high as the true one — ties are
        pessimistic, so a model that scores everything equally ranks last, never first.
    """
    true_score = scores.gather(1, true_index[:, None])
    at_least = (scores >= true_score).sum(dim=1) - 1
    return at_least.to(torch.int64)


def recall_at_k(ranks: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """Fraction of queries whose true item ranks in the top K (``rank < K``), in percent."""
    return {k: 100.0 * float((ranks < k).float().mean()) if len(ranks) else float("nan") for k in ks}


def chance_recall(gallery_size: int, k: int) -> float:
    """Recall@K of a random ranking, in percent: ``min(K, N) / N``."""
    return 100.0 * min(k, gallery_size) / gallery_size if gallery_size else float("nan")


def pair_index(query_ids: list[str], gallery_ids: list[str]) -> tuple[Tensor, Tensor]:
    """Match queries to gallery items by study id.

    Returns:
        ``(query_rows, true_columns)``: the queries whose study is in the gallery and the column of that study.
    """
    column = {sid: j for j, sid in enumerate(gallery_ids)}
    rows = [i for i, sid in enumerate(query_ids) if sid in column]
    return torch.tensor(rows, dtype=torch.int64), torch.tensor([column[query_ids[i]] for i in rows], dtype=torch.int64)


def pair_ranks(embeddings: dict, score, a: str, b: str, chunk: int = 1024) -> dict | None:
    """Rank of each ``a`` query's true ``b`` item among the studies that have both modalities.

    Returns:
        ``{"ranks": [Nq] int64, "query_ids": [Nq], "query_variance": [Nq] mean variance of each query,
        "gallery_size": Ng}``, or None when no study has both.
    """
    (qa, ids_a), (gb, ids_b) = embeddings[a], embeddings[b]
    common = set(ids_a) & set(ids_b)
    keep_b = [j for j, sid in enumerate(ids_b) if sid in common]
    gallery = gb.select(torch.tensor(keep_b, dtype=torch.int64))
    gallery_ids = [ids_b[j] for j in keep_b]
    query_rows, true_cols = pair_index(ids_a, gallery_ids)
    if len(query_rows) == 0:
        return None
    query = qa.select(query_rows)
    ranks = torch.cat([
        rank_of_true(score(query.select(slice(s, s + chunk)), gallery, a, b), true_cols[s : s + chunk])
        for s in range(0, len(query_rows), chunk)
    ])
    return {
        "ranks": ranks,
        "query_ids": [ids_a[i] for i in query_rows.tolist()],
        "query_variance": query.mean_variance(),
        "gallery_size": len(gallery_ids),
    }


def retrieval_metrics(
    embeddings: dict, score, ks: tuple[int, ...] = (1, 5, 10), chunk: int = 1024, details: dict | None = None
) -> list[dict]:
    """Recall@K for every ordered pair of modalities (a query's true item is the same study in the gallery).

    Args:
        embeddings: ``{modality: (GaussianEmbedding, study_ids)}`` of the studies that have the modality.
        score: ``score(query, gallery, query_modality, gallery_modality) -> [Nq, Ng]`` similarity.
        ks: the K of Recall@K.
        chunk: queries scored at a time.
        details: if given, filled with ``{(a, b): pair_ranks(...)}`` (for the uncertainty metrics).

    Returns:
        One row per ordered pair: ``{"query", "gallery", "queries", "gallery_size", "R@K"..., "chance@K"...,
        "rsum"}`` (recalls and chance levels in percent; ``rsum`` = sum of the pair's R@K). Only studies having
        both modalities take part.
    """
    rows = []
    names = sorted(embeddings)
    for a in names:
        for b in names:
            if a == b:
                continue
            found = pair_ranks(embeddings, score, a, b, chunk)
            if found is None:
                continue
            if details is not None:
                details[(a, b)] = found
            n_gallery = found["gallery_size"]
            row = {"query": a, "gallery": b, "queries": len(found["ranks"]), "gallery_size": n_gallery}
            for k, value in recall_at_k(found["ranks"], ks).items():
                row[f"R@{k}"] = value
                row[f"chance@{k}"] = chance_recall(n_gallery, k)
            row["rsum"] = sum(row[f"R@{k}"] for k in ks)
            rows.append(row)
    return rows


def format_table(rows: list[dict], ks: tuple[int, ...] = (1, 5)) -> str:
    """A plain-text table of :func:`retrieval_metrics` rows: R@K beside the chance level."""
    head = f"{'query -> gallery':<18}{'N':>6}" + "".join(f"{f'R@{k}':>9}{'chance':>8}" for k in ks)
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['query'] + ' -> ' + r['gallery']:<18}{r['gallery_size']:>6}"
        line += "".join(f"{r[f'R@{k}']:>9.1f}{r[f'chance@{k}']:>8.1f}" for k in ks)
        lines.append(line)
    return "\n".join(lines)
