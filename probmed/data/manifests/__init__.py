"""Manifest makers for public dataset layouts: a dataset root as downloaded → the manifest CSV of
:mod:`probmed.data.manifest`. One file per dataset, registered in :data:`MAKERS` by its CLI name.

Every maker has the signature ``make(root, out, **options) -> (manifest path, number of studies)``.
"""
from probmed.data.manifests.echonet import make_echonet_manifest
from probmed.data.manifests.mimic_cxr import make_mimic_cxr_manifest
from probmed.data.manifests.mimic_ecg import make_mimic_ecg_manifest
from probmed.data.manifests.mimic_iv_echo import make_mimic_iv_echo_manifest
from probmed.data.manifests.mimic_iv_note import make_mimic_iv_note_manifest
from probmed.data.manifests.ptbxl import make_ptbxl_manifest

MAKERS = {
    "mimic-cxr": make_mimic_cxr_manifest,
    "mimic-iv-ecg": make_mimic_ecg_manifest,
    "mimic-iv-echo": make_mimic_iv_echo_manifest,
    "mimic-iv-note": make_mimic_iv_note_manifest,
    "ptb-xl": make_ptbxl_manifest,
    "echonet-dynamic": make_echonet_manifest,
}

__all__ = ["MAKERS", "make_echonet_manifest", "make_mimic_cxr_manifest", "make_mimic_ecg_manifest",
           "make_mimic_iv_echo_manifest", "make_mimic_iv_note_manifest", "make_ptbxl_manifest"]
