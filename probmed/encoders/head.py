"""The Gaussian head: tower features → (mean, log-variance) of a diagonal or isotropic Gaussian."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GaussianHead", "HeadOptions"]


@dataclass(frozen=True)
class HeadOptions:
    """A :class:`GaussianHead`'s settings (everything but its input and output sizes), as configs give them:
    ``model.head`` for every modality, ``model.heads.<modality>`` to change some of them for one modality.
    Fields are :class:`GaussianHead`'s arguments of the same names."""

    variance: Literal["diagonal", "isotropic"] = "diagonal"
    normalize_mean: bool = True
    log_var_min: float = -10.0
    log_var_max: float = 5.0
    log_var_init: float = -2.0
    clamp: Literal["soft", "hard"] = "soft"
    log_var_weight_std: float = 0.01
    layers: Literal["separate", "shared"] = "separate"
    row_level: Literal["objective", "quality"] = "objective"
    quality_range: float = 5.0

    def override(self, changes: dict[str, Any] | None, where: str = "heads") -> "HeadOptions":
        """A copy with ``changes`` applied; an unknown field is a clear error naming the known ones."""
        unknown = sorted(set(changes or {}) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"{where}: unknown head option(s) {unknown}; known: {[f.name for f in fields(self)]}")
        return replace(self, **(changes or {}))

    def build(self, in_dim: int, embed_dim: int) -> "GaussianHead":
        return GaussianHead(in_dim, embed_dim, **asdict(self))


