"""De-identification while sharding: salted pseudonyms for ids, and a basic-profile style DICOM header scrub.

* :class:`Pseudonymizer` maps study / patient ids (and DICOM UIDs) to keyed hashes (HMAC-SHA-256 with a secret
  salt). The same salt gives the same pseudonyms, so a dataset can be extended later and studies of one patient stay
  linked; without the salt the mapping cannot be reversed or recomputed. The salt is never written anywhere.
* :func:`deidentify_dicom` removes, at every nesting level, person names (VR PN), dates and times (DA, DT, TM),
  the identifying attributes of :data:`PHI_KEYWORDS` (ids, addresses, institution, device serials, free-text
  comments ...), overlays and curves (graphics that can hold annotation text) and all private tags; it replaces every UID that could link back (study, series, instance, frame of
  reference, and the file meta's instance UID) with a pseudonymous ``2.25.<int>`` UID; it sets PatientIdentityRemoved
  and reports whether the image declares burned-in annotation (text in the pixels cannot be scrubbed from headers).
  Finally every top-level attribute outside the allowlist :data:`KEPT_ATTRIBUTES` is removed, so an attribute the
  DICOM PS3.15 Basic Profile removes cannot survive by being missing from the blocklists, and the items of the kept
  sequences lose every free-text value (a ``CodeMeaning`` typed by an operator, an ``LUTExplanation``).

The allowlist was chosen over a maintained blocklist library (``deid``'s recipes, ``dicognito``): those implement
the profile's per-attribute actions for every IOD, while the shards need ~60 attributes to decode a radiograph;
keeping only those is shorter to audit and removes attributes a future standard adds without a code change.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
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

#: The only top-level attributes a built DICOM keeps, each with why (checked against the DICOM PS3.15 Basic
#: Application Level Confidentiality Profile, Table E.1-1): everything else — including attributes the profile
#: removes that the blocklists above do not name (TimezoneOffsetFromUTC, PostprocessingFunction, Manufacturer's
#: model and software names, acquisition parameters ...) — is removed. Nested items of kept sequences (view codes,
#: LUT tables, region geometry) lose every free-text value at any depth (:func:`_scrub_kept_items`).
KEPT_ATTRIBUTES: dict[str, str] = {
    **{k: "identifies the kind of file: the readers refuse a CT or MR given as a chest film"
       for k in ("SOPClassUID", "Modality", "BodyPartExamined", "ImageType", "PresentationIntentType")},
    **{k: "replaced by a salted pseudonymous UID (Basic Profile action U)"
       for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")},
    **{k: "replaced by the patient pseudonym (Basic Profile action Z/D)" for k in ("PatientName", "PatientID")},
    **{k: "states the de-identification (Basic Profile: required when identity is removed)"
       for k in ("PatientIdentityRemoved", "DeidentificationMethod", "BurnedInAnnotation")},
    **{k: "the view the loader and MedProbCLIP's view pairs use; no identifier"
       for k in ("ViewPosition", "ViewCodeSequence", "PatientOrientation", "ImageLaterality", "Laterality")},
    **{k: "image pixel module: needed to decode the pixels"
       for k in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
                 "HighBit", "PixelRepresentation", "PlanarConfiguration", "PixelData", "NumberOfFrames",
                 "FrameIncrementPointer", "PixelAspectRatio", "SmallestImagePixelValue", "LargestImagePixelValue",
                 "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
                 "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
                 "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
                 "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
                 "SpecificCharacterSet")},
    **{k: "grey-level transforms the reader applies (modality LUT, VOI window / LUT, presentation LUT)"
       for k in ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter",
                 "WindowWidth", "VOILUTFunction", "VOILUTSequence", "PresentationLUTShape",
                 "PixelIntensityRelationship", "PixelIntensityRelationshipSign")},
    **{k: "pixel geometry (mm per pixel) and cine timing; no identifier"
       for k in ("PixelSpacing", "ImagerPixelSpacing", "FrameTime", "FrameTimeVector", "CineRate",
                 "RecommendedDisplayFrameRate", "SequenceOfUltrasoundRegions")},
}


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


def _keep_only_allowed(ds, report: DeidReport) -> None:
    """Remove every top-level attribute not in :data:`KEPT_ATTRIBUTES` (the allowlist after the blocklists)."""
    for elem in list(ds):
        if elem.keyword not in KEPT_ATTRIBUTES:
            del ds[elem.tag]
            report.removed += 1


#: Value representations of free text, removed from the items of kept sequences (a ``CodeMeaning`` or an
#: ``LUTExplanation`` can hold anything a modality operator typed).
TEXT_VRS: frozenset[str] = frozenset({"LO", "LT", "ST", "UT", "SH", "UC", "UR", "PN", "AE", "AS"})
#: Text attributes kept inside those items: coded values only, and only when they look like a code.
NESTED_CODES: frozenset[str] = frozenset({"CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion",
                                          "ModalityLUTType"})
_CODE = re.compile(r"^[A-Za-z0-9._:-]{1,16}$")


def _scrub_kept_items(ds, report: DeidReport) -> None:
    """In every item of a kept sequence (view codes and their modifiers, LUTs, ultrasound regions), at any depth:
    remove free text (:data:`TEXT_VRS`) but the coded values of :data:`NESTED_CODES` that look like a code."""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _scrub_kept_items(item, report)
        elif elem.VR in TEXT_VRS and not (elem.keyword in NESTED_CODES and _CODE.match(str(elem.value or ""))):
            del ds[elem.tag]
            report.removed += 1


def deidentify_dicom(data: bytes, pseudo: Pseudonymizer, patient_pseudonym: str) -> tuple[bytes, DeidReport]:
    """Scrub one DICOM file (bytes in, bytes out; the pixel data and transfer syntax are kept as they are).

    PatientName and PatientID are set to ``patient_pseudonym``; see the module docstring for what is removed, and
    :data:`KEPT_ATTRIBUTES` for the only attributes left (with why).
    """
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    report = DeidReport(burned_in_annotation=str(ds.get("BurnedInAnnotation", "")).upper() == "YES")
    _scrub(ds, pseudo, report)
    _keep_only_allowed(ds, report)
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _scrub_kept_items(item, report)
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


#: JPEG quality of a re-encoded radiograph (4:4:4, no chroma subsampling): visually lossless for a grey film.
JPEG_QUALITY = 95


def strip_image_metadata(data: bytes, ext: str) -> bytes:
    """PNG / JPEG bytes without anything but pixels: both are decoded and re-encoded by Pillow from their pixels
    only, so no EXIF, XMP, ICC, text chunk, comment segment — also one hidden between the scans of a progressive
    JPEG — and no byte after the end-of-image marker survives. PNG is re-encoded losslessly; JPEG at
    :data:`JPEG_QUALITY` (deterministic: the same input gives the same bytes).
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if ext.lower() != "png" and img.format != "JPEG":
            raise ValueError(f"not a JPEG file ({img.format})")
        img.load()
        pixels = Image.frombytes(img.mode, img.size, img.tobytes())
    out = io.BytesIO()
    if ext.lower() == "png":
        pixels.save(out, format="PNG")
    else:
        pixels.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False, progressive=False)
    return out.getvalue()


