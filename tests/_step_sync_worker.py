"""Gloo worker for tests/training/test_collectives.py: one rank's view of the per-step agreements. Rank ``r`` logs
``{"a": r + 1, "b": NaN on rank 1, "c": bfloat16 0.5·r}`` through :func:`mean_over_ranks`, and runs one
:class:`NonFiniteGuard` step with a finite loss and a ``requeue`` rider that only rank 0 raises; writes
``{"means": {...}, "finite": bool, "agreed": {...}}`` as JSON to ``OUT.rank<r>``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _gloo_worker import join_gloo_group  # noqa: E402
from probmed.training.metric_sync import mean_over_ranks  # noqa: E402
from probmed.training.nonfinite import NonFiniteGuard  # noqa: E402

args = join_gloo_group()
r = args.rank
means = mean_over_ranks({"a": torch.tensor(r + 1.0), "b": torch.tensor(float("nan") if r == 1 else 0.0),
                         "c": torch.tensor(0.5 * r, dtype=torch.bfloat16)})
guard = NonFiniteGuard()
guard.ride("requeue", lambda: r == 0)
finite = guard.all_finite(torch.tensor(2.0))
Path(f"{args.out}.rank{r}").write_text(json.dumps({
    "means": {k: (None if v.isnan() else v.item()) for k, v in means.items()},
    "dtypes": sorted({str(v.dtype) for v in means.values()}),
    "finite": finite, "agreed": guard.agreed, "skipped": guard.skipped}))
# leave the group together: a rank that exits while the other is still inside a collective aborts it at teardown
torch.distributed.barrier()
torch.distributed.destroy_process_group()
