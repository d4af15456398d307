"""The one type every part of ProbMed passes around: a batch of diagonal (or isotropic) Gaussian embeddings."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GaussianEmbedding:
    """A batch of Gaussians N(mean, diag(exp(log_var))) in the shared D-dimensional space.

    Attributes:
        mean: ``[B, D]`` float, the location (L2-normalised when the head is configured so).
        log_var: ``[B, D]`` (diagonal) or ``[B, 1]`` (isotropic: one variance shared by all D dimensions),
            natural log of the variance, already clamped by the head.
        present: ``[B]`` bool, False where the study lacks this modality; such rows hold placeholder values
            and are excluded exactly from every loss and metric.
        quality: ``[B, 1]`` the part of ``log_var`` (nats, already added to it) that a quality head sets apart
            from the objective (:class:`~probmed.encoders.head.GaussianHead`, ``row_level="quality"``), with its
            own gradient; None for every other head.
    """

    mean: Tensor
    log_var: Tensor
    present: Tensor
    quality: Tensor | None = None

    @property
    def variance(self) -> Tensor:
        """``[B, D]`` or ``[B, 1]`` variance exp(log_var)."""
        return self.log_var.exp()

    def mean_variance(self) -> Tensor:
        """``[B]`` float32: each row's variance averaged over its dimensions (its overall uncertainty)."""
        return self.log_var.float().exp().mean(dim=1)

    @property
    def isotropic(self) -> bool:
        return self.log_var.shape[-1] == 1 and self.mean.shape[-1] != 1

    def __len__(self) -> int:
        return self.mean.shape[0]

    def select(self, index: Tensor) -> "GaussianEmbedding":
        """Rows ``index`` (bool mask or integer index) of every field."""
        return GaussianEmbedding(self.mean[index], self.log_var[index], self.present[index],
                                 None if self.quality is None else self.quality[index])

    def detach(self) -> "GaussianEmbedding":
        return GaussianEmbedding(self.mean.detach(), self.log_var.detach(), self.present,
                                 None if self.quality is None else self.quality.detach())

    @staticmethod
    def cat(parts: list["GaussianEmbedding"]) -> "GaussianEmbedding":
        return GaussianEmbedding(
            torch.cat([p.mean for p in parts]),
            torch.cat([p.log_var for p in parts]),
            torch.cat([p.present for p in parts]),
            None if any(p.quality is None for p in parts) else torch.cat([p.quality for p in parts]),
        )
