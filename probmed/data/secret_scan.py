"""A last check before a shard is published: the de-identification salt must appear nowhere in it.

The salt is the secret behind every pseudonym; whoever has it can recompute a patient's pseudonym from the
hospital id. It is never written on purpose, but an input can carry it (a report that is really
``/proc/self/environ``, a text a script pasted it into). :func:`secret_forms` lists the byte strings the salt
takes in the encodings such a leak would come in — UTF-8, UTF-16 (LE and BE), hexadecimal (lower and upper
case), base64 (standard and URL-safe, at each of the three alignments inside a longer base64 text) and URL
percent-encoding — and :func:`find_secret` searches every member of every sample for each of them.

A salt shorter than :data:`MIN_SCANNED_LENGTH` characters is not scanned for: its bytes occur by chance in any
binary file (and such a salt is too short to be secret).
"""
from __future__ import annotations

import base64
import binascii
from typing import Iterable, Mapping
from urllib.parse import quote

MIN_SCANNED_LENGTH = 8


class SecretInOutput(ValueError):
    """A built shard holds the de-identification salt: the build is refused, the shard is not written."""


def _base64_cores(raw: bytes) -> set[bytes]:
    """The base64 characters that encode ``raw`` whatever its offset in a longer encoded text (mod 3): the
    characters that depend on neighbouring bytes at either end are dropped."""
    cores = set()
    for offset in range(3):
        padded = b"\0" * offset + raw
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(padded).rstrip(b"=")
            head = (offset * 8 + 5) // 6  # characters that mix in the padding bytes
            usable = (len(padded) * 8) // 6  # characters fully determined by known bytes
            core = text[head:usable]
            if len(core) >= 8:
                cores.add(core)
    return cores


def secret_forms(secret: str) -> set[bytes]:
    """The byte strings searched for (see the module docstring); empty for a salt too short to scan."""
    if len(secret) < MIN_SCANNED_LENGTH:
        return set()
    raw = secret.encode("utf-8")
    forms = {raw, secret.encode("utf-16-le"), secret.encode("utf-16-be"), binascii.hexlify(raw),
             binascii.hexlify(raw).upper(), quote(secret, safe="").encode("ascii")}
    forms |= _base64_cores(raw)
    return {f for f in forms if f}


def find_secret(samples: Iterable[Mapping[str, object]], secret: str) -> list[str]:
    """``["<key>.<member>", ...]`` of the sample members holding ``secret`` in any of :func:`secret_forms`."""
    forms = secret_forms(secret)
    if not forms:
        return []
    hits = []
    for sample in samples:
        key = str(sample.get("__key__", "?"))
        for name, value in sample.items():
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value) if isinstance(
                value, (bytes, bytearray, memoryview)) else None
            if data is not None and any(form in data for form in forms):
                hits.append(f"{key}.{name}")
    return hits
