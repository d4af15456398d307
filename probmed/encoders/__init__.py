"""Per-modality encoder towers (trunks) and the Gaussian head.

Each trunk is an ``nn.Module`` with an int ``output_dim`` (feature size F) and ``forward(...) -> [B, F]``; the
LightningModule keeps them in an ``nn.ModuleDict`` keyed by modality, each followed by a :class:`GaussianHead`.
A modality's batch input is a tensor (the trunk's one argument) or a mapping of tensors (its keyword arguments;
see :mod:`probmed.encoders.tower_input`):

========  ==================  ===========================================================================
modality  trunk               input
========  ==================  ===========================================================================
cxr       :class:`ImageEncoder`  ``[B, C, H, W]`` float (C=1, standardised)
ecg       :class:`ECGEncoder`    ``{"signal": [B, leads, L] float mV, "lead_mask": [B, leads] bool}``
echo      :class:`EchoEncoder`   ``{"frames": [B, T, C, H, W] float, "frame_mask": [B, T] bool}``
text      :class:`TextEncoder`   ``{"input_ids": [B, S], "attention_mask": [B, S]}`` long
========  ==================  ===========================================================================
"""
from probmed.encoders.adapters import LoRA
from probmed.encoders.ecg import ECGEncoder
from probmed.encoders.echo import EchoEncoder
from probmed.encoders.head import GaussianHead, HeadOptions
from probmed.encoders.image import ImageEncoder
from probmed.encoders.pretrained import (
    PretrainedNotFoundError,
    load_state_dict_file,
    load_tokenizer,
    resolve_local_path,
)
from probmed.encoders.text import TextEncoder

__all__ = [
    "ECGEncoder",
    "EchoEncoder",
    "GaussianHead",
    "HeadOptions",
    "ImageEncoder",
    "LoRA",
    "PretrainedNotFoundError",
    "TextEncoder",
    "load_state_dict_file",
    "load_tokenizer",
    "resolve_local_path",
]
