"""Synthetic chest X-rays: an analytic phantom rendered on the pixel grid, written as a real DICOM file.

The phantom is drawn in "density" (0 = air/black … 1 = bone/white on a standard display) from smooth
(sigmoid-edged) analytic shapes in normalised body coordinates, after a small random rotation / scale / shift
(patient positioning), so no image resampling is needed:

* PA view: body soft tissue, two lungs with vascular texture and hila, mediastinum, trachea, spine, ribs and
  clavicles, two diaphragm domes (right one higher) meeting the lateral chest wall in sharp costophrenic angles,
  and the heart — an ellipse whose **width is CTR × thoracic width**, one third right and two thirds left of the
  midline (patient's left is image right).  A pleural effusion fills the lung base on its side below a meniscus
  that rises laterally: *small* blunts the costophrenic angle, *moderate* / *large* reach a third / half of the
  lung height.
* LATERAL view: one lung field, spine posteriorly, sternum anteriorly, the heart anterior-inferiorly (size
  following the CTR), effusion filling the posterior costophrenic sulcus.

Left-atrial size (``attributes["la_diameter_mm"]``, :func:`la_enlargement` maps it to 0 … 1): the left atrium
is an ellipse in the upper posterior heart shadow, slightly right of the midline, that grows with its diameter.
Normal, it stays inside the cardiac silhouette and is not seen. Enlarged, it gives the signs radiologists read
(PA): a *double density* (the atrium's extra density overlapping the heart) whose edge bulges past the right heart
border, a left-atrial-appendage convexity on the upper left heart border (*straightening*), and a *splayed carina*
(the angle between the main bronchi, drawn on every film, widens from 65° to 110°); on the lateral, a posterior
bulge of the upper heart border.

Radiographic extras (``attributes`` sternotomy / granuloma / central_line / ecg_leads / ng_tube) are drawn as
metal- or calcium-dense overlays: a column of sternotomy wire loops along the midline (along the sternum on the
lateral), a calcified nodule in the named lobe, a catheter from the right neck or left subclavian region to the
superior vena cava, ECG electrode snaps with their lead wires, a nasogastric tube running down the midline and
ending under the left hemidiaphragm.

Then contrast (gamma) and exposure-gradient jitter, quantum noise, slight blur. DICOM: Digital X-Ray (for
presentation), explicit VR little endian, 12- or 16-bit stored in 16-bit words, MONOCHROME1 (inverted stored
values) or MONOCHROME2, a rescale slope/intercept and a VOI window that display the phantom correctly, dummy
PHI, and UIDs derived from the corpus seed (2.25 UUID-derived UIDs, deterministic).
"""
from __future__ import annotations

import hashlib
import io
import uuid
from functools import lru_cache

import numpy as np
from scipy import ndimage

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

FIELD_OF_VIEW_MM = 430.0


def la_enlargement(la_diameter_mm: float | None) -> float:
    """0 for a left atrium of ≤ 40 mm (or unknown), rising linearly to 1 at 55 mm."""
    return 0.0 if la_diameter_mm is None else float(np.clip((float(la_diameter_mm) - 40.0) / 15.0, 0.0, 1.0))


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c, c, indexing="xy")  # u (columns, left→right), v (rows, top→bottom)


