"""What the evaluation computes, as data in the YAML (``model.evaluation``).

Every block says at which stages it runs (``val``, ``test``); the expensive ones run at ``test`` only by default.
Example::

    model:
      evaluation:
        untrained_similarity: cosine
        zero_shot: {stages: [val, test]}
        few_shot: {ks: [1, 5, 10, 0], features: mean_var}
        corruptions:
          - {modality: cxr, kind: noise, severities: [1, 2, 3]}
          - {modality: ecg, kind: lead_dropout, severities: [1, 3]}
        prognosis: {label: reduced_ef, subsets: [[cxr, ecg, echo], [ecg]]}

The label names are the dataset's (``labels.json``, :mod:`probmed.data.labels`), handed over by the datamodule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

#: Corpus label the prognosis head predicts when none is configured.
DEFAULT_PROGNOSIS_LABEL = "reduced_ef"

#: Default prompt ensembles for the findings of the embedded corpus (phrasings in the style of its reports).
DEFAULT_PROMPTS: dict[str, dict[str, list[str]]] = {
    "cardiomegaly": {
        "positive": ["The cardiac silhouette is enlarged.", "Cardiomegaly is present.", "Enlarged heart."],
        "negative": ["Heart size is normal.", "No cardiomegaly.", "The cardiac silhouette is within normal limits."],
    },
    "pleural_effusion": {
        "positive": ["Small left pleural effusion.", "Moderate bilateral pleural effusions.", "Pleural effusion."],
        "negative": ["No pleural effusion.", "The costophrenic angles are sharp.", "No effusion."],
    },
    "atrial_fibrillation": {
        "positive": ["Atrial fibrillation.", "Irregularly irregular rhythm without P waves.", "Rhythm is atrial fibrillation."],
        "negative": ["Normal sinus rhythm.", "Regular rhythm with P waves.", "Sinus rhythm."],
    },
    "bradycardia": {
        "positive": ["Sinus bradycardia.", "Slow heart rate of 45 bpm.", "Bradycardia."],
        "negative": ["Normal heart rate.", "Heart rate of 75 bpm.", "No bradycardia."],
    },
    "tachycardia": {
        "positive": ["Sinus tachycardia.", "Fast heart rate of 120 bpm.", "Tachycardia."],
        "negative": ["Normal heart rate.", "Heart rate of 70 bpm.", "No tachycardia."],
    },
    "reduced_ef": {
        "positive": ["Reduced left ventricular ejection fraction.", "Ejection fraction of 30 %.", "Systolic dysfunction."],
        "negative": ["Normal left ventricular systolic function.", "Ejection fraction of 60 %.", "Normal ejection fraction."],
    },
    "lvh": {
        "positive": ["Left ventricular hypertrophy.", "LVH by voltage criteria.", "LVH with strain."],
        "negative": ["No LVH.", "Normal QRS voltage.", "Normal LV wall thickness."],
    },
}

#: The label space of each modality of the embedded corpus: the findings its own signal defines (the film shows
#: heart size and effusion; rhythm, rate and LVH are ECG findings; the ejection fraction is measured on the echo).
DEFAULT_LABEL_SPACES: dict[str, list[str]] = {
    "cxr": ["cardiomegaly", "pleural_effusion"],
    "ecg": ["atrial_fibrillation", "bradycardia", "tachycardia", "lvh"],
    "echo": ["reduced_ef"],
}

Stage = Literal["val", "test"]


@dataclass
class ZeroShotConfig:
    """Zero-shot classification of findings from text prompts.

    Args:
        prompts: label → ``{"positive": [...], "negative": [...]}``; labels not in the data's label vocabulary are
            a configuration error. Each set is an ensemble: a study's score against a set is the mean similarity
            to its prompts. ``None`` (and no ``prompt_files``): the shipped prompt sets matched to the data's labels
            (:mod:`probmed.evaluation.prompts`).
        prompt_files: prompt sets to use, by shipped name (``chexpert14``, ``ptbxl_superclasses``, ``corpus``) or
            YAML path; ``prompts`` override their entries.
        temperature: multiplies ``s_pos − s_neg`` before the sigmoid that gives P(finding); ``None`` takes the
            scoring term's own logit scale (so ECE measures the model's own calibration).
        stages: when to run.
        modality: the modality whose tower and input pipeline embed the prompts (the report text).
    """

    prompts: Optional[dict[str, dict[str, list[str]]]] = None
    prompt_files: list[str] = field(default_factory=list)
    temperature: Optional[float] = None
    stages: list[Stage] = field(default_factory=lambda: ["val", "test"])
    modality: str = "text"


@dataclass
class CrossModalZeroShotConfig:
    """Cross-modal zero-shot (MEDBind): queries of one modality classified on another modality's label space
    (:mod:`probmed.evaluation.crossmodal`), with the ``zero_shot`` block's prompts, temperature and text modality
    (its defaults when that block is off).

    Args:
        label_spaces: modality → the findings of its label space (each must be a label of the data).
        pairs: ``[query, target]`` pairs: ``query`` embeddings scored against ``target``'s findings' prompts.
        exclusive: drop findings that are also in the query's own label space.
        stages: when to run.
    """

    label_spaces: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_LABEL_SPACES.items()})
    pairs: list[list[str]] = field(default_factory=lambda: [["cxr", "ecg"], ["ecg", "cxr"]])
    exclusive: bool = False
    stages: list[Stage] = field(default_factory=lambda: ["val", "test"])


@dataclass
class FewShotConfig:
    """Linear probes on frozen embeddings (logistic regression, scikit-learn, deterministic).

    Studies are split by a hash of their id into a support pool (``support_fraction``) and an evaluation half;
    a k-shot probe draws k positives and k negatives from the pool (``0`` = the whole pool).

    Args:
        ks: shots per class; 0 means all.
        features: ``mean`` or ``mean_var`` (mean and log-variance side by side).
        repeats: draws per k (averaged) for k > 0.
        seed: seeds the draws.
        stages: when to run.
    """

    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 0])
    features: Literal["mean", "mean_var"] = "mean"
    repeats: int = 3
    support_fraction: float = 0.5
    seed: int = 0
    stages: list[Stage] = field(default_factory=lambda: ["test"])


@dataclass
class CorruptionConfig:
    """One test-time corruption (the kinds per modality are in :mod:`probmed.data.registry`).

    Args:
        modality: the modality to corrupt.
        kind: the corruption (e.g. ``noise``, ``lead_dropout``).
        severities: severities to evaluate (0 = clean).
        like: for a modality added in the config alone (e.g. ``ct``), the registered modality whose corruptions
            apply (e.g. ``cxr``: the same image layout).
    """

    modality: str
    kind: str
    severities: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0])
    like: Optional[str] = None


@dataclass
class PrognosisConfig:
    """A small head on precision-weighted fused embeddings predicting a study-level label.

    Args:
        label: the name of the label (one of the data's labels) to predict; ``None``: the corpus's ``reduced_ef``
            when the data has it, else prognosis is skipped with a note (real datasets name their outcome).
        subsets: the modality subsets to fuse; a study takes part with whichever modalities of the subset it has.
        stages: when to run.
    """

    label: Optional[str] = None
    subsets: list[list[str]] = field(default_factory=lambda: [["cxr", "ecg", "echo"]])
    seed: int = 0
    support_fraction: float = 0.5
    stages: list[Stage] = field(default_factory=lambda: ["test"])


@dataclass
class EvaluationConfig:
    """All of evaluation. ``None`` for a block switches it off.

    Args:
        cross_zero_shot: cross-modal zero-shot (off by default; :class:`CrossModalZeroShotConfig`).
        untrained_similarity: similarity for pairs no loss term contrasts (``hellinger``, ``bhattacharyya``,
            ``csd``, ``medprob``, ``cosine``); ``None`` uses the first contrastive term's.
        uncertainty: risk–coverage / AURC / selective R@1 / Spearman at these stages.
        coverages: coverages (fractions) for selective R@1.
        plots: stages at which figures go to TensorBoard and PNG (``<log_dir>/plots/<stage>/``).
        projector: stages at which the TensorBoard embedding projector gets the embeddings with their labels.
        projector_max: studies per modality in the projector.
    """

    untrained_similarity: Optional[str] = None
    zero_shot: Optional[ZeroShotConfig] = field(default_factory=ZeroShotConfig)
    cross_zero_shot: Optional[CrossModalZeroShotConfig] = None
    few_shot: Optional[FewShotConfig] = field(default_factory=FewShotConfig)
    uncertainty: list[Stage] = field(default_factory=lambda: ["val", "test"])
    coverages: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.0])
    corruptions: list[CorruptionConfig] = field(default_factory=list)
    prognosis: Optional[PrognosisConfig] = field(default_factory=PrognosisConfig)
    plots: list[Stage] = field(default_factory=lambda: ["val", "test"])
    projector: list[Stage] = field(default_factory=lambda: ["test"])
    projector_max: int = 1000