# -- report text -----------------------------------------------------------------------------------------------------
#: Header attributes whose values identify the study or patient and may be quoted in its report (besides every
#: person name and date, which are taken whatever their attribute).
TEXT_IDENTIFIER_KEYWORDS: tuple[str, ...] = (
    "PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "IssuerOfPatientID", "MedicalRecordLocator",
    "AdmissionID", "RequestedProcedureID", "InstitutionName", "InstitutionAddress", "PatientAddress",
    "PatientTelephoneNumbers", "StationName", "DeviceSerialNumber", *UID_KEYWORDS,
)
#: ECG XML elements (GE MUSE, GE CardioSoft; local names) holding the patient's names and ids.
XML_IDENTIFIER_TAGS: frozenset[str] = frozenset({
    "PatientID", "PatientLastName", "PatientFirstName", "LastName", "FirstName", "FamilyName", "GivenName",
    "DateofBirth", "DateOfBirth", "BirthDateTime", "AcquisitionDate",
})
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


def date_forms(value: str) -> set[str]:
    """A DICOM date ``YYYYMMDD`` as reports write it: ``2024-02-29``, ``02/29/2024``, ``29/02/2024``,
    ``29.02.2024``, ``2/29/2024``, ``February 29, 2024``, ``29 February 2024`` (and as given)."""
    text = str(value).strip()[:8]
    if len(text) != 8 or not text.isdigit() or not 1 <= int(text[4:6]) <= 12:
        return {text} if len(text) >= 6 else set()
    y, m, d = text[:4], text[4:6], text[6:8]
    month = _MONTHS[int(m) - 1]
    return {text, f"{y}-{m}-{d}", f"{m}/{d}/{y}", f"{d}/{m}/{y}", f"{d}.{m}.{y}", f"{int(m)}/{int(d)}/{y}",
            f"{month} {int(d)}, {y}", f"{int(d)} {month} {y}"}


