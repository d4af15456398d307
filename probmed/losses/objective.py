"""The training objective: a weighted sum of loss terms over one gathered, masked batch.

Usage::

    objective = Objective(terms=[ProbabilisticInfoNCE(["text", "cxr"]), VIB(["cxr", "text"], weight=1e-4)])
    out = objective(embeddings, group)        # embeddings: {modality: GaussianEmbedding}, group: LongTensor [B]
    out.total.backward()
    for k, v in out.parts.items(): self.log(f"loss/{k}", v, sync_dist=True)   # mean over ranks = global value

Distributed semantics (see :mod:`probmed.losses.base` and :mod:`probmed.losses.distributed`): once per step the
objective gathers, for every modality a term needs, the means and log-variances of all ranks WITH gradients plus
the presence masks and group ids; each term then computes the loss of the local rows against all global columns,
normalised so that DDP's gradient averaging yields exactly the gradient of the single-process loss on the global
batch. The returned parts are rank values whose mean over ranks is the global loss — log them with
``sync_dist=True`` (mean).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from probmed.distributed import rank_and_world_size
from probmed.embedding import GaussianEmbedding
from probmed.losses.base import LossContext, LossTerm, sanitize
from probmed.losses.distributed import check_equal_batch, gather_no_grad, gather_with_grad, pad_rows


@dataclass
class LossOutput:
    """What :class:`Objective` returns.

    Attributes:
        total: scalar with gradient, ``sum_t weight_t * term_t`` (this rank's normalised value).
        parts: detached *unweighted* value per term name (e.g. ``infonce/text-cxr``).
        extras: detached scalars for logging (``logit_scale/<term>``, ``pos_logit/<term>``, ...).
    """

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)


def gather_embeddings(
    local: dict[str, GaussianEmbedding], group: Tensor, keys: list[str], rows: int | None = None
) -> tuple[dict[str, GaussianEmbedding], Tensor, int, int, int]:
    """Gather ``local[k]`` for ``k`` in ``keys`` (with gradients) and ``group`` (without) over all ranks.

    Two collectives for all modalities together: one differentiable gather of all means and log-variances packed
    side by side, one gather of the presence masks and group ids packed as integers. With ``rows`` (the largest
    local batch any rank can hold, e.g. the data module's batch size) every rank pads its rows to ``rows``, so ranks
    may hold different batch sizes and no batch-size check runs; without it a batch-size check (one more
    collective) makes unequal batches a clear error. Returns ``(world embeddings, world group, rank, world_size,
    stride)``: the world rows in rank order, each rank's padded to ``stride`` rows (padding rows are absent in every
    modality and have group id 0). Without a process group (or world size 1) the local tensors are returned as they
    are.
    """
    rank, world = rank_and_world_size()
    n = int(group.shape[0])
    if world == 1:
        return dict(local), group, rank, world, n
    if rows is None:
        check_equal_batch(n, group.device, world)
        rows = n
    floats, widths = [], []
    for k in keys:
        floats += [local[k].mean, local[k].log_var]
        widths += [local[k].mean.shape[1], local[k].log_var.shape[1]]
    packed = gather_with_grad(pad_rows(torch.cat(floats, dim=1), rows))
    ints = gather_no_grad(pad_rows(torch.stack([group.long()] + [local[k].present.long() for k in keys], dim=1), rows))
    pieces = torch.split(packed, widths, dim=1)
    out = {k: GaussianEmbedding(pieces[2 * i], pieces[2 * i + 1], ints[:, 1 + i].bool()) for i, k in enumerate(keys)}
    return out, ints[:, 0], rank, world, rows


@dataclass
class TermOver:
    """The same loss term over several modality pairs (or modalities): mmlearn's ``LossPairSpec`` as a shorthand.

    ``TermOver("probmed.losses.ProbabilisticInfoNCE", [["text", "cxr"], ["text", "ecg"]], {"similarity":
    "cosine"})`` builds ``ProbabilisticInfoNCE(modalities=["text", "cxr"], similarity="cosine")`` and the same for
    ``text``–``ecg``. In YAML, under the objective's ``pairs:``::

        - {term: probmed.losses.SyntheticSampling, argument: modality, over: [cxr, ecg], args: {weight: 0.1}}

    Args:
        term: class path of a :class:`~probmed.losses.base.LossTerm`.
        over: one entry per term built: the value of ``argument`` (a pair ``[a, b]`` for pair terms).
        args: the other constructor arguments, the same for every entry.
        argument: the constructor argument ``over``'s entries go to (``modalities``; ``modality`` for
            single-modality terms such as :class:`~probmed.losses.SyntheticSampling`).
    """

    term: str
    over: list[Any]
    args: dict[str, Any] = field(default_factory=dict)
    argument: str = "modalities"

    def build(self) -> list[LossTerm]:
        module_name, _, class_name = self.term.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"pairs: cannot import loss term {self.term!r} ({exc})") from exc
        if not (isinstance(cls, type) and issubclass(cls, LossTerm)):
            raise ValueError(f"pairs: {self.term!r} is not a LossTerm class")
        if not self.over:
            raise ValueError(f"pairs: {self.term} lists no pair in `over`")
        if self.argument in self.args:
            raise ValueError(f"pairs: give {self.argument!r} in `over`, not in args")
        return [cls(**{self.argument: entry}, **self.args) for entry in self.over]


class Objective(nn.Module):
    """Weighted sum of :class:`~probmed.losses.base.LossTerm` s, with the cross-rank gather done once per step.

    Args:
        terms: the loss terms (each carries its own ``weight`` and ``name``).
        pairs: terms repeated over several pairs (:class:`TermOver`), built before ``terms`` in their order.
        distributed: ``auto`` gathers across ranks when torch.distributed is initialised with more than one
            rank; ``local`` never gathers (each rank's loss uses only its own batch: a different objective).
        max_local_rows: the most rows any rank holds in a step (the module sets it to the data module's
            ``batch_size``): ranks pad to it for the gathers, so no batch-size check runs (one collective fewer per
            step) and ranks may hold different batch sizes. ``None``: every rank must hold the same batch size,
            checked by one extra collective.
    """

    def __init__(self, terms: list[LossTerm] | None = None, distributed: Literal["auto", "local"] = "auto",
                 pairs: list[TermOver] | None = None, max_local_rows: int | None = None) -> None:
        super().__init__()
        terms = [t for spec in pairs or [] for t in spec.build()] + list(terms or [])
        if not terms:
            raise ValueError("Objective needs at least one loss term")
        self.terms = nn.ModuleList(terms)
        names = [t.name for t in self.terms]
        if len(set(names)) != len(names):
            raise ValueError(f"loss term names must be unique, got {names} (set `name:` on the terms)")
        self.distributed = distributed
        self.max_local_rows = max_local_rows
        self.step = 0

    @property
    def modalities(self) -> set[str]:
        """All modality keys any term reads."""
        return {m for t in self.terms for m in t.modalities}

    def build_context(self, embeddings: dict[str, GaussianEmbedding], group: Tensor) -> LossContext:
        keys = sorted(self.modalities)
        missing = [k for k in keys if k not in embeddings]
        if missing:
            raise KeyError(f"the loss terms need modalities {missing}, not in the batch (got {sorted(embeddings)})")
        dtype = torch.float32  # half-precision embeddings are upcast: the losses run in float32 at least
        for k in keys:
            dtype = torch.promote_types(dtype, embeddings[k].mean.dtype)
        local = {k: sanitize(embeddings[k], dtype) for k in keys}
        group = group.to(device=local[keys[0]].mean.device)
        for k in keys:
            if local[k].mean.shape[0] != group.shape[0]:
                raise ValueError(f"modality {k!r} has {local[k].mean.shape[0]} rows, group has {group.shape[0]}")
        if self.distributed == "auto":
            world, world_group, rank, size, stride = gather_embeddings(local, group, keys, self.max_local_rows)
        else:
            world, world_group, rank, size, stride = dict(local), group, 0, 1, int(group.shape[0])
        return LossContext(local, world, group, world_group, rank, size, self.step, stride)

    def forward(self, embeddings: dict[str, GaussianEmbedding], group: Tensor) -> LossOutput:
        ctx = self.build_context(embeddings, group)
        self.step += 1
        total = None
        parts: dict[str, Tensor] = {}
        extras: dict[str, Tensor] = {}
        for term in self.terms:
            value, term_extras = term(ctx)
            parts[term.name] = value.detach()
            extras.update({k: v.detach() for k, v in term_extras.items()})
            weighted = term.weight * value
            total = weighted if total is None else total + weighted
        return LossOutput(total, parts, extras)

    # ---------------------------------------------------------------------------------------------------------
    # retrieval scoring
    # ---------------------------------------------------------------------------------------------------------

    def contrasting_term(self, a: str, b: str) -> LossTerm | None:
        """The first term that contrasts modalities ``a`` and ``b`` (either order), or None."""
        return next((t for t in self.terms for p in t.pairs if set(p) == {a, b}), None)

    def scoring_term(self, query_modality: str, gallery_modality: str) -> LossTerm:
        """The term whose similarity scores this pair: the one contrasting it (either order), else the first
        contrastive term (pairs never trained together, e.g. cxr-ecg through the text anchor)."""
        term = self.contrasting_term(query_modality, gallery_modality)
        if term is None:
            term = next((t for t in self.terms if t.pairs), None)
        if term is None:
            raise ValueError("the objective has no contrastive term to score with")
        return term

    @torch.no_grad()
    def score(
        self,
        query: GaussianEmbedding,
        gallery: GaussianEmbedding,
        query_modality: str,
        gallery_modality: str,
        chunk: int = 1024,
    ) -> Tensor:
        """``[Nq, Ng]`` similarity (higher = more similar) of every query to every gallery item, no gradient.

        Uses the similarity of the term that contrasts the pair (see :meth:`scoring_term`), computed in blocks of
        ``chunk`` queries (each block is memory-linear in the gallery size).
        """
        term = self.scoring_term(query_modality, gallery_modality)
        dtype = torch.promote_types(query.mean.dtype, torch.float32)
        q = GaussianEmbedding(query.mean.to(dtype), query.log_var.to(dtype), query.present)
        g = GaussianEmbedding(gallery.mean.to(dtype), gallery.log_var.to(dtype), gallery.present)
        out = []
        for s in range(0, len(q), chunk):
            out.append(term.similarity(q.select(slice(s, s + chunk)), g))
        if not out:
            return q.mean.new_zeros(0, len(g))
        return torch.cat(out, dim=0)
