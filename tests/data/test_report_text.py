"""Reports: inline headings are parsed, markup is refused with a cause, an HL7 CDA document gives its narrative
without the header's names."""
from __future__ import annotations

import pytest

from probmed.data.readers import UnreadableInput, read_report
from probmed.data.readers.text import plain_report, split_sections

CDA = """<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <recordTarget><patientRole><patient><name><given>Johanna</given><family>Smithfield</family></name></patient>
  </patientRole></recordTarget>
  <author><assignedAuthor><assignedPerson><name>Dr Drake Ramoray</name></assignedPerson></assignedAuthor></author>
  <component><structuredBody>
    <component><section><title>Findings</title><text><paragraph>Heart size is <content>enlarged</content>.
    </paragraph><paragraph>Small left effusion.</paragraph></text></section></component>
    <component><section><title>Impression</title><text>Cardiomegaly with effusion.</text></section></component>
  </structuredBody></component>
</ClinicalDocument>"""


def test_inline_headings_on_one_line():
    one_line = "FINDINGS: Heart size is normal. No effusion. IMPRESSION: No acute disease."
    assert split_sections(one_line) == {"FINDINGS": "Heart size is normal. No effusion.",
                                        "IMPRESSION": "No acute disease."}
    dashed = "Indication - cough.\nFindings - clear lungs. Conclusion - normal study"
    assert split_sections(dashed) == {"INDICATION": "cough.", "FINDINGS": "clear lungs.", "IMPRESSION": "normal study"}
    # a known name inside a sentence without a colon or dash, and an unknown capitalised word with one, are text
    prose = "No new findings since the prior. Ratio: 0.5"
    assert split_sections(prose) == {"": prose}
    assert read_report(one_line.encode(), ("IMPRESSION",)) == "IMPRESSION: No acute disease."


def test_html_and_unknown_xml_are_refused_with_a_cause():
    html = "<!DOCTYPE html><html><body><p>FINDINGS: normal</p><p>Signed: Dr Ramoray</p></body></html>"
    with pytest.raises(UnreadableInput, match="text_markup: HTML document is not a plain-text report"):
        read_report(html.encode())
    with pytest.raises(UnreadableInput, match="text_markup: RadiologyReport document"):
        plain_report("<RadiologyReport><Author>Ramoray</Author><Body>normal</Body></RadiologyReport>")
    with pytest.raises(UnreadableInput, match="text_markup: report text with 4 embedded tags"):
        plain_report("FINDINGS: <b>normal</b> heart <i>size</i>")
    assert plain_report("FINDINGS: ejection fraction <40% and >30%.") == "FINDINGS: ejection fraction <40% and >30%."


def test_cda_narrative_is_extracted_without_header_names():
    text = plain_report(CDA)
    assert text == "FINDINGS:\nHeart size is enlarged. Small left effusion.\nIMPRESSION:\nCardiomegaly with effusion."
    assert "Smithfield" not in text and "Ramoray" not in text
    assert read_report(CDA.encode(), ("IMPRESSION",)) == "IMPRESSION: Cardiomegaly with effusion."
