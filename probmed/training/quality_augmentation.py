"""Quality augmentation: teach each modality's variance to rise when its input is degraded.

At every training step, for each configured modality, a random subset of the present rows is degraded with one of
the modality's registered corruptions (:data:`probmed.evaluation.corruptions.CORRUPTIONS`: noise, blur and
contrast loss of a film; noise, baseline wander and lead dropout of an ECG; speckle and frame dropout of a cine;
word dropout of a report) at a random severity ``s ~ U(0, max_severity)``, embedded by the same tower, and the
pair (original, degraded) is ranked by its mean log-variance::

    L = mean over the degraded rows of  relu( margin · s / max_severity − (ū(degraded) − ū(original)) )

with ``ū`` the mean of the log-variance over the D dimensions (with a quality head, the head's quality part: its
row's log mean variance, less the head's level; :class:`~probmed.encoders.head.GaussianHead`). The degraded copy
must be less certain than its original by a margin that grows with the severity. No label of quality is read: the
severities are the ones drawn here. The copies pass the tower in the same forward as the batch (one set of
batch-norm statistics, as at evaluation); the originals' embeddings are the step's own, and the degraded copies
enter no other term. One corruption kind and one severity per modality and step (drawn from the step's seeded
generator, so a resumed run draws the same). Under DDP each rank ranks its own rows and DDP averages the gradients
(equal to the global mean when every rank degrades the same number of rows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from probmed.embedding import GaussianEmbedding
from probmed.encoders.tower_input import concat_rows, select_rows
from probmed.data.registry import SPECS
from probmed.evaluation.corruptions import corrupt, corruptions_for

__all__ = ["QualityAugmentation"]


@dataclass
class QualityAugmentation:
    """Settings of the quality augmentation (``model.quality_augmentation`` in a config; ``null``: off).

    Attributes:
        modalities: the keys whose variance is taught (each a registered modality, or one with ``like``).
        weight: weight of the ranking loss in the training total.
        fraction: fraction of each modality's present rows degraded per step (at least two rows; a modality
            with fewer than two present rows is skipped for the step).
        max_severity: severities are drawn from ``U(0, max_severity)`` on the corruptions' scale (the evaluation
            measures 1, 2, 3).
        margin: log-variance gap demanded at the largest severity (nats of variance; ``e^1`` ≈ 2.7× at 1).
        like: key → registered modality whose corruptions it takes (a modality added in the config alone).
        kinds: key → the corruption kinds to draw from (default: every kind registered for its input).
        anchor: with a quality head (:class:`~probmed.encoders.head.GaussianHead` ``row_level="quality"``), weight
            of ``mean(quality²)`` over the batch's present rows, which holds an input that looks clean at a quality
            part of 0 (the objective's level). The ranking is relative: without it nothing bounds how far the
            quality parts of clean rows spread, and at the demo's budget they spread to the bounds and the
            variances' differences drowned the similarity (retrieval stayed at chance). No effect on other heads.
        ranking_only: the ranking alone decides which inputs of a taught modality get more variance: the
            objective's terms still see the variances (in the similarity, the samples, the KL) and set their
            level — each dimension's mean over the batch's present rows — but not how they differ from row to row
            (:meth:`for_objective`). Otherwise the contrastive objective also gives the variance to content — a
            distinctive input a small one — and that spread can outweigh what the ranking teaches. The level stays
            the objective's because, cut entirely, nothing holds it (the variances drift until the similarity is
            flat). Off in every preset: at the demo's budget it turned the echo variance towards the ambiguity
            but broke retrieval, since ProbMED's similarity penalises variances the objective cannot coordinate
            across modalities (docs/results.md).
    """

    modalities: list[str] = field(default_factory=lambda: ["cxr", "ecg", "echo", "text"])
    weight: float = 1.0
    fraction: float = 0.25
    max_severity: float = 3.0
    margin: float = 2.0
    like: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, list[str]] = field(default_factory=dict)
    ranking_only: bool = False
    anchor: float = 1.0

    def __post_init__(self) -> None:
        if not (self.anchor >= 0 and math.isfinite(self.anchor)):
            raise ValueError(f"quality_augmentation.anchor must be ≥ 0, got {self.anchor}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"quality_augmentation.fraction must be in (0, 1], got {self.fraction}")
        if not (self.max_severity > 0 and math.isfinite(self.max_severity)):
            raise ValueError(f"quality_augmentation.max_severity must be positive, got {self.max_severity}")
        for m in self.modalities:  # a clear error now for a key without corruptions, not at the first step
            self.kinds_of(m)

    def kinds_of(self, modality: str) -> list[str]:
        """The corruption kinds drawn for ``modality`` (a clear error naming the modalities that have some, or the
        kinds a modality has when ``kinds`` names another)."""
        source = self.like.get(modality, modality)
        kinds = corruptions_for(SPECS[source].pipeline) if source in SPECS else {}
        if not kinds:
            have = sorted(n for n, s in SPECS.items() if corruptions_for(s.pipeline))
            raise ValueError(f"quality_augmentation: no corruptions for {modality!r}; registered modalities with "
                             f"corruptions: {have} (for a modality added in the config, map it with `like:`)")
        chosen = self.kinds.get(modality)
        unknown = sorted(set(chosen or []) - set(kinds))
        if unknown or chosen == []:
            raise ValueError(f"quality_augmentation.kinds.{modality}: {unknown or 'empty'}; {modality} has "
                             f"{sorted(kinds)}")
        return sorted(chosen or kinds)

    def embed(self, module, batch: dict, modalities) -> tuple[dict[str, GaussianEmbedding], dict]:
        """The step's embeddings (``module.embed``'s) and the degraded copies: ``(embeddings, copies)`` with
        ``copies[m] = (GaussianEmbedding [k, D] of the copies, rows [k] they copy, severity)``.

        A modality's degraded copies pass its tower in the same forward as the batch's rows, so a batch-norm tower
        normalises them with the same statistics (in training mode a separate forward of degraded rows alone would
        be normalised by their own statistics, which evaluation's running statistics do not reproduce)."""
        embeddings, copies = {}, {}
        for m in module.embeddable(batch, modalities):
            inputs, present = batch["inputs"][m], batch["present"][m]
            plan = self._draw(m, present) if m in self.modalities else None
            if plan is None:
                embeddings[m] = module.embed_modality(m, inputs, present)
                continue
            rows, kind, severity, seed = plan
            degraded = corrupt(m, kind, select_rows(inputs, rows), severity, seed, like=self.like.get(m))
            ones = torch.ones(len(rows), dtype=torch.bool, device=present.device)
            both = module.embed_modality(m, concat_rows(inputs, degraded), torch.cat([present, ones]))
            b = len(present)
            embeddings[m] = both.select(slice(0, b))
            copies[m] = (both.select(slice(b, None)), rows, severity)
        return embeddings, copies

    def for_objective(self, embeddings: dict[str, GaussianEmbedding]) -> dict[str, GaussianEmbedding]:
        """What the training objective gets: the same values, with two gradients cut. A quality head's part
        (``GaussianEmbedding.quality``, :class:`~probmed.encoders.head.GaussianHead` ``row_level="quality"``) gets
        none from the objective: ``log_var + (quality.detach() − quality)``, exactly ``log_var`` in value, so that
        only the ranking trains it. With :attr:`ranking_only` the taught modalities' log-variances pass the
        objective's gradient to each row only through the batch level: ``log_var.detach() + level −
        level.detach()``, ``level`` ``[1, D]`` the mean over the present rows (every present row receives the mean
        of the rows' gradients)."""
        seen = {m: _without_quality_gradient(e) for m, e in embeddings.items()}
        if not self.ranking_only:
            return seen
        return {m: _level_only(e) if m in self.modalities else e for m, e in seen.items()}

    def _draw(self, modality: str, present: Tensor):
        """``(rows, kind, severity, seed)`` of this step's degradation of ``modality``, or None (< 2 rows)."""
        rows = present.nonzero().squeeze(1)
        if len(rows) < 2:  # a single degraded row cannot pass a training batch-norm tower alone
            return None
        k = min(len(rows), max(2, int(round(self.fraction * len(rows)))))
        rows = rows[torch.randperm(len(rows))[:k].to(rows.device)]
        kinds = self.kinds_of(modality)
        kind = kinds[int(torch.randint(len(kinds), ()))]
        severity = float(torch.rand(())) * self.max_severity
        return rows, kind, severity, int(torch.randint(2**31 - 1, ()))

    def loss(self, embeddings: dict[str, GaussianEmbedding], copies: dict) -> tuple[Tensor, dict]:
        """``(weighted ranking loss, logs)`` of one training step from :meth:`embed`'s output."""
        total, logs = None, {}
        for m, (copy, rows, severity) in copies.items():
            gap = _row_level(copy) - _row_level(embeddings[m].select(rows))
            part = torch.relu(self.margin * severity / self.max_severity - gap).mean()
            quality = embeddings[m].quality
            if quality is not None and self.anchor > 0:
                held = quality[embeddings[m].present].square().mean()
                part = part + self.anchor * held
                logs[f"quality_anchor/{m}"] = held.detach()
            total = part if total is None else total + part
            logs[f"quality/{m}"] = part.detach()
            logs[f"quality_gap/{m}"] = gap.detach().mean()
        if total is None:
            anchor = next(iter(embeddings.values())).log_var
            return anchor.sum() * 0.0, logs
        return self.weight * total, logs


def _row_level(e: GaussianEmbedding) -> Tensor:
    """``[B]`` what the ranking ranks: the mean log-variance over the dimensions, or a quality head's part (its row's
    log mean variance less the head's level, :class:`~probmed.encoders.head.GaussianHead`)."""
    return e.log_var.mean(-1) if e.quality is None else e.quality.squeeze(-1)


def _without_quality_gradient(e: GaussianEmbedding) -> GaussianEmbedding:
    """``e`` with the same values whose log-variance passes no gradient to its quality part (if it has one)."""
    if e.quality is None:
        return e
    return GaussianEmbedding(e.mean, e.log_var + (e.quality.detach() - e.quality), e.present)


def _level_only(e: GaussianEmbedding) -> GaussianEmbedding:
    """``e`` whose log-variance passes gradient only to its mean over the present rows (per dimension)."""
    weight = e.present.to(e.log_var.dtype)[:, None]
    level = (e.log_var * weight).sum(0, keepdim=True) / weight.sum().clamp_min(1)
    return GaussianEmbedding(e.mean, e.log_var.detach() + level - level.detach(), e.present)
