"""Synthetic report text with ``FINDINGS:`` and ``IMPRESSION:`` sections.

Every positive finding is mentioned at least once (in FINDINGS, IMPRESSION or both, with one of several
phrasings and sometimes a number: heart rate, EF, cardiothoracic ratio, effusion side/size). Each negative
finding is explicitly negated about half of the time ("No pleural effusion.", "without evidence of
cardiomegaly"), otherwise not mentioned. Cardiomegaly is often graded (mild / moderate / marked, from the
cardiothoracic ratio). The CXR's lines, tubes, leads, sternotomy wires and calcified granuloma are described
most of the time (lines and tubes with their position, the granuloma with its lobe), as real reports do.
Cardiac structure: LV hypertrophy (a label) is always stated on the ECG side (by voltage criteria, sometimes with
the Sokolow-Lyon voltage and the strain pattern) and often on the echo side (wall thickness); left-atrial
enlargement (not a label) is described on the film most of the time (double density, splayed carina), on the
echo (LA diameter) and sometimes as P mitrale on a sinus ECG. Normal studies get normal-study phrasings. Sentence
order in FINDINGS is shuffled by topic group.

Quality (:mod:`probmed.data.synthetic.quality`, the text modality's ambiguity ``a``): a *terse* report is one of
eight fixed templates (the first positive finding in a fixed order, or "No acute cardiopulmonary process."), the
same text for many studies; otherwise each finding topic (heart size, effusion, rhythm and rate, LV function, LVH)
is *hedged* with probability 0.8·a — a phrase drawn from the same list whether the finding is present or not
("Cardiomegaly cannot be excluded.") — and with probability a each the numbers and the device descriptions are
dropped. A borderline (uncertain, -1) finding is always described as borderline. These draws come from a
generator of their own, so a report at a = 0 is word for word the report without quality.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _side_phrase(side: str, size: str, rng) -> str:
    if side == "bilateral":
        return _pick(rng, [f"{size} bilateral pleural effusions", f"bilateral {size} pleural effusions",
                           f"{size} effusions at both lung bases"])
    return _pick(rng, [f"{size} {side} pleural effusion", f"{size} {side}-sided pleural effusion",
                       f"{size} {side} effusion"])


def _heart_grade(ctr: float) -> str:
    return "mild" if ctr < 0.57 else "moderate" if ctr < 0.61 else "marked"


def _extras(rng: np.random.Generator, attrs: dict) -> tuple[list[str], list[str]]:
    """FINDINGS sentences and IMPRESSION items describing the film's devices and calcifications."""
    body: list[str] = []
    impression: list[str] = []
    line = attrs.get("central_line", "none")
    if line != "none" and rng.random() < 0.95:
        short = {"right internal jugular": "right IJ", "left subclavian": "left subclavian"}[line]
        body.append(_pick(rng, [f"{_cap(line)} central venous catheter with tip in the SVC.",
                                f"{_cap(short)} line terminates in the superior vena cava.",
                                f"A {line} catheter is in place, tip at the cavoatrial junction."]))
        if rng.random() < 0.4:
            impression.append(f"{_cap(short)} line in satisfactory position")
    if attrs.get("ng_tube") and rng.random() < 0.95:
        body.append(_pick(rng, ["Nasogastric tube courses below the diaphragm into the stomach.",
                                "Enteric tube tip projects over the stomach.", "NG tube in the stomach."]))
        if rng.random() < 0.4:
            impression.append("Nasogastric tube in good position")
    if attrs.get("sternotomy") and rng.random() < 0.9:
        body.append(_pick(rng, ["Median sternotomy wires are intact.", "Post-sternotomy changes.",
                                "Status post median sternotomy.", "Sternotomy wires are noted."]))
    granuloma = attrs.get("granuloma", "none")
    if granuloma != "none" and rng.random() < 0.9:
        body.append(_pick(rng, [f"Calcified granuloma in the {granuloma} lobe.",
                                f"A small calcified nodule in the {granuloma} lobe, likely a granuloma.",
                                f"Stable calcified granuloma, {granuloma} lobe."]))
    if attrs.get("ecg_leads") and rng.random() < 0.8:
        body.append(_pick(rng, ["Overlying ECG leads.", "Monitoring leads project over the chest.",
                                "External cardiac monitoring leads are present."]))
    if not body and rng.random() < 0.3:
        body.append(_pick(rng, ["No lines or tubes.", "No support devices."]))
    return body, impression


