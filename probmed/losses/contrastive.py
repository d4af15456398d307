"""Contrastive terms: probabilistic / deterministic InfoNCE (ProbMED, CLIP, MEDBind), SigLIP, PCME++, MedProbCLIP.

All terms compute the loss of this rank's LOCAL rows against ALL GLOBAL columns (gathered with gradients by the
:class:`~probmed.losses.Objective`), normalised as described in :mod:`probmed.losses.base`, so that DDP's
gradient averaging reproduces the single-process gradient of the global batch exactly.

Masks. For a pair ``(a, b)`` and the direction a -> b, row ``i`` (modality ``a``) is *valid* when ``a`` is present
in it and at least one present ``b`` column shares its group id; columns where ``b`` is absent are excluded from
the softmax. Targets are soft: uniform over all present ``b`` columns with the row's group id (multi-positive;
groups may span ranks). With ``paired_only=True`` (MEDBind's Edge-Modality Contrastive Loss) both rows and columns
are further restricted to the studies in which *both* ``a`` and ``b`` are present, i.e. the loss is exactly the
InfoNCE on the sub-batch of paired studies.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probmed.embedding import GaussianEmbedding
from probmed.losses.base import (
    LossContext,
    LossTerm,
    count_valid_rows,
    global_mean,
    masked_soft_cross_entropy,
    positive_mask,
    soft_targets,
)
from probmed.losses.similarity import (
    Similarity,
    csd,
    hellinger_similarity,
    medprob_distance,
    pairwise_similarity,
    similarity_kind,
)

class LogitScale(nn.Module):
    """CLIP-style learnable scale ``exp(t)``, ``t`` clamped at ``log(max_value)`` in the forward pass."""

    def __init__(self, init: float, max_value: float | None = 100.0, learnable: bool = True) -> None:
        super().__init__()
        t = torch.tensor(math.log(init), dtype=torch.float32)
        if learnable:
            self.log_scale = nn.Parameter(t)
        else:
            self.register_buffer("log_scale", t)
        self.max_log = None if max_value is None else math.log(max_value)

    def forward(self) -> Tensor:
        t = self.log_scale if self.max_log is None else self.log_scale.clamp(max=self.max_log)
        return t.exp()


def _row_col_masks(ctx: LossContext, a: str, b: str, paired_only: bool):
    """(local row mask of a, world column mask of b, world row mask of a) for the direction a -> b."""
    la, wa, wb = ctx.local[a].present, ctx.world[a].present, ctx.world[b].present
    if paired_only:
        la = la & ctx.local[b].present
        wb = wb & wa
        wa = wa & ctx.world[b].present
    return la, wb, wa


def infonce_rows(logits: Tensor, ctx: LossContext, col_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(per-row loss [B], per-row mean positive logit [B], positives per row [B])`` from ``[B, N]`` logits."""
    pos = positive_mask(ctx.local_group, ctx.world_group, col_mask)
    targets, n_pos = soft_targets(pos, logits.dtype)
    per_row = masked_soft_cross_entropy(logits, targets, col_mask)
    with torch.no_grad():
        pos_row = (targets * logits).sum(1)
    return per_row, pos_row, n_pos


def direction_mean(
    per_row: Tensor, pos_row: Tensor, n_pos: Tensor, ctx: LossContext, row_mask: Tensor, col_mask: Tensor,
    world_row_mask: Tensor,
) -> tuple[Tensor, Tensor]:
    """One direction's ``(normalised loss, normalised mean positive logit)`` from its per-row parts."""
    valid = row_mask & (n_pos > 0)
    n_global = count_valid_rows(world_row_mask, ctx.world_group, col_mask)
    loss = global_mean(per_row, valid, n_global, ctx.world_size)
    with torch.no_grad():
        pos_logit = global_mean(pos_row.detach(), valid, n_global, ctx.world_size)
    return loss, pos_logit


