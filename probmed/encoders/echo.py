"""Echocardiogram tower: a 2-D frame encoder (an :class:`ImageEncoder`) + temporal attention pooling, optionally
with lag-indexed temporal self-similarity tokens that make the beat period explicit."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probmed.encoders.image import ImageEncoder

__all__ = ["EchoEncoder", "lag_similarity"]


def lag_similarity(seq: Tensor, valid: Tensor, max_lag: int) -> Tensor:
    """Temporal self-similarity of a sequence, indexed by lag.

    Args:
        seq: ``[B, T, K]`` per-frame vectors.
        valid: ``[B, T]`` bool, True where the frame is kept.
        max_lag: largest lag |l| in frames.

    Returns:
        ``[B, T, 2·max_lag + 1]``: entry ``[b, i, max_lag + l]`` is the cosine similarity of ``seq[b, i]`` and
        ``seq[b, i + l]``; 0 where ``i + l`` falls outside the clip or either frame is dropped.
    """
    b, t = valid.shape
    z = F.normalize(seq, dim=-1)
    sim = z @ z.transpose(1, 2)  # [B, T, T]
    j = torch.arange(t, device=seq.device)[:, None] + torch.arange(-max_lag, max_lag + 1, device=seq.device)
    inside = (j >= 0) & (j < t)  # [T, L]
    j = j.clamp(0, t - 1)
    out = sim.gather(2, j.expand(b, t, -1))
    keep = inside & valid[:, :, None] & valid[:, j]
    return out * keep.to(out.dtype)


class EchoEncoder(nn.Module):
    """Echo cine trunk: ``[B, T, C, H, W]`` frames → ``[B, output_dim]``.

    1. Every (kept) frame goes through the frame encoder, an :class:`ImageEncoder` built from ``frame_encoder``
       (the same options: any timm name, ``model_kwargs``, ``pretrained_path``, open_clip tower, freezing,
       gradient checkpointing) → ``[B, T, F]``.
    2. A linear projection to the temporal width ``dim`` (identity when ``dim`` is None or equals F), plus a
       learned positional embedding over time, created for ``num_frames`` frames and linearly interpolated when a
       clip has a different T.  With ``self_similarity``, each frame token also gets a linear embedding of its row
       of the clip's temporal self-similarity matrix, indexed by lag (:meth:`similarity_rows`).
    3. ``num_layers`` pre-norm transformer encoder layers over time (0 for none).
    4. Pooling: ``"attention"`` — a learned query attends over the frames (``nn.MultiheadAttention``) followed by
       LayerNorm; or ``"mean"`` — masked mean.

    **Dropped frames.** ``forward(frames, frame_mask)`` takes an optional ``[B, T]`` mask (1/True = frame kept).
    Dropped frames are never encoded (only kept frames go through the frame encoder, so they do not even reach
    its BatchNorm statistics), are excluded as attention keys in the transformer and the pooling, and so cannot
    change the output.  A row with no kept frame at all (a missing study's zero placeholder) is treated as fully
    kept so the attention stays finite; such rows are excluded downstream by the presence mask.

    Input: ``frames`` float ``[B, T, C, H, W]``, ``C`` = frame encoder ``in_chans`` (1, grey), standardised
    intensities.  Output: ``[B, output_dim]`` float, ``output_dim = dim`` (or F).

    Args:
        frame_encoder: keyword arguments of :class:`ImageEncoder` (e.g. ``{"model_name": "resnet18",
            "model_kwargs": {...}}``); an ``ImageEncoder`` instance is also accepted from Python.  None: a tiny
            ResNet (timm ``resnet18`` with one block per stage, widths 16/32/64/128, deep 8/8/16 stem).
        num_frames: T the positional embedding is created for (interpolated for other T).
        dim: temporal model width; None = frame feature size F.
        num_layers: transformer encoder layers over time (0 = attention pooling only).
        num_heads: attention heads (``dim`` must be divisible by it).
        mlp_ratio: transformer feed-forward width / ``dim``.
        dropout: dropout in the transformer layers and pooling attention.
        pooling: ``"attention"`` (learned query) or ``"mean"`` (masked mean).
        motion: feed the frame encoder each frame together with its difference from the previous frame (a
            motion stream, doubling its input channels): contraction and relaxation become visible in single
            frames, so beat-timing and ejection properties need not be inferred from static features alone.
        frame_size: when set, frames are resized (area interpolation, i.e. average pooling for integer factors)
            to ``frame_size × frame_size`` before the frame encoder — a compute knob: frame-encoder cost grows
            with B·T·H·W, and 16 frames of 64×64 cost ~16 CXR images each.
        self_similarity: add to every frame token its similarities to the frames at lags −(num_frames−1) …
            num_frames−1 (the temporal self-similarity matrix of RepNet, Dwibedi et al., CVPR 2020, read along lags
            instead of absolute frame indices), through a learned linear map.  A beating ventricle repeats every RR
            interval, so every row peaks at lag ≈ RR·fps: heart rate and rhythm regularity become a linear read-out
            instead of something the transformer must discover from positions.  Similarities are cosines between the
            frames' deviations from the clip's mean (over kept frames), of
            ``"pixels"``: the frames average-pooled to ``similarity_grid × similarity_grid`` (no learned part — the
            cycle is visible from the first step, whatever the frame encoder learns), or
            ``"features"``: a learned ``similarity_dim`` projection of the frame-encoder features (RepNet's choice).
            None: off.
        similarity_grid: pooled frame size for ``"pixels"`` (8: 64 values per grey frame).
        similarity_dim: projection width for ``"features"``.
    """

    def __init__(
        self,
        frame_encoder: Optional[Union[dict[str, Any], ImageEncoder]] = None,
        num_frames: int = 16,
        dim: Optional[int] = None,
        num_layers: int = 1,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        pooling: Literal["attention", "mean"] = "attention",
        frame_size: Optional[int] = None,
        motion: bool = False,
        self_similarity: Optional[Literal["pixels", "features"]] = None,
        similarity_grid: int = 8,
        similarity_dim: int = 32,
    ) -> None:
        super().__init__()
        self.motion = bool(motion)
        if isinstance(frame_encoder, nn.Module):
            self.frame_encoder = frame_encoder
        else:
            cfg = dict(frame_encoder or {})
            if not cfg:
                cfg = {
                    "model_name": "resnet18",
                    "model_kwargs": {
                        "layers": [1, 1, 1, 1],
                        "channels": [16, 32, 64, 128],
                        "stem_type": "deep",
                        "stem_width": 8,
                    },
                }
            if self.motion:  # each frame is fed with its difference from the previous frame: 2 × C channels
                cfg["in_chans"] = 2 * int(cfg.get("in_chans", 1))
            self.frame_encoder = ImageEncoder(**cfg)
        feat = int(self.frame_encoder.output_dim)
        self.dim = int(dim or feat)
        if pooling not in ("attention", "mean"):
            raise ValueError(f"pooling must be 'attention' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.num_frames = int(num_frames)
        self.frame_size = int(frame_size) if frame_size else None
        self.proj = nn.Identity() if self.dim == feat else nn.Linear(feat, self.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_frames, self.dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if num_layers > 0:
            layer = nn.TransformerEncoderLayer(
                self.dim,
                num_heads,
                dim_feedforward=int(self.dim * mlp_ratio),
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.temporal: Optional[nn.TransformerEncoder] = nn.TransformerEncoder(
                layer, num_layers, enable_nested_tensor=False
            )
        else:
            self.temporal = None
        if pooling == "attention":
            self.query = nn.Parameter(torch.zeros(1, 1, self.dim))
            nn.init.trunc_normal_(self.query, std=0.02)
            self.attn = nn.MultiheadAttention(self.dim, num_heads, dropout=dropout, batch_first=True)
        if self_similarity not in (None, "pixels", "features"):
            raise ValueError(f"self_similarity must be None, 'pixels' or 'features', got {self_similarity!r}")
        self.self_similarity = self_similarity
        self.similarity_grid = int(similarity_grid)
        self.similarity_proj = nn.Linear(feat, int(similarity_dim)) if self_similarity == "features" else None
        self.lag_embed = nn.Linear(2 * self.num_frames - 1, self.dim) if self_similarity else None
        self.norm = nn.LayerNorm(self.dim)
        self.output_dim = self.dim

    def positional_embedding(self, t: int) -> Tensor:
        """``[1, t, dim]`` learned positional embedding, linearly interpolated from ``num_frames`` to ``t``."""
        if t == self.num_frames:
            return self.pos_embed
        return F.interpolate(self.pos_embed.transpose(1, 2), size=t, mode="linear", align_corners=False).transpose(1, 2)

    def similarity_rows(self, frames: Tensor, feats: Tensor, valid: Tensor) -> Tensor:
        """Lag-indexed self-similarity rows ``[B, T, 2·num_frames − 1]`` of a clip (see ``self_similarity``).

        Args:
            frames: ``[B, T, C, H, W]`` input frames (used by ``"pixels"``).
            feats: ``[B, T, F]`` frame-encoder features (used by ``"features"``).
            valid: ``[B, T]`` bool, True where the frame is kept.
        """
        if self.self_similarity == "pixels":
            b, t = valid.shape
            seq = F.adaptive_avg_pool2d(frames.flatten(0, 1), self.similarity_grid).reshape(b, t, -1)
        else:
            seq = self.similarity_proj(feats)
        seq = seq.masked_fill(~valid[:, :, None], 0.0)  # whatever a dropped frame holds (even NaN) never enters
        seq = seq - seq.sum(1, keepdim=True) / valid.sum(1)[:, None, None].clamp_min(1).to(seq.dtype)
        return lag_similarity(seq, valid, self.num_frames - 1)

    def _encode_frames(self, frames: Tensor) -> Tensor:
        """``[N, C, H, W]`` → ``[N, F]`` through the frame encoder (after the optional resize)."""
        if self.frame_size is not None and tuple(frames.shape[-2:]) != (self.frame_size, self.frame_size):
            frames = F.interpolate(frames, size=(self.frame_size, self.frame_size), mode="area")
        return self.frame_encoder(frames)

    def forward(self, frames: Tensor, frame_mask: Optional[Tensor] = None) -> Tensor:
        """Encode cine clips.

        Args:
            frames: ``[B, T, C, H, W]`` float frames (standardised intensities).
            frame_mask: optional ``[B, T]`` bool/float, 1 where the frame is kept (0: dropped, or padding of a
                cine shorter than the clip).

        Returns:
            ``[B, output_dim]`` float features.
        """
        x = frames
        if x.ndim != 5:
            raise ValueError(f"expected frames of shape [B, T, C, H, W], got {tuple(x.shape)}")
        b, t = x.shape[:2]
        if frame_mask is None:
            valid = torch.ones(b, t, dtype=torch.bool, device=x.device)
        else:
            if tuple(frame_mask.shape) != (b, t):
                raise ValueError(f"expected frame_mask of shape {(b, t)}, got {tuple(frame_mask.shape)}")
            valid = frame_mask.to(device=x.device) > 0
            valid = valid | ~valid.any(dim=1, keepdim=True)  # all-dropped row → keep all (placeholder)
        if self.motion:  # x_t − x_{t−1}, zero for the first frame and wherever either frame is dropped
            both = (valid[:, 1:] & valid[:, :-1]).to(x.dtype)[:, :, None, None, None]
            diff = torch.cat([torch.zeros_like(x[:, :1]), (x[:, 1:] - x[:, :-1]) * both], dim=1)
            x = torch.cat([x, diff], dim=2)
        if bool(valid.all()):
            feats = self._encode_frames(x.flatten(0, 1)).view(b, t, -1)
        else:
            kept = self._encode_frames(x[valid])  # [N_kept, F]
            feats = kept.new_zeros(b, t, kept.shape[-1])
            feats = feats.masked_scatter(valid[:, :, None], kept)
        h = self.proj(feats) + self.positional_embedding(t)
        if self.lag_embed is not None:
            h = h + self.lag_embed(self.similarity_rows(frames, feats, valid).to(h.dtype))
        pad = ~valid  # True = ignore
        if self.temporal is not None:
            h = self.temporal(h, src_key_padding_mask=pad)
        if self.pooling == "attention":
            out, _ = self.attn(self.query.expand(b, -1, -1), h, h, key_padding_mask=pad, need_weights=False)
            out = out[:, 0]
        else:
            w = valid.to(h.dtype)[:, :, None]
            out = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        return self.norm(out)
