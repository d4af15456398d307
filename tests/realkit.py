"""Real-format study files for builder tests, written by each format's reference library (pydicom, wfdb, PyAV,
Pillow), with identifying values planted where hospital files carry them."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from probmed.data.synthetic.mimic_layout import dx_dataset

#: Identifying values planted in the test inputs; none may appear in any output byte.
PHI = {
    "name": "Smithfield^Johanna", "patient_id": "MRN99887766", "birth": "19511103", "study_date": "20240229",
    "institution": "St Elsewhere General Hospital", "address": "42 Wallaby Way Sydney", "accession": "ACC5551234",
    "physician": "Drake^Ramoray", "private": "PRIVATE-PHI-TOKEN", "station": "XRAYROOM7",
    "study_uid": "1.2.826.0.1.3680043.8.498.111122223333", "series_uid": "1.2.826.0.1.3680043.8.498.444455556666",
    "operator_note": "Operator Jane Q Smithfield",
}


def cxr_dicom(path: Path, pixels: np.ndarray, view: str = "PA", burned_in: bool = False,
              photometric: str = "MONOCHROME2") -> Path:
    """A DX radiograph carrying the :data:`PHI` values in the usual places (incl. a private tag and a sequence)."""
    ds = dx_dataset(path, pixels, view, photometric)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PHI["name"], PHI["patient_id"], PHI["birth"]
    ds.PatientAddress, ds.InstitutionName, ds.AccessionNumber = PHI["address"], PHI["institution"], PHI["accession"]
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = PHI["study_date"], "101010", PHI["physician"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StationName = PHI["study_uid"], PHI["series_uid"], PHI["station"]
    ds.ImageComments = PHI["operator_note"]
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    operator = Dataset()
    operator.PersonName = PHI["physician"]
    ds.ContentSequence = Sequence([operator])
    block = ds.private_block(0x0011, "HOSPITAL PRIVATE", create=True)
    block.add_new(0x01, "LO", PHI["private"])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def wfdb_record(directory: Path, name: str, seconds: float = 2.0, rate: int = 500, leads: list[str] | None = None,
                seed: int = 0) -> Path:
    """A WFDB record (``.hea`` + ``.dat``) written by ``wfdb.wrsamp``; returns the ``.hea`` path."""
    import wfdb

    leads = leads or ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    signal = np.stack([np.sin(2 * np.pi * (1 + i / 4) * t) * 0.8 + rng.normal(0, 0.02, t.size)
                       for i in range(len(leads))], axis=1)
    directory.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=rate, units=["mV"] * len(leads), sig_name=leads, p_signal=signal, fmt=["16"] * len(leads),
                adc_gain=[1000.0] * len(leads), baseline=[0] * len(leads), write_dir=str(directory))
    return directory / f"{name}.hea"


def avi(path: Path, frames: int = 12, size: int = 32, fps: int = 50) -> Path:
    """An MJPEG AVI (as EchoNet-Dynamic ships) written by PyAV: a bright disc whose radius pulses with time."""
    import av

    yy, xx = np.mgrid[:size, :size] - size / 2
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuvj420p"
        for k in range(frames):
            radius = size / 4 * (1 + 0.3 * np.sin(2 * np.pi * k / frames))
            grey = np.where(xx**2 + yy**2 < radius**2, 220, 20).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.repeat(grey[..., None], 3, -1), "rgb24")))
        container.mux(stream.encode())
    return path


def png_with_text(path: Path, text: str) -> Path:
    """A 16-bit grey PNG carrying ``text`` in a tEXt chunk (where scanners put patient names)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text)
    image = Image.fromarray(np.tile(np.arange(0, 64 * 1000, 1000, dtype=np.uint16), (64, 1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=info)
    return path


def jpeg_with_comment(path: Path, text: str) -> Path:
    """A grey JPEG with ``text`` in a COM segment and in EXIF (APP1)."""
    from PIL import Image

    image = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1)))
    exif = Image.Exif()
    exif[0x013B] = text  # Artist
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, comment=text.encode(), exif=exif.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def relabelled(ds_or_path, modality: str) -> bytes:
    """A real DICOM file's bytes with its SOP Class and Modality changed to a chest film (``"DX"``) or an ultrasound
    (``"US"``), pixels untouched: lets pixel-decoding tests use pydicom's CT / MR / NM / SC test files, which the
    readers otherwise refuse as the wrong modality."""
    sop = {"DX": pydicom.uid.DigitalXRayImageStorageForPresentation, "US": pydicom.uid.UltrasoundImageStorage}[modality]
    ds = ds_or_path if isinstance(ds_or_path, Dataset) else pydicom.dcmread(ds_or_path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop
    ds.Modality = modality
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def hl7_aecg(path: Path, leads: dict[str, np.ndarray], rate: float, scale_uv: float = 2.5,
             origin_uv: float = 0.0) -> Path:
    """An HL7 aECG (``AnnotatedECG``, urn:hl7-org:v3) written from the implementation guide's structure: a rhythm
    series with a ``TIME_ABSOLUTE`` GLIST_TS sequence and one SLIST_PQ sequence per lead (``digits`` are
    ``round((mV·1000 − origin) / scale)``), plus a median-beat series under ``derivation`` that must not be read."""
    def lead(name: str, values: np.ndarray) -> str:
        digits = " ".join(str(int(d)) for d in np.rint((values * 1000 - origin_uv) / scale_uv))
        return (f'<component><sequence><code code="MDC_ECG_LEAD_{name.upper()}" codeSystem="2.16.840.1.113883.6.24"/>'
                f'<value xsi:type="SLIST_PQ"><origin value="{origin_uv}" unit="uV"/><scale value="{scale_uv}" '
                f'unit="uV"/><digits>{digits}</digits></value></sequence></component>')

    time = (f'<component><sequence><code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>'
            f'<value xsi:type="GLIST_TS"><head value="20240229101010.000"/><increment value="{1000 / rate}" '
            f'unit="ms"/></value></sequence></component>')
    rhythm = time + "".join(lead(n, v) for n, v in leads.items())
    median = time + "".join(lead(n, v[: len(v) // 4] * 0) for n, v in leads.items())
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?><AnnotatedECG xmlns="urn:hl7-org:v3" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><id root="1.2.3"/><code code="93000" '
        'codeSystem="2.16.840.1.113883.6.12"/><component><series><code code="RHYTHM"/>'
        f'<component><sequenceSet>{rhythm}</sequenceSet></component>'
        f'<derivation><derivedSeries><component><sequenceSet>{median}</sequenceSet></component></derivedSeries>'
        '</derivation></series></component></AnnotatedECG>')
    return path


def cardiosoft_xml(path: Path, leads: dict[str, np.ndarray], rate: int, resolution_uv: float = 5.0) -> Path:
    """A GE CardioSoft ``CardiologyXML`` resting ECG: ``<StripData>`` with SampleRate, Resolution (µV per count)
    and comma-separated counts per ``<WaveformData lead=...>``."""
    strips = "".join(f'<WaveformData lead="{n}">' + ",".join(str(int(c)) for c in np.rint(v * 1000 / resolution_uv))
                     + "</WaveformData>" for n, v in leads.items())
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?><CardiologyXML><ObservationType>RestECG</ObservationType>'
        f'<PatientInfo><Name><FamilyName>{PHI["name"]}</FamilyName></Name></PatientInfo><StripData>'
        f'<NumberOfLeads>{len(leads)}</NumberOfLeads><SampleRate units="Hz">{rate}</SampleRate>'
        f'<Resolution units="uVperLsb">{resolution_uv}</Resolution>{strips}</StripData></CardiologyXML>')
    return path
