"""The hidden clinical ground truth of the synthetic corpus: patients, studies, findings and attributes.

Everything here is decided in the main process from the corpus seed, before any signal is rendered, so the
corpus is the same whatever the number of worker processes. Each study is then rendered from its own
``StudyPlan`` with random generators seeded by ``(seed, study index, modality)``.

Generative model (per patient, then per study):

* patient: sex, age, a latent "cardiac disease" propensity and chronic states — cardiomegaly (p≈0.3, ↑ with
  age), reduced EF (p≈0.55 with cardiomegaly, ≈0.1 without), atrial fibrillation (p≈0.15, ↑ with
  cardiomegaly / reduced EF) — plus patient-level signal traits (ECG morphology mix and lead gains, body habitus,
  LV shape) that make studies of one patient look alike;
* study: each chronic state persists with p≈0.85-0.9 (else flips), pleural effusion (p≈0.1, ↑ with reduced EF
  and cardiomegaly), rate class: bradycardia / tachycardia are mutually exclusive; AF is tachycardic (rapid
  ventricular response) about half the time; reduced EF makes tachycardia likelier;
* continuous attributes consistent with the labels, with a gap around each clinical threshold so labels are
  learnable: heart rate (brady 38-57, normal 62-97, tachy 104-150 bpm), cardiothoracic ratio (normal
  0.38-0.48, cardiomegaly 0.53-0.66), EF (normal 55-72 %, reduced 20-42 %), effusion side and size — except the
  10 % *borderline* studies (:mod:`.quality`), one of whose attributes sits on its threshold with a -1 label;
* cardiac structure shared by the film, the ECG, the cine and the report (what links CXR and ECG, as in real
  studies). Each patient carries two uniform latents ``u_lvh``, ``u_lae``; a study has the state when its latent
  falls below the study's probability, so a patient's studies agree unless the findings behind them changed:

  - **LV hypertrophy** (label ``lvh``, defined on the ECG): P = 0.08 + 0.08·age + 0.57·[cardiomegaly], i.e.
    ≈ 0.70 with cardiomegaly and ≈ 0.12 without (prevalence ≈ 0.3). ECG: Sokolow-Lyon voltage
    SV1 + max(RV5, RV6) ``sokolow_lyon_mv`` 3.8-5.6 mV with LVH, 1.5-3.2 mV without (criterion: > 3.5 mV),
    from a patient-level voltage trait plus study jitter; lateral strain (down-sloping ST depression and T
    inversion in I, aVL, V5, V6; ``lv_strain``) in 60 % of LVH studies. Echo: end-diastolic wall thickness
    ``lv_wall_mm`` 12.5-17 mm with LVH, 7-10.5 mm without. CXR: through the cardiomegaly it goes with;
  - **left-atrial enlargement** (attribute ``la_enlarged``, not a label): P = 0.75 with atrial fibrillation, else
    0.05 + 0.1·[cardiomegaly] + 0.1·[reduced EF] + 0.05·[LVH] (prevalence ≈ 0.2). LA diameter ``la_diameter_mm``
    44-58 mm enlarged, 28-39 mm not. CXR: a double density behind the right heart border that bulges past it,
    a left-atrial-appendage convexity straightening the upper left heart border, a splayed carina (wider angle
    between the main bronchi); on the lateral a posterior bulge of the upper heart border. ECG in sinus rhythm:
    P mitrale (a notched, broad P in the limb leads and a deep terminal negative P in V1). Echo: a larger LA;
* the study-level draws of this structure use their own generator (``[seed, 10, study index]``), so the other
  findings and attributes of every study are those of the corpus without it;
* radiographic extras that only the CXR and its report share, as in real reports ("median sternotomy wires",
  "right IJ line", "calcified granuloma in the left upper lobe"): per patient, sternotomy wires (p≈0.12, ↑ with
  cardiomegaly) and a calcified granuloma in one of four lobes (p≈0.25); per study, a central venous catheter
  (right internal jugular / left subclavian, p≈0.2), ECG monitoring leads (p≈0.35) and a nasogastric tube
  (p≈0.1). They are not labels; they make a study's film and report identifiable beyond its findings class.

About 30 % of studies come out with no finding ("normal"). Each study's modalities get an ambiguity and its quality
mechanisms (:func:`.quality.study_quality`, generators of their own), unless ``plan_corpus(..., ambiguity=False)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from probmed.data.schema import FINDINGS, SPLITS
from probmed.data.synthetic.quality import borderline_finding, place_on_threshold, study_quality
from probmed.data.synthetic.seeds import MODALITY_CODE

#: The corpus's own modalities, in the order their presence is drawn from the study's plan generator (fixed: a
#: modality added here would shift every later draw and change the corpus).
CORPUS_MODALITIES: tuple[str, ...] = ("cxr", "ecg", "echo", "text")
#: Opt-in modalities (``probmed data synth --extra-modalities``) → default missing fraction. Their presence is
#: drawn from a generator of their own (``[seed, 11, study index, code]``) and they are rendered from theirs, so
#: asking for them leaves every byte of the corpus's own modalities as it was.
EXTRA_MODALITIES: dict[str, float] = {"ct": 0.2}

EFFUSION_SIDES = ("left", "right", "bilateral")
EFFUSION_SIZES = ("small", "moderate", "large")
GRANULOMA_LOBES = ("right upper", "left upper", "right lower", "left lower")
CENTRAL_LINES = ("right internal jugular", "left subclavian")


@dataclass
class StudyPlan:
    """Everything needed to render one study (picklable; sent to worker processes)."""

    index: int
    study_id: str
    patient_id: str
    patient_index: int
    split: str
    findings: dict[str, int]
    attributes: dict[str, Any]
    present: dict[str, bool]
    cxr_views: list[str]
    cxr_photometric: list[str]
    cxr_bits: int
    patient_traits: dict[str, Any] = field(default_factory=dict)
    phi: dict[str, str] = field(default_factory=dict)
    #: modality → ambiguity in [0, 1], for the modalities the study has (:mod:`.quality`)
    ambiguity: dict[str, float] = field(default_factory=dict)
    #: modality → the quality mechanisms' strengths (:mod:`.quality`)
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: findings whose label is uncertain (-1): the study is borderline on them (``findings`` keeps the hidden state)
    uncertain: list[str] = field(default_factory=list)

    def labels(self) -> dict[str, int]:
        """The findings as written into the shard: 1 / 0, and -1 for a borderline (uncertain) finding."""
        return {k: (-1 if k in self.uncertain else int(v)) for k, v in self.findings.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def study_rng(seed: int, index: int, modality: str) -> np.random.Generator:
    """The random generator of one study's modality: depends on (seed, study index, modality) only."""
    return np.random.default_rng([int(seed), 2, int(index), MODALITY_CODE[modality]])


