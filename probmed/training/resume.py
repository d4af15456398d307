"""Resume never silently starts over: which checkpoint ``--ckpt_path last`` means, what a checkpoint must hold, and
what a killed run left behind.

* :func:`newest_complete_checkpoint` — ``last`` is the newest *complete* checkpoint of the run: any ``.ckpt`` that
  a ``ModelCheckpoint`` of the configuration writes (``last.ckpt``, ``step=2.ckpt``, ...; in every logger version
  of the run's name when the directory follows the logger) and Lightning's Slurm ``hpc_ckpt_N.ckpt`` in
  ``default_root_dir``, newest by modification time; truncated files are passed over with a note. Lightning's own
  ``last`` looks only for ``last*.ckpt`` in the *next* logger version and, finding none, trains from step 0.
* :func:`stale_temp_files` — the temporary files a killed :func:`~probmed.training.checkpoint_io.atomic_torch_save`
  leaves (``.<name>.ckpt.<random>.tmp`` next to the target); removed at the next start of ``fit``.
* :func:`require_lightning_checkpoint` — a ``torch.save`` file that is not a Lightning checkpoint (a bare
  ``state_dict``, a tensor) is refused with a clear error instead of ``KeyError: 'pytorch-lightning_version'``.
* :func:`hparams_differences` — the model settings a resumed configuration asks for that differ from those the
  checkpoint was trained with (``probmed fit`` refuses them; evaluation warns and uses the checkpoint's).
"""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from probmed.training.checkpoint_io import CorruptCheckpointError, check_checkpoint_file

HPC_PATTERN = re.compile(r"^hpc_ckpt_\d+\.ckpt$")
TEMP_PATTERN = re.compile(r"^\..+\.ckpt\..+\.tmp$")  # atomic_torch_save: mkstemp(prefix=".<name>.", suffix=".tmp")


class NotALightningCheckpointError(ValueError):
    """A readable ``torch.save`` file that is not a Lightning checkpoint."""


def _dirs(patterns: Iterable[str | os.PathLike]) -> list[Path]:
    """Existing directories matching ``patterns`` (``glob`` patterns or plain paths)."""
    return sorted({Path(m) for pattern in patterns for m in glob.glob(str(pattern)) if Path(m).is_dir()})


def candidate_checkpoints(checkpoint_dirs: Iterable[Path], root_dir: Path) -> list[Path]:
    """Every ``*.ckpt`` in ``checkpoint_dirs`` (directories that may contain ``*`` as a glob, e.g. one per logger
    version) plus ``hpc_ckpt_N.ckpt`` in ``root_dir``, newest (modification time) first."""
    found: set[Path] = set()
    for d in _dirs(checkpoint_dirs):
        found.update(p for p in d.glob("*.ckpt") if p.is_file())
    if Path(root_dir).is_dir():
        found.update(p for p in Path(root_dir).iterdir() if HPC_PATTERN.match(p.name) and p.is_file())
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def newest_complete_checkpoint(candidates: list[Path]) -> tuple[Path | None, list[str]]:
    """The first of ``candidates`` (newest first) that is a complete checkpoint file, and a note for each one
    passed over."""
    passed: list[str] = []
    for path in candidates:
        try:
            check_checkpoint_file(path)
        except (CorruptCheckpointError, FileNotFoundError) as err:
            passed.append(f"passed over {path}: {err}")
            continue
        return path, passed
    return None, passed


def stale_temp_files(dirs: Iterable[Path]) -> list[Path]:
    """Temporary files of interrupted atomic checkpoint writes in ``dirs`` (globs allowed, as above)."""
    return sorted({p for d in _dirs(dirs) for p in d.iterdir() if TEMP_PATTERN.match(p.name) and p.is_file()})


def require_lightning_checkpoint(checkpoint: Any, path: str | os.PathLike) -> Mapping:
    """``checkpoint`` (what ``torch.load`` returned for ``path``) if it is a Lightning checkpoint, else a clear
    :class:`NotALightningCheckpointError`."""
    if isinstance(checkpoint, Mapping) and "pytorch-lightning_version" in checkpoint and "state_dict" in checkpoint:
        return checkpoint
    if isinstance(checkpoint, Mapping):
        keys = sorted(map(str, checkpoint))
        what = f"a dict with keys {keys[:8]}{' ...' if len(keys) > 8 else ''}"
        if checkpoint and all(hasattr(v, "shape") for v in checkpoint.values()):
            what += " (a bare state_dict?)"
    else:
        what = f"an object of type {type(checkpoint).__name__!r}"
    raise NotALightningCheckpointError(
        f"{path} is a torch.save file but not a Lightning checkpoint: it is {what}, without the "
        "'pytorch-lightning_version' and 'state_dict' entries that `trainer.save_checkpoint` writes. Resume and "
        "evaluate from a checkpoint written by probmed fit (ModelCheckpoint / hpc_ckpt_N.ckpt).")


def hparams_differences(requested: Mapping[str, Any], saved: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (requested value, checkpoint value)}`` for the checkpoint's hyperparameters that the configuration
    sets differently (keys the checkpoint does not have are not compared)."""

    def norm(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [norm(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): norm(v) for k, v in value.items()}
        if hasattr(value, "__dict__") and hasattr(value, "items"):  # jsonargparse Namespace
            return {str(k): norm(v) for k, v in value.items()}
        return value

    return {key: (requested.get(key), value) for key, value in saved.items()
            if not key.startswith("_") and key in requested and norm(requested[key]) != norm(value)}
