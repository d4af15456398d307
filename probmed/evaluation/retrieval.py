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


def label_classes(vectors: Tensor) -> Tensor:
    """``[N]`` int64 class of each label vector ``[N, L]``: equal vectors get the same class. Vectors compare
    position by position as recorded, an unknown (NaN) entry equal to an unknown one and to nothing else (so a
    study labelled ``(1, NaN)`` is plausible for ``(1, NaN)`` only, not for ``(1, 0)``)."""
    if vectors.ndim != 2:
        raise ValueError(f"label vectors must be [N, L], got shape {tuple(vectors.shape)}")
    v = vectors.double()
    key = torch.cat([torch.nan_to_num(v, nan=0.0), torch.isnan(v).double()], dim=1)
    if len(key) == 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.unique(key, dim=0, return_inverse=True)[1].to(torch.int64)


def plausible_precision(scores: Tensor, query_class: Tensor, gallery_class: Tensor, ks: tuple[int, ...]) -> dict:
    """Many-to-many retrieval: PCME's plausible-match R-precision and label precision@K.

    A gallery item is *plausible* for a query when its label class (:func:`label_classes`) is the query's. With
    ``R`` plausible items for a query (its true partner among them, so ``R ≥ 1`` in a paired gallery), PMRP is the
    fraction of the ``R`` top-scored items that are plausible; label precision@K the fraction of the top
    ``min(K, Ng)``. Items are ordered by decreasing score, ties by gallery index (stable sort).

    Args:
        scores: ``[Nq, Ng]``. query_class: ``[Nq]``. gallery_class: ``[Ng]``.

    Returns:
        ``{"pmrp": [Nq] float64 (NaN where R = 0), "P@K": [Nq] float64 per K}`` (fractions, not percent).
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    plausible = (gallery_class[order] == query_class[:, None]).double()
    hits = torch.cumsum(plausible, dim=1)
    r = plausible.sum(dim=1).to(torch.int64)
    at_r = hits.gather(1, (r - 1).clamp_min(0)[:, None]).squeeze(1)
    out = {"pmrp": torch.where(r > 0, at_r / r.clamp_min(1), torch.full_like(at_r, float("nan")))}
    for k in ks:
        kk = min(k, scores.shape[1])
        out[f"P@{k}"] = hits[:, kk - 1] / kk
    return out


def pair_ranks(embeddings: dict, score, a: str, b: str, chunk: int = 1024, labels: dict[str, Tensor] | None = None,
               ks: tuple[int, ...] = (1, 5, 10)) -> dict | None:
    """Rank of each ``a`` query's true ``b`` item among the studies that have both modalities, with what the
    confidence baselines need (:mod:`probmed.evaluation.confidence`) and, given ``labels``, many-to-many retrieval.

    Args:
        labels: ``{study_id: [L] float}`` (NaN unknown); when given, :func:`plausible_precision` per query.
        ks: the K of label precision@K.

    Returns:
        ``{"ranks": [Nq] int64, "query_ids": [Nq], "query_variance": [Nq] mean σ² of each query, "top1", "top2":
        [Nq] the highest and second-highest similarity (``top2 = top1`` for a one-item gallery), "top1_index": [Nq]
        the gallery row of the top-scored item (first on ties), "item_variance": [Nq] its mean σ²,
        "gallery_ids", "gallery_size": Ng}`` plus ``"pmrp"`` and ``"P@K"`` ([Nq] fractions) with ``labels``; None
        when no study has both.
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
    query_ids = [ids_a[i] for i in query_rows.tolist()]
    if labels is not None:
        classes = label_classes(torch.stack([labels[s] for s in [*query_ids, *gallery_ids]]))
        query_class, gallery_class = classes[: len(query_ids)], classes[len(query_ids):]
    parts: dict[str, list[Tensor]] = {}
    for s in range(0, len(query_rows), chunk):
        scores = score(query.select(slice(s, s + chunk)), gallery, a, b)
        top = torch.topk(scores, min(2, scores.shape[1]), dim=1)
        part = {"ranks": rank_of_true(scores, true_cols[s : s + chunk]), "top1": top.values[:, 0],
                "top2": top.values[:, -1], "top1_index": scores.argmax(dim=1)}
        if labels is not None:
            part.update(plausible_precision(scores, query_class[s : s + chunk], gallery_class, ks))
        for k, v in part.items():
            parts.setdefault(k, []).append(v)
    found = {k: torch.cat(v) for k, v in parts.items()}
    gallery_variance = gallery.mean_variance()
    return {
        **found,
        "query_ids": query_ids,
        "query_variance": query.mean_variance(),
        "item_variance": gallery_variance[found["top1_index"]],
        "gallery_ids": gallery_ids,
        "gallery_size": len(gallery_ids),
    }


def retrieval_metrics(
    embeddings: dict, score, ks: tuple[int, ...] = (1, 5, 10), chunk: int = 1024, details: dict | None = None,
    labels: dict[str, Tensor] | None = None,
) -> list[dict]:
    """Recall@K for every ordered pair of modalities (a query's true item is the same study in the gallery).

    Args:
        embeddings: ``{modality: (GaussianEmbedding, study_ids)}`` of the studies that have the modality.
        score: ``score(query, gallery, query_modality, gallery_modality) -> [Nq, Ng]`` similarity.
        ks: the K of Recall@K.
        chunk: queries scored at a time.
        details: if given, filled with ``{(a, b): pair_ranks(...)}`` (for the uncertainty metrics).
        labels: ``{study_id: [L]}``; when given, rows add many-to-many retrieval (:func:`plausible_precision`):
            ``"PMRP"`` and ``"P@K"`` (label precision@K), means over the queries in percent.

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
            found = pair_ranks(embeddings, score, a, b, chunk, labels=labels, ks=ks)
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
            if labels is not None:
                row["PMRP"] = 100.0 * float(found["pmrp"].nanmean())
                for k in ks:
                    row[f"P@{k}"] = 100.0 * float(found[f"P@{k}"].mean())
            rows.append(row)
    return rows


def format_table(rows: list[dict], ks: tuple[int, ...] = (1, 5)) -> str:
    """A plain-text table of :func:`retrieval_metrics` rows: R@K beside the chance level, and PMRP when the rows
    have it (many-to-many: a retrieved study with the query's labels counts)."""
    pmrp = bool(rows) and all("PMRP" in r for r in rows)
    head = f"{'query -> gallery':<18}{'N':>6}" + "".join(f"{f'R@{k}':>9}{'chance':>8}" for k in ks)
    head += f"{'PMRP':>8}" if pmrp else ""
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['query'] + ' -> ' + r['gallery']:<18}{r['gallery_size']:>6}"
        line += "".join(f"{r[f'R@{k}']:>9.1f}{r[f'chance@{k}']:>8.1f}" for k in ks)
        line += f"{r['PMRP']:>8.1f}" if pmrp else ""
        lines.append(line)
    return "\n".join(lines)
