"""LoRA adapters around any tower (Hugging Face PEFT's LoRA layers injected into the tower's own modules).

Wrap a tower in YAML; the wrapped tower keeps its input and ``output_dim``::

    encoders:
      text:
        class_path: probmed.encoders.LoRA
        init_args:
          tower: {class_path: probmed.encoders.TextEncoder, init_args: {pretrained: models/biobert}}
          r: 8
          alpha: 16
          target_modules: [query, value]      # names (or a regex) of the Linear/Conv layers to adapt
          trainable: ["*LayerNorm*"]          # tower parameters left trainable beside the adapters (globs)

Each targeted layer ``y = W x`` becomes ``y = W x + (alpha / r) · B A x`` with ``A`` (``r × in``) random and ``B``
(``out × r``) zero at initialisation, so the adapted tower computes exactly the base tower's function until it
trains (Hu et al. 2021). Every base parameter is frozen except those matching ``trainable``; only ``lora_A`` /
``lora_B`` (and those) receive gradients. Which layers exist depends on the tower: BERT ``query``/``key``/``value``
/``dense``, timm ViT ``qkv``/``proj``/``fc1``/``fc2``, Swin the same, the XResNet1d ECG tower and ResNets only
convolutions (PEFT adapts ``Conv1d``/``Conv2d`` too).
"""
from __future__ import annotations

from fnmatch import fnmatch
from typing import Any, Optional, Union

from torch import nn

from probmed.encoders._common import batch_norm_layers

__all__ = ["LoRA"]


class LoRA(nn.Module):
    """A tower with LoRA adapters (see the module docstring).

    Args:
        tower: the wrapped tower (any ``nn.Module`` with ``output_dim``).
        r: adapter rank.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter's input.
        target_modules: module names (suffix match) or one regex (full match) of the layers to adapt.
        trainable: globs over the tower's parameter names left trainable (e.g. norms, a last block).
        freeze_norm_stats: keep the tower's BatchNorm layers in eval mode (their running statistics are part of the
            frozen base).
    """

    def __init__(
        self,
        tower: nn.Module,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Union[list[str], str] = ("query", "value"),  # type: ignore[assignment]
        trainable: Optional[list[str]] = None,
        freeze_norm_stats: bool = True,
    ) -> None:
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model  # lazy: PEFT imports transformers

        if r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {r}")
        targets: Any = target_modules if isinstance(target_modules, str) else list(target_modules)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
        try:
            self.tower = inject_adapter_in_model(config, tower)
        except ValueError as err:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in tower.named_modules()
                            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))})
            raise ValueError(f"LoRA target_modules {target_modules!r} match no layer of {type(tower).__name__}; "
                             f"its Linear/Conv layer names include {names[:30]}") from err
        patterns = list(trainable or ())
        for name, p in self.tower.named_parameters():
            p.requires_grad_("lora_" in name or any(fnmatch(name, pat) for pat in patterns))
        self.freeze_norm_stats = bool(freeze_norm_stats)
        self.output_dim = int(tower.output_dim)

    def train(self, mode: bool = True) -> "LoRA":
        super().train(mode)
        if mode and self.freeze_norm_stats:
            for m in batch_norm_layers(self.tower):
                m.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any):
        """Exactly the wrapped tower's forward (same inputs, ``[B, output_dim]`` out)."""
        return self.tower(*args, **kwargs)
