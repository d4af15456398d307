"""Cross-modal zero-shot classification (MEDBind): a query of one modality classified on another modality's labels.

Each modality has a *label space*: the findings its own reports define (on the embedded corpus the film shows
cardiomegaly and effusion, the ECG defines rhythm, rate and LVH). A cross-modal pair ``query -> target`` scores
``query`` embeddings against the text prompts of the ``target`` modality's label space — e.g. a chest film asked
"atrial fibrillation?" — with exactly the score of :func:`probmed.evaluation.zeroshot.zero_shot`::

    P(f | x_query) = sigmoid(scale · (mean sim(x, positive prompts of f) − mean sim(x, negative prompts of f)))

and reports per-finding AUROC against the study's label. Findings in both label spaces (shared signal) are kept
unless ``exclusive``; the target's own zero-shot on the same finding is the in-modality reference.
"""
from __future__ import annotations

from probmed.evaluation.zeroshot import zero_shot


def pair_findings(label_spaces: dict[str, list[str]], query: str, target: str, exclusive: bool) -> list[str]:
    """The findings a ``query -> target`` pair classifies: the target's label space, less the query's own when
    ``exclusive``."""
    own = set(label_spaces.get(query, [])) if exclusive else set()
    return [f for f in label_spaces[target] if f not in own]


def cross_modal_zero_shot(embeddings: dict, labels: dict, findings: list[str], prompts: dict,
                          label_spaces: dict[str, list[str]], pairs: list[list[str]], score, scale: dict[str, float],
                          exclusive: bool = False, text: str = "text") -> dict[str, dict[str, dict]]:
    """Per ``query->target`` pair and finding: ``{"probs", "target", "auroc", "balanced_accuracy"}``.

    Args:
        embeddings: ``{modality: (GaussianEmbedding, study_ids)}``; a pair whose query modality has no
            embeddings is left out.
        labels: ``{study_id: [F] float}`` (NaN = unknown), columns in ``findings`` order.
        findings: the label names, in column order.
        prompts: finding → (positive, negative) prompt embeddings from the text tower.
        label_spaces: modality → the findings of that modality's label space.
        pairs: ``[query, target]`` modality pairs.
        score: the pair scorer (:func:`probmed.evaluation.scoring.make_scorer`).
        scale: query modality → the multiplier of ``s_pos − s_neg``.
        exclusive: drop findings that are also in the query's own label space.
    """
    out: dict[str, dict[str, dict]] = {}
    for query, target in pairs:
        if query not in embeddings:
            continue
        chosen = {f: prompts[f] for f in pair_findings(label_spaces, query, target, exclusive) if f in prompts}
        res = zero_shot({query: embeddings[query]}, labels, findings, chosen, score, scale, text=text)
        out[f"{query}->{target}"] = res.get(query, {})
    return out