def _lvh_ecg(rng: np.random.Generator, f: dict[str, int], attrs: dict, impression: list[str], where) -> list[str]:
    """FINDINGS sentences on QRS voltage (LVH always stated when present); appends to ``impression``."""
    if not f["lvh"]:
        if rng.random() < 0.15:
            return [_pick(rng, ["No LVH.", "Normal QRS voltage."])]
        return []
    mm = float(attrs.get("sokolow_lyon_mv", 4.0)) * 10.0
    strain = bool(attrs.get("lv_strain"))
    phr = _pick(rng, ["LV hypertrophy by voltage criteria", f"LVH (Sokolow-Lyon {mm:.0f} mm)",
                      "left ventricular hypertrophy"])
    if strain:
        phr += _pick(rng, [" with strain", " with lateral ST-T changes"])
    w = where()
    out = [_cap(phr) + "."] if w in ("both", "findings") else []
    if w in ("both", "impression"):
        impression.append("LVH with strain" if strain else _pick(rng, ["Left ventricular hypertrophy", "LVH"]))
    return out


#: Hedged sentences per finding topic: the same list whatever the hidden state (the report no longer tells).
HEDGED = {
    "cardiomegaly": ["Heart size is difficult to assess on this film.", "Cardiomegaly cannot be excluded.",
                     "Possible mild cardiomegaly.", "Heart size is not well evaluated."],
    "pleural_effusion": ["Small pleural effusion cannot be excluded.", "Possible trace pleural effusion.",
                         "The costophrenic angles are not well seen."],
    "rhythm": ["Rhythm difficult to assess due to artifact.", "Atrial fibrillation cannot be excluded.",
               "Possible irregular rhythm; rate assessment limited."],
    "reduced_ef": ["LV systolic function is difficult to assess.", "Possibly reduced LV systolic function.",
                   "Limited views; the EF cannot be reliably estimated."],
    "lvh": ["Possible LVH.", "LVH cannot be excluded.", "QRS voltage is difficult to assess."],
}
#: Sentences of a borderline (uncertain) finding.
BORDERLINE = {
    "cardiomegaly": ["Borderline cardiomegaly.", "Heart size at the upper limit of normal."],
    "reduced_ef": ["Borderline LV systolic function, EF approximately 50%.", "Low-normal ejection fraction."],
    "lvh": ["Borderline LVH by voltage criteria.", "Borderline QRS voltage."],
    "bradycardia": ["Borderline sinus bradycardia.", "Heart rate at the lower limit of normal."],
    "tachycardia": ["Borderline sinus tachycardia.", "Heart rate at the upper limit of normal."],
}
#: Terse template reports: the first positive finding in this order names the impression.
TERSE_ORDER = ("cardiomegaly", "pleural_effusion", "atrial_fibrillation", "reduced_ef", "lvh", "tachycardia",
               "bradycardia")
TERSE_IMPRESSION = {"cardiomegaly": "Cardiomegaly.", "pleural_effusion": "Pleural effusion.",
                    "atrial_fibrillation": "Atrial fibrillation.", "reduced_ef": "Reduced ejection fraction.",
                    "lvh": "Left ventricular hypertrophy.", "tachycardia": "Tachycardia.",
                    "bradycardia": "Bradycardia.", "none": "No acute cardiopulmonary process."}
_NUMBERS = [re.compile(p) for p in (
    r" \((?:EF approximately|Sokolow-Lyon) [^)]*\)", r",? (?:at|of|is increased at|estimated at) \d+(?:\.\d+)?(?: bpm|%)?",
    r",? EF \d+%", r" \(EF \d+%\)", r"Cardiothoracic ratio \d\.\d+, ", r"LV wall thickness \d+ mm\. ?",
    r"LA \d+ mm\. ?", r", ventricular rate \d+ bpm", r"LVEF \d+%\. ?")]


@dataclass
class ReportStyle:
    """How a report is degraded: topics hedged, findings borderline, numbers / devices dropped."""

    hedged: set[str] = field(default_factory=set)
    uncertain: set[str] = field(default_factory=set)
    drop_numbers: bool = False
    drop_devices: bool = False

    @classmethod
    def draw(cls, quality: dict | None, rng: np.random.Generator | None, uncertain=()) -> "ReportStyle":
        q = quality or {}
        if rng is None or not q:
            return cls(uncertain=set(uncertain))
        hedge, drop = float(q.get("hedge", 0.0)), float(q.get("drop_details", 0.0))
        hedged = {t for t in HEDGED if rng.random() < hedge}
        return cls(hedged=hedged, uncertain=set(uncertain), drop_numbers=bool(rng.random() < drop),
                   drop_devices=bool(rng.random() < drop))


