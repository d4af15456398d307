"""Training machinery that is not the model: atomic checkpoints, exact resume, non-finite step skipping, Slurm
requeue, throughput logging and per-tower compute switches (gradient checkpointing, micro-batching — the
exact contrastive form of gradient accumulation — and torch.compile)."""

from probmed.training.compute import TowerCompute
from probmed.training.requeue import SlurmRequeue
from probmed.training.throughput import Throughput

__all__ = ["SlurmRequeue", "Throughput", "TowerCompute"]
