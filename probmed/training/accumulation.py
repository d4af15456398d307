"""Gradient accumulation and contrastive losses.

Accumulating k micro-batches of B studies does *not* train a contrastive model as one batch of k·B: InfoNCE's
softmax is over the negatives present in the same forward, so each micro-batch still contrasts against only its own
B (× world size) candidates — the gradient is the mean of k small-batch losses, with the same (weaker) negatives
as one micro-batch. Because that silently changes the objective, ProbMed refuses ``accumulate_grad_batches > 1``.
The ways to get more negatives: more devices (the distributed loss gathers every rank's embeddings, so negatives =
``data.batch_size × world size``), or a larger ``data.batch_size`` that fits thanks to bf16-mixed precision and
per-tower activation checkpointing (:class:`probmed.training.TowerCompute`). A GradCache-style accumulation (embed all
micro-batches without a graph, compute the full-batch loss on the cached embeddings, then re-run each micro-batch's
towers with the cached embedding gradients) would be exact; it is not implemented.
"""
from __future__ import annotations


def refuse_gradient_accumulation(accumulate_grad_batches: int) -> None:
    if accumulate_grad_batches > 1:
        raise ValueError(
            f"trainer.accumulate_grad_batches={accumulate_grad_batches}: accumulation does not enlarge a contrastive "
            "batch (each micro-batch is still contrasted only against its own negatives), so ProbMed refuses it. "
            "For more negatives use more devices (negatives = batch_size × world size) or a larger data.batch_size "
            "with trainer.precision=bf16-mixed and probmed.training.TowerCompute(checkpoint=[...]) to fit memory."
        )
