"""ECG source formats → one :class:`EcgRecord` (millivolts, named leads, sampling rate), then the standard layout.

One reader per format, registered by file suffix in :data:`ECG_SOURCE_READERS`:

* ``.dcm`` — DICOM 12-lead / general ECG waveform (pydicom ``waveform_array``; channel labels from the channel
  source code meanings, units from the channel sensitivity units),
* ``.hea`` — WFDB record (header + signal files beside it; the ``wfdb`` package),
* ``.xml`` — the vendor format is detected from the document's root element first (:data:`ECG_XML_FORMATS`), so
  a file of an unsupported vendor is refused as ``ecg_unsupported_format`` naming the vendor, never mistaken for a
  corrupt file of another one:

  - GE MUSE ``RestingECG`` export (base64 little-endian int16 per lead, ``LeadAmplitudeUnitsPerBit`` in
    microvolts; MUSE stores I, II, V1–V6 and the limb leads III, aVR, aVL, aVF follow from Einthoven's and
    Goldberger's relations, which the reader applies when they are absent),
  - HL7 aECG (``AnnotatedECG``, the FDA's format; :func:`read_ecg_hl7_aecg`),
  - GE CardioSoft / CASE ``CardiologyXML`` (:func:`read_ecg_cardiosoft_xml`),
  - Philips PageWriter / TraceMaster ``restingecgdata`` and Schiller ``examdescript``: recognised, not decoded.

:func:`standardize_ecg` puts any record into a configured lead order and sampling rate and returns a lead mask:
a lead the file lacks is zero in the signal **and** ``False`` in the mask, never silently zero-filled.
These readers run when shards are built (paths on the user's disk); the loader reads the stored ``ecg.npy``.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from probmed.data.readers.ecg import resample_ecg
from probmed.data.limits import DEFAULT_LIMITS, Limits, check_ecg_dims
from probmed.data.readers import safe_xml
from probmed.data.readers.errors import UnreadableInput
from probmed.data.readers.identity import check_identity
from probmed.data.readers.plausibility import check_ecg
from probmed.data.schema import ECG_LEADS

#: Physical unit (as written in DICOM / WFDB / MUSE files, lower-cased) → factor to millivolts.
UNIT_TO_MV: dict[str, float] = {"uv": 1e-3, "µv": 1e-3, "microvolts": 1e-3, "mv": 1.0, "millivolts": 1.0,
                                "v": 1e3, "volts": 1e3}


@dataclass
class EcgRecord:
    """A decoded ECG: ``signal`` ``float32 [leads, samples]`` in millivolts, ``leads`` canonical names
    (see :func:`canonical_lead`), ``rate`` in Hz."""

    signal: np.ndarray
    leads: list[str]
    rate: float


_CANONICAL = {name.upper(): name for name in ECG_LEADS}


def canonical_lead(label: str) -> str:
    """``"Lead I (Einthoven)"`` → ``"I"``, ``"AVR"`` → ``"aVR"``, ``"v1"`` → ``"V1"``; unknown labels are kept as
    written (stripped)."""
    text = label.strip()
    if text.lower().startswith("lead "):
        text = text[5:]
    text = text.split("(")[0].strip()
    return _CANONICAL.get(text.upper(), text)


def _to_mv(unit: str) -> float:
    factor = UNIT_TO_MV.get(unit.strip().lower())
    if factor is None:
        raise UnreadableInput("ecg_unknown_units", f"unit {unit!r} (known: {sorted(UNIT_TO_MV)})")
    return factor


def _checked(record: EcgRecord) -> EcgRecord:
    if record.signal.ndim != 2 or record.signal.shape[0] != len(record.leads):
        raise UnreadableInput("ecg_unreadable", f"signal {record.signal.shape} for {len(record.leads)} lead names")
    if record.signal.shape[1] == 0:
        raise UnreadableInput("ecg_empty", "no samples")
    if not np.all(np.isfinite(record.signal)):
        raise UnreadableInput("ecg_nonfinite", "NaN or inf samples")
    if not record.rate or record.rate <= 0:
        raise UnreadableInput("ecg_no_sampling_rate", f"sampling rate {record.rate!r}")
    check_ecg_rate(record.rate)
    check_ecg(record.signal)  # physiological bounds, as at load time: absurd records never reach a shard
    return record


#: Sampling rates a real electrocardiograph records at (Hz): below, the QRS is not resolved; above, no device.
ECG_RATE_RANGE = (50.0, 20000.0)


def check_ecg_rate(rate: float) -> None:
    """Refuse a physically impossible ECG sampling rate (outside :data:`ECG_RATE_RANGE`) as
    ``ecg_implausible_rate``: a file declaring 1e6 Hz would otherwise become 99.9 % zeros after resampling."""
    low, high = ECG_RATE_RANGE
    if not (np.isfinite(rate) and low <= rate <= high):
        raise UnreadableInput("ecg_implausible_rate", f"sampling rate {rate!r} Hz (accepted {low:g}-{high:g} Hz)")


def _check_ecg_size(leads: int, samples: int, rate: float, limits: Limits) -> None:
    """The declared leads and samples per lead against the limits, before any sample is read."""
    check_ecg_rate(rate)
    check_ecg_dims(leads, samples, limits)


def read_ecg_dicom(path: str | Path, group: str = "RHYTHM", limits: Limits = DEFAULT_LIMITS) -> EcgRecord:
    """A DICOM ECG waveform: the multiplex group labelled ``group`` (else the first one), in millivolts.

    pydicom's ``waveform_array`` applies channel sensitivity, correction factor and baseline; the result is in
    each channel's ChannelSensitivityUnits, converted here to millivolts. A file that is not an ECG waveform
    (SOP Class / Modality, :mod:`probmed.data.readers.identity`) is refused as ``ecg_wrong_modality``.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise UnreadableInput("ecg_unreadable", f"{type(exc).__name__}: {exc}") from exc
    check_identity(ds, "ecg")
    groups = ds.get("WaveformSequence")
    if not groups:
        raise UnreadableInput("ecg_unreadable", "ECG waveform file without a WaveformSequence")
    labels = [str(g.get("MultiplexGroupLabel", "")).upper() for g in groups]
    index = labels.index(group.upper()) if group.upper() in labels else 0
    channels = groups[index].ChannelDefinitionSequence
    for channel in channels:  # a negative or zero sensitivity inverts or erases the lead: impossible, refused
        sensitivity = channel.get("ChannelSensitivity")
        if sensitivity is not None and str(sensitivity).strip() != "" and not float(sensitivity) > 0:
            raise UnreadableInput("ecg_implausible_sensitivity", f"ChannelSensitivity {sensitivity}")
    try:
        _check_ecg_size(int(groups[index].get("NumberOfWaveformChannels", 0) or 0),
                        int(groups[index].get("NumberOfWaveformSamples", 0) or 0),
                        float(groups[index].get("SamplingFrequency", 0) or 0), limits)
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, UnreadableInput):
            raise
        raise UnreadableInput("ecg_unreadable", f"waveform header: {type(exc).__name__}: {exc}") from exc
    try:
        values = ds.waveform_array(index).T.astype(np.float64)  # [channels, samples]
    except Exception as exc:
        raise UnreadableInput("ecg_unreadable", f"{type(exc).__name__}: {exc}") from exc
    leads, scale = [], []
    for channel in channels:
        source = channel.ChannelSourceSequence[0]
        leads.append(canonical_lead(str(source.get("CodeMeaning", "") or source.get("CodeValue", ""))))
        units = channel.get("ChannelSensitivityUnitsSequence")
        scale.append(_to_mv(str(units[0].CodeValue)) if units else 1e-3)
    signal = (values * np.asarray(scale)[:, None]).astype(np.float32)
    return _checked(EcgRecord(signal, leads, float(groups[index].SamplingFrequency)))


