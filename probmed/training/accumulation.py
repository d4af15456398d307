"""Gradient accumulation and contrastive losses.

What accumulation means for a contrastive loss: InfoNCE's softmax runs over the candidates present in the same
loss computation. Lightning's ``accumulate_grad_batches = k`` sums the gradients of k losses, each over one
micro-batch of B studies — each study is still contrasted against only its own micro-batch's B (× world size)
candidates. That is the mean of k small-batch losses, not the loss of one batch of k·B: the negatives, and so the
objective, stay those of a B batch. ProbMed therefore refuses ``accumulate_grad_batches > 1``.

The exact form (GradCache, Gao et al. 2021, "Scaling deep contrastive learning batch size under memory limited
setup"): load the whole batch (``data.batch_size = k·B``), compute the loss over all its embeddings, and run the
towers — the memory-hungry part — in micro-batches whose activations are recomputed and released one after the
other in the backward: ``probmed.training.TowerCompute(micro_batch_size={tower: B})``. The gradient is that of
the k·B batch, the tower memory that of B studies, the cost one extra forward per tower (the recomputation).
GradCache does the same in two passes (embed without a graph, cache d loss / d embedding, re-run each chunk with
its cached gradient); here autograd does it in one backward through per-chunk activation checkpoints, so it
composes with DDP, mixed precision, gradient clipping and the non-finite guard unchanged. Negatives then number
``data.batch_size × world size``: the distributed loss gathers every rank's embeddings.
"""
from __future__ import annotations


def refuse_gradient_accumulation(accumulate_grad_batches: int) -> None:
    if accumulate_grad_batches > 1:
        k = accumulate_grad_batches
        raise ValueError(
            f"trainer.accumulate_grad_batches={k}: accumulation does not enlarge a contrastive batch (each "
            "micro-batch is still contrasted only against its own negatives), so ProbMed refuses it. For the exact "
            f"equivalent, multiply data.batch_size by {k} and run the towers in micro-batches of the old batch size: "
            "trainer.callbacks += probmed.training.TowerCompute(micro_batch_size={tower: B, ...}) — the loss sees "
            "every embedding, the tower memory is that of B studies (see probmed/training/accumulation.py)."
        )
