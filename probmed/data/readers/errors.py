"""Errors raised by readers for input that must be skipped (and counted), never crash the loader."""
from __future__ import annotations


class UnreadableInput(ValueError):
    """A stored file that cannot be used: corrupt, wrong shape, NaN signal, empty text...

    ``reason`` is a short stable key (e.g. ``"cxr_corrupt_dicom"``) used to count skips per cause.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class UnsafeInput(UnreadableInput):
    """A sample carrying a file whose decoding could execute code (pickle and friends): refused whole."""
