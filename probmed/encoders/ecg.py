"""ECG tower: an XResNet1d (fastai's xresnet design in 1-D, as in the PTB-XL benchmark's xresnet1d101)."""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor, nn

from probmed.encoders._common import apply_freeze, batch_norm_layers, checkpoint_call

__all__ = ["ECGEncoder", "XRESNET1D_DEPTHS"]

#: ``depth`` presets: depth → (expansion, layers per stage), as fastai's xresnet18/34/50/101/152.
XRESNET1D_DEPTHS: dict[int, tuple[int, tuple[int, ...]]] = {
    18: (1, (2, 2, 2, 2)),
    34: (1, (3, 4, 6, 3)),
    50: (4, (3, 4, 6, 3)),
    101: (4, (3, 4, 23, 3)),
    152: (4, (3, 8, 36, 3)),
}


def _conv_bn(ni: int, nf: int, ks: int, stride: int = 1, act: bool = True, zero_bn: bool = False) -> nn.Sequential:
    """Conv1d (no bias, 'same' padding) → BatchNorm1d (γ=0 when ``zero_bn``) → ReLU (when ``act``)."""
    bn = nn.BatchNorm1d(nf)
    nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
    conv = nn.Conv1d(ni, nf, ks, stride=stride, padding=ks // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    layers: list[nn.Module] = [conv, bn]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResBlock1d(nn.Module):
    """fastai ResBlock in 1-D: basic (expansion 1: k-conv, k-conv) or bottleneck (expansion 4: 1-conv, k-conv,
    1-conv); the branch's last BN starts at zero (identity block at init); the shortcut average-pools (stride) and
    projects with a 1×1 conv when the width changes; ReLU after the sum."""

    def __init__(self, expansion: int, ni: int, nh: int, stride: int, ks: int) -> None:
        super().__init__()
        nf = nh * expansion
        if expansion == 1:
            self.convs = nn.Sequential(_conv_bn(ni, nh, ks, stride), _conv_bn(nh, nf, ks, act=False, zero_bn=True))
        else:
            self.convs = nn.Sequential(
                _conv_bn(ni, nh, 1),
                _conv_bn(nh, nh, ks, stride),
                _conv_bn(nh, nf, 1, act=False, zero_bn=True),
            )
        idpath: list[nn.Module] = []
        if stride != 1:
            idpath.append(nn.AvgPool1d(stride, ceil_mode=True))
        if ni != nf:
            idpath.append(_conv_bn(ni, nf, 1, act=False))
        self.idpath = nn.Sequential(*idpath)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.convs(x) + self.idpath(x))


