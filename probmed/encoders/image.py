"""Image tower (chest X-ray; also the echo frame encoder): any timm model, or an open_clip visual tower."""
from __future__ import annotations

import logging
import sys
from typing import Any, Optional

import torch
from torch import Tensor, nn

from probmed.encoders._common import apply_freeze
from probmed.encoders.pretrained import (
    PretrainedNotFoundError,
    downloads_allowed,
    load_state_dict_file,
    resolve_local_path,
)

__all__ = ["ImageEncoder", "load_timm_weights"]

log = logging.getLogger(__name__)


def _as_tuple(x: Any) -> tuple[str, ...]:
    if x is None:
        return ()
    return (x,) if isinstance(x, str) else tuple(x)


def check_open_clip_hub_model(model: str, allow_download: bool) -> None:
    """Fail before any network access when ``model`` is an open_clip hub id (``hf-hub:org/name``) and downloads
    are not allowed, saying what to download and how to point the config at it."""
    if not model.startswith("hf-hub:") or downloads_allowed(allow_download):
        return
    repo = model[len("hf-hub:"):]
    raise PretrainedNotFoundError(
        f"open_clip_model {model!r} would be downloaded from the Hugging Face hub, and ProbMed does not download at "
        f"run time. Download it once while online:\n"
        f"    hf download {repo} --local-dir /path/to/models/{repo.replace('/', '--')}\n"
        f"then set open_clip_model to the architecture named in its open_clip_config.json and open_clip_pretrained "
        f"to the downloaded open_clip_pytorch_model.bin (or allow_download: true with HF_HUB_OFFLINE=0)."
    )