def name_forms(value: str) -> set[str]:
    """A DICOM person name ``Family^Given^Middle`` → the full name in both orders and each part of ≥ 3 letters."""
    parts = [p.strip() for p in str(value).replace("=", "^").split("^") if p.strip()]
    words = {w for p in parts for w in p.replace(",", " ").split() if len(w) >= 3}
    full = {" ".join(parts), " ".join(reversed(parts[:2])), ", ".join(parts[:2])} if parts else set()
    return {f for f in full if len(f) >= 3} | words


def dicom_identifiers(path) -> set[str]:
    """Identifying values in one DICOM header (names, dates, ids, UIDs), without reading the pixels (a deflated file
    is first checked not to inflate past the file limit, :func:`probmed.data.limits.dicom_header`)."""
    import pydicom

    from probmed.data.limits import dicom_header

    ds = dicom_header(path, "cxr_corrupt_dicom")
    found: set[str] = set()
    for elem in ds.iterall():
        values = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) else [elem.value]
        for value in values:
            if value in (None, "") or elem.VR == "SQ":
                continue
            if elem.VR == "PN":
                found |= name_forms(str(value))
            elif elem.VR in ("DA", "DT"):
                found |= date_forms(str(value))
            elif elem.keyword in TEXT_IDENTIFIER_KEYWORDS and len(str(value).strip()) >= 3:
                found.add(str(value).strip())
    return found


def xml_identifiers(path) -> set[str]:
    """Patient names and ids in an ECG XML export (:data:`XML_IDENTIFIER_TAGS`)."""
    from probmed.data.readers import safe_xml

    found: set[str] = set()
    for element in safe_xml.parse_file(path, "ecg").iter():
        text = (element.text or "").strip()
        if element.tag.rsplit("}", 1)[-1] in XML_IDENTIFIER_TAGS and len(text) >= 3:
            found |= date_forms(text.replace("-", "")) if text.replace("-", "").isdigit() else {text}
    return found


def study_identifiers(entry) -> set[str]:
    """Every identifying value the builder knows for one manifest study: its source study and patient ids, and the
    names, dates, ids and UIDs in the headers of its DICOM files and ECG XML exports. Unreadable files add
    nothing (the modality's converter reports them)."""
    found = {v for v in (entry.study_id, entry.patient_id) if len(v) >= 3}
    for paths in entry.paths.values():
        for path in paths:
            reader = {".dcm": dicom_identifiers, ".xml": xml_identifiers}.get(path.suffix.lower())
            try:
                found |= reader(path) if reader is not None else set()
            except Exception:  # a damaged header: nothing to harvest, the conversion reports the file
                continue
    return found


def scrub_text(text: str, identifiers: set[str], mask: str = "___") -> tuple[str, int]:
    """Replace every occurrence of each identifier (case-insensitive, not inside a longer word or number, longest
    first) with ``mask`` — MIMIC's convention. Returns ``(text, replacements)``."""
    import re

    values = sorted({i for i in identifiers if i.strip()}, key=len, reverse=True)
    if not values:
        return text, 0
    pattern = re.compile("(?<![0-9A-Za-z])(?:" + "|".join(re.escape(v) for v in values) + ")(?![0-9A-Za-z])",
                         re.IGNORECASE)
    return pattern.subn(mask, text)


_MONTH_NAMES = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
                r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
#: Identifier forms a report can hold that no header or manifest names (issue 28), each replaced by ``___`` whatever
#: its value: dates (numeric with / - . and 2- or 4-digit years, month names with or without an ordinal, either
#: order), times of day, phone numbers, US social security numbers, digit groups joined by a hyphen (ids such as
#: ``1234-5678``), runs of 6+ digits (record numbers), a street address (number, capitalised words, a street
#: suffix) and the name after a title (``Dr. Jones`` → ``Dr. ___``). Measurements (``3.5 cm``, ``12 mm``), years
#: alone and ordinary numbers are not touched.
IDENTIFIER_PATTERNS: tuple[tuple[str, str], ...] = (
    ("date", r"\b\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})\b"),
    ("date", r"\b\d{4}[/.-]\d{1,2}[/.-]\d{1,2}\b"),
    ("date", rf"\b{_MONTH_NAMES}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"),
    ("date", rf"\b\d{{1,2}}(?:st|nd|rd|th)?[\s-]+(?:of\s+)?{_MONTH_NAMES}[\s,-]+\d{{2,4}}\b"),
    ("time", r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s*[AaPp]\.?[Mm]\b)?(?![\d:])"),
    ("phone", r"(?<!\w)(?:\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b"),
    ("ssn", r"\b\d{3}-\d{2}-\d{4}\b"),
    ("id", r"\b\d{3,}(?:-\d{3,})+\b"),
    ("id", r"\b\d{6,}\b"),
    ("address", r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Way|Lane|Ln|Drive|"
                r"Boulevard|Blvd|Court|Ct|Place|Pl|Terrace|Parkway|Highway)\b\.?"),
    ("name", r"\b(?P<keep>(?:Dr|Mr|Ms|Mrs|Prof)\.?\s+)[A-Z][A-Za-z'-]+(?:\s+[A-Z][A-Za-z'-]+)?"),
)
_IDENTIFIER_RES = tuple(re.compile(pattern) for _, pattern in IDENTIFIER_PATTERNS)