def symmetric_infonce(ctx: LossContext, a: str, b: str, logits_fn, paired_only: bool = False, rows_fn=None):
    """``1/2 (L_{a->b} + L_{b->a})`` with ``logits_fn(rows, cols) -> [B, N]`` symmetric in its arguments.

    On one rank the b -> a logits are the transpose of the a -> b ones (computed once); on several ranks each
    direction is local rows against world columns. ``rows_fn(x, y, col_mask)``, when given, replaces the logits:
    it returns :func:`infonce_rows`' three ``[B]`` parts of the direction ``x -> y`` directly (fused kernel).
    """
    if rows_fn is None:
        logits = {a: logits_fn(ctx.local[a], ctx.world[b])}
        logits[b] = logits[a].t() if ctx.world_size == 1 else logits_fn(ctx.local[b], ctx.world[a])

        def rows_fn(x: str, y: str, col_mask: Tensor):
            return infonce_rows(logits[x], ctx, col_mask)

    parts = []
    for x, y in ((a, b), (b, a)):
        rm, cm, wm = _row_col_masks(ctx, x, y, paired_only)
        parts.append(direction_mean(*rows_fn(x, y, cm), ctx, rm, cm, wm))
    (l_ab, p_ab), (l_ba, p_ba) = parts
    return 0.5 * (l_ab + l_ba), 0.5 * (p_ab + p_ba)


class PairTerm(LossTerm):
    """A term over one pair of modality keys ``(a, b)``, named ``<prefix>/<a>-<b>``.

    Subclasses set :attr:`prefix`; the default :meth:`similarity` is :func:`pairwise_similarity` of
    ``similarity_name`` (a name of :data:`~probmed.losses.similarity.SIMILARITY_TABLE`, with ``normalize`` and
    ``chunk``), which terms with their own geometry (PCME++'s CSD, MedProbCLIP's distance) override.
    """

    prefix = "pair"

    def __init__(self, modalities: Sequence[str], weight: float, name: str | None, similarity: str = "cosine",
                 normalize: bool = True, chunk: int | None = None) -> None:
        super().__init__(weight, name)
        mods = tuple(modalities)
        if len(mods) != 2 or mods[0] == mods[1]:
            raise ValueError(f"a pairwise term needs two different modality keys, got {mods}")
        self.a, self.b = mods
        similarity_kind(similarity)  # an unknown name fails at construction, listing the known ones
        self.similarity_name = similarity
        self.normalize = normalize
        self.chunk = chunk

    def default_name(self) -> str:
        return f"{self.prefix}/{self.a}-{self.b}"

    @property
    def modalities(self) -> tuple[str, ...]:
        return (self.a, self.b)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return ((self.a, self.b),)

    def similarity(self, a: GaussianEmbedding, b: GaussianEmbedding) -> Tensor:
        return pairwise_similarity(self.similarity_name, a.mean, a.log_var, b.mean, b.log_var, self.normalize,
                                   self.chunk)


