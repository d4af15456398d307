"""The pieces every loss term shares: the per-step context, the term base class, targets, masks, normalisation.

Normalisation rule (what makes multi-GPU training exact). A term's *global* loss is a mean over the globally
valid rows of the concatenated global batch. Rank ``r`` returns

    loss_r = world_size * (sum of the losses of its valid LOCAL rows) / (global number of valid rows),

computed against ALL global columns (gathered with gradients). DDP averages gradients over ranks, which then gives
exactly the gradient of the single-process loss on the global batch, and the mean over ranks of ``loss_r`` is the
global loss: log the parts with ``sync_dist=True`` (mean reduction) to see the global value.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from probmed.embedding import GaussianEmbedding


@dataclass
class LossContext:
    """What the :class:`~probmed.losses.Objective` prepares once per step for all terms.

    Attributes:
        local: this rank's rows per modality key; rows with ``present=False`` hold zeros (sanitised, no gradient).
        world: the same, gathered over all ranks with gradients (rank-major order); ``world is local`` when the
            world size is 1.
        local_group: ``[B]`` positive-group ids of the local rows.
        world_group: ``[N]`` group ids of all global rows (``N = world_size * stride``).
        rank: this rank; its rows are ``world[rank * stride:rank * stride + B]``.
        world_size: number of ranks gathered over (1 when not distributed).
        step: number of Objective calls before this one (seeds deterministic sampling).
        stride: rows per rank in ``world`` (``B`` unless ranks pad to a common bound: the padding rows are absent
            in every modality); ``None``: ``B``.
    """

    local: dict[str, GaussianEmbedding]
    world: dict[str, GaussianEmbedding]
    local_group: Tensor
    world_group: Tensor
    rank: int
    world_size: int
    step: int = 0
    stride: int | None = None

    @property
    def local_batch(self) -> int:
        return int(self.local_group.shape[0])

    @property
    def offset(self) -> int:
        """Index of this rank's first row in the ``world`` tensors."""
        return self.rank * (self.local_batch if self.stride is None else self.stride)

    def local_index(self) -> Tensor:
        """``[B]`` indices of the local rows in the ``world`` tensors."""
        return torch.arange(self.offset, self.offset + self.local_batch, device=self.local_group.device)


# ------------------------------------------------------------------------------------------------------------
# small functions, one concern each (open_clip style)
# ------------------------------------------------------------------------------------------------------------


def positive_mask(row_group: Tensor, col_group: Tensor, col_mask: Tensor) -> Tensor:
    """``[B, N]`` bool: column ``j`` is a positive of row ``i`` (same group id, column present)."""
    return (row_group[:, None] == col_group[None, :]) & col_mask[None, :]


def soft_targets(pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Uniform soft targets over the positives of each row -> ``(targets [B, N], n_pos [B])``."""
    n_pos = pos.sum(1)
    targets = pos.to(dtype) / n_pos.clamp_min(1).to(dtype)[:, None]
    return targets, n_pos


def count_valid_rows(world_row_mask: Tensor, world_group: Tensor, world_col_mask: Tensor) -> Tensor:
    """Global number of rows that are present and have at least one present positive column (0-dim long).

    Computed on every rank from the gathered masks and group ids alone (no collective, no ``N x N`` matrix).
    """
    has_pos = torch.isin(world_group, world_group[world_col_mask])
    return (world_row_mask & has_pos).sum()


def masked_soft_cross_entropy(logits: Tensor, targets: Tensor, col_mask: Tensor) -> Tensor:
    """``[B]`` cross-entropy ``logsumexp_{j present} logits_ij - sum_j t_ij logits_ij``.

    Absent columns are filled with the dtype's lowest finite value (not -inf) so that rows without any present
    column stay finite (they are dropped by the caller, and their gradient is exactly zero).
    """
    masked = logits.masked_fill(~col_mask[None, :], torch.finfo(logits.dtype).min)
    return torch.logsumexp(masked, dim=1) - (targets * logits).sum(1)


def global_mean(per_row: Tensor, valid: Tensor, n_valid_global: Tensor, world_size: int) -> Tensor:
    """``world_size * sum(per_row[valid]) / n_valid_global`` (0, still attached to the graph, when no row is valid).

    ``torch.where`` (not multiplication) drops invalid rows, so NaN/inf there can neither leak into the value nor
    the gradient.
    """
    total = torch.where(valid, per_row, torch.zeros_like(per_row)).sum()
    return total * (world_size / n_valid_global.clamp_min(1).to(per_row.dtype))


def sanitize(emb: GaussianEmbedding, dtype: torch.dtype | None = None) -> GaussianEmbedding:
    """Zero the mean and log-variance of absent rows (no gradient reaches them) and upcast half precision."""
    mean, log_var, present = emb.mean, emb.log_var, emb.present.to(torch.bool)
    if dtype is None:
        dtype = torch.promote_types(mean.dtype, torch.float32)
    mean, log_var = mean.to(dtype), log_var.to(dtype)
    keep = present[:, None]
    mean = torch.where(keep, mean, torch.zeros((), dtype=dtype, device=mean.device))
    log_var = torch.where(keep, log_var, torch.zeros((), dtype=dtype, device=log_var.device))
    return GaussianEmbedding(mean, log_var, present)


# ------------------------------------------------------------------------------------------------------------
# the term base class
# ------------------------------------------------------------------------------------------------------------


class LossTerm(nn.Module):
    """One weighted term of the :class:`~probmed.losses.Objective`.

    Subclasses implement :meth:`forward` ``(ctx) -> (loss, extras)`` where ``loss`` is this rank's normalised
    (see module docstring), *unweighted* scalar and ``extras`` maps names to detached scalars for logging.
    Contrastive terms also implement :meth:`similarity` (used for retrieval scoring) and list the modality
    pairs they contrast in :attr:`pairs`.
    """

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        super().__init__()
        self.weight = float(weight)
        self._name = name

    # what the Objective reads --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name or self.default_name()

    def default_name(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def modalities(self) -> tuple[str, ...]:  # pragma: no cover - abstract
        """Modality keys this term reads from the embeddings dict."""
        raise NotImplementedError

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Modality pairs contrasted by this term (empty for regularisers)."""
        return ()

    def similarity(self, a: GaussianEmbedding, b: GaussianEmbedding) -> Tensor:
        """``[B, N]`` score, higher = more similar (monotone in this term's logit); contrastive terms only."""
        raise NotImplementedError(f"{type(self).__name__} is not a contrastive term")

    def forward(self, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError
