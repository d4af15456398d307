"""A callback for the collective-count test: counts the torch.distributed calls each training step makes.

``CollectiveCounter(out=FILE)`` wraps the collectives of ``torch.distributed`` (and the functional all-gather the
losses use) for the whole fit, counts calls between its ``on_train_batch_start`` and ``on_train_batch_end`` (put it
last in the callback list so the other callbacks' batch-end work is inside the window), and writes
``[{name: count}, ...]`` per step to ``FILE.rank<R>.json`` when training ends. DDP's gradient all-reduce runs in
C++ (its reducer) and is not counted: it is the one collective a step cannot do without.
"""
from __future__ import annotations

import functools
import json
from collections import Counter

import lightning as L
import torch.distributed as dist
from torch.distributed import _functional_collectives as fc

NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
         "broadcast_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "barrier", "all_to_all",
         "gather", "scatter", "gather_object", "scatter_object_list")
FUNCTIONAL = ("all_gather_single_autograd", "all_gather_tensor", "all_reduce", "all_gather_tensor_autograd")


class CollectiveCounter(L.Callback):
    def __init__(self, out: str):
        self.out = out
        self.steps: list[Counter] = []
        self._current: Counter | None = None
        self._originals: list[tuple[object, str, object]] = []

    def _wrap(self, module, name: str, label: str) -> None:
        original = getattr(module, name, None)
        if original is None:
            return

        @functools.wraps(original)
        def counted(*args, **kwargs):
            if self._current is not None:
                self._current[label] += 1
            return original(*args, **kwargs)

        self._originals.append((module, name, original))
        setattr(module, name, counted)

    def on_fit_start(self, trainer, pl_module) -> None:
        for name in NAMES:
            self._wrap(dist, name, name)
        for name in FUNCTIONAL:
            self._wrap(fc, name, f"functional.{name}")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._current = Counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(self._current)
        self._current = None

    def on_fit_end(self, trainer, pl_module) -> None:
        for module, name, original in self._originals:
            setattr(module, name, original)
        with open(f"{self.out}.rank{trainer.global_rank}.json", "w") as f:
            json.dump([dict(c) for c in self.steps], f)