def load_timm_weights(
    model: nn.Module,
    state_dict: dict[str, Tensor],
    strict: bool = True,
) -> tuple[list[str], list[str]]:
    """Load a (possibly foreign-format) state dict into a timm model, adapting it the way timm's own loader does.

    Steps: the model family's ``checkpoint_filter_fn`` (timm; e.g. ViT position-embedding / patch resampling for a
    different ``img_size``) when it accepts the dict; input-channel adaptation of the first convolution
    (``pretrained_cfg["first_conv"]`` and the model's first conv module) with ``timm.models.adapt_input_conv`` (RGB → grey sums the filters, as timm
    does); classifier keys absent from the model (``num_classes=0``) are dropped.

    Args:
        model: a timm model.
        state_dict: ``{name: tensor}`` weights.
        strict: raise on missing keys or shape mismatches (unexpected keys, such as a classifier, only log).

    Returns:
        ``(missing, unexpected)`` key lists after adaptation.
    """
    from timm.models import adapt_input_conv

    sd = dict(state_dict)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except Exception as err:  # noqa: BLE001 - a filter written for another format; fall back to the raw dict
            log.debug("checkpoint_filter_fn of %s skipped: %s", type(model).__module__, err)
    own = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first_convs = list(_as_tuple(cfg.get("first_conv")))
    # the config names the default stem; an overridden stem (e.g. stem_type="deep" → conv1.0) is found by order
    first = next((n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if first is not None and first not in first_convs:
        first_convs.append(first)
    for conv in first_convs:
        key = conv + ".weight"
        if key in sd and key in own and sd[key].ndim >= 3 and sd[key].shape[1] != own[key].shape[1]:
            sd[key] = adapt_input_conv(own[key].shape[1], sd[key], base_chans=sd[key].shape[1])
    mismatched = [k for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        msg = "shape mismatch: " + ", ".join(
            f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:10]
        )
        if strict:
            raise ValueError(msg)
        log.warning(msg)
        for k in mismatched:
            sd.pop(k)
    result = model.load_state_dict(sd, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing and strict:
        raise ValueError(f"missing keys when loading pretrained weights: {missing[:20]}")
    if missing:
        log.warning("missing keys (left at init): %s", missing[:20])
    if unexpected:
        log.info("unexpected keys ignored: %s", unexpected[:20])
    return missing, unexpected


class ImageEncoder(nn.Module):
    """Chest X-ray (or any 2-D image) trunk: ``[B, C, H, W]`` float → ``[B, output_dim]`` pooled features.

    Built with ``timm.create_model(model_name, pretrained=pretrained, num_classes=0, in_chans=in_chans,
    **model_kwargs)``, so any timm architecture works, with timm's own overrides in ``model_kwargs`` (e.g.
    ``{"img_size": 64, "patch_size": 8, "depth": 4}`` for a ViT; ``{"layers": [1, 1, 1, 1], "channels": [16, 32,
    64, 128], "stem_width": 16}`` for a ResNet).  ``num_classes=0`` makes timm return the pooled pre-logit
    features.

    Alternatively ``open_clip_model`` builds ``open_clip.create_model(open_clip_model,
    pretrained=<local file>).visual`` (e.g. a BiomedCLIP / EchoCLIP image tower); its projection output is the
    feature.  open_clip towers expect 3 channels: a grey input (``in_chans=1``) is repeated to RGB.

    Pretrained weights, all offline (see :func:`probmed.encoders.pretrained.resolve_local_path`):

    * ``pretrained_path``: a local ``.safetensors`` or ``.pth``/``.bin``/``.ckpt`` file (read with
      ``weights_only=True``) in timm's key format — a timm hub download, or the ``state_dict()`` of another
      ``ImageEncoder`` (its ``trunk.`` prefix is stripped), or part of a Lightning checkpoint selected with
      ``pretrained_prefix``.  Channel count (RGB → grey), ViT position embeddings and classifier keys are adapted
      by :func:`load_timm_weights`.
    * ``pretrained=True`` hands loading to timm itself, which then needs a local file via
      ``model_kwargs={"pretrained_cfg_overlay": {"file": "/path/model.safetensors"}}`` (or a populated HF cache);
      timm adapts ``in_chans`` and drops the classifier.

    Input: ``x`` float ``[B, C, H, W]``, ``C == in_chans`` (1 for grey CXR), intensities roughly standardised
    (zero mean, unit variance).  Output: ``[B, output_dim]`` float features.

    Args:
        model_name: timm model name (``timm.list_models()``), e.g. ``"resnet18"``, ``"swin_tiny_patch4_window7_224"``.
        in_chans: input channels C.
        model_kwargs: extra keyword arguments for ``timm.create_model`` (architecture overrides).
        pretrained: let timm load its pretrained weights (needs a local file, see above).
        pretrained_path: local weights file spec loaded after construction (see above); None for random init.
        pretrained_prefix: keep only keys under this prefix of the weights file (and strip it).
        pretrained_strict: raise on missing keys / shape mismatches when loading ``pretrained_path``.
        open_clip_model: open_clip model name; when set, the trunk is that model's visual tower instead of timm.
        open_clip_pretrained: local checkpoint spec for ``open_clip_model`` (None: random init); an open_clip
            pretrained tag (e.g. ``laion2b_s34b_b79k``) only with downloads allowed.
        allow_download: let open_clip fetch a hub model (``open_clip_model: hf-hub:org/name``) or a pretrained tag;
            honoured only when ``HF_HUB_OFFLINE=0`` (see :func:`probmed.encoders.pretrained.downloads_allowed`).
        open_clip_kwargs: extra keyword arguments for ``open_clip.create_model`` (e.g. ``force_image_size``).
        grad_checkpointing: enable the trunk's activation checkpointing (timm ``set_grad_checkpointing``).
        freeze: freeze the trunk's parameters (a fully frozen trunk also keeps its norm layers in eval mode).
        unfreeze: glob patterns of parameter names left trainable when ``freeze`` (partial fine-tuning, e.g.
            ``["layer4.*"]`` or ``["blocks.11.*", "norm.*"]``).
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        in_chans: int = 1,
        model_kwargs: Optional[dict[str, Any]] = None,
        pretrained: bool = False,
        pretrained_path: Optional[str] = None,
        pretrained_prefix: Optional[str] = None,
        pretrained_strict: bool = True,
        open_clip_model: Optional[str] = None,
        open_clip_pretrained: Optional[str] = None,
        open_clip_kwargs: Optional[dict[str, Any]] = None,
        allow_download: bool = False,
        grad_checkpointing: bool = False,
        freeze: bool = False,
        unfreeze: Optional[list[str]] = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.in_chans = int(in_chans)
        self.is_open_clip = open_clip_model is not None
        if self.is_open_clip:
            import open_clip

            oc_pre = str(resolve_local_path(open_clip_pretrained, allow_download)) if open_clip_pretrained else None
            check_open_clip_hub_model(open_clip_model, allow_download)
            clip = open_clip.create_model(open_clip_model, pretrained=oc_pre, **dict(open_clip_kwargs or {}))
            self.trunk = clip.visual
            del clip
            self.output_dim = int(self.trunk.output_dim)
        else:
            import timm

            kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(model_kwargs or {}).items()}
            self.trunk = timm.create_model(
                model_name, pretrained=pretrained, num_classes=0, in_chans=self.in_chans, **kwargs
            )
            dim = getattr(self.trunk, "head_hidden_size", None) or self.trunk.num_features
            self.output_dim = int(dim)
        if pretrained_path:
            sd = load_state_dict_file(pretrained_path, prefix=pretrained_prefix)
            if pretrained_prefix is None and sd and all(k.startswith("trunk.") for k in sd):
                sd = {k[len("trunk."):]: v for k, v in sd.items()}
            if self.is_open_clip:
                self.trunk.load_state_dict(sd, strict=pretrained_strict)
            else:
                load_timm_weights(self.trunk, sd, strict=pretrained_strict)
        if grad_checkpointing:
            self.trunk.set_grad_checkpointing(True)
        self._fully_frozen = apply_freeze(self.trunk, freeze, unfreeze or ())

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        if self._fully_frozen:
            self.trunk.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """``x`` float ``[B, C, H, W]`` (standardised intensities) → features ``[B, output_dim]``."""
        if self.is_open_clip and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.trunk(x)
