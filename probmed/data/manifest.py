"""The study manifest that ``probmed data build`` reads: one CSV row per study, files per modality, labels.

Users' reference: docs/real_data.md, "The manifest" (tests/data/test_data_commands.py keeps it complete).

Columns (paths are relative to the manifest's directory unless absolute; several paths are joined with ``;``); the
modality columns are those of the registered modalities (:mod:`probmed.data.registry`, one path column each plus
the value columns its converter reads):

==================  ================================================================================================
column              content
==================  ================================================================================================
``study_id``        the study's id in the source system (required; replaced by a salted pseudonym in the shards)
``patient_id``      the patient's id (required; pseudonymised likewise)
``split``           ``train``, ``val`` (or ``validate``) or ``test`` (required)
``acquired_at``     when the study was acquired: ISO 8601 without timezone (``2180-07-23T08:44:00``); empty:
                    unknown (``probmed data link`` counts it, never guesses it); anything else is an error naming
                    the line (:mod:`probmed.data.times`)
``cxr``             radiograph files (``.dcm``, ``.png``, ``.jpg``), ``;``-separated
``cxr_views``       their view positions (``PA;LATERAL``), ``;``-separated; empty: taken from the DICOM header
``ecg``             one ECG file (``.dcm`` waveform, WFDB ``.hea``, ``.xml``: GE MUSE, HL7 aECG, GE CardioSoft)
``echo``            one echo cine (multi-frame ``.dcm``, ``.avi``, ``.mp4``)
``echo_fps``        the cine's frame rate when the file does not say it (e.g. EchoNet-Dynamic's FileList.csv FPS)
``report``          a UTF-8 report file
``report_text``     the report inline (e.g. ECG machine statements); used when ``report`` is empty
``finding:<name>``  a label: ``1`` positive, ``0`` negative, ``-1`` uncertain, empty: missing (CheXpert's convention,
                    :mod:`probmed.data.labels`); any number of such columns, in label-vector order
``ambiguity:<m>``   optional: the recorded ambiguity of modality ``<m>`` (a registered one: ``cxr``, ``ecg``,
                    ``echo``, ``text``, ...), a number in [0, 1], empty: unknown. Written into the shard's
                    ``meta["ambiguity"][<m>]`` when the study has the modality: evaluation truth, never read by the
                    model (the manifest makers fill it from PTB-XL's noise columns, MIMIC-CXR's ViewPosition and
                    CheXpert's uncertain labels)
==================  ================================================================================================
"""
from __future__ import annotations

import csv
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from probmed.data.labels import value_name
from probmed.data.times import TIME_COLUMN, parse_iso

REQUIRED_COLUMNS: tuple[str, ...] = ("study_id", "patient_id", "split")
FINDING_PREFIX = "finding:"
#: Longest manifest cell accepted (characters): an inline report up to the report limit
#: (:attr:`probmed.data.limits.Limits.report_bytes`).
MAX_CELL_CHARS = 1 << 20
#: The csv module's cell limit while a manifest is read: larger than :data:`MAX_CELL_CHARS` so an over-long cell is
#: refused naming its column; bounded so one cell cannot take the machine's memory.
CSV_FIELD_LIMIT = 16 << 20
AMBIGUITY_PREFIX = "ambiguity:"
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validate": "val", "validation": "val",
                 "test": "test"}


def path_columns() -> tuple[str, ...]:
    """The columns holding source files: one per modality the registry builds (``cxr``, ``ecg``, ...)."""
    from probmed.data.registry import build_specs

    return tuple(s.build.path_column for s in build_specs())


def columns() -> tuple[str, ...]:
    """Every column a manifest may have besides ``finding:<name>``, in the order :func:`write_manifest` writes."""
    from probmed.data.registry import build_specs

    return REQUIRED_COLUMNS + (TIME_COLUMN,) + tuple(c for s in build_specs() for c in s.build.columns)


def __getattr__(name: str):
    # FILE_COLUMNS / COLUMNS are derived from the modality registry on first use (the registry imports the
    # builders, which must not be loaded while this module is)
    if name == "FILE_COLUMNS":
        return path_columns()
    if name == "COLUMNS":
        return columns()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class StudyEntry:
    """One manifest row, with paths resolved.

    Attributes:
        paths: path column → its files (several for a ``;``-separated column, e.g. radiograph views).
        values: every other non-empty column (besides ids, split and findings) as written.
        findings: label name → 1 / 0 / -1 (positive / negative / uncertain); missing labels are absent.
        acquired_at: the ``acquired_at`` column (None: unknown).
        ambiguity: modality → recorded ambiguity in [0, 1] (``ambiguity:<m>`` columns); unknown ones are absent.
        line: the row's line number in the manifest (for messages; 0 when not read from a file).
    """

    study_id: str
    patient_id: str
    split: str
    paths: dict[str, list[Path]] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    findings: dict[str, int] = field(default_factory=dict)
    acquired_at: datetime | None = None
    ambiguity: dict[str, float] = field(default_factory=dict)
    line: int = 0

    def values_of(self, column: str) -> list[str]:
        """A value column split at ``;`` (empty parts dropped)."""
        return _split_list(self.values.get(column, ""))

    def has(self, column: str) -> bool:
        """Whether the row gives the column (files or a value)."""
        return bool(self.paths.get(column)) or bool(self.values.get(column))

    def input_bytes(self) -> int:
        """Total size of the input files that exist (used to cut shards by ``--maxsize``)."""
        total = sum(len(v.encode("utf-8")) for v in self.values.values())
        for paths in self.paths.values():
            for path in paths:
                for candidate in (path, path.with_suffix(".dat")) if path.suffix == ".hea" else (path,):
                    total += candidate.stat().st_size if candidate.is_file() else 0
        return total


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(";") if part.strip()]


