"""Is a DICOM file what the manifest column claims? SOP Class and Modality checks per modality.

A CT slice handed in as a chest film decodes fine and trains silently; these checks refuse it with a counted cause
(``cxr_wrong_modality``, ``echo_wrong_modality``, ``ecg_wrong_modality``, ``ct_wrong_modality``) naming what the
header says it is.

A file is accepted when its SOP Class UID is one of the modality's own storage classes (:data:`ACCEPTED`) — or a
Secondary Capture whose Modality is one of the modality's codes (or, for chest films, whose BodyPartExamined is
CHEST) — and its Modality attribute, when present, does not contradict that (a DX SOP class labelled ``CT`` is
refused). A file with neither attribute (no file meta, a bare data set) is judged by Modality alone and refused when
it has none: nothing in it says it is a chest film.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydicom import uid

from probmed.data.readers.errors import UnreadableInput

#: Secondary Capture storage classes: accepted only when Modality (or, for CXR, the body part) says what they show.
SECONDARY_CAPTURE: frozenset[str] = frozenset({
    uid.SecondaryCaptureImageStorage, uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage, uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
})


@dataclass(frozen=True)
class Accepts:
    """What a modality accepts: its storage SOP classes, its Modality codes, and the body parts that make a
    Secondary Capture acceptable without a Modality code (empty: none)."""

    sop_classes: frozenset[str]
    modalities: frozenset[str]
    sc_body_parts: frozenset[str] = frozenset()


#: Modality name → what its DICOM files must be.
ACCEPTED: dict[str, Accepts] = {
    "cxr": Accepts(
        frozenset({uid.ComputedRadiographyImageStorage, uid.DigitalXRayImageStorageForPresentation,
                   uid.DigitalXRayImageStorageForProcessing}),
        frozenset({"CR", "DX"}), frozenset({"CHEST"})),
    "echo": Accepts(
        frozenset({uid.UltrasoundImageStorage, uid.UltrasoundMultiFrameImageStorage,
                   "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3"}),  # retired US (multi-frame) storage
        frozenset({"US"})),
    "ecg": Accepts(
        frozenset({uid.TwelveLeadECGWaveformStorage, uid.GeneralECGWaveformStorage,
                   uid.General32bitECGWaveformStorage, uid.AmbulatoryECGWaveformStorage}),
        frozenset({"ECG"})),
    "ct": Accepts(frozenset({uid.CTImageStorage, uid.EnhancedCTImageStorage}), frozenset({"CT"})),
}


def _describe(sop: str, modality: str, body_part: str) -> str:
    name = uid.UID(sop).name if sop else "no SOP Class UID"
    return f"Modality {modality or 'absent'!r}, SOP Class {name!r}" + (f", body part {body_part!r}" if body_part else "")


def check_identity(ds, modality: str) -> None:
    """Raise unless the data set ``ds`` is a file of ``modality`` (a key of :data:`ACCEPTED`).

    Raises:
        UnreadableInput: ``<modality>_wrong_modality`` naming the Modality, SOP Class and body part found.
    """
    rule = ACCEPTED[modality]
    sop = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
              or "")
    code = str(ds.get("Modality", "") or "").strip().upper()
    body = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if sop in rule.sop_classes:
        ok = not code or code in rule.modalities
    elif sop in SECONDARY_CAPTURE:
        ok = code in rule.modalities or body in rule.sc_body_parts
    else:
        ok = not sop and code in rule.modalities
    if not ok:
        expected = " or ".join(sorted(rule.modalities))
        raise UnreadableInput(f"{modality}_wrong_modality", f"found {_describe(sop, code, body)}; the {modality!r} "
                                                            f"column takes DICOM files of Modality {expected}")
