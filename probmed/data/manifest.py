"""The study manifest that ``probmed data build`` reads: one CSV row per study, files per modality, labels.

Columns (paths are relative to the manifest's directory unless absolute; several paths are joined with ``;``):

==================  ================================================================================================
column              content
==================  ================================================================================================
``study_id``        the study's id in the source system (required; replaced by a salted pseudonym in the shards)
``patient_id``      the patient's id (required; pseudonymised likewise)
``split``           ``train``, ``val`` (or ``validate``) or ``test`` (required)
``cxr``             radiograph files (``.dcm``, ``.png``, ``.jpg``), ``;``-separated
``cxr_views``       their view positions (``PA;LATERAL``), ``;``-separated; empty: taken from the DICOM header
``ecg``             one ECG file (``.dcm`` waveform, WFDB ``.hea`` or record name, GE MUSE ``.xml``)
``echo``            one echo cine (multi-frame ``.dcm``, ``.avi``, ``.mp4``)
``echo_fps``        the cine's frame rate when the file does not say it (e.g. EchoNet-Dynamic's FileList.csv FPS)
``report``          a UTF-8 report file
``report_text``     the report inline (e.g. ECG machine statements); used when ``report`` is empty
``finding:<name>``  a label, ``0``/``1`` (empty: unknown); any number of such columns
==================  ================================================================================================
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_COLUMNS: tuple[str, ...] = ("study_id", "patient_id", "split")
FILE_COLUMNS: tuple[str, ...] = ("cxr", "ecg", "echo", "report")
COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + ("cxr", "cxr_views", "ecg", "echo", "echo_fps", "report", "report_text")
FINDING_PREFIX = "finding:"
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validate": "val", "validation": "val",
                 "test": "test"}


@dataclass
class StudyEntry:
    """One manifest row, with paths resolved."""

    study_id: str
    patient_id: str
    split: str
    cxr: list[Path] = field(default_factory=list)
    cxr_views: list[str] = field(default_factory=list)
    ecg: Path | None = None
    echo: Path | None = None
    echo_fps: float | None = None
    report: Path | None = None
    report_text: str = ""
    findings: dict[str, int] = field(default_factory=dict)

    def input_bytes(self) -> int:
        """Total size of the input files that exist (used to cut shards by ``--maxsize``)."""
        paths = [*self.cxr, self.ecg, self.echo, self.report]
        total = len(self.report_text.encode("utf-8"))
        for path in paths:
            if path is not None:
                for candidate in (path, path.with_suffix(".dat")) if path.suffix == ".hea" else (path,):
                    total += candidate.stat().st_size if candidate.is_file() else 0
        return total


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(";") if part.strip()]


def _parse_row(row: dict[str, str], base: Path, line: int) -> StudyEntry:
    def path(text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() else base / p

    for column in REQUIRED_COLUMNS:
        if not (row.get(column) or "").strip():
            raise ValueError(f"manifest line {line}: empty {column!r}")
    split = SPLIT_ALIASES.get(row["split"].strip().lower())
    if split is None:
        raise ValueError(f"manifest line {line}: unknown split {row['split']!r} (use train, val or test)")
    findings = {}
    for column, value in row.items():
        if column and column.startswith(FINDING_PREFIX) and (value or "").strip() != "":
            try:
                findings[column[len(FINDING_PREFIX):]] = int(float(value))
            except ValueError as exc:
                raise ValueError(f"manifest line {line}: {column} = {value!r} is not 0/1") from exc
    fps = (row.get("echo_fps") or "").strip()
    return StudyEntry(
        study_id=row["study_id"].strip(), patient_id=row["patient_id"].strip(), split=split,
        cxr=[path(p) for p in _split_list(row.get("cxr", ""))], cxr_views=_split_list(row.get("cxr_views", "")),
        ecg=path(row["ecg"].strip()) if (row.get("ecg") or "").strip() else None,
        echo=path(row["echo"].strip()) if (row.get("echo") or "").strip() else None,
        echo_fps=float(fps) if fps else None,
        report=path(row["report"].strip()) if (row.get("report") or "").strip() else None,
        report_text=(row.get("report_text") or "").strip(), findings=findings,
    )


def read_manifest(path: str | Path) -> list[StudyEntry]:
    """Parse a manifest CSV; raises ValueError with the line number for a malformed row or a repeated study id."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: manifest lacks column(s) {missing}; see probmed.data.manifest for the format")
        entries = [_parse_row(row, path.parent, i + 2) for i, row in enumerate(reader)]
    seen: set[str] = set()
    for entry in entries:
        if entry.study_id in seen:
            raise ValueError(f"{path}: study_id {entry.study_id!r} appears twice")
        seen.add(entry.study_id)
    return entries


def write_manifest(path: str | Path, rows: list[dict[str, object]]) -> Path:
    """Write manifest rows (dicts keyed by the columns above, ``finding:<name>`` included) as CSV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    findings = sorted({k for row in rows for k in row if k.startswith(FINDING_PREFIX)})
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*COLUMNS, *findings], extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path
