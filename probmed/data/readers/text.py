"""Free-text reports: decoding and section selection; markup refused or extracted; ECG machine statements as a
report."""
from __future__ import annotations

import re
from typing import Iterable

from probmed.data.readers import safe_xml
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

# A candidate heading: words at the start of a line, then a colon, a spaced dash ("Conclusion - ...") or the end of
# the line.
_HEADING = re.compile(r"^[ \t]*(?P<name>[A-Za-z][A-Za-z /&]{1,40}?)[ \t]*(?P<colon>:|[ \t][-–—][ \t]|$)",
                      re.MULTILINE)


def _inline_alternation() -> str:
    """The known section names (:data:`SECTION_ALIASES`) in upper case or capitalised, longest first."""
    names = sorted(SECTION_ALIASES, key=len, reverse=True)
    return "|".join(re.escape(form) for n in names for form in (n, n.capitalize()))


# A known section name inside a line ("... normal. IMPRESSION: ..."), after a sentence end or a space, followed by
# a colon or a spaced dash; only known names (in upper case or capitalised), so ordinary "ratio: 2" is not one.
_INLINE_HEADING = re.compile(rf"(?:(?<=[.;!?])|(?<=\s))[ \t]*(?P<name>{_inline_alternation()})[ \t]*"
                             r"(?P<colon>:|[ \t][-–—][ \t])")


def _section_name(match: re.Match) -> str | None:
    """The canonical section name a heading match stands for, or None when it is ordinary text."""
    raw = " ".join(match.group("name").split())
    canonical = SECTION_ALIASES.get(raw.upper())
    if canonical is not None:
        return canonical
    if match.group("colon") and raw.isupper() and len(raw) >= 3:
        return raw
    return None


def _headings(report: str) -> list[tuple[re.Match, str]]:
    """Every heading of the report in order: line-start ones, then known names inside a line that no line-start
    heading already covers."""
    found = [(m, name) for m in _HEADING.finditer(report) if (name := _section_name(m)) is not None]
    taken = [(m.start(), m.end()) for m, _ in found]
    for m in _INLINE_HEADING.finditer(report):
        if not any(start <= m.start("name") < end for start, end in taken):
            found.append((m, SECTION_ALIASES[m.group("name").upper()]))
    return sorted(found, key=lambda pair: pair[0].start())


def split_sections(report: str) -> dict[str, str]:
    """Split a report into ``{SECTION NAME: text}``; text before the first heading is under ``""``.

    Headings are recognised robustly: ``FINDINGS:``, ``Findings:``, ``findings :``, ``FINDINGS`` alone on its line,
    ``Conclusion - ...``, aliases (``CONCLUSION`` → ``IMPRESSION``, see :data:`SECTION_ALIASES`), any other
    upper-case ``NAME:`` at the start of a line, and known names inline (``FINDINGS: a. IMPRESSION: b.`` on one
    line). A section repeated in the report is joined with a space.
    """
    headings = _headings(report)
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


_MARKUP = re.compile(r"^\s*(?:\ufeff)?<(?:\?xml|!DOCTYPE|[A-Za-z][\w:.-]*[\s>/])", re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def cda_text(document: str) -> str:
    """The narrative of an HL7 CDA document (``<ClinicalDocument>``): each body section as ``"TITLE:\n text"``.

    Only ``structuredBody`` sections are kept; the header (patient, author, custodian, legal authenticator) is
    never read, so names there cannot reach the report text.
    """
    root = safe_xml.parse_text(document, "text")
    parts = []
    for section in root.iter():
        if _local(section.tag) != "section":
            continue
        title = next((c for c in section if _local(c.tag) == "title"), None)
        text = next((c for c in section if _local(c.tag) == "text"), None)
        body = " ".join("".join(text.itertext()).split()) if text is not None else ""
        if body:
            heading = " ".join("".join(title.itertext()).split()).upper() if title is not None else ""
            parts.append(f"{heading}:\n{body}" if heading else body)
    return "\n".join(parts)


#: Root element of an XML report format whose narrative can be extracted → its extractor.
REPORT_XML_FORMATS = {"ClinicalDocument": cda_text}


def plain_report(report: str) -> str:
    """The plain text of a report: as given when it holds no markup; the narrative of a known XML report format
    (:data:`REPORT_XML_FORMATS`, HL7 CDA); refused otherwise.

    Raises:
        UnreadableInput: ``text_xml_unsafe`` for XML with entity declarations or external references
            (:mod:`probmed.data.readers.safe_xml`); ``text_markup`` for an HTML or other XML document, or text with
            embedded tags (markup and the author and patient names such documents carry would be trained on as
            report text).
    """
    if not _MARKUP.match(report):
        if len(_TAG.findall(report)) >= 3:
            raise UnreadableInput("text_markup", f"report text with {len(_TAG.findall(report))} embedded tags")
        return report
    try:
        root = safe_xml.parse_text(report.lstrip("\ufeff \t\r\n"), "text")
    except safe_xml.ParseError:
        root = None
    name = _local(root.tag) if root is not None else "unparsable markup"
    name = "HTML" if re.search(r"<html[\s>]", report, re.I) else name
    extract = REPORT_XML_FORMATS.get(name)
    if extract is None:
        known = ", ".join(REPORT_XML_FORMATS)
        raise UnreadableInput("text_markup", f"{name} document is not a plain-text report (extracted: {known})")
    return extract(report.lstrip("\ufeff \t\r\n"))


def read_report(data: bytes, sections: tuple[str, ...] = ()) -> str:
    """Decode a UTF-8 report and keep the named sections (all text when ``sections`` is empty).

    Kept sections are joined as ``"NAME: text"`` in the order given; a named section the report lacks is left out.

    Raises:
        UnreadableInput: ``text_not_utf8``; ``text_markup`` (:func:`plain_report`); ``text_empty`` when nothing
            but whitespace (or headings with empty sections) is left.
    """
    try:
        report = plain_report(data.decode("utf-8"))
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