def scrub_identifier_forms(text: str, mask: str = "___") -> tuple[str, int]:
    """Replace every match of :data:`IDENTIFIER_PATTERNS` with ``mask``; returns ``(text, replacements)``."""
    total = 0
    for pattern in _IDENTIFIER_RES:  # a ``keep`` group (the title before a name) stays
        text, n = pattern.subn(lambda m: (m.groupdict().get("keep") or "") + mask, text)
        total += n
    return text, total


# -- burned-in text in ultrasound pixels -----------------------------------------------------------------------------
#: How ultrasound pixels outside the image are blanked: ``sector`` (keep only the imaging region: the header's
#: Sequence of Ultrasound Regions, else the pixels that change over the cine), ``header`` (blank the top band where
#: scanners print name, id and date), ``none``.
US_BLANKING: tuple[str, ...] = ("sector", "header", "none")
#: Fraction of the frame height blanked by ``header``.
HEADER_BAND = 0.12


def ultrasound_regions(ds) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` (inclusive pixel bounds) of each region in the header's SequenceOfUltrasoundRegions."""
    regions = []
    for item in ds.get("SequenceOfUltrasoundRegions", []) or []:
        try:
            regions.append((int(item.RegionLocationMinX0), int(item.RegionLocationMinY0),
                            int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)))
        except AttributeError:
            continue
    return regions


def moving_region(cine, threshold: float = 1.0):
    """``bool [H, W]``: the imaging sector of a grey cine ``uint8 [frames, H, W]`` — the largest connected region
    of pixels whose grey level changes over time (std > ``threshold`` levels), holes filled and closed by a few
    pixels. Burned-in text and markers do not move; the sector does. None for a single frame."""
    import numpy as np
    from scipy import ndimage

    if cine.shape[0] < 2:
        return None
    total = np.zeros(cine.shape[1:], np.float64)
    squares = np.zeros(cine.shape[1:], np.float64)
    for start in range(0, cine.shape[0], 8):  # per-pixel variance over blocks of frames: no float copy of the cine
        block = cine[start : start + 8].astype(np.float64)
        total += block.sum(axis=0)
        squares += np.square(block).sum(axis=0)
    variance = squares / cine.shape[0] - np.square(total / cine.shape[0])
    moving = variance > threshold**2
    moving = ndimage.binary_closing(moving, iterations=3)
    labels, count = ndimage.label(moving)
    if count == 0:
        return None
    largest = 1 + int(np.argmax(ndimage.sum(moving, labels, index=range(1, count + 1))))
    return ndimage.binary_fill_holes(labels == largest)


def blank_outside(cine, mode: str, regions: list[tuple[int, int, int, int]] = ()):
    """Zero a grey cine ``uint8 [frames, H, W]`` outside its imaging area (in place; see :data:`US_BLANKING`).

    Returns:
        the mask kept (``bool [H, W]``), or None when ``mode`` is ``sector`` and no sector could be found (a single
        frame without region geometry): then nothing is blanked and the caller decides.
    """
    import numpy as np

    if mode not in US_BLANKING:
        raise ValueError(f"ultrasound blanking must be one of {US_BLANKING}, got {mode!r}")
    height, width = cine.shape[1:]
    keep = np.ones((height, width), dtype=bool)
    if mode == "header":
        keep[: int(round(HEADER_BAND * height))] = False
    elif mode == "sector":
        if regions:
            keep[:] = False
            for x0, y0, x1, y1 in regions:
                keep[max(0, y0) : y1 + 1, max(0, x0) : x1 + 1] = True
        else:
            keep = moving_region(cine)
            if keep is None:
                return None
    cine[:, ~keep] = 0
    return keep
