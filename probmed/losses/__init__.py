"""ProbMed losses: pairwise Gaussian similarities, contrastive terms, regularisers and the gathered objective.

Configure from YAML (LightningCLI / jsonargparse)::

    objective:
      class_path: probmed.losses.Objective
      init_args:
        terms:
          - class_path: probmed.losses.ProbabilisticInfoNCE
            init_args: {modalities: [text, cxr], weight: 1.0, similarity: hellinger}
          - class_path: probmed.losses.SyntheticSampling
            init_args: {modality: cxr, weight: 0.1, num_samples: 4}
          - class_path: probmed.losses.VIB
            init_args: {modalities: [cxr, ecg, echo, text], weight: 1.0e-4}

Terms: :class:`ProbabilisticInfoNCE` (ProbMED; CLIP with ``similarity: cosine``), :class:`EdgeModalityContrastive`
(MEDBind EMCL), :class:`SigLIP`, :class:`PCMEpp`, :class:`MedProbCLIP`, :class:`SyntheticSampling`, :class:`VIB`,
:class:`TextSpaceAlignment` (M3Bind stage 1), :class:`DifficultyVariance` (a variance that predicts how hard an
input is to match).
"""
from probmed.losses.base import LossContext, LossTerm
from probmed.losses.contrastive import (
    EdgeModalityContrastive,
    LogitScale,
    MedProbCLIP,
    PCMEpp,
    ProbabilisticInfoNCE,
    SigLIP,
)
from probmed.losses.difficulty import DifficultyVariance
from probmed.losses.objective import LossOutput, Objective, TermOver, gather_embeddings
from probmed.losses.regularizers import VIB, SyntheticSampling, TextSpaceAlignment, kl_to_standard_normal

__all__ = [
    "DifficultyVariance",
    "EdgeModalityContrastive",
    "LogitScale",
    "LossContext",
    "LossOutput",
    "LossTerm",
    "MedProbCLIP",
    "Objective",
    "PCMEpp",
    "ProbabilisticInfoNCE",
    "SigLIP",
    "SyntheticSampling",
    "TermOver",
    "TextSpaceAlignment",
    "VIB",
    "gather_embeddings",
    "kl_to_standard_normal",
]
