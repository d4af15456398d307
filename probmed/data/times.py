"""Acquisition times: the manifest's ``acquired_at`` and the clock formats the sources write it in.

Every time is a naive :class:`datetime.datetime` (no timezone): MIMIC shifts each patient's dates into the future
consistently across its modules, so times compare within a patient, never across patients, and a hospital's
exports share one local clock. A timezone suffix is refused in the manifest; in a DICOM ``DT`` it is dropped (the
local time is kept, as the ``DA``/``TM`` attributes of the same file state it).

Formats read:

* manifest ``acquired_at`` and source tables (``ecg_time``, ``charttime``, ``recording_date``,
  ``acquisition_datetime``, ``study_datetime``): ISO 8601 ``YYYY-MM-DDTHH:MM[:SS[.f…]]``, ``T`` or a space between
  date and time (:func:`parse_iso`);
* DICOM ``DA`` + ``TM`` (``YYYYMMDD`` + ``HH[MM[SS[.F…]]]``: the standard lets a time be truncated on the
  right, so ``"0930"`` is 09:30) and ``DT`` (``YYYYMMDDHH[MM[SS[.F…]]][&ZZXX]``) (:func:`dicom_datetime`,
  :func:`header_time`);
* MIMIC-CXR's metadata CSV, whose ``StudyDate`` / ``StudyTime`` were written as numbers, so leading zeros are
  gone: ``StudyTime`` ``"75013.234"`` is 07:50:13.234 (the integer part is padded on the *left* to six digits,
  unlike a DICOM ``TM``) (:func:`numeric_date_time`).

A date without a time is not a time: every parser returns None for it (unknown, counted by ``probmed data link``),
never midnight.
"""
from __future__ import annotations

import re
from datetime import datetime

#: The manifest column holding a study's acquisition time.
TIME_COLUMN = "acquired_at"

_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?")
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?")
_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DT = re.compile(r"(\d{8})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)(?:[+-]\d{4})?")


def _micro(fraction: str | None) -> int:
    return int((fraction or "0")[:6].ljust(6, "0"))


def parse_iso(text: str | None) -> datetime | None:
    """``"2180-07-23 08:44:00"`` / ``"2180-07-23T08:44:00.125"`` → datetime; ``""`` → None.

    Raises:
        ValueError: anything else (a date alone, a timezone, an impossible date such as February 30).
    """
    text = (text or "").strip()
    if not text:
        return None
    match = _ISO.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not an ISO 8601 date and time without timezone (YYYY-MM-DDTHH:MM:SS)")
    y, mo, d, h, mi, s, f = match.groups()
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0), _micro(f))


def parse_source_time(text: str | None) -> datetime | None:
    """A source table's time cell: as :func:`parse_iso`, but an unreadable value is None (unknown) instead of an
    error, so that one bad cell of a download is counted by ``link`` rather than stopping the manifest."""
    try:
        return parse_iso(text)
    except ValueError:
        return None


def format_time(value: datetime | None) -> str:
    """The manifest's spelling: ``YYYY-MM-DDTHH:MM:SS`` (``.ffffff`` when the time has microseconds); None → ``""``."""
    return "" if value is None else value.isoformat()


def dicom_datetime(date: str | None, time: str | None) -> datetime | None:
    """DICOM ``DA`` + ``TM`` → datetime, or None when either is missing or malformed (a date alone included).

    ``TM`` may be truncated on the right (``HH``, ``HHMM``, ``HHMMSS``, ``HHMMSS.F…``); the ACR-NEMA form
    ``HH:MM:SS`` is read too.
    """
    date, time = str(date or "").strip().replace(".", "") if date else "", str(time or "").strip().replace(":", "")
    d, t = _DA.fullmatch(date), _TM.fullmatch(time)
    if not d or not t:
        return None
    h, mi, s, f = t.groups()
    try:
        return datetime(int(d[1]), int(d[2]), int(d[3]), int(h), int(mi or 0), int(s or 0), _micro(f))
    except ValueError:
        return None


def header_time(ds) -> datetime | None:
    """A DICOM data set's acquisition time: ``AcquisitionDateTime`` (``DT``, through the hour at least, its UTC
    offset dropped), else ``StudyDate`` + ``StudyTime``; None when neither gives a date and a time."""
    dt = str(ds.get("AcquisitionDateTime", "") or "").strip()
    match = _DT.fullmatch(dt)
    if match:
        found = dicom_datetime(match[1], match[2])
        if found is not None:
            return found
    return dicom_datetime(ds.get("StudyDate"), ds.get("StudyTime"))


def file_time(path) -> datetime | None:
    """:func:`header_time` of a DICOM file (header only, pixels not read); None for an unreadable file."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # an unreadable file has no known time; `data check` reports the file itself
        return None
    return header_time(ds)


def numeric_date_time(date: str | None, time: str | None) -> datetime | None:
    """MIMIC-CXR metadata's numeric ``StudyDate`` (``21800506`` or ``21800506.0``) and ``StudyTime``
    (``213014.531``, ``75013.234`` = 07:50:13.234, ``0.0`` = midnight) → datetime; None when either is blank or
    malformed."""
    date, time = str(date or "").strip(), str(time or "").strip()
    if date.endswith(".0"):
        date = date[:-2]
    whole, _, fraction = time.partition(".")
    if not whole.isdigit() or len(whole) > 6 or (fraction and not fraction.isdigit()):
        return None
    return dicom_datetime(date, whole.zfill(6) + (f".{fraction[:6]}" if fraction.strip("0") else ""))
