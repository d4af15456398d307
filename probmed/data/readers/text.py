"""Free-text reports: decoding and section selection; ECG machine statements as a report."""
from __future__ import annotations

import re
from typing import Iterable

from probmed.data.readers.errors import UnreadableInput

#: Section names recognised in any letter case, with or without a colon (alone on their line), mapped to the
#: canonical name. Any other upper-case heading followed by a colon is a section too, under its own name.
SECTION_ALIASES: dict[str, str] = {
    "FINDINGS": "FINDINGS", "FINDING": "FINDINGS",
    "IMPRESSION": "IMPRESSION", "IMPRESSIONS": "IMPRESSION", "CONCLUSION": "IMPRESSION", "CONCLUSIONS": "IMPRESSION",
    "INDICATION": "INDICATION", "INDICATIONS": "INDICATION", "CLINICAL INDICATION": "INDICATION",
    "REASON FOR EXAM": "INDICATION", "HISTORY": "HISTORY", "CLINICAL HISTORY": "HISTORY",
    "COMPARISON": "COMPARISON", "COMPARISONS": "COMPARISON", "TECHNIQUE": "TECHNIQUE", "EXAMINATION": "EXAMINATION",
    "EXAM": "EXAMINATION", "RECOMMENDATION": "RECOMMENDATION", "RECOMMENDATIONS": "RECOMMENDATION",
    "NOTIFICATION": "NOTIFICATION", "SUMMARY": "SUMMARY",
}

# A candidate heading: words at the start of a line, then a colon or the end of the line.
_HEADING = re.compile(r"^[ \t]*(?P<name>[A-Za-z][A-Za-z /&-]{1,40}?)[ \t]*(?P<colon>:|$)", re.MULTILINE)


def _section_name(match: re.Match) -> str | None:
    """The canonical section name a heading match stands for, or None when it is ordinary text."""
    raw = " ".join(match.group("name").split())
    canonical = SECTION_ALIASES.get(raw.upper())
    if canonical is not None:
        return canonical
    if match.group("colon") and raw.isupper() and len(raw) >= 3:
        return raw
    return None


def split_sections(report: str) -> dict[str, str]:
    """Split a report into ``{SECTION NAME: text}``; text before the first heading is under ``""``.

    Headings are recognised robustly: ``FINDINGS:``, ``Findings:``, ``findings :``, ``FINDINGS`` alone on its line,
    aliases (``CONCLUSION`` → ``IMPRESSION``, see :data:`SECTION_ALIASES`) and any other upper-case ``NAME:``.
    A section repeated in the report is joined with a space.
    """
    headings = [(m, name) for m in _HEADING.finditer(report) if (name := _section_name(m)) is not None]
    if not headings:
        return {"": report.strip()}
    sections: dict[str, str] = {}
    if report[: headings[0][0].start()].strip():
        sections[""] = report[: headings[0][0].start()].strip()
    for (match, name), nxt in zip(headings, headings[1:] + [(None, None)]):
        end = nxt[0].start() if nxt[0] is not None else len(report)
        text = report[match.end() : end].strip()
        sections[name] = f"{sections[name]} {text}".strip() if name in sections else text
    return sections


def read_report(data: bytes, sections: tuple[str, ...] = ()) -> str:
    """Decode a UTF-8 report and keep the named sections (all text when ``sections`` is empty).

    Kept sections are joined as ``"NAME: text"`` in the order given; a named section the report lacks is left out.

    Raises:
        UnreadableInput: ``text_not_utf8``; ``text_empty`` when nothing but whitespace (or headings with empty
            sections) is left.
    """
    try:
        report = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableInput("text_not_utf8", str(exc)) from exc
    found = split_sections(report)
    if sections:
        report = " ".join(f"{name}: {found[name]}" for name in sections if found.get(name))
    report = " ".join(report.split())
    if not report or not any(text.strip() for text in found.values()):  # nothing, or headings only
        raise UnreadableInput("text_empty", "empty report")
    return report


def statements_report(statements: Iterable[object], section: str = "FINDINGS") -> str:
    """ECG machine statements (e.g. MIMIC-IV-ECG ``report_0..report_17``, a PTB-XL ``report``) → one report.

    Empty / missing entries (``None``, NaN, blank) are dropped, whitespace is collapsed, exact repeats are kept
    once, and each statement ends with a full stop: ``"FINDINGS: Sinus rhythm. Normal ECG."``; ``""`` when no
    statement is left.
    """
    kept: list[str] = []
    for statement in statements:
        if statement is None or (isinstance(statement, float) and statement != statement):
            continue
        text = " ".join(str(statement).split()).rstrip(".")
        if text and text not in kept:
            kept.append(text)
    return f"{section}: " + " ".join(f"{s}." for s in kept) if kept else ""