# --------------------------------------------------------------------------------------------------------
# fake identities (dummy PHI written into the DICOM headers; never real people)
# --------------------------------------------------------------------------------------------------------
_FAKE_FAMILY = (
    "TESTPATIENT", "PHANTOM", "SYNTHETIC", "DEMOCASE", "FAKEPERSON", "DUMMY", "MOCKUP", "SAMPLECASE",
)
_FAKE_GIVEN = ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL", "INDIA", "JULIET")
_FAKE_DOCTORS = ("DR^SYNTH^A", "DR^PHANTOM^B", "DR^DEMO^C", "DR^FAKE^D")
FAKE_INSTITUTION = "ProbMed Synthetic Hospital"
FAKE_STATION = "PMSYNTH01"


def fake_patient_phi(seed: int, patient_index: int) -> dict[str, str]:
    """Deterministic dummy identity of a synthetic patient (name, MRN, birth date, ...).

    Obviously fake by construction (family names like ``TESTPATIENT``); used to exercise de-identification.
    """
    rng = np.random.default_rng([int(seed), 7, int(patient_index)])
    family = _FAKE_FAMILY[int(rng.integers(len(_FAKE_FAMILY)))]
    given = _FAKE_GIVEN[int(rng.integers(len(_FAKE_GIVEN)))]
    mrn = f"MRN{int(rng.integers(10**7, 10**8)):08d}"
    year = int(rng.integers(1935, 2000))
    month = int(rng.integers(1, 13))
    day = int(rng.integers(1, 29))
    return {
        "PatientName": f"{family}^{given}^{patient_index:05d}",
        "PatientID": mrn,
        "PatientBirthDate": f"{year:04d}{month:02d}{day:02d}",
        "ReferringPhysicianName": _FAKE_DOCTORS[int(rng.integers(len(_FAKE_DOCTORS)))],
        "InstitutionName": FAKE_INSTITUTION,
    }


