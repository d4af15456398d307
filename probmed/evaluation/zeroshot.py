"""Zero-shot classification of findings from text prompts (prompt ensembles), scored by the model's similarity.

For a study with embedding x in modality m and a finding f with positive prompts P and negative prompts Q::

    s_pos = mean_{p in P} sim_m,text(x, p),   s_neg = mean_{q in Q} sim_m,text(x, q)
    P(f | x) = sigmoid(scale · (s_pos − s_neg))       (= a two-way softmax over the two prompt sets)

with ``scale`` the scoring term's own logit scale (or a configured temperature), so the probabilities are the
model's and their calibration (ECE) is the model's.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, multiclass_accuracy

from probmed.embedding import GaussianEmbedding


def prompt_score_difference(query: GaussianEmbedding, positive: GaussianEmbedding, negative: GaussianEmbedding,
                            score, modality: str, text: str = "text") -> Tensor:
    """``[N]`` ``s_pos − s_neg``: mean similarity to the positive prompts minus mean to the negative ones."""
    return score(query, positive, modality, text).mean(dim=1) - score(query, negative, modality, text).mean(dim=1)


def labelled(ids: list[str], labels: dict[str, Tensor], column: int) -> tuple[Tensor, Tensor]:
    """``(rows, targets)``: the rows of ``ids`` whose label ``column`` is known (not NaN), and those labels."""
    values = torch.stack([labels[s][column] for s in ids]) if ids else torch.zeros(0)
    rows = (~torch.isnan(values)).nonzero().squeeze(1)
    return rows, values[rows]


def binary_metrics(probs: Tensor, target: Tensor, threshold: float = 0.5) -> dict[str, float]:
    """AUROC and balanced accuracy (mean of sensitivity and specificity at ``threshold``; torchmetrics); NaN for
    both when the targets hold only one class (AUROC is undefined there)."""
    target = target.long()
    if len(target) == 0 or int(target.min()) == int(target.max()):
        return {"auroc": math.nan, "balanced_accuracy": math.nan}
    predicted = (probs > threshold).long()
    return {
        "auroc": float(binary_auroc(probs.float(), target)),
        "balanced_accuracy": float(multiclass_accuracy(predicted, target, num_classes=2, average="macro")),
    }


def zero_shot(
    embeddings: dict, labels: dict[str, Tensor], findings: list[str], prompts: dict[str, tuple[GaussianEmbedding, GaussianEmbedding]],
    score, scale: dict[str, float], text: str = "text",
) -> dict[str, dict[str, dict]]:
    """Zero-shot predictions and metrics for every non-text modality and every prompted finding.

    Args:
        embeddings: ``{modality: (GaussianEmbedding, study_ids)}``.
        labels: ``{study_id: [F] float}`` (NaN = unknown), columns in ``findings`` order.
        findings: the label names, in column order.
        prompts: finding → (positive prompts, negative prompts) embedded by the text tower.
        score: the pair scorer (:func:`probmed.evaluation.scoring.make_scorer`).
        scale: modality → the multiplier of ``s_pos − s_neg``.

    Returns:
        ``{modality: {finding: {"logits", "probs", "target", "auroc", "balanced_accuracy"}}}`` (``logits`` [n]
        float64 ``scale · (s_pos − s_neg)``, ``probs`` their sigmoid in float32, over the studies labelled for the
        finding).
    """
    unknown = sorted(set(prompts) - set(findings))
    if unknown:
        raise ValueError(f"zero-shot prompts name findings {unknown} that the data does not label; labels: {findings}")
    out: dict[str, dict[str, dict]] = {}
    for modality, (emb, ids) in sorted(embeddings.items()):
        if modality == text:
            continue
        out[modality] = {}
        for finding, (pos, neg) in prompts.items():
            rows, target = labelled(ids, labels, findings.index(finding))
            if len(rows) == 0:
                continue
            diff = prompt_score_difference(emb.select(rows), pos, neg, score, modality, text)
            logits = scale[modality] * diff.double()
            probs = torch.sigmoid(logits).float()
            out[modality][finding] = {"logits": logits, "probs": probs, "target": target,
                                      **binary_metrics(probs, target)}
    return out