class GaussianHead(nn.Module):
    """Two parallel linear heads on the tower features (ProbMED): μ and log σ².

    * ``mean = Linear(in_dim, embed_dim)(h)``, L2-normalised to unit length when ``normalize_mean``; ``h`` is the
      tower features (``layers="separate"``: mean and log-variance are two parallel linear maps, ProbMED) or one
      hidden layer ``GELU(Linear(in_dim, in_dim)(features))`` that both read (``layers="shared"``).
    * ``log_var = clamp(Linear(in_dim, k)(features))`` with ``k = embed_dim`` (diagonal) or ``k = 1`` (isotropic:
      one variance shared by every dimension).  The log-variance layer is separate from the mean layer and
      randomly initialised (ProbMED: "one randomly initialised layer"); its weights are drawn with a small
      standard deviation (``log_var_weight_std``) and its bias is set so that, at initialisation, every sample's
      log-variance is ≈ ``log_var_init`` (exactly that value for zero features).

    **Clamping** keeps ``log_var`` inside ``[log_var_min, log_var_max]``:

    * ``clamp="soft"`` (default): ``c + r·tanh((z − c)/r)`` with centre ``c = (min+max)/2`` and half-range
      ``r = (max−min)/2``.  It is the identity (slope 1) at the centre, ≈ identity over most of the range, and
      saturates smoothly: the gradient (slope ``1 − tanh²``) fades gradually near and past a bound instead of
      dropping to zero at it, so a log-variance pushed towards a bound can come back.  The output never leaves
      the interval.
    * ``clamp="hard"``: ``torch.clamp`` (MedProbCLIP / PCME++ style); zero gradient outside the range.

    **Row level** — what sets a row's overall uncertainty, the mean of its log-variance over the D dimensions:

    * ``row_level="objective"`` (default, every paper's head): the log-variance layer above, trained by the
      objective. A contrastive objective gives it to content (a distinctive input gets a small variance).
    * ``row_level="quality"``: ``log_var = shape + level + quality``. ``shape = c − log mean_D exp(c)`` with
      ``c = clamp(z)`` the clamped log-variance layer's output: which dimensions of the row are uncertain, with a
      mean variance of exactly 1 (0 for an isotropic head). ``level`` is one learned scalar and ``quality =
      R·tanh(Linear(in_dim, 1)(h) / R)`` a ``[B, 1]`` part in ``(−R, R)``, ``R = quality_range`` nats. The row's
      mean variance (over the D dimensions) is then exactly ``exp(level + quality)``. The objective trains the
      shape and the level; ``quality`` is trained by the quality augmentation's ranking alone
      (:class:`~probmed.training.quality_augmentation.QualityAugmentation` hides its gradient from the objective,
      which still sees its values). The variance then says how degraded the input looks, not how distinctive its
      content is. Needs ``model.quality_augmentation`` for the modality.

    **Initial variance.** With L2-normalised means in D dimensions the squared distance between two unrelated
    means is ≈ 2, and the diagonal Bhattacharyya logit between equal-variance Gaussians is
    ``log BC = −‖Δμ‖² / (8 v)``.  ``log_var_init = −2`` (v ≈ 0.135) gives log BC ≈ −1.85 for unrelated pairs
    and ≈ −0.1 for close ones (‖Δμ‖² ≈ 0.1).  This holds while the variances are (nearly) equal, as they are at
    initialisation (small ``log_var_weight_std``); unequal variances add ``−½ Σ_d log cosh(Δ log v_d / 2)``.
    ProbMED's similarity on the per-dimension coefficient, ``PS = 1 − √(1 − BC^(1/D))``, then spans ≈ 0.83 … 0.96
    at D = 64 (≈ 0.94 … 0.99 at D = 512); the paper's joint ``1 − √(1 − BC)`` would span ≈ 0.08 … 0.7 at equal
    variances and saturate at 0 once they differ.  Without mean normalisation pick it to match the scale of the
    means.

    Args:
        in_dim: feature size F of the tower (its ``output_dim``).
        embed_dim: size D of the shared embedding space.
        variance: ``"diagonal"`` (log_var ``[B, D]``) or ``"isotropic"`` (log_var ``[B, 1]``).
        log_var_min: lower bound of the natural-log variance.
        log_var_max: upper bound of the natural-log variance.
        normalize_mean: L2-normalise the mean (unit norm) — needed by cosine-style losses.
        log_var_init: log-variance every sample starts near (see above); must lie inside the bounds.
        clamp: ``"soft"`` (tanh) or ``"hard"`` clamping (see above).
        log_var_weight_std: standard deviation of the normal init of the log-variance layer's weights.
        layers: ``"separate"`` (two linear maps on the features) or ``"shared"`` (a hidden layer both read).
        row_level: ``"objective"`` or ``"quality"`` (see above).
        quality_range: bound R (nats) of the quality part when ``row_level="quality"``.
    """

    def __init__(
        self,
        in_dim: int,
        embed_dim: int,
        variance: Literal["diagonal", "isotropic"] = "diagonal",
        log_var_min: float = -10.0,
        log_var_max: float = 5.0,
        normalize_mean: bool = True,
        log_var_init: float = -2.0,
        clamp: Literal["soft", "hard"] = "soft",
        log_var_weight_std: float = 0.01,
        layers: Literal["separate", "shared"] = "separate",
        row_level: Literal["objective", "quality"] = "objective",
        quality_range: float = 5.0,
    ) -> None:
        super().__init__()
        if variance not in ("diagonal", "isotropic"):
            raise ValueError(f"variance must be 'diagonal' or 'isotropic', got {variance!r}")
        if layers not in ("separate", "shared"):
            raise ValueError(f"layers must be 'separate' or 'shared', got {layers!r}")
        if clamp not in ("soft", "hard"):
            raise ValueError(f"clamp must be 'soft' or 'hard', got {clamp!r}")
        if row_level not in ("objective", "quality"):
            raise ValueError(f"row_level must be 'objective' or 'quality', got {row_level!r}")
        if not (quality_range > 0 and math.isfinite(quality_range)):
            raise ValueError(f"quality_range must be positive, got {quality_range}")
        if not log_var_min < log_var_init < log_var_max:
            raise ValueError(
                f"log_var_init={log_var_init} must lie strictly inside ({log_var_min}, {log_var_max})"
            )
        self.in_dim = int(in_dim)
        self.embed_dim = int(embed_dim)
        self.variance = variance
        self.log_var_init, self.log_var_weight_std = float(log_var_init), float(log_var_weight_std)
        self.log_var_min = float(log_var_min)
        self.log_var_max = float(log_var_max)
        self.normalize_mean = bool(normalize_mean)
        self.clamp = clamp
        self.layers = layers
        self.row_level, self.quality_range = row_level, float(quality_range)
        self.hidden = (nn.Sequential(nn.Linear(self.in_dim, self.in_dim), nn.GELU()) if layers == "shared"
                       else nn.Identity())
        self.mean = nn.Linear(self.in_dim, self.embed_dim)
        self.log_var = nn.Linear(self.in_dim, self.embed_dim if variance == "diagonal" else 1)
        nn.init.normal_(self.log_var.weight, std=log_var_weight_std)
        with torch.no_grad():
            self.log_var.bias.fill_(self._inverse_clamp(float(log_var_init)))
        if row_level == "quality":
            self.level = nn.Parameter(torch.tensor(float(log_var_init)))
            self.quality = nn.Linear(self.in_dim, 1)
            nn.init.normal_(self.quality.weight, std=log_var_weight_std)
            nn.init.zeros_(self.quality.bias)

    @property
    def output_dim(self) -> int:
        return self.embed_dim

    def _centre_range(self) -> tuple[float, float]:
        return 0.5 * (self.log_var_max + self.log_var_min), 0.5 * (self.log_var_max - self.log_var_min)

    def _inverse_clamp(self, y: float) -> float:
        if self.clamp == "hard":
            return y
        c, r = self._centre_range()
        return c + r * math.atanh((y - c) / r)

    def clamp_log_var(self, z: Tensor) -> Tensor:
        """Apply the configured clamp to raw log-variances ``z`` (any shape)."""
        if self.clamp == "hard":
            return z.clamp(self.log_var_min, self.log_var_max)
        c, r = self._centre_range()
        return c + r * torch.tanh((z - c) / r)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Map features to a Gaussian.

        Args:
            features: ``[B, F]`` float tower features.

        Returns:
            ``(mean, log_var)``: ``mean`` ``[B, D]`` (unit L2 norm when ``normalize_mean``), ``log_var`` ``[B, D]``
            (diagonal) or ``[B, 1]`` (isotropic), natural log of the variance, inside the clamp range (with
            ``row_level="quality"``: its shape plus the level and the quality part, see above).
        """
        mean, log_var, _ = self.parts(features)
        return mean, log_var

    def parts(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(mean, log_var, quality)``: :meth:`forward`'s output and the quality part of ``log_var`` (``[B, 1]``
        nats, already added to it) with ``row_level="quality"``, else None."""
        hidden = self.hidden(features)
        mean = self.mean(hidden)
        if self.normalize_mean:
            mean = F.normalize(mean, dim=-1)
        log_var = self.clamp_log_var(self.log_var(hidden))
        if self.row_level == "objective":
            return mean, log_var, None
        shape = log_var - torch.logsumexp(log_var, -1, keepdim=True) + math.log(log_var.shape[-1])
        r = self.quality_range
        quality = r * torch.tanh(self.quality(hidden) / r)
        return mean, shape + self.level + quality, quality

    def extra_repr(self) -> str:
        return (
            f"variance={self.variance}, log_var∈[{self.log_var_min}, {self.log_var_max}] ({self.clamp}), "
            f"normalize_mean={self.normalize_mean}, layers={self.layers}, row_level={self.row_level}"
        )

    @property
    def options(self) -> HeadOptions:
        """This head's settings (e.g. to build another head with the same output space)."""
        return HeadOptions(self.variance, self.normalize_mean, self.log_var_min, self.log_var_max,
                           self.log_var_init, self.clamp, self.log_var_weight_std, self.layers,
                           self.row_level, self.quality_range)
