"""Path policy for the files a manifest names: confined to declared roots, regular files only, checked unopened.

Manifests come from database exports and other people's scripts, so every path in one is untrusted. Before the
builder opens anything, :func:`check_input_path`:

* resolves the path with every symlink followed (``os.path.realpath``, which only ``lstat``\\ s and ``readlink``\\ s),
* refuses a target under ``/proc``, ``/sys`` or ``/dev`` (``/proc/self/environ`` is a "regular" file that holds
  the process environment, de-identification salt included) as ``not_a_regular_file``,
* refuses a target outside every root (the manifest's directory and each ``--root``) as ``path_outside_root``,
* ``os.stat``\\ s it and refuses anything but a regular file (a FIFO, socket, device or directory) as
  ``not_a_regular_file`` — a FIFO is never opened, so it cannot block the run,
* refuses a file over the size limit (:mod:`probmed.data.limits`) as ``<modality>_too_large``.

The refusal names the manifest row (its line number) and the column. A WFDB header's signal files are checked the
same way (:func:`wfdb_signal_files`). :func:`read_checked` then reads a checked file through a descriptor opened
``O_NONBLOCK`` and ``fstat``-ed again, so a file swapped for a FIFO between the check and the read is refused too.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from probmed.data.limits import DEFAULT_LIMITS, Limits, too_large
from probmed.data.readers.errors import UnreadableInput

#: Trees whose files are views of the running system, never study data.
SYSTEM_TREES: tuple[Path, ...] = (Path("/proc"), Path("/sys"), Path("/dev"))


def resolved_roots(roots: Iterable[str | os.PathLike]) -> tuple[Path, ...]:
    """The roots with symlinks resolved (a path is inside a root when its resolved form is)."""
    return tuple(Path(os.path.realpath(r)) for r in roots)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path`` resolves (symlinks followed) inside ``root`` (resolved too); used by the manifest makers so a
    symlink in a dataset tree never puts a file from elsewhere into a manifest."""
    return _inside(Path(os.path.realpath(path)), Path(os.path.realpath(root)))


def check_input_path(path: str | os.PathLike, roots: tuple[Path, ...], where: str = "",
                     max_bytes: int | None = None, modality: str = "input") -> Path:
    """The resolved path of an input file that passed the policy (see the module docstring); nothing is opened.

    Args:
        path: as the manifest gives it (already joined to the manifest's directory when relative).
        roots: resolved roots (:func:`resolved_roots`); empty: no confinement (special files are still refused).
        where: where the path came from, for the message (``"manifest line 5, column 'report'"``).
        max_bytes: size limit in bytes (None: :attr:`Limits.file_bytes`).
        modality: prefix of the size cause (``<modality>_too_large``).

    Raises:
        UnreadableInput: ``path_outside_root``, ``not_a_regular_file``, ``<modality>_too_large``.
        FileNotFoundError: the path does not exist (the builder counts ``<modality>_file_missing``).
    """
    prefix = f"{where}: " if where else ""
    resolved = Path(os.path.realpath(path))
    if any(_inside(resolved, tree) for tree in SYSTEM_TREES):
        raise UnreadableInput("not_a_regular_file", f"{prefix}{path} resolves into the system tree {resolved}")
    if roots and not any(_inside(resolved, root) for root in roots):
        raise UnreadableInput("path_outside_root", f"{prefix}{path} resolves to {resolved}, outside the manifest's "
                                                   "directory and every --root")
    info = os.stat(resolved)  # FileNotFoundError propagates
    if not stat.S_ISREG(info.st_mode):
        kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode)
                or stat.S_ISBLK(info.st_mode) else "a special file")
        raise UnreadableInput("not_a_regular_file", f"{prefix}{path} is {kind}")
    limit = DEFAULT_LIMITS.file_bytes if max_bytes is None else max_bytes
    if info.st_size > limit:
        raise too_large(modality, f"{prefix}{path} holds {info.st_size} bytes (limit {limit})")
    return resolved


def read_checked(path: str | os.PathLike, max_bytes: int, modality: str = "input") -> bytes:
    """Read a file that :func:`check_input_path` passed, at most ``max_bytes`` (opened ``O_NONBLOCK`` and
    ``fstat``-ed: a path swapped for a FIFO, a device or a larger file since the check is refused, not read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableInput("not_a_regular_file", f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise too_large(modality, f"{path} holds {info.st_size} bytes (limit {max_bytes})")
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            data = fh.read(max_bytes + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise too_large(modality, f"{path} grew past {max_bytes} bytes while read")
    return data


def wfdb_signal_files(header: Path, max_bytes: int = 1 << 20) -> list[Path]:
    """The signal files a WFDB header (``.hea``) names, joined to its directory (a header may name any path, e.g.
    ``../../dev/zero``: each is checked like a manifest path before wfdb opens it)."""
    text = read_checked(header, max_bytes, "ecg").decode("latin-1")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return []
    try:
        n_signals = int(lines[0].split()[1].split("/")[0])
    except (IndexError, ValueError):
        return []  # wfdb refuses the header itself
    names = {line.split()[0] for line in lines[1 : 1 + n_signals] if line.split()}
    return [header.parent / name for name in sorted(names) if name != "~"]


def check_entry_paths(entry, column: str, modality: str, roots: tuple[Path, ...], limits: Limits = DEFAULT_LIMITS
                      ) -> tuple[list[Path], list[tuple[str, str]]]:
    """Check every path of one manifest column of one row.

    Returns:
        ``(kept resolved paths, [(reason, detail), ...] for the refused ones)``.
    """
    kept, refused = [], []
    max_bytes = limits.report_bytes if modality == "text" else limits.file_bytes
    for path in entry.paths.get(column, []):
        where = f"manifest line {getattr(entry, 'line', '?')}, column {column!r}"
        try:
            resolved = check_input_path(path, roots, where, max_bytes, modality)
            if resolved.suffix.lower() == ".hea":
                for signal in wfdb_signal_files(resolved):
                    check_input_path(signal, roots, f"{where} (signal file of {path.name})", limits.file_bytes,
                                     modality)
        except UnreadableInput as exc:
            refused.append((exc.reason, str(exc)))
            continue
        except FileNotFoundError as exc:
            refused.append((f"{modality}_file_missing", f"{where}: {exc.filename}"))
            continue
        except OSError as exc:  # permission, loop of links, name too long...
            refused.append((f"{modality}_unreadable", f"{where}: {type(exc).__name__}: {exc}"))
            continue
        kept.append(path)
    return kept, refused