def terse_report(findings: dict[str, int]) -> str:
    """The template report of a study (shared verbatim by every study whose first positive finding is the same)."""
    first = next((k for k in TERSE_ORDER if findings.get(k) == 1), "none")
    return f"FINDINGS: Limited study.\n\nIMPRESSION: {TERSE_IMPRESSION[first]}\n"


def make_report(rng: np.random.Generator, findings: dict[str, int], attrs: dict, *, quality: dict | None = None,
                quality_rng: np.random.Generator | None = None, uncertain=()) -> str:
    """One study's report (``FINDINGS:`` / ``IMPRESSION:``) from its hidden findings (1 / 0) and attributes.

    ``quality``: the text mechanisms (:func:`probmed.data.synthetic.quality.text_mechanisms`), drawn on with
    ``quality_rng``; ``uncertain``: the borderline findings (hedged as such). Without them, the report of before.
    """
    if quality and quality.get("terse"):
        return terse_report(findings)
    style = ReportStyle.draw(quality, quality_rng, uncertain)

    def where() -> str:  # where a positive finding is mentioned
        u = rng.random()
        return "both" if u < 0.5 else ("findings" if u < 0.75 else "impression")

    impression: list[str] = []
    groups = [_heart_and_lungs(rng, findings, attrs, impression, where, style),
              _rhythm(rng, findings, attrs, impression, where, style),
              _lv_function(rng, findings, attrs, impression, where, style)]
    body = [g for g in groups if g]
    order = rng.permutation(len(body))
    findings_text = " ".join(s for i in order for s in body[int(i)])
    if not findings_text:
        findings_text = _pick(rng, ["Unremarkable study.", "No significant abnormality.",
                                    "No acute cardiopulmonary findings."])
    text = f"FINDINGS: {findings_text}\n\nIMPRESSION: {_impression_text(rng, findings, impression, style)}\n"
    if style.drop_numbers:
        for pattern in _NUMBERS:
            text = pattern.sub("", text)
    return text


def _qualified(rng: np.random.Generator, topic: str, style: ReportStyle, impression: list[str],
               borderline_item: str | None = None) -> list[str] | None:
    """The sentences of a borderline or hedged topic (appending ``borderline_item`` to the impression for a
    borderline one), or None when the topic is described as usual."""
    if topic in style.uncertain:
        sentences = [_pick(rng, BORDERLINE[topic])]
        if borderline_item:
            impression.append(borderline_item)
        return sentences
    if topic in style.hedged:
        return [_pick(rng, HEDGED[topic])]
    return None


def _heart_and_lungs(rng, f, attrs, impression: list[str], where, style: ReportStyle) -> list[str]:
    """FINDINGS sentences on heart size, effusion, lungs, left atrium and devices (CXR); appends impressions."""
    ctr = float(attrs["ctr"])
    g: list[str] = []
    qualified = _qualified(rng, "cardiomegaly", style, impression, "Borderline heart size")
    if qualified is not None:
        g.extend(qualified)
    elif f["cardiomegaly"]:
        w = where()
        grade = _heart_grade(ctr)
        phr = _pick(rng, [
            "the cardiac silhouette is enlarged",
            "the heart is enlarged",
            f"{grade} cardiomegaly is present",
            f"the cardiothoracic ratio is increased at {ctr:.2f}",
            f"there is {grade} enlargement of the cardiac silhouette",
        ])
        if w in ("both", "findings"):
            g.append(_cap(phr) + ".")
        if w in ("both", "impression"):
            impression.append(_pick(rng, [f"{_cap(grade)} cardiomegaly", "Enlarged heart", "Cardiomegaly"]))
    elif rng.random() < 0.6:
        g.append(_pick(rng, [
            "Heart size is normal.", "The cardiac silhouette is within normal limits.", "No cardiomegaly.",
            "Normal heart size.", "There is no evidence of cardiomegaly.",
            f"Cardiothoracic ratio {ctr:.2f}, within normal limits.",
        ]))
    qualified = _qualified(rng, "pleural_effusion", style, impression)
    if qualified is not None:
        g.extend(qualified)
    elif f["pleural_effusion"]:
        w = where()
        side, size = attrs.get("effusion_side", "left"), attrs.get("effusion_size", "small")
        phr = _side_phrase(side, size, rng)
        if w in ("both", "findings"):
            g.append(_pick(rng, [f"There is a {phr}.", f"{_cap(phr)} is noted.",
                                 f"Blunting of the costophrenic angle consistent with a {phr}."]))
        if w in ("both", "impression"):
            impression.append(_cap(_pick(rng, [phr, "pleural effusion", "effusion" if side != "bilateral"
                                               else "bilateral effusions"])))
    elif rng.random() < 0.6:
        g.append(_pick(rng, ["No pleural effusion.", "No effusion or pneumothorax.",
                             "The costophrenic angles are sharp.", "There is no pleural effusion.",
                             "No pleural effusion or pneumothorax is seen."]))
    if rng.random() < 0.5:
        g.append(_pick(rng, ["The lungs are clear.", "No focal consolidation.", "Lungs are well expanded.",
                             "No pneumothorax."]))
    if attrs.get("la_enlarged") and rng.random() < 0.85:
        g.append(_pick(rng, ["Double density along the right cardiac border: left atrial enlargement.",
                             "Splayed carina, left atrial enlargement.", "Left atrial enlargement."]))
        if rng.random() < 0.4:
            impression.append("Left atrial enlargement")
    extra_body, extra_impression = _extras(rng, attrs)
    if not style.drop_devices:
        g.extend(extra_body)
        impression.extend(extra_impression)
    return g