def fake_study_phi(seed: int, study_index: int, birth_date: str) -> dict[str, str]:
    """Deterministic dummy study identifiers (accession number, study date/time, patient age)."""
    rng = np.random.default_rng([int(seed), 8, int(study_index)])
    year = int(rng.integers(2015, 2025))
    month = int(rng.integers(1, 13))
    day = int(rng.integers(1, 29))
    age = max(18, year - int(birth_date[:4]))
    return {
        "AccessionNumber": f"ACC{int(rng.integers(10**8, 10**9)):09d}",
        "StudyDate": f"{year:04d}{month:02d}{day:02d}",
        "StudyTime": f"{int(rng.integers(7, 20)):02d}{int(rng.integers(0, 60)):02d}00",
        "PatientAge": f"{age:03d}Y",
        "OperatorsName": "TECH^SYNTHETIC",
        "StationName": FAKE_STATION,
    }


# --------------------------------------------------------------------------------------------------------
# findings and attributes
# --------------------------------------------------------------------------------------------------------
def _patient_state(rng: np.random.Generator) -> dict[str, Any]:
    sex = "F" if rng.random() < 0.5 else "M"
    age_factor = rng.random()  # stands in for age in the risks below
    cm = rng.random() < 0.22 + 0.2 * age_factor
    ref = rng.random() < (0.55 if cm else 0.1)
    af = rng.random() < 0.07 + 0.1 * age_factor + 0.08 * cm + 0.05 * ref
    traits = {
        # ECG: morphology = mix of two bank variants, lead gains (axis), QRS timing is in the bank
        "ecg_variant_mix": float(rng.random()),
        "ecg_gain_I": float(rng.uniform(0.6, 1.35)),
        "ecg_gain_II": float(rng.uniform(0.7, 1.3)),
        "ecg_gain_V": [float(g) for g in rng.uniform(0.7, 1.3, size=6)],
        "ecg_hr_offset": float(rng.normal(0.0, 4.0)),
        # CXR body habitus
        "cxr_thorax_width": float(rng.uniform(0.72, 0.84)),
        "cxr_lung_height": float(rng.uniform(0.55, 0.68)),
        "cxr_heart_height": float(rng.uniform(0.9, 1.1)),
        "cxr_brightness": float(rng.uniform(0.9, 1.1)),
        # echo LV geometry
        "echo_lv_aspect": float(rng.uniform(0.85, 1.15)),
        "echo_tilt": float(rng.uniform(-0.12, 0.12)),
    }
    # permanent radiographic extras (drawn last so the draws above are those of earlier corpus versions)
    sternotomy = bool(rng.random() < 0.08 + 0.12 * cm)
    granuloma = GRANULOMA_LOBES[int(rng.integers(4))] if rng.random() < 0.25 else "none"
    traits |= {"cxr_sternotomy": sternotomy, "cxr_granuloma": granuloma}
    # cardiac-structure latents and the ECG voltage trait (drawn last, for the same reason)
    traits |= {"u_lvh": float(rng.random()), "u_lae": float(rng.random()), "ecg_voltage": float(rng.random())}
    return {"sex": sex, "age_factor": float(age_factor), "cm": bool(cm), "ref": bool(ref), "af": bool(af),
            "traits": traits}