def _parse_row(row: dict[str, str], base: Path, line: int, file_columns: tuple[str, ...]) -> StudyEntry:
    def path(text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() else base / p

    for column in REQUIRED_COLUMNS:
        if not (row.get(column) or "").strip():
            raise ValueError(f"manifest line {line}: empty {column!r}")
    split = SPLIT_ALIASES.get(row["split"].strip().lower())
    if split is None:
        raise ValueError(f"manifest line {line}: unknown split {row['split']!r} (use train, val or test)")
    try:
        acquired_at = parse_iso(row.get(TIME_COLUMN))
    except ValueError as exc:
        raise ValueError(f"manifest line {line}: {TIME_COLUMN} = {exc}") from exc
    findings, values, ambiguity = {}, {}, {}
    for column, value in row.items():
        if column is None or not isinstance(value, (str, type(None))):  # csv.DictReader: cells beyond the header
            continue
        if value is not None and len(value) > MAX_CELL_CHARS:
            raise ValueError(f"manifest line {line}, column {column!r}: a cell of {len(value)} characters "
                             f"(at most {MAX_CELL_CHARS})")
        if column and column.startswith(FINDING_PREFIX) and (value or "").strip() != "":
            try:
                number = float(value)
                value_name(number)
            except ValueError as exc:
                raise ValueError(f"manifest line {line}: {column} = {value!r} is not 1, 0, -1 or empty") from exc
            findings[column[len(FINDING_PREFIX):]] = int(number)
        elif column and column.startswith(AMBIGUITY_PREFIX):
            if (value or "").strip() != "":
                ambiguity[column[len(AMBIGUITY_PREFIX):]] = _ambiguity(column, value, line)
        elif (column and column not in REQUIRED_COLUMNS and column != TIME_COLUMN and column not in file_columns
              and (value or "").strip()):
            values[column] = value.strip()
    paths = {c: [path(p) for p in _split_list(row.get(c, ""))] for c in file_columns}
    return StudyEntry(
        study_id=row["study_id"].strip(), patient_id=row["patient_id"].strip(), split=split,
        paths={c: p for c, p in paths.items() if p}, values=values, findings=findings, acquired_at=acquired_at,
        ambiguity=ambiguity, line=line,
    )


@contextmanager
def _field_limit():
    """The csv module's cell limit raised to :data:`CSV_FIELD_LIMIT` while a manifest is read (then restored), so
    a long cell gets :func:`_parse_row`'s message naming its column."""
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _ambiguity(column: str, value: str, line: int) -> float:
    """The number of an ``ambiguity:<m>`` cell (ValueError naming the line for a bad one)."""
    from probmed.data.registry import SPECS

    modality = column[len(AMBIGUITY_PREFIX):]
    if modality not in SPECS:
        raise ValueError(f"manifest line {line}: column {column!r} names no registered modality ({sorted(SPECS)})")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"manifest line {line}: {column} = {value!r} is not a number in [0, 1] or empty")
    return number


def label_columns(path: str | Path) -> list[str]:
    """The label names of a manifest (its ``finding:<name>`` columns), in column order: the label vocabulary."""
    with open(path, newline="", encoding="utf-8-sig") as fh, _field_limit():
        try:
            header = next(csv.reader(fh), [])
        except csv.Error as exc:
            raise ValueError(f"{path}: manifest line 1: {exc}") from exc
    return [c[len(FINDING_PREFIX):] for c in header if c.startswith(FINDING_PREFIX)]


def read_manifest(path: str | Path) -> list[StudyEntry]:
    """Parse a manifest CSV; raises ValueError with the line number for a malformed row or a repeated study id."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as fh, _field_limit():  # utf-8-sig: Excel's BOM
        reader = csv.DictReader(fh)
        try:
            fieldnames = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in fieldnames]
            if missing:
                raise ValueError(f"{path}: manifest lacks column(s) {missing}; see probmed.data.manifest for the "
                                 "format")
            file_columns = path_columns()
            entries = [_parse_row({k: _unquoted(v) if isinstance(v, str) else v for k, v in row.items()},
                                  path.parent, reader.line_num, file_columns) for row in reader]
        except csv.Error as exc:  # a cell over the csv module's limit, a NUL byte, ...
            raise ValueError(f"{path}: manifest line {reader.line_num}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    seen: set[str] = set()
    for entry in entries:
        if entry.study_id in seen:
            raise ValueError(f"{path}: study_id {entry.study_id!r} appears twice")
        seen.add(entry.study_id)
    return entries


def write_manifest(path: str | Path, rows: list[dict[str, object]]) -> Path:
    """Write manifest rows (dicts keyed by the columns above, ``finding:<name>`` and ``ambiguity:<m>`` included) as
    CSV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    findings = sorted({k for row in rows for k in row if k.startswith(FINDING_PREFIX)})
    ambiguity = sorted({k for row in rows for k in row if k.startswith(AMBIGUITY_PREFIX)})
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*columns(), *findings, *ambiguity], extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: spreadsheet_safe("" if v is None else v) for k, v in row.items()})
    return path


#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def spreadsheet_safe(value: object) -> object:
    """A cell as :func:`write_manifest` writes it: text starting with ``= + - @``, a tab or a carriage return (a
    formula when the CSV is opened in a spreadsheet) gets a leading ``'``, which :func:`read_manifest` removes
    again; numbers (``-1``) are written as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _is_number(value):
        return "'" + value
    return value


def _unquoted(value: str | None) -> str | None:
    """The inverse of :func:`spreadsheet_safe` for one cell read back."""
    if value and value.startswith("'") and value[1:].startswith(FORMULA_STARTS) and not _is_number(value[1:]):
        return value[1:]
    return value