class ProbabilisticInfoNCE(PairTerm):
    """Symmetric multi-positive InfoNCE between two modalities with a (probabilistic) similarity (ProbMED).

    ``logits_ij = scale * sim(a_i, b_j)``, ``scale = exp(t)`` learnable (CLIP: ``t`` clamped at log 100).
    With ``similarity="cosine"`` and unit-norm means this is exactly CLIP's InfoNCE (open_clip ``ClipLoss``).

    Args:
        modalities: the two modality keys ``[a, b]`` (e.g. ``[text, cxr]``).
        weight: weight of this term in the objective's total.
        similarity: one of :data:`~probmed.losses.similarity.SIMILARITIES`: ``hellinger`` (ProbMED: PS on the
            per-dimension Bhattacharyya coefficient ``BC^(1/D)``, in [0, 1]), ``hellinger_joint`` (the paper's
            literal ``PS = 1 - sqrt(1 - BC)``, which saturates at 0 in high dimension), ``bhattacharyya`` (log BC,
            <= 0), ``csd`` (minus PCME++'s closed-form sampled distance), ``medprob`` (minus MedProbCLIP's
            distance) or ``cosine`` (of the means; deterministic CLIP). docs/design.md compares them.
        init_logit_scale: initial scale ``1/tau``; default per similarity (``init_scale`` of
            :data:`~probmed.losses.similarity.SIMILARITY_TABLE`).
        max_logit_scale: clamp of the scale (CLIP: 100); ``<= 0`` disables the clamp.
        learn_logit_scale: learn the scale (else fixed at ``init_logit_scale``).
        normalize: L2-normalise the means for ``cosine`` (a no-op if the head already does).
        paired_only: use only studies in which both modalities are present, as rows and as columns (MEDBind's
            Edge-Modality Contrastive Loss); by default rows need ``a`` present (and a present positive ``b``) and
            columns need ``b`` present.
        chunk: columns per chunk of the memory-linear diagonal kernel (default: automatic).
        learn_hellinger_exponent: for the Hellinger similarities, learn a factor ``exp(e)`` (init 1) on the
            exponent ``kappa`` of ``BC^kappa`` (``kappa = 1/D`` for ``hellinger``, 1 for ``hellinger_joint``).
        fused_kernel: on CUDA with Triton installed, compute ``hellinger`` / ``bhattacharyya`` with diagonal
            variances through the fused kernel of :mod:`probmed.losses.fused_infonce` (no ``[B, N]`` logits; the
            same loss). ``PROBMED_LOSS_TRITON=0`` turns it off for the process.
        name: key of this term in the logged parts (default ``infonce/<a>-<b>``).
    """

    prefix = "infonce"

    def __init__(
        self,
        modalities: tuple[str, str] | list[str] = ("text", "cxr"),
        weight: float = 1.0,
        similarity: Similarity = "hellinger",
        init_logit_scale: float | None = None,
        max_logit_scale: float = 100.0,
        learn_logit_scale: bool = True,
        normalize: bool = True,
        paired_only: bool = False,
        chunk: int | None = None,
        learn_hellinger_exponent: bool = False,
        fused_kernel: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(modalities, weight, name, similarity, normalize, chunk)
        kind = similarity_kind(similarity)
        init = kind.init_scale if init_logit_scale is None else init_logit_scale
        self.logit_scale = LogitScale(init, max_logit_scale if max_logit_scale > 0 else None, learn_logit_scale)
        self.paired_only = paired_only
        if learn_hellinger_exponent and kind.exponent_base is None:
            raise ValueError(f"learn_hellinger_exponent needs a Hellinger similarity, not {similarity!r}")
        self.log_exponent_factor = nn.Parameter(torch.zeros(())) if learn_hellinger_exponent else None
        self.fused_kernel = fused_kernel

    def similarity(self, a: GaussianEmbedding, b: GaussianEmbedding) -> Tensor:
        if self.log_exponent_factor is None:
            return super().similarity(a, b)
        base = similarity_kind(self.similarity_name).exponent_base(a.mean.shape[-1])
        kappa = base * self.log_exponent_factor.exp().to(a.mean.dtype)
        return hellinger_similarity(a.mean, a.log_var, b.mean, b.log_var, kappa, chunk=self.chunk)

    def _fused_rows_fn(self, ctx: LossContext, scale: Tensor):
        """``rows_fn`` of :func:`symmetric_infonce` through the fused Triton kernel, or None where it does not
        apply (CPU without the Triton interpreter, other similarities, a learnt exponent, isotropic variances)."""
        mods = (ctx.world[self.a], ctx.world[self.b])
        if (not self.fused_kernel or similarity_kind(self.similarity_name).fused_code is None
                or self.log_exponent_factor is not None or any(e.log_var.shape != e.mean.shape for e in mods)
                or (mods[0].mean.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1")):
            return None
        from probmed.losses import fused_infonce  # imports triton: only where it may run

        tensors = [x for e in mods for x in (e.mean, e.log_var)]
        if not fused_infonce.usable(*tensors):
            return None

        def rows_fn(x: str, y: str, col_mask: Tensor):
            rows, cols = ctx.local[x], ctx.world[y]
            return fused_infonce.fused_infonce_rows(self.similarity_name, rows.mean, rows.log_var, cols.mean, cols.log_var,
                                                    scale, ctx.local_group, ctx.world_group, col_mask)

        return rows_fn

    def forward(self, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
        scale = self.logit_scale()

        def logits_fn(rows: GaussianEmbedding, cols: GaussianEmbedding) -> Tensor:
            sim = self.similarity(rows, cols)
            return scale.to(sim.dtype) * sim

        loss, pos_logit = symmetric_infonce(ctx, self.a, self.b, logits_fn, self.paired_only,
                                            self._fused_rows_fn(ctx, scale))
        extras = {f"logit_scale/{self.name}": scale.detach(), f"pos_logit/{self.name}": pos_logit.detach()}
        if self.log_exponent_factor is not None:
            extras[f"hellinger_exponent_factor/{self.name}"] = self.log_exponent_factor.detach().exp()
        return loss, extras


class EdgeModalityContrastive(ProbabilisticInfoNCE):
    """MEDBind's Edge-Modality Contrastive Loss: CLIP InfoNCE between two non-text modalities (e.g. CXR <-> ECG)
    restricted to the studies that have both (rows and columns). :class:`ProbabilisticInfoNCE` with other
    defaults: ``modalities=[cxr, ecg]``, ``similarity="cosine"``, ``paired_only=True``; every other argument is
    :class:`ProbabilisticInfoNCE`'s.

    MEDBind's text-anchored part is :class:`ProbabilisticInfoNCE` with ``similarity: cosine`` for
    ``[text, cxr]`` and ``[text, ecg]``.
    """

    prefix = "emcl"

    def __init__(
        self,
        modalities: tuple[str, str] | list[str] = ("cxr", "ecg"),
        similarity: Similarity = "cosine",
        paired_only: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(modalities, similarity=similarity, paired_only=paired_only, **kwargs)


class SigLIP(PairTerm):
    """Sigmoid pairwise loss (SigLIP, Zhai et al. 2023) over local rows x global columns.

    ``logit_ij = t * sim(a_i, b_j) + bias``, label ``z_ij = +1`` for same-group pairs, ``-1`` otherwise; the loss of
    row ``i`` is ``-sum_{j: b_j present} log sigmoid(z_ij logit_ij)``, averaged over the rows where ``a`` is
    present (the paper's ``1/|B|`` normalisation, made global). Every (row, column) pair of the global batch is
    counted exactly once, so no symmetrisation is needed. ``t = exp(t')``, ``t'`` init ``log 10``, bias init
    ``-10`` (paper).

    Args:
        modalities: the two modality keys ``[a, b]``.
        weight: weight in the objective.
        similarity: as in :class:`ProbabilisticInfoNCE` (``cosine`` = SigLIP).
        init_logit_scale: initial ``t`` (paper: 10).
        init_bias: initial bias (paper: -10).
        max_logit_scale: clamp of ``t`` (``<= 0``: none).
        normalize: L2-normalise the means for ``cosine``.
        chunk: columns per chunk of the diagonal kernel.
        name: logged name (default ``siglip/<a>-<b>``).
    """

    prefix = "siglip"

    def __init__(
        self,
        modalities: tuple[str, str] | list[str] = ("text", "cxr"),
        weight: float = 1.0,
        similarity: Similarity = "cosine",
        init_logit_scale: float = 10.0,
        init_bias: float = -10.0,
        max_logit_scale: float = 100.0,
        normalize: bool = True,
        chunk: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(modalities, weight, name, similarity, normalize, chunk)
        self.logit_scale = LogitScale(init_logit_scale, max_logit_scale if max_logit_scale > 0 else None)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))


    def forward(self, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
        scale = self.logit_scale()
        sim = self.similarity(ctx.local[self.a], ctx.world[self.b])
        logits = scale.to(sim.dtype) * sim + self.bias.to(sim.dtype)
        col_mask = ctx.world[self.b].present
        pos = positive_mask(ctx.local_group, ctx.world_group, col_mask)
        signs = pos.to(logits.dtype) * 2.0 - 1.0
        pair_loss = -F.logsigmoid(signs * logits)
        per_row = torch.where(col_mask[None, :], pair_loss, torch.zeros_like(pair_loss)).sum(1)
        row_mask = ctx.local[self.a].present
        n_global = ctx.world[self.a].present.sum()
        loss = global_mean(per_row, row_mask, n_global, ctx.world_size)
        return loss, {f"logit_scale/{self.name}": scale.detach(), f"logit_bias/{self.name}": self.bias.detach()}


class PCMEpp(PairTerm):
    """PCME++ (Chun 2024): BCE on match probabilities ``sigmoid(-a * CSD_ij + b)`` over all present pairs.

    ``CSD_ij = ||mu_i - mu_j||^2 + sum_d (v_id + v_jd)``. ``a`` and ``b`` are learnable, init 5; ``a`` is kept
    positive by clamping at ``min_scale`` in the forward pass (as MedProbCLIP does for its scale), which leaves the
    original parametrisation (and so PCME++'s optimisation) unchanged while ``a > min_scale``.

    Loss (as in naver-ai/pcmepp ``ClosedFormSampledDistanceLoss``, where the i2t and t2i BCE are equal and the code
    returns ``2 * BCE``)::

        L = 2 * mean_{present pairs} BCE(logit_ij, [g_i == g_j])
            + pseudo_weight * (mean BCE with pseudo-positives per a-row + mean BCE with pseudo-positives per b-row)
            + infonce_weight * symmetric CLIP InfoNCE on the means (optional stabiliser).

    Pseudo-positives of a row (that has a positive) are the pairs whose logit is >= the row's smallest
    true-positive logit; they are relabelled 1. All means are global means over the present pairs of the global
    batch (rank loss = world_size * local sum / global count).

    Args:
        modalities: the two modality keys ``[a, b]``.
        weight: weight in the objective.
        init_scale: initial ``a`` (PCME++: 5).
        init_shift: initial ``b`` (PCME++: 5).
        min_scale: lower clamp of ``a``.
        pseudo_weight: weight of the pseudo-positive BCE (PCME++: 0.1; 0 disables).
        infonce_weight: weight of an extra deterministic InfoNCE on the means (0 disables).
        name: logged name (default ``pcmepp/<a>-<b>``).
    """

    prefix = "pcmepp"

    def __init__(
        self,
        modalities: tuple[str, str] | list[str] = ("cxr", "text"),
        weight: float = 1.0,
        init_scale: float = 5.0,
        init_shift: float = 5.0,
        min_scale: float = 1e-3,
        pseudo_weight: float = 0.1,
        infonce_weight: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(modalities, weight, name, similarity="csd")
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.shift = nn.Parameter(torch.tensor(float(init_shift)))
        self.min_scale = float(min_scale)
        self.pseudo_weight = float(pseudo_weight)
        self.infonce_weight = float(infonce_weight)
        self.infonce = LogitScale(1.0 / 0.07) if infonce_weight > 0 else None

    def _logits(self, rows: GaussianEmbedding, cols: GaussianEmbedding) -> Tensor:
        d = csd(rows.mean, rows.log_var, cols.mean, cols.log_var)
        return -self.scale.clamp_min(self.min_scale).to(d.dtype) * d + self.shift.to(d.dtype)

    def _bce_sum(self, logits, ctx, row_mask, col_mask, pseudo: bool) -> Tensor:
        """Per-row sums of BCE over present columns (labels: same group; + pseudo-positives if asked)."""
        pos = positive_mask(ctx.local_group, ctx.world_group, col_mask)
        labels = pos
        if pseudo:
            with torch.no_grad():
                big = torch.finfo(logits.dtype).max
                thr = torch.where(pos, logits, torch.full_like(logits, big)).min(1).values
                has_pos = pos.any(1)
                labels = pos | ((logits >= thr[:, None]) & has_pos[:, None] & col_mask[None, :])
        bce = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
        pair_mask = row_mask[:, None] & col_mask[None, :]
        return torch.where(pair_mask, bce, torch.zeros_like(bce)).sum(1)

    def forward(self, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
        la, lb = ctx.local[self.a], ctx.local[self.b]
        wa, wb = ctx.world[self.a], ctx.world[self.b]
        n_pairs = wa.present.sum() * wb.present.sum()
        logits_ab = self._logits(la, wb)
        main = 2.0 * global_mean(self._bce_sum(logits_ab, ctx, la.present, wb.present, False), la.present, n_pairs,
                                 ctx.world_size)
        loss = main
        extras = {
            f"logit_scale/{self.name}": self.scale.detach(),
            f"logit_shift/{self.name}": self.shift.detach(),
        }
        if self.pseudo_weight > 0:
            logits_ba = logits_ab.t() if ctx.world_size == 1 else self._logits(lb, wa)
            p_ab = global_mean(self._bce_sum(logits_ab, ctx, la.present, wb.present, True), la.present, n_pairs,
                               ctx.world_size)
            p_ba = global_mean(self._bce_sum(logits_ba, ctx, lb.present, wa.present, True), lb.present, n_pairs,
                               ctx.world_size)
            loss = loss + self.pseudo_weight * (p_ab + p_ba)
        if self.infonce is not None:
            scale = self.infonce()

            def logits_fn(rows, cols):
                return scale.to(rows.mean.dtype) * F.normalize(rows.mean, dim=-1) @ F.normalize(cols.mean, dim=-1).t()

            nce, _ = symmetric_infonce(ctx, self.a, self.b, logits_fn)
            loss = loss + self.infonce_weight * nce
            extras[f"infonce/{self.name}"] = nce.detach()
        return loss, extras


class MedProbCLIP(LossTerm):
    """MedProbCLIP objective (multi-view images x multi-section texts), without its VIB (use :class:`VIB`).

    ``d_ij = 1/2 sum_d [(mu_id - mu_jd)^2 / (v_id + v_jd) + log(v_id + v_jd)]`` (memory-linear chunked kernel
    shared with the Bhattacharyya coefficient), ``logit_ij = -a d_ij + b`` with ``a`` (init 1, clamped at
    ``min_scale``) and ``b`` (init 0) learnable and shared by all pairs, ``L(x, y)`` = symmetric multi-positive
    cross-entropy. With image keys ``[I1, I2]`` and text keys ``[T1, T2]``::

        L = 1/4 sum_{I in {I1, I2}, T in {T1, T2}} L(I, T) + lambda_image L(I1, I2) + lambda_text L(T1, T2)

    (with one image key and/or one text key the image-text average runs over the available keys and the
    corresponding intra term is dropped). Each key is a modality key of the embeddings dict (e.g. ``cxr`` and
    ``cxr_view2``, ``text`` and ``text_impression``); a study lacking a view or section is masked like any absent
    modality.

    Args:
        image_keys: one or two image keys.
        text_keys: one or two text keys.
        weight: weight in the objective.
        lambda_image: weight of the image-image term (MedProbCLIP: 1).
        lambda_text: weight of the text-text term (MedProbCLIP: 0.1).
        init_scale: initial ``a`` (1).
        init_shift: initial ``b`` (0).
        min_scale: lower clamp of ``a`` (1e-3).
        chunk: columns per chunk of the diagonal kernel.
        name: logged name (default ``medprobclip/<I1>-<T1>``).
    """

    def __init__(
        self,
        image_keys: list[str] = ["cxr", "cxr_view2"],  # noqa: B006 - jsonargparse needs a plain default
        text_keys: list[str] = ["text", "text_impression"],  # noqa: B006
        weight: float = 1.0,
        lambda_image: float = 1.0,
        lambda_text: float = 0.1,
        init_scale: float = 1.0,
        init_shift: float = 0.0,
        min_scale: float = 1e-3,
        chunk: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.image_keys = tuple(image_keys)
        self.text_keys = tuple(text_keys)
        if not (1 <= len(self.image_keys) <= 2 and 1 <= len(self.text_keys) <= 2):
            raise ValueError("MedProbCLIP takes one or two image keys and one or two text keys")
        self.lambda_image = float(lambda_image)
        self.lambda_text = float(lambda_text)
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.shift = nn.Parameter(torch.tensor(float(init_shift)))
        self.min_scale = float(min_scale)
        self.chunk = chunk

    def default_name(self) -> str:
        return f"medprobclip/{self.image_keys[0]}-{self.text_keys[0]}"

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.image_keys + self.text_keys

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        p = [(i, t) for i in self.image_keys for t in self.text_keys]
        if len(self.image_keys) == 2:
            p.append(self.image_keys)
        if len(self.text_keys) == 2:
            p.append(self.text_keys)
        return tuple(p)

    def similarity(self, a: GaussianEmbedding, b: GaussianEmbedding) -> Tensor:
        return -medprob_distance(a.mean, a.log_var, b.mean, b.log_var, chunk=self.chunk)

    def forward(self, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
        a = self.scale.clamp_min(self.min_scale)

        def logits_fn(rows: GaussianEmbedding, cols: GaussianEmbedding) -> Tensor:
            d = medprob_distance(rows.mean, rows.log_var, cols.mean, cols.log_var, chunk=self.chunk)
            return -a.to(d.dtype) * d + self.shift.to(d.dtype)

        extras: dict[str, Tensor] = {
            f"logit_scale/{self.name}": a.detach(),
            f"logit_shift/{self.name}": self.shift.detach(),
        }
        cross = [(i, t) for i in self.image_keys for t in self.text_keys]
        total = 0.0
        for i, t in cross:
            l_it, _ = symmetric_infonce(ctx, i, t, logits_fn)
            extras[f"pair/{self.name}/{i}-{t}"] = l_it.detach()
            total = total + l_it / len(cross)
        if len(self.image_keys) == 2 and self.lambda_image != 0:
            l_ii, _ = symmetric_infonce(ctx, *self.image_keys, logits_fn)
            extras[f"pair/{self.name}/{self.image_keys[0]}-{self.image_keys[1]}"] = l_ii.detach()
            total = total + self.lambda_image * l_ii
        if len(self.text_keys) == 2 and self.lambda_text != 0:
            l_tt, _ = symmetric_infonce(ctx, *self.text_keys, logits_fn)
            extras[f"pair/{self.name}/{self.text_keys[0]}-{self.text_keys[1]}"] = l_tt.detach()
            total = total + self.lambda_text * l_tt
        return total, extras