def _study_findings(rng: np.random.Generator, pstate: dict[str, Any]) -> dict[str, int]:
    def persist(value: bool, p_keep: float, p_new: float) -> bool:
        return bool(rng.random() < p_keep) if value else bool(rng.random() < p_new)

    cm = persist(pstate["cm"], 0.9, 0.03)
    ref = persist(pstate["ref"], 0.88, 0.04 + 0.15 * cm)
    af = persist(pstate["af"], 0.85, 0.02)
    eff = rng.random() < 0.11 + 0.22 * ref + 0.1 * cm
    if af:
        p_tachy, p_brady = 0.5, 0.08
    else:
        p_tachy, p_brady = 0.13 + 0.12 * ref + 0.05 * eff, 0.13
    u = rng.random()
    tachy = u < p_tachy
    brady = (not tachy) and u < p_tachy + p_brady
    values = {
        "lvh": pstate["traits"]["u_lvh"] < p_lvh(cm, pstate["age_factor"]),
        "cardiomegaly": cm,
        "pleural_effusion": eff,
        "atrial_fibrillation": af,
        "bradycardia": brady,
        "tachycardia": tachy,
        "reduced_ef": ref,
    }
    return {name: int(values[name]) for name in FINDINGS}


def p_lvh(cardiomegaly: bool, age_factor: float) -> float:
    """P(LV hypertrophy) of a study: ≈ 0.70 with cardiomegaly, ≈ 0.12 without."""
    return 0.08 + 0.08 * age_factor + 0.57 * bool(cardiomegaly)


def p_lae(f: dict[str, int]) -> float:
    """P(left-atrial enlargement) of a study: 0.75 with atrial fibrillation, else 0.05-0.3."""
    if f["atrial_fibrillation"]:
        return 0.75
    return 0.05 + 0.1 * f["cardiomegaly"] + 0.1 * f["reduced_ef"] + 0.05 * f["lvh"]


def _study_structure(rng: np.random.Generator, f: dict[str, int], pstate: dict[str, Any]) -> dict[str, Any]:
    """LV wall, LA size and ECG voltage of one study (its own generator: the other draws stay as they were)."""
    traits = pstate["traits"]
    lae = traits["u_lae"] < p_lae(f)
    voltage = float(np.clip(traits["ecg_voltage"] + rng.normal(0.0, 0.06), 0.0, 1.0))
    if f["lvh"]:
        sokolow_lyon = 3.8 + 1.8 * voltage
        wall = rng.uniform(12.5, 17.0)
    else:
        sokolow_lyon = 1.5 + 1.7 * voltage
        wall = rng.uniform(7.0, 10.5)
    la = rng.uniform(44.0, 58.0) if lae else rng.uniform(28.0, 39.0)
    strain = bool(f["lvh"]) and bool(rng.random() < 0.6)
    return {
        "sokolow_lyon_mv": round(float(sokolow_lyon), 3),
        "lv_strain": strain,
        "lv_wall_mm": round(float(wall), 1),
        "la_enlarged": bool(lae),
        "la_diameter_mm": round(float(la), 1),
    }


def _study_attributes(rng: np.random.Generator, f: dict[str, int], pstate: dict[str, Any]) -> dict[str, Any]:
    traits = pstate["traits"]
    if f["bradycardia"]:
        hr = rng.uniform(38.0, 57.0)
    elif f["tachycardia"]:
        hr = rng.uniform(104.0, 150.0)
    else:
        hr = float(np.clip(rng.uniform(62.0, 97.0) + 0.5 * traits["ecg_hr_offset"], 62.0, 97.0))
    ctr = rng.uniform(0.53, 0.66) if f["cardiomegaly"] else rng.uniform(0.38, 0.48)
    ef = rng.uniform(20.0, 42.0) if f["reduced_ef"] else rng.uniform(55.0, 72.0)
    if f["pleural_effusion"]:
        side = EFFUSION_SIDES[int(rng.choice(3, p=[0.35, 0.3, 0.35]))]
        size = EFFUSION_SIZES[int(rng.choice(3, p=[0.5, 0.35, 0.15]))]
    else:
        side, size = "none", "none"
    # LV end-diastolic size follows the heart size (dilated LV with cardiomegaly, more so with reduced EF)
    lv_scale = 1.0 + 1.6 * (ctr - 0.44) + (0.08 if f["reduced_ef"] else 0.0) + rng.normal(0, 0.03)
    return {
        "heart_rate": round(float(hr), 1),
        "rhythm": "atrial_fibrillation" if f["atrial_fibrillation"] else "sinus",
        "ctr": round(float(ctr), 3),
        "ef": round(float(ef), 1),
        "effusion_side": side,
        "effusion_size": size,
        "lv_scale": round(float(lv_scale), 3),
        "sex": pstate["sex"],
    }


