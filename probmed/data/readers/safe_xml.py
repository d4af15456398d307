"""XML from outside (ECG exports, CDA reports) parsed through ``defusedxml``: entity declarations (billion laughs,
quadratic blow-up) and external entities / DTDs (file or network reads) are refused, whatever the expat version's
own defaults are.

Every refusal is an :class:`~probmed.data.readers.errors.UnreadableInput` with the cause ``<modality>_xml_unsafe``;
malformed XML is ``<modality>_unreadable`` (ECG) or left to the caller (reports).
"""
from __future__ import annotations

from pathlib import Path

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from probmed.data.readers.errors import UnreadableInput

#: The parse error type (the standard library's, which defusedxml raises for malformed XML).
ParseError = SafeET.ParseError


def _unsafe(modality: str, exc: DefusedXmlException) -> UnreadableInput:
    return UnreadableInput(f"{modality}_xml_unsafe", f"{type(exc).__name__}: {exc}")


def parse_file(path: str | Path, modality: str):
    """The root element of an XML file.

    Raises:
        UnreadableInput: ``<modality>_xml_unsafe`` (entities, external references), ``<modality>_unreadable``
            (malformed XML, unreadable file).
    """
    try:
        return SafeET.parse(str(path)).getroot()
    except DefusedXmlException as exc:
        raise _unsafe(modality, exc) from exc
    except (ParseError, OSError) as exc:
        raise UnreadableInput(f"{modality}_unreadable", f"{type(exc).__name__}: {exc}") from exc


def parse_text(text: str, modality: str):
    """The root element of an XML document given as text.

    Raises:
        UnreadableInput: ``<modality>_xml_unsafe``; :data:`ParseError` for malformed XML (left to the caller).
    """
    try:
        return SafeET.fromstring(text)
    except DefusedXmlException as exc:
        raise _unsafe(modality, exc) from exc


def root_tag(path: str | Path, modality: str) -> str | None:
    """The tag of a file's root element, read without parsing the rest (None for a file without an element).

    Raises:
        UnreadableInput: ``<modality>_xml_unsafe``; ``<modality>_unreadable`` when the file is not XML.
    """
    try:
        for _, element in SafeET.iterparse(str(path), events=("start",)):
            return element.tag
    except DefusedXmlException as exc:
        raise _unsafe(modality, exc) from exc
    except (ParseError, OSError) as exc:
        raise UnreadableInput(f"{modality}_unreadable", f"not XML: {type(exc).__name__}: {exc}") from exc
    return None