def _rate_phrases(rng, f, hr: int, rate_txt: str) -> tuple[str, str]:
    """``(FINDINGS phrase, IMPRESSION item)`` of atrial fibrillation at the study's rate class."""
    if f["tachycardia"]:
        phr = _pick(rng, [f"atrial fibrillation with rapid ventricular response{rate_txt}",
                          f"atrial fibrillation with a fast ventricular rate{rate_txt}",
                          f"irregularly irregular rhythm without P waves, ventricular rate {hr} bpm"])
        return phr, _pick(rng, ["Atrial fibrillation with rapid ventricular response", "Rapid atrial fibrillation"])
    if f["bradycardia"]:
        phr = _pick(rng, [f"atrial fibrillation with slow ventricular response{rate_txt}",
                          f"atrial fibrillation with a slow ventricular rate of {hr} bpm"])
        return phr, _pick(rng, ["Atrial fibrillation with slow ventricular response", "Slow atrial fibrillation"])
    phr = _pick(rng, [f"atrial fibrillation{rate_txt}", f"rate-controlled atrial fibrillation{rate_txt}",
                      "irregularly irregular rhythm with absent P waves, consistent with atrial fibrillation",
                      f"AF with controlled ventricular rate{rate_txt}"])
    return phr, _pick(rng, ["Atrial fibrillation", "Atrial fibrillation, rate controlled", "AF"])


def _rhythm(rng, f, attrs, impression: list[str], where, style: ReportStyle) -> list[str]:
    """FINDINGS sentences on rhythm, rate and QRS voltage (ECG); appends impressions."""
    hr = int(round(float(attrs["heart_rate"])))
    g: list[str] = []
    qualified = _qualified(rng, "rhythm", style, impression)
    if qualified is not None:
        g.extend(qualified)
    else:
        mention_rate = rng.random() < 0.5
        rate_txt = f" at {hr} bpm" if mention_rate else ""
        borderline_rate = style.uncertain & {"bradycardia", "tachycardia"}
        rate_f = {**f, "bradycardia": 0, "tachycardia": 0} if borderline_rate else f
        if borderline_rate:
            g.append(_pick(rng, BORDERLINE[next(iter(borderline_rate))]))
        if f["atrial_fibrillation"]:
            w = where()
            phr, imp = _rate_phrases(rng, rate_f, hr, rate_txt)
            if w in ("both", "findings"):
                g.append(_cap(_pick(rng, ["ECG shows ", "Rhythm: ", "The ECG demonstrates ", ""]) + phr) + ".")
            if w in ("both", "impression"):
                impression.append(imp)
        else:
            g.extend(_sinus_rate(rng, rate_f, attrs, impression, where, hr, rate_txt, bool(borderline_rate)))
    qualified = _qualified(rng, "lvh", style, impression)
    g.extend(qualified if qualified is not None else _lvh_ecg(rng, f, attrs, impression, where))
    return g


#: FINDINGS phrases (``{rate}``: " at N bpm" or "", ``{hr}``: the rate) and IMPRESSION items of a sinus rate class.
_SINUS_RATE = {
    "bradycardia": (("sinus bradycardia{rate}", "sinus rhythm with bradycardia at {hr} bpm", "slow sinus rhythm{rate}"),
                    ("Sinus bradycardia", "Bradycardia")),
    "tachycardia": (("sinus tachycardia{rate}", "sinus rhythm with tachycardia at {hr} bpm", "rapid sinus rhythm{rate}"),
                    ("Sinus tachycardia", "Tachycardia")),
}