def _study_devices(rng: np.random.Generator, pstate: dict[str, Any]) -> dict[str, Any]:
    """The CXR-visible extras of one study: the patient's permanent ones plus lines, leads and tubes."""
    traits = pstate["traits"]
    line = CENTRAL_LINES[int(rng.integers(2))] if rng.random() < 0.2 else "none"
    return {
        "sternotomy": traits["cxr_sternotomy"],
        "granuloma": traits["cxr_granuloma"],
        "central_line": line,
        "ecg_leads": bool(rng.random() < 0.35),
        "ng_tube": bool(rng.random() < 0.1),
    }


def _borderline(seed: int, index: int, findings: dict[str, int], attrs: dict[str, Any]
                ) -> tuple[dict[str, Any], list[str]]:
    """``(attributes, uncertain findings)``: a borderline study's attribute moved onto its threshold
    (:func:`.quality.borderline_finding`), the others unchanged."""
    finding = borderline_finding(seed, index, findings)
    if finding is None:
        return attrs, []
    return place_on_threshold(seed, index, finding, attrs), [finding]


def _split_patients(n_patients: int, studies_per_patient: list[int], fractions: tuple[float, ...],
                    rng: np.random.Generator) -> list[str]:
    """Assign whole patients to splits so that the study counts follow ``fractions``."""
    fr = np.asarray(fractions, dtype=float)
    fr = fr / fr.sum()
    total = sum(studies_per_patient)
    targets = fr * total
    order = rng.permutation(n_patients)
    split_of = [""] * n_patients
    counts = np.zeros(len(fr))
    # guarantee one patient per split with a positive fraction (when there are enough patients)
    wanted = [i for i in range(len(fr)) if fr[i] > 0]
    pos = 0
    if n_patients >= len(wanted):
        for i in wanted:
            p = int(order[pos])
            pos += 1
            split_of[p] = SPLITS[i]
            counts[i] += studies_per_patient[p]
    for p in order[pos:]:
        p = int(p)
        deficit = targets - counts
        i = int(np.argmax(deficit))
        split_of[p] = SPLITS[i]
        counts[i] += studies_per_patient[p]
    return split_of


def _check_options(n_studies: int, splits: tuple[float, ...], extra_modalities: tuple[str, ...],
                   missing: dict[str, float] | None) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, float]]:
    """Validate :func:`plan_corpus`'s options: ``(extra modalities without repeats, every modality of the corpus,
    modality → missing fraction with the defaults filled in)``."""
    if n_studies < 1:
        raise ValueError("n_studies must be >= 1")
    if len(splits) != len(SPLITS):
        raise ValueError(f"splits needs {len(SPLITS)} fractions (train, val, test)")
    unknown = sorted(set(extra_modalities) - set(EXTRA_MODALITIES))
    if unknown:
        raise ValueError(f"unknown extra modalities {unknown} (known: {sorted(EXTRA_MODALITIES)})")
    extras = tuple(dict.fromkeys(extra_modalities))
    known = (*CORPUS_MODALITIES, *extras)
    missing = {m: 0.0 for m in CORPUS_MODALITIES} | {m: EXTRA_MODALITIES[m] for m in extras} | dict(missing or {})
    for m in missing:
        if m not in known:
            raise ValueError(f"unknown modality {m!r} in missing (known: {known}; an extra one must be asked for)")
    return extras, known, missing


def _studies_per_patient(n_studies: int, rng: np.random.Generator) -> list[int]:
    """Patients with 1-3 studies each (the last one trimmed) until there are ``n_studies`` studies."""
    counts: list[int] = []
    while sum(counts) < n_studies:
        counts.append(int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])))
    counts[-1] -= sum(counts) - n_studies
    return counts


