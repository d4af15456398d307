"""Free-text reports: decoding and section selection."""
from __future__ import annotations

import re

from probmed.data.readers.errors import UnreadableInput

# A section header is an upper-case word (or words) at the start of a line followed by a colon.
_SECTION = re.compile(r"^\s*([A-Z][A-Z /&-]{2,40}):", re.MULTILINE)


def split_sections(report: str) -> dict[str, str]:
    """Split a report into ``{SECTION NAME: text}``; text before the first header is under ``""``."""
    sections: dict[str, str] = {}
    matches = list(_SECTION.finditer(report))
    if not matches:
        return {"": report.strip()}
    if report[: matches[0].start()].strip():
        sections[""] = report[: matches[0].start()].strip()
    for match, nxt in zip(matches, matches[1:] + [None]):
        end = nxt.start() if nxt is not None else len(report)
        sections[match.group(1).strip()] = report[match.end() : end].strip()
    return sections


def read_report(data: bytes, sections: tuple[str, ...] = ()) -> str:
    """Decode a UTF-8 report and keep the named sections (all text when ``sections`` is empty).

    Kept sections are joined as ``"NAME: text"`` in the order given; a named section the report lacks is left out.

    Raises:
        UnreadableInput: ``text_not_utf8``; ``text_empty`` when nothing but whitespace is left.
    """
    try:
        report = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableInput("text_not_utf8", str(exc)) from exc
    if sections:
        found = split_sections(report)
        report = " ".join(f"{name}: {found[name]}" for name in sections if found.get(name))
    report = " ".join(report.split())
    if not report:
        raise UnreadableInput("text_empty", "empty report")
    return report
