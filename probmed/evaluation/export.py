"""``probmed predict`` output: mean and variance per study and modality, with study ids and presence, as ``.npz``.

File layout (NumPy ``.npz``, no pickled objects; load with :func:`load_embeddings` or
``np.load(path, allow_pickle=False)``)::

    study_id             [N]     unicode   sorted study ids (each study once, whatever the number of ranks)
    <modality>/mean      [N, D]  float32   Gaussian means (zeros where absent)
    <modality>/var       [N, D'] float32   variances σ² (D' = D, or 1 for isotropic heads; zeros where absent)
    <modality>/present   [N]     bool      whether the study has the modality
    <modality>/ambiguity [N]     float32   the shard's recorded ambiguity in [0, 1] (NaN unknown or absent)
    labels               [N, L]  float32   the study's label vector (NaN unknown), columns in label_names order
    label_names          [L]     unicode   the dataset's label vocabulary (fixed-width strings, no pickle)
    evaluation_fitted    []      unicode   JSON of the checkpoint's validation-fitted evaluation state (variance-
                                           aware confidence rules per pair, zero-shot temperature per modality;
                                           ``null`` when the checkpoint has none): ``json.loads(str(arr))``
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np

from probmed.distributed import all_gather_objects


def write_embeddings(path: str | Path, rows: dict[str, dict[str, tuple]], labels: dict[str, np.ndarray] | None = None,
                     label_names: list[str] | None = None, fitted: dict | None = None) -> Path:
    """Write ``{study_id: {modality: (mean [D], variance [D'], present[, ambiguity])}}`` in the layout above
    (atomically); ``labels`` ``{study_id: [L]}`` with ``label_names`` add ``labels``/``label_names`` (a study
    without labels gets NaN), ``fitted`` the evaluation state. A missing ambiguity is NaN.

    Raises:
        ValueError: labels whose length is not that of ``label_names``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted(rows)
    modalities = sorted({m for r in rows.values() for m in r})
    arrays: dict[str, np.ndarray] = {"study_id": np.array(ids, dtype=str)}
    if labels is not None or label_names is not None:
        names = list(label_names or [])
        table = np.full((len(ids), len(names)), np.nan, np.float32)
        for i, sid in enumerate(ids):
            if sid in (labels or {}):
                row = np.asarray(labels[sid], np.float32).reshape(-1)
                if row.shape[0] != len(names):
                    raise ValueError(f"study {sid} has {row.shape[0]} labels, the vocabulary {len(names)}")
                table[i] = row
        arrays["labels"] = table
        arrays["label_names"] = np.array(names, dtype=np.str_) if names else np.zeros(0, dtype="<U1")
    arrays["evaluation_fitted"] = np.array(json.dumps(fitted))
    for m in modalities:
        first = next(r[m] for r in rows.values() if m in r)
        dim, vdim = first[0].shape[-1], first[1].shape[-1]
        mean = np.zeros((len(ids), dim), np.float32)
        var = np.zeros((len(ids), vdim), np.float32)
        present = np.zeros(len(ids), bool)
        ambiguity = np.full(len(ids), np.nan, np.float32)
        for i, sid in enumerate(ids):
            if m in rows[sid] and rows[sid][m][2]:
                mean[i], var[i], present[i] = rows[sid][m][0], rows[sid][m][1], True
                if len(rows[sid][m]) > 3 and rows[sid][m][3] is not None and math.isfinite(rows[sid][m][3]):
                    ambiguity[i] = rows[sid][m][3]
        arrays[f"{m}/mean"], arrays[f"{m}/var"], arrays[f"{m}/present"] = mean, var, present
        arrays[f"{m}/ambiguity"] = ambiguity
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Read a file written by :func:`write_embeddings` (never unpickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class EmbeddingWriter(L.Callback):
    """Collects :meth:`ProbMedModule.predict_step` outputs and writes them with :func:`write_embeddings` at the end
    of ``predict`` (rows of all ranks gathered on rank 0; a study seen twice is written once).

    Args:
        path: output file; default ``<logger log_dir or default_root_dir>/embeddings.npz``.
    """

    def __init__(self, path: Optional[str] = None):
        self.path = path
        self.rows: dict[str, dict] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.written: Optional[Path] = None

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self.rows, self.labels = {}, {}

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        names = sorted({k.split("/")[0] for k in outputs if "/" in k})
        labels = outputs.get("labels")
        for i, sid in enumerate(outputs["study_id"]):
            row = self.rows.setdefault(sid, {})
            if labels is not None:
                self.labels[sid] = labels[i].detach().float().cpu().numpy()
            for m in names:
                present = bool(outputs[f"{m}/present"][i])
                ambiguity = outputs.get(f"{m}/ambiguity")
                if present or m not in row:
                    row[m] = (
                        outputs[f"{m}/mean"][i].detach().float().cpu().numpy(),
                        outputs[f"{m}/log_var"][i].detach().float().exp().cpu().numpy(),
                        present,
                        float(ambiguity[i]) if ambiguity is not None else math.nan,
                    )

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        shards = all_gather_objects((self.rows, self.labels))
        if not trainer.is_global_zero:
            return
        merged: dict[str, dict] = defaultdict(dict)
        labels: dict[str, np.ndarray] = {}
        for shard, shard_labels in shards:
            labels.update(shard_labels)
            for sid, row in shard.items():
                for m, value in row.items():
                    if value[2] or m not in merged[sid]:
                        merged[sid][m] = value
        log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger else None
        path = self.path or str(Path(log_dir or trainer.default_root_dir) / "embeddings.npz")
        datamodule = getattr(trainer, "datamodule", None)
        names = getattr(datamodule, "label_names", None)
        if names is None and labels:
            names = [f"label_{j}" for j in range(len(next(iter(labels.values()))))]
        evaluator = getattr(pl_module, "evaluator", None)
        self.written = write_embeddings(path, dict(merged), labels, names, getattr(evaluator, "fitted", None))
        print(f"wrote embeddings of {len(merged)} studies to {self.written}", flush=True)


__all__ = ["EmbeddingWriter", "load_embeddings", "write_embeddings"]