def read_ecg_wfdb(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> EcgRecord:
    """A WFDB record (``path`` is the ``.hea`` file or the record name without extension), in millivolts."""
    import wfdb

    record_name = str(Path(path).with_suffix("")) if str(path).endswith(".hea") else str(path)
    try:
        header = wfdb.rdheader(record_name)
    except Exception as exc:
        raise UnreadableInput("ecg_unreadable", f"{type(exc).__name__}: {exc}") from exc
    _check_ecg_size(int(header.n_sig or 0), int(header.sig_len or 0), float(header.fs or 0), limits)
    try:
        record = wfdb.rdrecord(record_name)
    except Exception as exc:
        raise UnreadableInput("ecg_unreadable", f"{type(exc).__name__}: {exc}") from exc
    if record.p_signal is None:
        raise UnreadableInput("ecg_unreadable", "WFDB record has no physical signal")
    scale = np.asarray([_to_mv(u or "mV") for u in record.units])
    signal = (record.p_signal.T * scale[:, None]).astype(np.float32)
    return _checked(EcgRecord(signal, [canonical_lead(n) for n in record.sig_name], float(record.fs)))


def _derive_limb_leads(leads: dict[str, np.ndarray]) -> None:
    """Add III, aVR, aVL, aVF from I and II where absent (Einthoven: III = II − I; Goldberger:
    aVR = −(I + II)/2, aVL = I − II/2, aVF = II − I/2)."""
    if "I" not in leads or "II" not in leads:
        return
    one, two = leads["I"], leads["II"]
    derived = {"III": two - one, "aVR": -(one + two) / 2, "aVL": one - two / 2, "aVF": two - one / 2}
    for name, values in derived.items():
        leads.setdefault(name, values)


def read_ecg_muse_xml(path: str | Path, waveform_type: str = "Rhythm") -> EcgRecord:
    """A GE MUSE ``RestingECG`` XML export: the ``<Waveform>`` whose ``<WaveformType>`` is ``waveform_type``.

    Each ``<LeadData>`` holds ``<LeadID>``, ``<LeadAmplitudeUnitsPerBit>`` (µV per count),
    ``<LeadAmplitudeUnits>`` and ``<WaveFormData>`` (base64 of little-endian int16 samples); the rate is the
    waveform's ``<SampleBase>`` (Hz).
    """
    root = _parse_xml(path)
    waveforms = [w for w in root.iter("Waveform") if (w.findtext("WaveformType") or "").strip() == waveform_type]
    if not waveforms:
        raise UnreadableInput("ecg_unreadable", f"no <Waveform> of type {waveform_type!r}")
    waveform = waveforms[0]
    leads: dict[str, np.ndarray] = {}
    try:
        rate = float(waveform.findtext("SampleBase"))
        for lead in waveform.iter("LeadData"):
            counts = np.frombuffer(base64.b64decode(lead.findtext("WaveFormData") or ""), dtype="<i2")
            per_bit = float(lead.findtext("LeadAmplitudeUnitsPerBit") or 1.0)
            unit = _to_mv(lead.findtext("LeadAmplitudeUnits") or "MICROVOLTS")
            leads[canonical_lead(lead.findtext("LeadID") or "")] = counts.astype(np.float64) * per_bit * unit
    except (TypeError, ValueError) as exc:
        raise UnreadableInput("ecg_unreadable", f"{type(exc).__name__}: {exc}") from exc
    return _record_from_leads(leads, rate, "MUSE")


def _local(tag: str) -> str:
    """``"{urn:hl7-org:v3}sequence"`` → ``"sequence"``."""
    return tag.rsplit("}", 1)[-1]


def _children(element, name: str) -> list:
    return [child for child in element if _local(child.tag) == name]


def _child(element, *path: str):
    """The first element down ``path`` (namespace-blind), or None."""
    for name in path:
        found = _children(element, name) if element is not None else []
        element = found[0] if found else None
    return element


def _quantity(element, default_unit: str) -> tuple[float, str]:
    """An HL7 ``PQ`` (``<x value="5" unit="uV"/>``) → ``(value, unit)``."""
    if element is None or element.get("value") is None:
        raise UnreadableInput("ecg_unreadable", "HL7 aECG quantity without a value")
    return float(element.get("value")), element.get("unit") or default_unit


#: Time units of an aECG increment → seconds.
_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def _aecg_rhythm_set(root):
    """The first ``sequenceSet`` of the first ``series`` (the rhythm recording; median beats live under
    ``series/derivation`` and are not taken)."""
    for component in _children(root, "component"):
        series = _child(component, "series")
        sequence_set = _child(series, "component", "sequenceSet")
        if sequence_set is not None:
            return sequence_set
    raise UnreadableInput("ecg_unreadable", "HL7 aECG without a series/component/sequenceSet")


def read_ecg_hl7_aecg(path: str | Path) -> EcgRecord:
    """An HL7 v3 Annotated ECG (``<AnnotatedECG xmlns="urn:hl7-org:v3">``, the FDA's ECG warehouse format).

    The rhythm ``sequenceSet`` holds one ``TIME_ABSOLUTE`` (or ``TIME_RELATIVE``) sequence whose ``GLIST_TS``
    ``increment`` is the sample interval, and one ``SLIST_PQ`` sequence per lead (code ``MDC_ECG_LEAD_<name>``):
    each sample is ``origin + scale × digit`` in the unit of ``scale`` (µV in practice). Written from the published
    HL7 aECG implementation guide: the one PyPI reader (``aecg``) needs Python ≥ 3.12.
    """
    root = _parse_xml(path)
    leads: dict[str, np.ndarray] = {}
    rate = None
    for component in _children(_aecg_rhythm_set(root), "component"):
        sequence = _child(component, "sequence")
        code = (_child(sequence, "code").get("code") or "") if _child(sequence, "code") is not None else ""
        value = _child(sequence, "value")
        if value is None:
            continue
        if code.startswith("TIME_"):
            step, unit = _quantity(_child(value, "increment"), "s")
            if unit not in _SECONDS or step <= 0:
                raise UnreadableInput("ecg_no_sampling_rate", f"aECG increment {step} {unit}")
            rate = 1.0 / (step * _SECONDS[unit])
        elif code.startswith("MDC_ECG_LEAD_"):
            origin, _ = _quantity(_child(value, "origin"), "uV")
            scale, unit = _quantity(_child(value, "scale"), "uV")
            try:
                digits = np.array((_child(value, "digits").text or "").split(), dtype=np.float64)
            except (AttributeError, ValueError) as exc:
                raise UnreadableInput("ecg_unreadable", f"aECG lead {code}: {exc}") from exc
            leads[canonical_lead(code[len("MDC_ECG_LEAD_"):])] = (origin + scale * digits) * _to_mv(unit)
    if rate is None:
        raise UnreadableInput("ecg_no_sampling_rate", "aECG without a TIME_ABSOLUTE / TIME_RELATIVE sequence")
    return _record_from_leads(leads, rate, "aECG")


def read_ecg_cardiosoft_xml(path: str | Path) -> EcgRecord:
    """A GE CardioSoft / CASE ``CardiologyXML`` resting ECG (the UK Biobank's format).

    ``<StripData>`` holds ``<SampleRate units="Hz">``, ``<Resolution units="uVperLsb">`` and one
    ``<WaveformData lead="I">`` per lead with comma-separated integer counts; amplitude = counts × resolution µV.
    Written from the format as exported (no maintained PyPI reader exists).
    """
    root = _parse_xml(path)
    strip = _child(root, "StripData")
    if strip is None:
        raise UnreadableInput("ecg_unreadable", "CardioSoft XML without <StripData>")
    try:
        rate = float(_child(strip, "SampleRate").text)
        resolution_element = _child(strip, "Resolution")
        resolution = float(resolution_element.text)
        unit = _to_mv((resolution_element.get("units") or "uVperLsb").lower().replace("perlsb", ""))
        leads = {canonical_lead(w.get("lead") or ""): np.array((w.text or "").replace(",", " ").split(), np.float64)
                 * resolution * unit for w in _children(strip, "WaveformData")}
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnreadableInput("ecg_unreadable", f"CardioSoft XML: {type(exc).__name__}: {exc}") from exc
    return _record_from_leads(leads, rate, "CardioSoft")


def _record_from_leads(leads: dict[str, np.ndarray], rate: float, fmt: str) -> EcgRecord:
    """Named lead arrays (millivolts) of one length → a checked record (limb leads derived where absent)."""
    if not leads:
        raise UnreadableInput("ecg_unreadable", f"{fmt}: no lead data")
    lengths = {len(v) for v in leads.values()}
    if len(lengths) != 1:
        raise UnreadableInput("ecg_unreadable", f"{fmt}: leads of different lengths {sorted(lengths)}")
    _derive_limb_leads(leads)
    names = list(leads)
    return _checked(EcgRecord(np.stack([leads[n] for n in names]).astype(np.float32), names, rate))


def _parse_xml(path: str | Path):
    return safe_xml.parse_file(path, "ecg")  # defusedxml: entity bombs and external entities refused


#: XML root element (namespace stripped) → (format name, reader or None when recognised but not decoded).
ECG_XML_FORMATS: dict[str, tuple[str, Callable[[Path], EcgRecord] | None]] = {
    "RestingECG": ("GE MUSE", read_ecg_muse_xml),
    "AnnotatedECG": ("HL7 aECG", read_ecg_hl7_aecg),
    "CardiologyXML": ("GE CardioSoft", read_ecg_cardiosoft_xml),
    "restingecgdata": ("Philips PageWriter/TraceMaster", None),
    "examdescript": ("Schiller", None),
}


def ecg_xml_format(path: str | Path) -> str:
    """The root element of an XML file, read without parsing the rest (a corrupt tail still names its vendor).

    Raises:
        UnreadableInput: ``ecg_unreadable`` when the file has no XML element at all, ``ecg_xml_unsafe`` for
            entity declarations or external references (:mod:`probmed.data.readers.safe_xml`).
    """
    tag = safe_xml.root_tag(path, "ecg")
    if tag is None:
        raise UnreadableInput("ecg_unreadable", "empty XML document")
    return _local(tag)


def read_ecg_xml(path: str | Path) -> EcgRecord:
    """An ECG XML export: detect the vendor format from the root element, then read it with its reader.

    Raises:
        UnreadableInput: ``ecg_unsupported_format`` naming the detected vendor (or the unknown root element) and the
            supported ones; the chosen reader's causes (``ecg_unreadable: GE MUSE: ...``).
    """
    root = ecg_xml_format(path)
    name, reader = ECG_XML_FORMATS.get(root, (f"unknown XML <{root}>", None))
    if reader is None:
        supported = ", ".join(n for n, r in ECG_XML_FORMATS.values() if r is not None)
        raise UnreadableInput("ecg_unsupported_format", f"{Path(path).name}: {name} ECG XML is not supported "
                                                         f"(supported: {supported})")
    try:
        return reader(Path(path))
    except UnreadableInput as exc:
        raise UnreadableInput(exc.reason, f"{name}: {str(exc).split(': ', 1)[-1]}") from exc


#: Source file suffix → ECG reader (paths on disk).
ECG_SOURCE_READERS: dict[str, Callable[[Path], EcgRecord]] = {
    ".dcm": read_ecg_dicom,
    ".hea": read_ecg_wfdb,
    ".xml": read_ecg_xml,
}


def read_ecg_source(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> EcgRecord:
    """Read an ECG file with the reader registered for its suffix (a WFDB record may be named without one); the
    DICOM and WFDB readers check the declared leads, samples and rate against ``limits`` before reading samples."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ECG_SOURCE_READERS and path.with_suffix(path.suffix + ".hea").is_file():
        path, suffix = path.with_suffix(path.suffix + ".hea"), ".hea"
    if not path.is_file():
        raise FileNotFoundError(2, "no such ECG file", str(path))
    reader = ECG_SOURCE_READERS.get(suffix)
    if reader is None:
        raise UnreadableInput("ecg_unknown_format", f"{path.name}: no ECG reader for {suffix or 'no suffix'!r} "
                                                    f"(known: {sorted(ECG_SOURCE_READERS)})")
    return reader(path, limits=limits) if reader in (read_ecg_dicom, read_ecg_wfdb) else reader(path)


def standardize_ecg(record: EcgRecord, leads: tuple[str, ...] = ECG_LEADS, rate: float | None = None,
                    clean: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Reorder to ``leads``, optionally clean (neurokit2 ``ecg_clean`` per lead) and resample to ``rate`` Hz.

    Returns:
        ``(signal, mask, rate)``: ``float32 [len(leads), samples]`` in millivolts, ``bool [len(leads)]`` (``False``
        where the record lacks the lead; its row is zero), and the output rate in Hz.

    Raises:
        UnreadableInput: ``ecg_no_known_leads`` when none of ``leads`` is in the record.
    """
    index = {name: i for i, name in enumerate(record.leads)}
    mask = np.array([name in index for name in leads])
    if not mask.any():
        raise UnreadableInput("ecg_no_known_leads", f"record leads {record.leads} share none with {list(leads)}")
    signal = np.zeros((len(leads), record.signal.shape[1]), np.float32)
    for row, name in enumerate(leads):
        if name in index:
            signal[row] = record.signal[index[name]]
    if clean:
        import neurokit2 as nk

        for row in np.flatnonzero(mask):
            signal[row] = nk.ecg_clean(signal[row], sampling_rate=int(round(record.rate)))
    out_rate = float(rate or record.rate)
    signal = resample_ecg(signal, record.rate, out_rate)
    return np.ascontiguousarray(signal, dtype=np.float32), mask, out_rate