def _sig(d: np.ndarray, eps: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance (positive inside)."""
    return 0.5 * (1.0 + np.tanh(d / eps))


def _ellipse(u, v, cu, cv, au, av):
    """Approximate signed distance (>0 inside) to an axis-aligned ellipse, in the units of its minor axis."""
    return (1.0 - np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)) * min(au, av)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, amp: float) -> np.ndarray:
    small = rng.normal(0.0, 1.0, size=(cells, cells)).astype(np.float32)
    big = ndimage.zoom(small, size / cells, order=1, mode="nearest")
    return amp * big[:size, :size]


def render_cxr(rng: np.random.Generator, view: str, attrs: dict, traits: dict, size: int = 256,
               quality: dict | None = None) -> np.ndarray:
    """The density image (float32 in [0, 1], white = dense) of one view (``PA`` or ``AP``: frontal; ``LATERAL``).

    The smooth anatomy is drawn at half resolution for sizes >= 192 (4x cheaper) and upsampled bilinearly; the
    quantum noise is added at full resolution. ``quality``: the film's geometric quality mechanisms
    (:func:`probmed.data.synthetic.quality.cxr_mechanisms`: ``rotation`` adds up to ±14° of tilt, ``inspiration``
    shortens the lungs by up to 22 % and broadens the heart by up to 10 %; an ``AP`` view magnifies the heart by
    15 %); ``None`` renders the film exactly as without quality.
    """
    q = quality or {}
    frontal = view in ("PA", "AP")
    work = size // 2 if size >= 192 else size
    U, V = _grid(work)
    # positioning jitter
    theta = np.deg2rad(rng.normal(0.0, 2.0) + 14.0 * float(q.get("rotation", 0.0)))
    scale = rng.uniform(0.93, 1.05)
    du, dv = rng.uniform(-0.05, 0.05, size=2)
    c, s = np.cos(theta), np.sin(theta)
    uu, vv = (U - du) / scale, (V - dv) / scale
    u = c * uu - s * vv
    v = s * uu + c * vv
    eps = 2.5 / size * (size / work) ** 0.5
    tw = traits.get("cxr_thorax_width", 0.78)
    lung_h = traits.get("cxr_lung_height", 0.62)
    ctr = float(attrs["ctr"])
    if q:  # apparent heart size and lung height of a portable / poorly inspired film
        inspiration = float(q.get("inspiration", 0.0))
        lung_h = lung_h * (1.0 - 0.22 * inspiration)
        ctr = ctr * (1.0 + 0.1 * inspiration) * (1.15 if view == "AP" else 1.0)
    side = attrs.get("effusion_side", "none")
    esize = attrs.get("effusion_size", "none")
    lung_cy = -0.08
    la = la_enlargement(attrs.get("la_diameter_mm"))
    if frontal:
        img = _render_pa(rng, u, v, eps, work, tw, lung_h, lung_cy, ctr, side, esize, traits, la)
    else:
        img = _render_lateral(rng, u, v, eps, work, tw, lung_h, lung_cy, ctr, side, esize, traits, la)
    img = _overlay_extras(img, rng, "PA" if frontal else view, u, v, eps, attrs, tw, lung_h, lung_cy)
    # exposure gradient, contrast, noise, blur
    img = img * (1.0 + _smooth_noise(rng, work, 4, 0.04)) * traits.get("cxr_brightness", 1.0)
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.85, 1.15)
    if work != size:
        img = ndimage.zoom(img, size / work, order=1, mode="nearest")[:size, :size]
    else:
        img = ndimage.gaussian_filter(img, sigma=0.6 * size / 256)
    img = img + np.float32(rng.uniform(0.006, 0.016)) * rng.standard_normal(size=img.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _render_pa(rng, u, v, eps, size, tw, lung_h, lung_cy, ctr, side, esize, traits, la):
    body = _sig(_ellipse(u, v, 0.0, 0.2, tw + 0.16, 1.25), eps)
    neck = _sig(0.2 - np.abs(u), eps) * (v < -0.6)
    tissue = np.maximum(body, neck)
    img = 0.04 + 0.46 * tissue
    lungs = np.zeros_like(u)
    dome_base = lung_cy + lung_h * 0.92
    domes = {}
    for s in (-1.0, 1.0):  # -1: image left = patient's right (higher hemidiaphragm)
        cu = s * tw * 0.53
        base = dome_base - (0.05 if s < 0 else 0.0)
        dome = base - 0.16 * (1.0 - np.clip(((u - cu) / (tw * 0.55)) ** 2, 0.0, 1.0))
        envelope = _sig(_ellipse(u, v, cu, lung_cy, tw * 0.47, lung_h), eps)
        domes[s] = (cu, base, dome, envelope)
        inside = envelope * _sig(dome - v, eps)
        lungs = np.maximum(lungs, inside)
    # mediastinum (upper) removes the medial lung
    lungs = lungs * (1.0 - _sig(0.09 - np.abs(u), eps) * _sig(0.15 - v, eps))
    # heart: width = ctr * thoracic width; 1/3 right, 2/3 left of midline
    a_h = ctr * tw
    b_h = 0.3 * traits.get("cxr_heart_height", 1.0) * (1.0 + 0.8 * (ctr - 0.45))
    cu_h = a_h / 3.0
    cv_h = dome_base - 0.1 - b_h  # rests on the left hemidiaphragm
    heart = _sig(_ellipse(u, v, cu_h, cv_h, a_h, b_h), eps)
    # left atrium (upper posterior heart, right of midline) and, when enlarged, its appendage on the left border
    atrium = _sig(_ellipse(u, v, cu_h - 0.55 * a_h, cv_h - 0.4 * b_h, (0.1 + 0.1 * la) * tw / 0.78,
                           0.08 + 0.05 * la), eps)
    appendage = la * _sig(_ellipse(u, v, cu_h + 0.8 * a_h, cv_h - 0.62 * b_h, 0.02 + 0.05 * la, 0.06), eps)
    lungs = lungs * (1.0 - np.maximum(heart, np.maximum(atrium, appendage)))
    # pleural effusion: fluid below a meniscus rising laterally
    fluid = np.zeros_like(u)
    if side != "none":
        level = {"small": 0.0, "moderate": 0.33, "large": 0.5}[esize]
        for s in ((-1.0, 1.0) if side == "bilateral" else ((-1.0,) if side == "right" else (1.0,))):
            cu, base, dome, envelope = domes[s]
            lat = np.clip(s * u / tw, 0.0, 1.2)  # 0 at midline, 1 at the lateral chest wall
            top = base - 0.04 - level * 2 * lung_h - 0.22 * lat**2 - rng.uniform(0.0, 0.03)
            fluid = np.maximum(fluid, _sig(v - top, eps) * envelope * _sig(dome + 0.04 - v, eps))
        lungs = lungs * (1.0 - fluid)
    texture = _smooth_noise(rng, size, 24, 0.035) + _smooth_noise(rng, size, 64, 0.02)
    hila = sum(np.exp(-(((u - s * 0.2) / 0.12) ** 2 + ((v + 0.02) / 0.15) ** 2)) for s in (-1.0, 1.0))
    lung_density = 0.13 + texture + 0.12 * hila
    img = img * (1.0 - lungs) + lung_density * lungs
    img = img + 0.04 * heart * (1.0 - lungs) + 0.06 * la * atrium
    # trachea (dark column) and main bronchi (carinal angle 65° … 110°), spine (bright column), clavicles, ribs
    img = img - 0.12 * _sig(0.035 - np.abs(u + 0.01), eps) * _sig(-0.2 - v, eps) * _sig(v + 0.95, eps)
    half_angle = np.deg2rad(32.5 + 22.5 * la)
    for s in (-1.0, 1.0):
        end = (-0.01 + s * 0.16 * np.sin(half_angle), -0.2 + 0.16 * np.cos(half_angle))
        img = img - 0.09 * _polyline(u, v, [(-0.01, -0.2), end], 0.022, eps)
    vert = 0.5 + 0.5 * np.cos(v * np.pi * 9.0)
    img = img + (0.1 + 0.05 * vert) * _sig(0.065 - np.abs(u), eps) * tissue
    ribs = np.zeros_like(u)
    chest = _sig(tw - np.abs(u), eps) * _sig(dome_base + 0.05 - v, eps)
    for k in range(10):
        vk = lung_cy - lung_h * 0.95 + k * 0.13 * lung_h / 0.62 + 0.28 * (np.abs(u) / tw) ** 2
        ribs = np.maximum(ribs, _sig(0.018 - np.abs(v - vk), eps))
    img = img + 0.07 * ribs * chest
    for s in (-1.0, 1.0):
        vc = -0.74 - 0.12 * (s * u - 0.1)
        clav = _sig(0.03 - np.abs(v - vc), eps) * _sig(s * u - 0.08, eps) * _sig(0.65 - s * u, eps)
        img = img + 0.12 * clav
    img = img + 0.03 * fluid
    return img


def _render_lateral(rng, u, v, eps, size, tw, lung_h, lung_cy, ctr, side, esize, traits, la):
    body = _sig(_ellipse(u, v, 0.0, 0.2, 0.8, 1.25), eps)
    img = 0.04 + 0.46 * body
    dome_base = lung_cy + lung_h * 0.92
    dome = dome_base - 0.14 * (1.0 - np.clip((u / 0.62) ** 2, 0.0, 1.0))
    lung = _sig(_ellipse(u, v, 0.02, lung_cy, 0.6, lung_h), eps) * _sig(dome - v, eps)
    a_h = 0.2 + 0.9 * (ctr - 0.4)
    b_h = 0.26 * traits.get("cxr_heart_height", 1.0) * (1.0 + 0.8 * (ctr - 0.45))
    hu, hv = -0.3 + 0.5 * a_h, dome_base - 0.1 - 0.5 * b_h
    heart = _sig(_ellipse(u, v, hu, hv, a_h, b_h), eps)
    atrium = _sig(_ellipse(u, v, hu + 0.6 * a_h, hv - 0.55 * b_h, 0.04 + 0.09 * la, 0.07 + 0.04 * la), eps)
    lung = lung * (1.0 - np.maximum(heart, atrium))
    fluid = np.zeros_like(u)
    if side != "none":
        level = {"small": 0.0, "moderate": 0.33, "large": 0.5}[esize]
        post = np.clip(u / 0.6, -1.0, 1.2)  # posterior is image right
        top = dome_base - 0.03 - level * 2 * lung_h - 0.18 * np.clip(post, 0, None) ** 2
        envelope = _sig(_ellipse(u, v, 0.02, lung_cy, 0.6, lung_h), eps)
        fluid = _sig(v - top, eps) * _sig(dome + 0.04 - v, eps) * _sig(u + 0.1, eps) * envelope
        lung = lung * (1.0 - fluid)
    texture = _smooth_noise(rng, size, 24, 0.03) + _smooth_noise(rng, size, 64, 0.015)
    img = img * (1.0 - lung) + (0.16 + texture) * lung
    vert = 0.5 + 0.5 * np.cos(v * np.pi * 9.0)
    spine = _sig(0.09 - np.abs(u - 0.66), eps) * body
    img = img + (0.18 + 0.08 * vert) * spine
    sternum = _sig(0.015 - np.abs(u + 0.72 + 0.05 * v), eps) * _sig(0.3 - v, eps) * _sig(v + 0.6, eps)
    img = img + 0.15 * sternum
    img = img + 0.04 * np.maximum(heart, atrium) + 0.03 * fluid
    return img


def _polyline(u, v, points, half_width: float, eps: float) -> np.ndarray:
    """Soft indicator of a polyline of the given half-width (normalised units)."""
    out = np.zeros_like(u)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        dist = np.sqrt((u - x0 - t * dx) ** 2 + (v - y0 - t * dy) ** 2)
        out = np.maximum(out, _sig(half_width - dist, eps))
    return out


def _extras_layout(view: str, attrs: dict, tw: float, lung_h: float, lung_cy: float, jitter) -> list:
    """``(kind, geometry, density)`` of each extra present on one view (kind: "dots" or "line")."""
    apex, base = lung_cy - 0.5 * lung_h, lung_cy + 0.4 * lung_h
    items = []
    if view == "PA":
        wires = [(jitter(0.01), apex + 0.1 + k * 0.12) for k in range(6)]
        granuloma_at = {"right upper": (-0.5 * tw, apex + 0.15), "left upper": (0.5 * tw, apex + 0.15),
                        "right lower": (-0.55 * tw, base), "left lower": (0.6 * tw, base)}
        lines = {"right internal jugular": [(-0.24, -1.0), (-0.15, -0.62), (-0.07, lung_cy - 0.08)],
                 "left subclavian": [(0.62, -0.74), (0.22, -0.7), (-0.04, -0.56), (-0.07, lung_cy - 0.08)]}
        snaps = [(-0.62, -0.62), (0.62, -0.62), (0.64, base + 0.12)]
        snap_wires = [[(-0.62, -0.62), (-1.0, -0.8)], [(0.62, -0.62), (1.0, -0.8)], [(0.64, base + 0.12), (1.0, 0.5)]]
        tube = [(0.02, -1.0), (0.03, base + 0.2), (0.32, base + 0.42)]
    else:  # lateral: anterior is image left
        wires = [(-0.73 - 0.05 * y, y) for y in np.linspace(apex + 0.1, apex + 0.7, 5)]
        granuloma_at = {"right upper": (0.05, apex + 0.2), "left upper": (0.15, apex + 0.15),
                        "right lower": (0.2, base), "left lower": (0.3, base - 0.05)}
        lines = {"right internal jugular": [(-0.3, -1.0), (-0.22, -0.55), (-0.2, lung_cy - 0.08)],
                 "left subclavian": [(-0.45, -0.75), (-0.25, -0.6), (-0.2, lung_cy - 0.08)]}
        snaps = [(-0.8, -0.35), (-0.78, 0.15)]
        snap_wires = [[(-0.8, -0.35), (-1.0, -0.5)], [(-0.78, 0.15), (-1.0, 0.05)]]
        tube = [(0.25, -1.0), (0.3, base + 0.2), (0.0, base + 0.4)]
    if attrs.get("sternotomy"):
        items.append(("dots", (wires, 0.045, 0.02), 0.95))
    if attrs.get("granuloma", "none") != "none":
        gu, gv = granuloma_at[attrs["granuloma"]]
        items.append(("dots", ([(gu + jitter(0.03), gv + jitter(0.03))], 0.035, 0.035), 0.85))
    if attrs.get("central_line", "none") != "none":
        items.append(("line", (lines[attrs["central_line"]], 0.016), 0.85))
    if attrs.get("ecg_leads"):
        items.append(("dots", (snaps, 0.04, 0.04), 0.9))
        items.extend(("line", (w, 0.01), 0.7) for w in snap_wires)
    if attrs.get("ng_tube"):
        items.append(("line", (tube, 0.016), 0.95))
    return items


def _overlay_extras(img, rng, view, u, v, eps, attrs, tw, lung_h, lung_cy) -> np.ndarray:
    """Blend the study's devices / calcifications into the density image (they are denser than bone)."""
    draws = iter(rng.uniform(-1.0, 1.0, size=16))  # always drawn: with or without extras, the noise is the same

    def jitter(scale: float) -> float:
        return float(next(draws)) * scale

    for kind, geometry, density in _extras_layout(view, attrs, tw, lung_h, lung_cy, jitter):
        if kind == "dots":
            centres, au, av = geometry
            mask = np.zeros_like(u)
            for cu, cv in centres:
                mask = np.maximum(mask, _sig(_ellipse(u, v, cu, cv, au, av), eps))
        else:
            points, half_width = geometry
            mask = _polyline(u, v, points, half_width, eps)
        img = img * (1.0 - mask) + density * mask
    return img


# --------------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------------
def study_uid(seed: int, study_id: str, *parts: str) -> str:
    """A deterministic DICOM UID ``2.25.<int>`` from the corpus seed, the study id and extra parts.

    A name-based (SHA-based, version 5 layout) UUID as an integer, as DICOM PS3.5 B.2 allows. (pydicom's
    ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy and returns a random UUID.)
    """
    digest = hashlib.sha256("|".join(["probmed-synthetic", str(seed), study_id, *parts]).encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"


def new_dataset(sop_class: str, sop_uid: str) -> Dataset:
    """An empty data set of one SOP instance with its file meta (explicit VR little endian) and character set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PROBMED_SYNTH"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def _stored_pixels(density: np.ndarray, rng: np.random.Generator, photometric: str,
                   bits: int) -> tuple[np.ndarray, float, float, float, float]:
    """A density image ``[rows, cols]`` in [0, 1] as a detector stores it: ``(stored uint16, rescale slope,
    rescale intercept, VOI window centre, window width)``, using part of the stored range (detectors rarely fill
    it), one of four modality LUTs, and a window over the 1st-99th percentile of the rescaled values."""
    max_stored = (1 << bits) - 1
    lo = rng.uniform(0.0, 0.08) * max_stored
    hi = rng.uniform(0.75, 0.98) * max_stored
    shown = density if photometric == "MONOCHROME2" else 1.0 - density
    stored = np.round(lo + shown * (hi - lo)).astype(np.uint16)
    slope, intercept = [(1.0, 0.0), (1.0, -1024.0), (0.5, 0.0), (2.0, -100.0)][int(rng.integers(4))]
    if bits == 12 and slope == 0.5:
        slope = 1.0
    rescaled = stored.astype(np.float64) * slope + intercept
    p_lo, p_hi = np.percentile(rescaled, [1.0, 99.0])
    return stored, slope, intercept, round(float((p_lo + p_hi) / 2.0), 1), round(float(max(p_hi - p_lo, 1.0)), 1)


def to_dicom_bytes(
    density: np.ndarray,
    rng: np.random.Generator,
    *,
    seed: int,
    study_id: str,
    view: str,
    view_index: int,
    photometric: str,
    bits: int,
    phi: dict[str, str],
    n_views: int,
) -> bytes:
    """Encode a density image as a DX DICOM file (bytes) with a correct modality LUT and VOI window."""
    rows, cols = density.shape
    stored, slope, intercept, center, width = _stored_pixels(density, rng, photometric, bits)

    sop_uid = study_uid(seed, study_id, "sop", str(view_index))
    ds = new_dataset(DigitalXRayImageStorageForPresentation, sop_uid)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDate = phi["StudyDate"]
    ds.SeriesDate = phi["StudyDate"]
    ds.ContentDate = phi["StudyDate"]
    ds.StudyTime = phi["StudyTime"]
    ds.SeriesTime = phi["StudyTime"]
    ds.ContentTime = phi["StudyTime"]
    ds.AccessionNumber = phi["AccessionNumber"]
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "ProbMed Synthetic"
    ds.InstitutionName = phi["InstitutionName"]
    ds.ReferringPhysicianName = phi["ReferringPhysicianName"]
    ds.StationName = phi["StationName"]
    ds.StudyDescription = "CHEST 2 VIEWS" if n_views > 1 else "CHEST 1 VIEW"
    ds.SeriesDescription = f"CHEST {view}"
    ds.OperatorsName = phi["OperatorsName"]
    ds.PatientName = phi["PatientName"]
    ds.PatientID = phi["PatientID"]
    ds.PatientBirthDate = phi["PatientBirthDate"]
    ds.PatientSex = phi["PatientSex"]
    ds.PatientAge = phi["PatientAge"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.ImagerPixelSpacing = [round(FIELD_OF_VIEW_MM / rows, 4), round(FIELD_OF_VIEW_MM / cols, 4)]
    ds.StudyInstanceUID = study_uid(seed, study_id, "study")
    ds.SeriesInstanceUID = study_uid(seed, study_id, "series", str(view_index))
    ds.StudyID = study_id[-8:]
    ds.SeriesNumber = view_index + 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"] if view in ("PA", "AP") else ["P", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = ds.ImagerPixelSpacing
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = center
    ds.WindowWidth = width
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    ds.RescaleType = "US"
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
