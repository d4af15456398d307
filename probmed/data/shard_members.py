"""Reading one shard (``.tar``, or ``.tar.gz`` and the other compressions ``tarfile`` streams) into raw samples with
bounded memory: a shard from elsewhere is as untrusted as a DICOM file.

Replaces webdataset's ``tarfile_samples`` in the loader (:mod:`probmed.data.streams`), with the same sample layout
(``{"__key__": key, "__url__": url, "<ext>": bytes, ...}``, members grouped by the path before the first dot of the
file name, extensions lower-cased) and these differences:

* **member size from the tar header first**: a member larger than its modality's limit
  (:meth:`probmed.data.limits.Limits.member_bytes`) is skipped unread, counted as ``<modality>_too_large`` (the
  sample keeps its other members); then the size the member declares in its first 64 KiB
  (:func:`probmed.data.limits.check_member_head`: ``.npy`` shape, PNG / JPEG / DICOM dimensions), likewise. The
  archive is read as a stream (``tarfile`` mode ``r|*``): a gzip shard is decompressed 10 KiB of input at a time
  (at most ~10 MiB out, deflate being at most 1032:1), a skipped member is read through and discarded in such
  steps, and a GNU sparse member declares its expanded size, so neither a gzip bomb nor a sparse 4 GiB member is
  ever held in memory;
* **a duplicate member costs its own study only**: the study holding two members of one name is dropped and
  counted as ``duplicate_member``; the studies after it are read (webdataset ended the shard there);
* **a truncation is always counted**: an archive that ends without its end-of-archive blocks — cut inside a member
  or exactly at a member boundary — raises :class:`TruncatedShard` into the error handler (one
  ``shard_read_error``); the studies before the cut are used.

Only regular-file members are read (links, directories, devices are passed over, as webdataset does).
"""
from __future__ import annotations

import re
import tarfile
from typing import Callable, Iterator

from probmed.data import schema
from probmed.data.limits import DEFAULT_LIMITS, HEAD_BYTES, Limits, check_member_head
from probmed.data.readers.errors import UnreadableInput

_BASE_PLUS_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")


class TruncatedShard(tarfile.ReadError):
    """The archive ended without its end-of-archive marker (cut at or inside a member)."""


class _CheckedInfo(tarfile.TarInfo):
    """A tar header reader that reports a missing end-of-archive marker instead of ending quietly (``tarfile``
    treats a clean end of data at a member boundary as the end of the archive)."""

    @classmethod
    def fromtarfile(cls, tar):
        buf = tar.fileobj.read(tarfile.BLOCKSIZE)
        if len(buf) != tarfile.BLOCKSIZE:
            raise TruncatedShard(f"archive ends after {tar.offset} bytes without its end-of-archive marker")
        obj = cls.frombuf(buf, tar.encoding, tar.errors)
        obj.offset = tar.fileobj.tell() - tarfile.BLOCKSIZE
        return obj._proc_member(tar)


def member_modality(ext: str) -> str:
    """The modality a member's limits and causes are named after, from its extension alone (``cxr.0.dcm`` →
    ``cxr``, ``report.txt`` → ``text``, ``json`` → ``meta``); the modality registry is not imported here, so a
    process reading shards needs no model code."""
    if ext == schema.META_EXT:
        return "meta"
    if ext == schema.REPORT_EXT:
        return "text"
    return ext.split(".", 1)[0]


def over_limit(info: tarfile.TarInfo, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """``<modality>_too_large`` when a member's header declares more bytes than its modality's limit (a GNU sparse
    member declares its expanded size), else None."""
    match = _BASE_PLUS_EXT.match(info.name or "")
    ext = match.group(2).lower() if match else ""
    modality = member_modality(ext)
    return f"{modality}_too_large" if info.size > limits.member_bytes(modality, ext) else None


def _members(url: str, limits: Limits, skip: Callable[[str, str], None]) -> Iterator[tuple[str, str, bytes]]:
    """``(key, ext, data)`` of each regular member within its limit, in archive order."""
    with open(url, "rb") as fh:
        with tarfile.open(fileobj=fh, mode="r|*", tarinfo=_CheckedInfo) as stream:
            for info in stream:
                if not info.isreg() or info.name is None or _META.match(info.name):
                    continue
                match = _BASE_PLUS_EXT.match(info.name)
                if match is None:
                    continue
                key, ext = match.group(1), match.group(2).lower()
                modality = member_modality(ext)
                over = over_limit(info, limits)
                if over is not None:
                    skip(over, f"{url}: {info.name} declares {info.size} bytes; skipped unread")
                    continue
                member = stream.extractfile(info)
                head = member.read(HEAD_BYTES)
                try:  # the size the member's own header declares (npy shape, image dimensions), before the rest
                    check_member_head(modality, ext, head, limits)
                except UnreadableInput as exc:
                    skip(exc.reason, f"{url}: {info.name}: {exc}; skipped unread")
                    continue
                yield key, ext, head + member.read()
                stream.members = []  # keep no headers of a long archive


def shard_samples(url: str, handler: Callable[[BaseException], bool], skip: Callable[[str, str], None],
                  limits: Limits = DEFAULT_LIMITS) -> Iterator[dict]:
    """The raw samples of one local shard (see the module docstring).

    Args:
        url: a local shard path (the caller has checked it is a plain file).
        handler: called with the exception that ends the reading of the shard (unreadable, truncated); the samples
            completed before it are yielded, the one in progress at the break is dropped.
        skip: ``skip(cause, detail)`` counts one skipped member or study.
        limits: the member size limits.
    """
    current: dict | None = None
    bad = False

    def finished():
        return current if current is not None and not bad else None

    try:
        for key, ext, data in _members(url, limits, skip):
            if current is None or key != current["__key__"]:
                if (done := finished()) is not None:
                    yield done
                current, bad = {"__key__": key, "__url__": url}, False
            if ext in current:
                if not bad:
                    skip("duplicate_member", f"{url}: {key}.{ext} appears twice; study dropped")
                bad = True
                continue
            current[ext] = data
    except Exception as exc:  # unreadable or truncated shard: counted once by the handler
        handler(exc)
        return
    if (done := finished()) is not None:
        yield done
