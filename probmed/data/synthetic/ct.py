"""Synthetic chest CT: one contrast-enhanced axial slice at the level of the cardiac ventricles, in Hounsfield
units, written as a CT Image Storage DICOM file. An opt-in fifth modality (``probmed data synth
--extra-modalities ct``) whose findings follow the same hidden state as the film, ECG, cine and report.

The slice is drawn from smooth (sigmoid-edged) analytic shapes in normalised coordinates (image x = patient's right
→ left, image y = anterior → posterior, radiological convention; 2 units = :data:`FIELD_OF_VIEW_MM`) after a
small positioning jitter:

* body: an ellipse of subcutaneous fat (-100 HU) around muscle and mediastinal soft tissue (40 HU), its width from
  the patient's thoracic-width trait (the same one the film uses), a sternum anteriorly and a vertebral body with
  its spinal canal posteriorly, the contrast-filled descending aorta left of the spine;
* two lungs (-850 HU with vessel texture) filling the thoracic cavity beside the mediastinum;
* the heart: an ellipse whose transverse width is **CTR × the thoracic cavity's width** (one third right, two thirds
  left of the midline, as on the film), so cardiomegaly is a large cross-section; inside it the contrast-filled LV
  cavity (260 HU) in a myocardial ring (110 HU) whose thickness is ``lv_wall_mm`` (LVH: 12.5-17 mm, else 7-10.5
  mm), the right ventricle anteriorly and the left atrium posteriorly with diameter ``la_diameter_mm``;
* pleural effusion: fluid (15 HU) in the dependent (posterior) part of the lung on its side, a crescent along the
  posterior chest wall whose depth follows the size (small / moderate / large);
* median sternotomy wires: metal (2500 HU) dots in the sternum when the patient has them.

Then quantum noise (10-18 HU) and a slight blur. DICOM: CT Image Storage, 12 bits stored as HU + 1024
(RescaleIntercept -1024), a soft-tissue window (centre 40, width 400 HU), dummy PHI and UIDs derived from the seed.
"""
from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage
from scipy import ndimage

from probmed.data.synthetic.cxr import _ellipse, _grid, _sig, _smooth_noise, new_dataset, study_uid

FIELD_OF_VIEW_MM = 400.0
MM = 2.0 / FIELD_OF_VIEW_MM  # one millimetre in normalised units
AIR, FAT, SOFT, LUNG, FLUID, MYOCARDIUM, BLOOD, BONE, METAL = -1000, -100, 40, -850, 15, 110, 260, 700, 2500
EFFUSION_DEPTH = {"none": 0.0, "small": 0.12, "moderate": 0.28, "large": 0.45}  # fraction of the lung's AP depth
WINDOW_CENTER, WINDOW_WIDTH = 40.0, 400.0


def render_ct(rng: np.random.Generator, attrs: dict, traits: dict, size: int = 128) -> np.ndarray:
    """``float32 [size, size]`` Hounsfield units of one axial slice (see the module docstring for the anatomy)."""
    U, V = _grid(size)
    theta = np.deg2rad(rng.normal(0.0, 2.0))
    du, dv = rng.uniform(-0.04, 0.04, size=2)
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * (U - du) - s * (V - dv), s * (U - du) + c * (V - dv)
    eps = 2.0 / size
    hu = _body(u, v, eps, float(traits.get("cxr_thorax_width", 0.78)), rng, size, attrs)
    hu = hu + _smooth_noise(rng, size, 6, 8.0)
    hu = ndimage.gaussian_filter(hu, sigma=0.5 * size / 128)
    hu = hu + np.float32(rng.uniform(10.0, 18.0)) * rng.standard_normal(size=hu.shape, dtype=np.float32)
    return np.clip(hu, -1024.0, 3071.0).astype(np.float32)


def _paint(image: np.ndarray, mask: np.ndarray, value: float) -> np.ndarray:
    """``image`` with ``value`` blended in where the soft mask ``mask`` (0..1) is set."""
    return image + mask * (value - image)


