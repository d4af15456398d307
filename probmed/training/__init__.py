"""Training machinery that is not the model: atomic checkpoints, exact resume, non-finite step skipping, Slurm
requeue, throughput logging and per-tower compute switches (gradient checkpointing, torch.compile)."""
