"""Per-modality terms: the VIB KL regulariser, ProbMED's intra-modality synthetic instance sampling, and M3Bind's
stage-1 text-space alignment of several text towers on shared texts."""
from __future__ import annotations

from itertools import combinations
from typing import Literal

import torch
from torch import Tensor

from probmed.losses.base import (
    LossContext,
    LossTerm,
    global_mean,
    masked_soft_cross_entropy,
    positive_mask,
    soft_targets,
)
from probmed.losses.similarity import gaussian_log_likelihood


def kl_to_standard_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    """``[B]`` ``KL(N(mu, diag v) || N(0, I)) = 1/2 sum_d (v + mu^2 - 1 - log v)`` (``log_var`` [B, D] or [B, 1])."""
    log_var = log_var.expand_as(mean)
    return 0.5 * (log_var.exp() + mean * mean - 1.0 - log_var).sum(-1)


class KeyedTerm(LossTerm):
    """A term over a list of modality keys (``self.keys``), each read from the step's context."""

    def __init__(self, modalities, weight: float, name: str | None) -> None:
        super().__init__(weight, name)
        self.keys = tuple(modalities)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.keys


class VIB(KeyedTerm):
    """Variational information bottleneck: ``sum_m mean_{rows with m present} KL(N(mu, v) || N(0, I))``.

    The mean over present rows is global (rank value = world_size x local sum / global count); the modalities'
    means are summed (MedProbCLIP's ``beta (KL_img + KL_txt)``). Typical weight 1e-4 (MedProbCLIP, PCME++).

    Args:
        modalities: modality keys to regularise.
        weight: weight in the objective (beta).
        dim_reduction: ``sum`` over the D dimensions (the KL itself; MedProbCLIP) or ``mean`` (the KL / D, as
            PCME++'s code computes it with ``.mean()`` over batch and dimensions: D times weaker).
        name: logged name (default ``vib``).
    """

    def __init__(self, modalities: list[str] = ["cxr", "ecg", "echo", "text"], weight: float = 1e-4,  # noqa: B006
                 dim_reduction: Literal["sum", "mean"] = "sum", name: str | None = None) -> None:
        if dim_reduction not in ("sum", "mean"):
            raise ValueError(f"dim_reduction must be 'sum' or 'mean', got {dim_reduction!r}")
        super().__init__(modalities, weight, name)
        self.dim_reduction = dim_reduction

    def default_name(self) -> str:
        return "vib"

    def forward(self, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
        total = 0.0
        extras = {}
        for m in self.keys:
            emb = ctx.local[m]
            kl = kl_to_standard_normal(emb.mean, emb.log_var)
            if self.dim_reduction == "mean":
                kl = kl / emb.mean.shape[-1]
            part = global_mean(kl, emb.present, ctx.world[m].present.sum(), ctx.world_size)
            extras[f"kl/{m}"] = part.detach()
            total = total + part
        return total, extras


def _seed_for(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7_919 + 12_345) % (2**63 - 1)


def standard_normal_noise(
    ctx: LossContext, shape_per_row: tuple[int, ...], dtype: torch.dtype, device: torch.device,
    seed: int | None,
) -> Tensor:
    """``[B, *shape_per_row]`` standard normal noise for the local rows.

    ``seed=None``: from the global RNG (ranks draw independently). With a seed, the noise of the WHOLE global batch
    is drawn from a CPU generator seeded by ``(seed, ctx.step)`` and this rank takes its rows, so the noise of a
    global row is the same whatever the world size (reproducible single-process vs DDP) as long as no rank pads
    its rows (every rank holds the data module's full batch, as in training).
    """
    if seed is None:
        return torch.randn(ctx.local_batch, *shape_per_row, dtype=dtype, device=device)
    gen = torch.Generator(device="cpu").manual_seed(_seed_for(seed, ctx.step))
    n = (ctx.local_batch if ctx.stride is None else ctx.stride) * ctx.world_size  # rows of the world tensors
    eps = torch.randn(n, *shape_per_row, generator=gen, dtype=torch.float64)
    return eps[ctx.offset:ctx.offset + ctx.local_batch].to(device=device, dtype=dtype)


class SyntheticSampling(LossTerm):
    """ProbMED's intra-modality probabilistic synthetic instance sampling (formula chosen here; unpublished).

    For every present row ``i`` of the modality draw ``K`` reparameterised samples ``z_ik = mu_i + sigma_i * eps_ik``
    (``eps ~ N(0, I)``) and classify each sample back to the distribution that generated it among all present
    distributions ``j`` of that modality in the global batch, using the Gaussian log-likelihood as the logit::

        l_ikj = log N(z_ik; mu_j, diag v_j) / temperature
        L     = mean_{i present} 1/K sum_k [ logsumexp_{j present} l_ikj - sum_j t_ij l_ikj ]

    with ``t_ij`` one-hot at ``j = i`` (``positives="instance"``) or uniform over the present rows of ``i``'s group
    (``positives="group"``). This is the cross-entropy of the Bayes posterior ``p(j | z)`` under equal priors: it is
    small when each distribution explains its own samples better than every other one does, so (i) means are
    pushed apart relative to the variances (distributions stay distinct), (ii) a variance that is large compared
    with the distance to the neighbours is penalised (its samples land in other distributions' mass), while (iii)
    once samples are unambiguous the softmax saturates and the term stops shrinking variances further (the VIB
    term keeps them from collapsing). Gradients flow through the samples (reparameterisation) and through all
    global columns (gathered with gradients). The log-likelihood matrix is two matmuls (see
    :func:`~probmed.losses.similarity.gaussian_log_likelihood`).

    Args:
        modality: the modality key.
        weight: weight in the objective.
        num_samples: ``K`` samples per row.
        temperature: divides the log-likelihood logits (1 = the exact Bayes posterior).
        positives: ``instance`` (own distribution) or ``group`` (any distribution of the same group).
        seed: if set, noise is drawn per step from a generator seeded by ``(seed, step)`` over the global batch
            (identical for any world size; for tests and reproducibility); ``None`` uses the global RNG.
        name: logged name (default ``synthetic/<modality>``).
    """

    def __init__(
        self,
        modality: str = "cxr",
        weight: float = 0.1,
        num_samples: int = 4,
        temperature: float = 1.0,
        positives: Literal["instance", "group"] = "instance",
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.modality = modality
        self.num_samples = int(num_samples)
        self.temperature = float(temperature)
        self.positives = positives
        self.seed = seed

    def default_name(self) -> str:
        return f"synthetic/{self.modality}"

    @property
    def modalities(self) -> tuple[str, ...]:
        return (self.modality,)

    def forward(self, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
        loc, wld = ctx.local[self.modality], ctx.world[self.modality]
        b, dim = loc.mean.shape
        k = self.num_samples
        eps = standard_normal_noise(ctx, (k, dim), loc.mean.dtype, loc.mean.device, self.seed)
        sigma = (0.5 * loc.log_var).exp()  # [B, D] or [B, 1]
        z = (loc.mean[:, None, :] + sigma[:, None, :] * eps).reshape(b * k, dim)
        logits = gaussian_log_likelihood(z, wld.mean, wld.log_var) / self.temperature  # [B*K, N]
        col_mask = wld.present
        if self.positives == "instance":
            own = ctx.local_index().repeat_interleave(k)
            pos = torch.zeros_like(logits, dtype=torch.bool)
            pos[torch.arange(b * k, device=pos.device), own] = True
            pos &= col_mask[None, :]
        else:
            pos = positive_mask(ctx.local_group.repeat_interleave(k), ctx.world_group, col_mask)
        targets, _ = soft_targets(pos, logits.dtype)
        per_sample = masked_soft_cross_entropy(logits, targets, col_mask).view(b, k)
        n_global = wld.present.sum()
        loss = global_mean(per_sample.mean(1), loc.present, n_global, ctx.world_size)
        with torch.no_grad():
            masked = logits.masked_fill(~col_mask[None, :], torch.finfo(logits.dtype).min)
            hit = pos.gather(1, masked.argmax(1, keepdim=True)).view(b, k).to(logits.dtype).mean(1)
            acc = global_mean(hit, loc.present, n_global, ctx.world_size)
        return loss, {f"accuracy/{self.name}": acc}


class TextSpaceAlignment(KeyedTerm):
    """M3Bind stage 1's text-space alignment: several text towers (one per image–text model, e.g. ``text_cxr`` and
    ``text_ecg``) embed the same report, and their embeddings of these *shared texts* are pulled together, while
    each model's own image–text term keeps its image–text alignment. For every pair ``(a, b)`` of ``modalities``::

        L_ab = mean_{rows with a and b present} [ ||mu_a - mu_b||^2 + log_var_weight * mean_d (lv_a - lv_b)^2 ]

    summed over the pairs; means as the heads give them (unit length when normalised). The mean over rows is
    global, as for :class:`VIB`. Not contrastive: it trains no pair for retrieval scoring.

    Args:
        modalities: the text keys whose spaces are aligned (each embedded by its own tower; at least two).
        weight: weight in the objective.
        log_var_weight: weight of the log-variance matching (0: means only, M3Bind's MSE of embeddings).
        name: logged name (default ``text_align``).
    """

    def __init__(self, modalities: list[str] = ["text_cxr", "text_ecg"], weight: float = 1.0,  # noqa: B006
                 log_var_weight: float = 0.0, name: str | None = None) -> None:
        if len(set(modalities)) < 2:
            raise ValueError(f"TextSpaceAlignment needs at least two distinct text keys, got {modalities}")
        super().__init__(modalities, weight, name)
        self.log_var_weight = float(log_var_weight)

    def default_name(self) -> str:
        return "text_align"

    def forward(self, ctx: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
        total = 0.0
        extras = {}
        for a, b in combinations(self.keys, 2):
            ea, eb = ctx.local[a], ctx.local[b]
            per_row = (ea.mean - eb.mean).square().sum(1)
            if self.log_var_weight:
                per_row = per_row + self.log_var_weight * (ea.log_var - eb.log_var).square().mean(1)
            both = ea.present & eb.present
            part = global_mean(per_row, both, (ctx.world[a].present & ctx.world[b].present).sum(), ctx.world_size)
            extras[f"mse/{a}-{b}"] = part.detach()
            total = total + part
        return total, extras
