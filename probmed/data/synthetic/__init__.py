"""The embedded demo corpus: studies whose CXR, ECG, echo and report share hidden clinical findings.

``generate_corpus(out_dir, n_studies, seed, ...)`` writes webdataset shards in the layout of
:mod:`probmed.data.schema`; ``probmed data synth`` is its command line (:mod:`probmed.data.commands`).

Modules: :mod:`.plan` (patients, findings, continuous attributes, splits, dummy PHI), :mod:`.cxr` (phantom +
DICOM), :mod:`.ecg` (neurokit2 ECGSYN beat bank + per-study assembly, AF), :mod:`.echo` (beating LV cine),
:mod:`.report` (FINDINGS / IMPRESSION text), :mod:`.quality` (per-study, per-modality ambiguity and its rendering,
borderline studies), :mod:`.corpus` (orchestration, workers, shard writing).
"""
from probmed.data.synthetic.corpus import DEFAULT_MISSING, RenderConfig, generate_corpus, render_study, study_meta
from probmed.data.synthetic.plan import StudyPlan, fake_patient_phi, fake_study_phi, plan_corpus

__all__ = [
    "DEFAULT_MISSING",
    "RenderConfig",
    "StudyPlan",
    "fake_patient_phi",
    "fake_study_phi",
    "generate_corpus",
    "plan_corpus",
    "render_study",
    "study_meta",
]
