"""Worker for tests/evaluation/test_collect_ddp.py: one rank of a real gloo run of the EmbeddingCollector.

The global evaluation set is ten studies; ranks get uneven shares (one rank may get none) and the last rank also
receives a *padding* copy of study s0 (as DistributedSampler pads uneven shards); the echo modality appears on
one rank only. Rank 0 saves the gathered result with torch.save.

Run: ``python tests/_ddp_collect_worker.py --rank R --world-size W --port P --out FILE``.
"""
from __future__ import annotations

import torch

from _gloo_worker import join_gloo_group
from probmed.embedding import GaussianEmbedding

N, D = 10, 4
PRESENT = {"cxr": [1, 1, 0, 1, 1, 1, 1, 0, 1, 1], "ecg": [1, 0, 1, 1, 1, 1, 0, 1, 1, 1], "echo": [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]}
SHARES = {1: [list(range(10))], 2: [[0, 1, 2], [3, 4, 5, 6, 7, 8, 9, 0]], 3: [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 0], []]}


def study_batches(rows: list[int], batch: int = 3):
    """Batches of the given global rows, as the module's eval step sees them (embeddings with presence)."""
    g = torch.Generator().manual_seed(0)
    means = {m: torch.randn(N, D, generator=g) for m in PRESENT}
    log_vars = {m: torch.randn(N, D, generator=g) for m in PRESENT}
    labels = torch.randint(0, 2, (N, 3), generator=g).float()
    for s in range(0, len(rows), batch):
        idx = torch.tensor(rows[s : s + batch])
        emb = {m: GaussianEmbedding(means[m][idx], log_vars[m][idx], torch.tensor(PRESENT[m]).bool()[idx])
               for m in PRESENT if any(PRESENT[m][i] for i in idx.tolist())}
        yield emb, [f"s{i}" for i in idx.tolist()], labels[idx]


def collect(rows: list[int]):
    from probmed.evaluation.collect import EmbeddingCollector

    collector = EmbeddingCollector()
    for emb, ids, labels in study_batches(rows):
        collector.add(emb, ids, labels)
    return collector.gather()


def main() -> None:
    a = join_gloo_group()
    gathered, labels = collect(SHARES[a.world_size][a.rank])
    if a.rank == 0:
        torch.save({"gathered": {m: (e.mean, e.log_var, ids) for m, (e, ids) in gathered.items()}, "labels": labels}, a.out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
