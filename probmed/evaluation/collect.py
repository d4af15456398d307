"""Collect per-study embeddings during an evaluation epoch and gather them from all ranks at its end."""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from probmed.distributed import all_gather_objects
from probmed.embedding import GaussianEmbedding


class EmbeddingCollector:
    """Accumulates, per modality, the embeddings of the studies that have it, plus labels and study ids.

    Ranks may see different numbers of studies; :meth:`gather` is the only collective (call it on every rank,
    once per epoch). Studies seen twice (e.g. the same study on two ranks) are kept once.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._parts: dict[str, list[tuple[Tensor, Tensor, list[str]]]] = defaultdict(list)
        self._labels: dict[str, Tensor] = {}
        self._ambiguity: dict[str, dict[str, float]] = defaultdict(dict)

    def add(self, embeddings: dict[str, GaussianEmbedding], study_ids: list[str], labels: Tensor,
            ambiguity: dict[str, Tensor] | None = None) -> None:
        """Keep the present rows of each modality (moved to CPU, detached, float32), the labels ``[B, L]`` and,
        when the batch has it, each present modality's recorded ambiguity (``{modality: [B]}``, NaN unknown)."""
        labels = labels.detach().float().cpu()
        for i, sid in enumerate(study_ids):
            self._labels[sid] = labels[i]
        for name, values in (ambiguity or {}).items():
            emb = embeddings.get(name)
            if emb is None:
                continue
            values = values.detach().float().cpu().tolist()
            for sid, present, value in zip(study_ids, emb.present.detach().cpu().tolist(), values):
                if present and value == value:  # NaN: unknown, not kept
                    self._ambiguity[name][sid] = float(value)
        for name, emb in embeddings.items():
            keep = emb.present.detach().cpu()
            if keep.any():
                ids = [sid for sid, k in zip(study_ids, keep.tolist()) if k]
                self._parts[name].append(
                    (emb.mean.detach().float().cpu()[keep], emb.log_var.detach().float().cpu()[keep], ids)
                )

    def _local(self) -> dict:
        modalities = {}
        for name, parts in self._parts.items():
            modalities[name] = (
                torch.cat([p[0] for p in parts]),
                torch.cat([p[1] for p in parts]),
                [sid for p in parts for sid in p[2]],
            )
        return {"modalities": modalities, "labels": self._labels, "ambiguity": dict(self._ambiguity)}

    def gather(self) -> tuple[dict[str, tuple[GaussianEmbedding, list[str]]], dict[str, Tensor]]:
        """All ranks' studies: ``({modality: (embedding, study_ids)}, {study_id: labels [F]})``, sorted by id."""
        embeddings, labels, _ = self.gather_all()
        return embeddings, labels

    def gather_all(self) -> tuple[dict[str, tuple[GaussianEmbedding, list[str]]], dict[str, Tensor],
                                  dict[str, dict[str, float]]]:
        """:meth:`gather` plus the recorded ambiguity ``{modality: {study_id: value}}`` (known values only)."""
        local = self._local()
        shards = all_gather_objects(local)
        labels: dict[str, Tensor] = {}
        ambiguity: dict[str, dict[str, float]] = defaultdict(dict)
        merged: dict[str, dict[str, tuple[Tensor, Tensor]]] = defaultdict(dict)
        for shard in shards:
            labels.update(shard["labels"])
            for name, values in shard["ambiguity"].items():
                ambiguity[name].update(values)
            for name, (mean, log_var, ids) in shard["modalities"].items():
                for i, sid in enumerate(ids):
                    merged[name].setdefault(sid, (mean[i], log_var[i]))
        result = {}
        for name, rows in merged.items():
            ids = sorted(rows)
            mean = torch.stack([rows[s][0] for s in ids])
            log_var = torch.stack([rows[s][1] for s in ids])
            result[name] = (GaussianEmbedding(mean, log_var, torch.ones(len(ids), dtype=torch.bool)), ids)
        return result, labels, dict(ambiguity)