def _sinus_rate(rng, f, attrs, impression: list[str], where, hr: int, rate_txt: str, borderline: bool) -> list[str]:
    """FINDINGS sentences of a sinus rhythm's rate class (and the AF / P-mitrale remarks)."""
    g: list[str] = []
    rate = "bradycardia" if f["bradycardia"] else "tachycardia" if f["tachycardia"] else None
    if rate is not None:
        w = where()
        phrases, impressions = _SINUS_RATE[rate]
        phr = _pick(rng, [p.format(rate=rate_txt, hr=hr) for p in phrases])
        if w in ("both", "findings"):
            g.append(_cap(_pick(rng, ["ECG shows ", "Rhythm: ", ""]) + phr) + ".")
        if w in ("both", "impression"):
            impression.append(_pick(rng, impressions))
    elif rng.random() < 0.6 and not borderline:
        g.append(_pick(rng, [f"Normal sinus rhythm{rate_txt}.", f"Sinus rhythm{rate_txt}.",
                             f"ECG: normal sinus rhythm at {hr} bpm.", "Regular sinus rhythm."]))
    if not f["bradycardia"] and not f["tachycardia"] and rng.random() < 0.25 and not borderline:
        g.append(_pick(rng, ["No bradycardia or tachycardia.", "Heart rate within normal limits."]))
    if rng.random() < 0.3:
        g.append("No atrial fibrillation.")
    if attrs.get("la_enlarged") and rng.random() < 0.3:
        g.append(_pick(rng, ["P mitrale.", "Left atrial abnormality."]))
    return g


def _lv_function(rng, f, attrs, impression: list[str], where, style: ReportStyle) -> list[str]:
    """FINDINGS sentences on LV function, wall thickness and the left atrium (echo); appends impressions."""
    ef = int(round(float(attrs["ef"])))
    g: list[str] = []
    qualified = _qualified(rng, "reduced_ef", style, impression, "Borderline LV systolic function")
    if qualified is not None:
        g.extend(qualified)
    elif f["reduced_ef"]:
        w = where()
        grade = "severely" if ef < 30 else "moderately" if ef < 40 else "mildly"
        phr = _pick(rng, [
            f"{grade} reduced left ventricular systolic function, EF {ef}%",
            f"left ventricular ejection fraction is {grade} reduced at {ef}%",
            f"LVEF estimated at {ef}%",
            "global hypokinesis with reduced ejection fraction",
            f"depressed LV systolic function (EF approximately {ef}%)",
        ])
        if w in ("both", "findings"):
            g.append(_cap(phr) + ".")
        if w in ("both", "impression"):
            impression.append(_pick(rng, ["Reduced ejection fraction", "Reduced LV systolic function",
                                          f"Heart failure with reduced ejection fraction (EF {ef}%)",
                                          "LV systolic dysfunction"]))
    elif rng.random() < 0.6:
        g.append(_pick(rng, [f"Normal left ventricular systolic function, EF {ef}%.",
                             "Preserved ejection fraction.", f"LVEF {ef}%.",
                             "Left ventricular size and systolic function are normal.",
                             "No regional wall motion abnormality; normal EF."]))
    wall = float(attrs.get("lv_wall_mm", 9.0))
    if f["lvh"] and rng.random() < 0.4:
        g.append(_pick(rng, [f"LV wall thickness {wall:.0f} mm.", "Concentric LV hypertrophy."]))
    elif not f["lvh"] and rng.random() < 0.1:
        g.append("Normal LV wall thickness.")
    if attrs.get("la_enlarged") and rng.random() < 0.4:
        g.append(_pick(rng, [f"LA {float(attrs.get('la_diameter_mm', 50.0)):.0f} mm.", "Dilated left atrium."]))
    return g


def _impression_text(rng, findings: dict[str, int], impression: list[str], style: ReportStyle) -> str:
    """The IMPRESSION section from its collected items (or a normal / "as above" phrasing)."""
    if impression:
        if len(impression) > 1 and rng.random() < 0.5:
            return "; ".join(impression[:1] + [s[:1].lower() + s[1:] for s in impression[1:]]) + "."
        return " ".join(f"{i + 1}. {s}." for i, s in enumerate(impression)) if len(impression) > 1 \
            else impression[0] + "."
    if any(findings.values()) or style.hedged:
        return _pick(rng, ["As above.", "See findings above.", "Findings as described above."])
    imp_text = _pick(rng, ["No acute cardiopulmonary abnormality.", "Normal study.",
                           "No acute cardiopulmonary process.",
                           "Normal heart size, sinus rhythm and preserved LV function.",
                           "No evidence of cardiomegaly, effusion or arrhythmia."])
    if rng.random() < 0.3:
        imp_text = "Normal study. " + imp_text if not imp_text.startswith("Normal study") else imp_text
    return imp_text