class ECGEncoder(nn.Module):
    """12-lead ECG trunk: XResNet1d over time → concat(adaptive avg, adaptive max) pooled features.

    Architecture (fastai ``xresnet`` in 1-D, as ``xresnet1d101`` of the PTB-XL benchmark; no fastai dependency):
    stem of three conv-BN-ReLU (widths ``stem_widths``, the first with stride 2, kernel ``stem_kernel_size``),
    max-pool /2, then one residual stage per entry of ``layers`` (stage i has ``layers[i]`` blocks of hidden width
    ``widths[i]`` and output width ``widths[i]·expansion``; stride 1 for the first stage, 2 after), then pooling
    over time.  The time axis shrinks 32× before pooling (1000 samples → 32).

    ``depth`` selects a preset of (expansion, layers) — 101 gives the ProbMED-size XResNet1d-101
    (bottleneck, ``[3, 4, 23, 3]``, widths ``[64, 128, 256, 512]``, F = 4096 with concat pooling); a tiny demo
    variant is ``depth=None, expansion=1, layers=[1, 1, 1, 1], widths=[32, 64, 96, 128]`` (F = 256).

    **Missing leads.** ``forward(signal, lead_mask)`` takes an optional ``[B, leads]`` mask (1/True = lead recorded).
    Masked leads are set to 0 (``torch.where``, so even NaN there is harmless) *before* the network, so their values never influence the output (a reader
    may leave garbage there), and — when ``lead_mask_channels`` — the mask itself is appended as ``leads`` extra
    constant input channels so the network can tell "lead missing" from "flat lead".  Without a mask every lead
    counts as present.

    Input: ``signal`` float ``[B, leads, L]`` in millivolts (any length L ≥ 32; typically 100 Hz × 10 s = 1000 or
    250 Hz × 10 s = 2500 samples).  Output: ``[B, output_dim]`` float.

    Args:
        in_leads: number of leads (input channels) expected; 12 by default (order ``schema.ECG_LEADS``).
        depth: preset 18/34/50/101/152 (overrides ``expansion`` and ``layers``); None uses them as given.
        layers: residual blocks per stage.
        widths: hidden width per stage (output width is ``widths[i] * expansion``); same length as ``layers``.
        expansion: 1 = basic blocks, 4 = bottleneck blocks.
        kernel_size: temporal kernel of the residual convolutions (odd).
        stem_widths: output widths of the three stem convolutions.
        stem_kernel_size: temporal kernel of the stem convolutions (odd).
        pool: ``"concat"`` (avg ‖ max, F = 2·last width) or ``"avg"`` (F = last width).
        lead_mask_channels: append the lead mask as extra input channels (see above).
        grad_checkpointing: recompute each residual stage in backward (saves activation memory; the
            recomputation leaves the batch-norm running statistics untouched).
        freeze: freeze all parameters (norm layers stay in eval mode).
        unfreeze: glob patterns of parameter names left trainable when ``freeze`` (e.g. ``["stages.3.*"]``).
    """

    def __init__(
        self,
        in_leads: int = 12,
        depth: Optional[int] = 101,
        layers: list[int] = [3, 4, 23, 3],  # noqa: B006 - jsonargparse reads defaults; never mutated
        widths: list[int] = [64, 128, 256, 512],  # noqa: B006
        expansion: int = 4,
        kernel_size: int = 5,
        stem_widths: list[int] = [32, 32, 64],  # noqa: B006
        stem_kernel_size: int = 5,
        pool: Literal["concat", "avg"] = "concat",
        lead_mask_channels: bool = True,
        grad_checkpointing: bool = False,
        freeze: bool = False,
        unfreeze: Optional[list[str]] = None,
    ) -> None:
        super().__init__()
        if depth is not None:
            if depth not in XRESNET1D_DEPTHS:
                raise ValueError(f"depth must be one of {sorted(XRESNET1D_DEPTHS)} or None, got {depth}")
            expansion, layers = XRESNET1D_DEPTHS[depth]
        layers, widths = list(layers), list(widths)
        if len(layers) != len(widths):
            raise ValueError(f"layers {layers} and widths {widths} must have the same length")
        if kernel_size % 2 == 0 or stem_kernel_size % 2 == 0:
            raise ValueError("kernel sizes must be odd")
        self.in_leads = int(in_leads)
        self.lead_mask_channels = bool(lead_mask_channels)
        self.grad_checkpointing = bool(grad_checkpointing)
        c_in = self.in_leads * (2 if self.lead_mask_channels else 1)
        szs = [c_in, *stem_widths]
        self.stem = nn.Sequential(
            *[_conv_bn(szs[i], szs[i + 1], stem_kernel_size, stride=2 if i == 0 else 1) for i in range(len(szs) - 1)],
            nn.MaxPool1d(kernel_size=3, stride=2, padding=1),
        )
        stages = []
        ni = szs[-1]
        for i, (n_blocks, nh) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n_blocks):
                blocks.append(ResBlock1d(expansion, ni, nh, stride=(1 if i == 0 else 2) if j == 0 else 1, ks=kernel_size))
                ni = nh * expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = pool
        self.output_dim = ni * (2 if pool == "concat" else 1)
        self._fully_frozen = apply_freeze(self, freeze, unfreeze or ())

    def train(self, mode: bool = True) -> "ECGEncoder":
        super().train(mode)
        if self._fully_frozen:
            for m in batch_norm_layers(self):
                m.eval()
        return self

    def forward(self, signal: Tensor, lead_mask: Optional[Tensor] = None) -> Tensor:
        """Encode ECGs.

        Args:
            signal: ``[B, leads, L]`` float, millivolts; missing leads may hold anything (zeros by convention).
            lead_mask: optional ``[B, leads]`` bool/float, 1 where the lead was recorded.

        Returns:
            ``[B, output_dim]`` float features.
        """
        x = signal
        if x.ndim != 3 or x.shape[1] != self.in_leads:
            raise ValueError(f"expected signal of shape [B, {self.in_leads}, L], got {tuple(x.shape)}")
        if lead_mask is None:
            mask = x.new_ones(x.shape[0], x.shape[1])
        else:
            if tuple(lead_mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"expected lead_mask of shape {tuple(x.shape[:2])}, got {tuple(lead_mask.shape)}")
            mask = lead_mask.to(dtype=x.dtype, device=x.device)
            x = torch.where(mask[:, :, None] > 0, x, torch.zeros((), dtype=x.dtype, device=x.device))
        if self.lead_mask_channels:
            x = torch.cat([x, mask[:, :, None].expand(-1, -1, x.shape[-1])], dim=1)
        h = self.stem(x)
        for stage in self.stages:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint_call(stage, stage, h)
            else:
                h = stage(h)
        if self.pool == "concat":
            return torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)
        return h.mean(dim=-1)