def _body(u, v, eps, thorax_width, rng, size, attrs) -> np.ndarray:
    bw = 1.1 * thorax_width  # body half-width (0.79-0.92)
    bh = 0.62 * bw
    cw, ch = bw - 0.11, bh - 0.10  # thoracic cavity half-axes
    hu = np.full(u.shape, AIR, np.float32)
    hu = _paint(hu, _sig(_ellipse(u, v, 0.0, 0.0, bw, bh), eps), FAT)
    hu = _paint(hu, _sig(_ellipse(u, v, 0.0, 0.0, bw - 0.05, bh - 0.05), eps), SOFT)
    # lungs: each fills its half of the cavity beside the mediastinum
    texture = LUNG + _smooth_noise(rng, size, 16, 35.0)
    spine_v = ch - 0.02
    for side in (-1.0, 1.0):
        lung = _sig(_ellipse(u, v, side * 0.5 * cw, 0.02, 0.48 * cw, 0.92 * ch), eps)
        hu = _paint(hu, lung, texture)
        name = "right" if side < 0 else "left"  # patient's right is image left
        if attrs.get("effusion_side", "none") in (name, "bilateral"):
            depth = EFFUSION_DEPTH[attrs.get("effusion_size", "none")] * 2 * 0.92 * ch
            shifted = _sig(_ellipse(u, v, side * 0.5 * cw, 0.02 - depth, 0.48 * cw, 0.92 * ch), eps)
            hu = _paint(hu, lung * (1.0 - shifted), FLUID)  # the posterior crescent the shifted lung leaves
    # mediastinal bones and vessels
    hu = _paint(hu, _sig(_ellipse(u, v, 0.0, -bh + 0.07, 0.09, 0.035), eps), BONE)  # sternum
    hu = _paint(hu, _sig(_ellipse(u, v, 0.0, spine_v, 0.11, 0.10), eps), BONE)  # vertebral body
    hu = _paint(hu, _sig(_ellipse(u, v, 0.0, spine_v + 0.13, 0.04, 0.035), eps), SOFT)  # spinal canal
    hu = _paint(hu, _sig(_ellipse(u, v, 0.14, spine_v - 0.10, 0.055, 0.055), eps), BLOOD)  # descending aorta
    hu = _heart(hu, u, v, eps, cw, attrs)
    if attrs.get("sternotomy"):
        for du in (-0.03, 0.03):
            hu = _paint(hu, _sig(_ellipse(u, v, du, -bh + 0.07, 0.012, 0.012), eps), METAL)
    return hu


def _heart(hu, u, v, eps, cw, attrs) -> np.ndarray:
    """The heart's cross-section: width CTR × cavity width, LV ring of thickness ``lv_wall_mm``, RV, LA."""
    a = float(attrs["ctr"]) * cw  # transverse half-width
    b = 0.78 * a
    hc, vc = a / 3.0, -0.05  # one third right, two thirds left of the midline; anterior
    hu = _paint(hu, _sig(_ellipse(u, v, hc, vc, a, b), eps), MYOCARDIUM)
    wall = float(attrs.get("lv_wall_mm", 9.0)) * MM
    lv_u, lv_v, cavity = hc + 0.3 * a, vc + 0.12 * b, 0.42 * b
    hu = _paint(hu, _sig(_ellipse(u, v, lv_u, lv_v, cavity + wall, cavity + wall), eps), MYOCARDIUM)
    hu = _paint(hu, _sig(_ellipse(u, v, lv_u, lv_v, cavity, cavity), eps), BLOOD)
    hu = _paint(hu, _sig(_ellipse(u, v, hc - 0.4 * a, vc - 0.3 * b, 0.38 * a, 0.4 * b), eps), BLOOD - 20)  # RV
    la = 0.5 * float(attrs.get("la_diameter_mm", 34.0)) * MM
    return _paint(hu, _sig(_ellipse(u, v, hc - 0.1 * a, vc + b + 0.3 * la, la, 0.8 * la), eps), BLOOD - 10)


def to_ct_dicom_bytes(hu: np.ndarray, *, seed: int, study_id: str, phi: dict[str, str]) -> bytes:
    """Encode a slice in Hounsfield units as a CT Image Storage DICOM file (12 bits, HU + 1024 stored)."""
    rows, cols = hu.shape
    stored = np.clip(np.round(hu + 1024.0), 0, 4095).astype(np.uint16)
    ds = new_dataset(CTImageStorage, study_uid(seed, study_id, "ct-sop"))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    for key in ("StudyDate", "SeriesDate", "ContentDate"):
        setattr(ds, key, phi["StudyDate"])
    for key in ("StudyTime", "SeriesTime", "ContentTime"):
        setattr(ds, key, phi["StudyTime"])
    for key in ("AccessionNumber", "InstitutionName", "ReferringPhysicianName", "StationName", "OperatorsName",
                "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge"):
        setattr(ds, key, phi[key])
    ds.Modality = "CT"
    ds.Manufacturer = "ProbMed Synthetic"
    ds.StudyDescription = "CT CHEST WITH CONTRAST"
    ds.SeriesDescription = "AXIAL MEDIASTINUM"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid(seed, study_id, "ct-study")
    ds.SeriesInstanceUID = study_uid(seed, study_id, "ct-series")
    ds.StudyID = study_id[-8:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [-FIELD_OF_VIEW_MM / 2, -FIELD_OF_VIEW_MM / 2, 0.0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = 5.0
    ds.PixelSpacing = [round(FIELD_OF_VIEW_MM / rows, 4), round(FIELD_OF_VIEW_MM / cols, 4)]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024.0, 1.0, "HU"
    ds.WindowCenter, ds.WindowWidth = WINDOW_CENTER, WINDOW_WIDTH
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = stored.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