def _study_presence(srng: np.random.Generator, seed: int, index: int, missing: dict[str, float],
                    extras: tuple[str, ...]) -> dict[str, bool]:
    """Which modalities a study has: the corpus's own from the study's plan generator (at least one), each extra
    one from a generator of its own (``[seed, 11, study index, code]``)."""
    present = {m: bool(srng.random() >= missing[m]) for m in CORPUS_MODALITIES}
    if not any(present.values()):  # a study carries at least one modality
        present[CORPUS_MODALITIES[int(srng.integers(len(CORPUS_MODALITIES)))]] = True
    for m in extras:
        present[m] = bool(np.random.default_rng([int(seed), 11, index, MODALITY_CODE[m]]).random() >= missing[m])
    return present


def _cxr_acquisition(srng: np.random.Generator, lateral_fraction: float) -> tuple[list[str], list[str], int]:
    """``(views, photometric interpretation per view, bits stored)`` of a study's chest film."""
    views = ["PA"] + (["LATERAL"] if srng.random() < lateral_fraction else [])
    photometric = ["MONOCHROME1" if srng.random() < 0.4 else "MONOCHROME2" for _ in views]
    bits = 12 if srng.random() < 0.6 else 16
    return views, photometric, bits


def plan_corpus(
    n_studies: int,
    seed: int,
    *,
    missing: dict[str, float] | None = None,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    lateral_fraction: float = 0.3,
    extra_modalities: tuple[str, ...] = (),
    ambiguity: bool = True,
) -> list[StudyPlan]:
    """Decide the hidden truth of every study (no rendering). Deterministic in (n_studies, seed, options); the
    ``extra_modalities`` (keys of :data:`EXTRA_MODALITIES`) only add their own presence flags. ``ambiguity``: draw
    each study's quality and the borderline studies (:mod:`.quality`); False leaves every study clean."""
    extras, known, missing = _check_options(n_studies, splits, extra_modalities, missing)

    rng = np.random.default_rng([int(seed), 1])
    counts = _studies_per_patient(n_studies, rng)
    n_patients = len(counts)
    split_of = _split_patients(n_patients, counts, tuple(splits), rng)

    plans: list[StudyPlan] = []
    index = 0
    for p in range(n_patients):
        prng = np.random.default_rng([int(seed), 3, p])
        pstate = _patient_state(prng)
        phi_p = fake_patient_phi(seed, p)
        for _ in range(counts[p]):
            srng = np.random.default_rng([int(seed), 4, index])
            findings = _study_findings(srng, pstate)
            attrs = _study_attributes(srng, findings, pstate)
            present = _study_presence(srng, seed, index, missing, extras)
            views, photometric, bits = _cxr_acquisition(srng, lateral_fraction)
            attrs |= _study_devices(srng, pstate)
            attrs |= _study_structure(np.random.default_rng([int(seed), 10, index]), findings, pstate)
            phi = phi_p | fake_study_phi(seed, index, phi_p["PatientBirthDate"]) | {"PatientSex": pstate["sex"]}
            attrs, uncertain = _borderline(seed, index, findings, attrs) if ambiguity else (attrs, [])
            amb, quality = study_quality(seed, index, [m for m in known if present[m]]) if ambiguity else ({}, {})
            if "cxr" in quality and quality["cxr"]["projection"] == "AP":
                views = ["AP"] + views[1:]  # a portable film: anteroposterior instead of posteroanterior
            plans.append(
                StudyPlan(
                    index=index,
                    study_id=f"s{index:07d}",
                    patient_id=f"p{p:06d}",
                    patient_index=p,
                    split=split_of[p],
                    findings=findings,
                    attributes=attrs,
                    present=present,
                    cxr_views=views if present["cxr"] else [],
                    cxr_photometric=photometric if present["cxr"] else [],
                    cxr_bits=bits,
                    patient_traits=pstate["traits"],
                    phi=phi,
                    ambiguity=amb,
                    quality=quality,
                    uncertain=uncertain,
                )
            )
            index += 1
    return plans
