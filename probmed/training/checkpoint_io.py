"""Atomic checkpoint files and a clear error for a truncated one.

Lightning 2.6's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file is created by
``tempfile.mkstemp()`` in the *system* temp directory and then ``shutil.move``-d to the target. When the checkpoint
directory is on another file system (the usual cluster case: node-local ``/tmp``, shared ``/scratch``) that move is
a copy into the final path, so a job killed during the copy leaves a truncated ``.ckpt`` under the final name.
:class:`AtomicCheckpointIO` writes to a temporary file *in the target directory*, fsyncs it and ``os.replace``-s it
onto the final name (atomic on POSIX within one file system), then fsyncs the directory: a reader sees either the
old file or the complete new one, never a partial one.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Optional

import torch
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from probmed.encoders.pretrained import load_state_dict_file


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that cannot be a complete ``torch.save`` archive (truncated, or not a checkpoint)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` so that ``path`` is never observed half-written (temp file + fsync + os.replace)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Raise :class:`CorruptCheckpointError` unless ``path`` is a complete zip archive as ``torch.save`` writes it.

    A truncated file loses the zip end-of-central-directory record; a damaged member fails its CRC."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    hint = "it was not written completely (a killed job?) or is not a checkpoint; resume from an earlier one"
    if not zipfile.is_zipfile(path):
        raise CorruptCheckpointError(f"checkpoint {path} ({path.stat().st_size} bytes) is truncated or corrupt: {hint}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt ({err}): {hint}") from err
    if bad is not None:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt (member {bad} fails its CRC): {hint}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that saves atomically and refuses a truncated checkpoint with a clear error.

    Used by default by the ``probmed`` CLI (``trainer.plugins``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        check_checkpoint_file(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


@dataclass
class TeacherSpec:
    """Where a trained model is: the ``config.yaml`` its ``probmed fit`` run saved and a checkpoint of it, and which
    of its towers embeds the text (``None``: the distillation's ``modality``; e.g. ``text_cxr``)."""

    config: str
    checkpoint: str
    tower: Optional[str] = None


def load_frozen_module(module_class: type[nn.Module], config: str | os.PathLike,
                       checkpoint: str | os.PathLike) -> nn.Module:
    """Rebuild a trained ``module_class`` from the ``config.yaml`` its run saved (its ``model:`` section) and a
    checkpoint, in eval mode with gradients off. The checkpoint is read with ``weights_only=True`` (its
    ``state_dict`` only), so a checkpoint from elsewhere cannot run code."""
    from jsonargparse import ArgumentParser

    saved = yaml.safe_load(Path(config).read_text())
    model_cfg = (saved.get("fit") or saved).get("model") if isinstance(saved, dict) else None
    if not isinstance(model_cfg, dict):
        raise ValueError(f"{config}: no `model:` section (expected the config.yaml saved by `probmed fit`)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(module_class, "model", fail_untyped=False)
    module = parser.instantiate_classes(parser.parse_object({"model": model_cfg})).model
    module.load_state_dict(load_state_dict_file(checkpoint), strict=True)
    return module.eval().requires_grad_(False)
