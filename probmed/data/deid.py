"""De-identification while sharding: salted pseudonyms for ids, and a basic-profile style DICOM header scrub.

* :class:`Pseudonymizer` maps study / patient ids (and DICOM UIDs) to keyed hashes (HMAC-SHA-256 with a secret
  salt). The same salt gives the same pseudonyms, so a dataset can be extended later and studies of one patient stay
  linked; without the salt the mapping cannot be reversed or recomputed. The salt is never written anywhere.
* :func:`deidentify_dicom` removes, at every nesting level, person names (VR PN), dates and times (DA, DT, TM),
  the identifying attributes of :data:`PHI_KEYWORDS` (ids, addresses, institution, device serials, free-text
  comments ...), overlays and curves (graphics that can hold annotation text) and all private tags; it replaces every UID that could link back (study, series, instance, frame of
  reference, and the file meta's instance UID) with a pseudonymous ``2.25.<int>`` UID; it sets PatientIdentityRemoved
  and reports whether the image declares burned-in annotation (text in the pixels cannot be scrubbed from headers).
"""
from __future__ import annotations

import hashlib
import hmac
import io
import os
from dataclasses import dataclass

#: Environment variable holding the de-identification salt when ``--salt`` is not given.
SALT_ENV = "PROBMED_DEID_SALT"

#: Attributes removed wherever they occur (DICOM PS3.15 basic profile style: identifying or free-text fields).
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientID", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation",
    "PatientAge", "PatientSize", "PatientWeight", "MilitaryRank", "BranchOfService", "MedicalRecordLocator",
    "EthnicGroup", "Occupation", "AdditionalPatientHistory", "PatientComments", "PatientReligiousPreference",
    "IssuerOfPatientID", "InsurancePlanIdentification", "CountryOfResidence", "RegionOfResidence",
    "AccessionNumber", "StudyID", "RequestAttributesSequence", "RequestedProcedureID", "ScheduledProcedureStepID",
    "PerformedProcedureStepID", "AdmissionID", "ServiceEpisodeID", "VisitComments", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence", "StationName",
    "DeviceSerialNumber", "DeviceUID", "PlateID", "DetectorID", "GantryID", "CassetteID", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "PhysiciansOfRecordIdentificationSequence",
    "ReferringPhysicianIdentificationSequence", "PerformingPhysicianIdentificationSequence",
    "OperatorIdentificationSequence", "ImageComments", "StudyComments", "InterpretationText",
    "RequestedContrastAgent", "ReasonForStudy", "RequestingService", "CurrentPatientLocation",
    "PatientInstitutionResidence", "ContentCreatorName", "TextValue", "DerivationDescription",
    "StudyDescription", "SeriesDescription", "PerformedProcedureStepDescription", "ProtocolName",
    "ReferencedPatientSequence", "ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence",
    "ReferencedImageSequence", "SourceImageSequence",
)

#: UIDs replaced by pseudonyms (consistently: the same input UID gives the same output UID under one salt).
UID_KEYWORDS: tuple[str, ...] = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "ReferencedSOPInstanceUID",
    "IrradiationEventUID", "SynchronizationFrameOfReferenceUID", "StorageMediaFileSetUID",
)

#: Repeating groups removed whole: curves (50xx) and overlays (60xx), which can carry annotation text as graphics.
OVERLAY_GROUPS: frozenset[int] = frozenset({0x5000, 0x6000})

#: Value representations removed wherever they occur: person names, dates, date-times and times.
PHI_VRS: frozenset[str] = frozenset({"PN", "DA", "DT", "TM"})


class Pseudonymizer:
    """Keyed hashes of identifiers. ``salt`` must be a non-empty secret (from the CLI or :data:`SALT_ENV`)."""

    def __init__(self, salt: str | None = None):
        salt = salt if salt is not None else os.environ.get(SALT_ENV, "")
        if not salt:
            raise ValueError(f"a de-identification salt is required: pass --salt or set ${SALT_ENV} "
                             "(keep it secret and reuse it to extend the dataset consistently)")
        self._key = salt.encode("utf-8")

    def digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\0{value}".encode("utf-8"), hashlib.sha256).digest()

    def id(self, kind: str, value: str, length: int = 16) -> str:
        """``kind``-scoped pseudonym of ``value``: ``length`` hex characters, no dot or slash (a valid shard key)."""
        return self.digest(kind, value).hex()[:length]

    def uid(self, value: str) -> str:
        """A pseudonymous DICOM UID (``2.25.`` + a 128-bit integer, at most 64 characters)."""
        return "2.25." + str(int.from_bytes(self.digest("uid", value)[:16], "big"))


@dataclass
class DeidReport:
    """What :func:`deidentify_dicom` did to one file."""

    removed: int = 0
    uids_replaced: int = 0
    burned_in_annotation: bool = False


def _scrub(ds, pseudo: Pseudonymizer, report: DeidReport) -> None:
    """Remove PHI from one dataset level and recurse into sequences."""
    ds.remove_private_tags()
    for elem in list(ds):
        if elem.keyword in PHI_KEYWORDS or elem.VR in PHI_VRS or (elem.tag.group & 0xFF00) in OVERLAY_GROUPS:
            del ds[elem.tag]
            report.removed += 1
        elif elem.keyword in UID_KEYWORDS and elem.value:
            elem.value = pseudo.uid(str(elem.value))
            report.uids_replaced += 1
        elif elem.VR == "SQ":
            for item in elem.value:
                _scrub(item, pseudo, report)


def deidentify_dicom(data: bytes, pseudo: Pseudonymizer, patient_pseudonym: str) -> tuple[bytes, DeidReport]:
    """Scrub one DICOM file (bytes in, bytes out; the pixel data and transfer syntax are kept as they are).

    PatientName and PatientID are set to ``patient_pseudonym``; see the module docstring for what is removed.
    """
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    report = DeidReport(burned_in_annotation=str(ds.get("BurnedInAnnotation", "")).upper() == "YES")
    _scrub(ds, pseudo, report)
    meta = ds.file_meta
    if "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = pseudo.uid(str(meta.MediaStorageSOPInstanceUID))
    for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle", "ReceivingApplicationEntityTitle",
                    "PrivateInformationCreatorUID", "PrivateInformation"):
        if keyword in meta:
            del meta[keyword]
    ds.PatientName = patient_pseudonym
    ds.PatientID = patient_pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "ProbMed basic profile: PN DA DT TM, ids, private tags removed"
    ds.preamble = b"\0" * 128
    out = io.BytesIO()
    try:
        ds.save_as(out, enforce_file_format=True)
    except (AttributeError, ValueError):  # a file without complete file meta is written as it came (no meta)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
    return out.getvalue(), report


def strip_image_metadata(data: bytes, ext: str) -> bytes:
    """PNG / JPEG bytes without metadata that could carry PHI (EXIF, XMP, comments, text chunks).

    PNG is re-encoded losslessly by Pillow from its pixels only. JPEG keeps its compressed data bit for bit: only
    the APP1–APP13, APP15 and COM segments before the first scan are dropped (APP0 JFIF and APP14 Adobe stay:
    decoders need them for the colour transform).
    """
    if ext.lower() == "png":
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            img.load()
            out = io.BytesIO()
            Image.frombytes(img.mode, img.size, img.tobytes()).save(out, format="PNG")
            return out.getvalue()
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file (no SOI marker)")
    out, pos = bytearray(data[:2]), 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the rest is image data
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos : pos + 2 + length]
        if not (0xE1 <= marker <= 0xED or marker in (0xEF, 0xFE)):
            out += segment
        pos += 2 + length
    out += data[pos:]
    return bytes(out)
