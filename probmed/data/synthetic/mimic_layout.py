"""A small generated stand-in in the MIMIC-CXR layout: DX DICOM films, free-text reports and the CheXpert label CSV
with all 14 labels and CheXpert's values (1 / 0 / -1 / blank), so the real-data path (``probmed data manifest
mimic-cxr`` → ``data build`` → ``fit`` → ``test``) runs end to end without PhysioNet credentials.

Each label is visible in both modalities: label ``k`` of :data:`~probmed.data.manifests.mimic_cxr.CHEXPERT_LABELS`
owns cell ``k`` of a 4 × 4 grid over the film (a bright disc when positive, a faint one when uncertain) and a
sentence in the report (a positive or negative phrasing, "possible ..." when uncertain, nothing when missing).
Layout written (as PhysioNet ships it)::

    <root>/files/p1X/p1XXXXXXX/sXXXXXXXX/<dicom_id>.dcm      <root>/files/p1X/p1XXXXXXX/sXXXXXXXX.txt
    <root>/mimic-cxr-2.0.0-{metadata,split,chexpert}.csv.gz
"""
from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np

from probmed.data.manifests.common import snake
from probmed.data.manifests.mimic_cxr import CHEXPERT_LABELS

#: Probabilities of a label being positive, negative, uncertain, missing (no_finding is derived).
VALUE_PROBABILITIES = (0.3, 0.45, 0.1, 0.15)


def _film(labels: dict[str, str], rng: np.random.Generator, size: int) -> np.ndarray:
    """``uint16 [size, size]`` 12-bit film: a noisy chest-like gradient plus one disc per positive / uncertain
    label in its grid cell."""
    yy, xx = np.mgrid[:size, :size] / size
    film = 900 + 600 * np.exp(-((xx - 0.5) ** 2) / 0.08) + rng.normal(0, 60, (size, size))
    cell = size // 4
    for k, label in enumerate(CHEXPERT_LABELS):
        strength = {"1": 2000.0, "-1": 700.0}.get(labels[label], 0.0)
        if strength:
            cy, cx = (k // 4 + 0.5) * cell, (k % 4 + 0.5) * cell
            disc = (np.mgrid[:size, :size][0] - cy) ** 2 + (np.mgrid[:size, :size][1] - cx) ** 2 < (cell / 3) ** 2
            film = film + strength * disc
    return np.clip(film, 0, 4095).astype(np.uint16)


def _report(labels: dict[str, str], prompts: dict, rng: np.random.Generator) -> str:
    """A MIMIC-style report: one sentence per non-missing label under FINDINGS, the positives under IMPRESSION."""
    sentences, impression = [], []
    for label in CHEXPERT_LABELS:
        key, value = snake(label), labels[label]
        if value == "1":
            sentence = str(rng.choice(prompts[key]["positive"]))
            impression.append(sentence)
        elif value == "0":
            sentence = str(rng.choice(prompts[key]["negative"]))
        elif value == "-1":
            sentence = f"Possible {label.lower()}."
        else:
            continue
        sentences.append(sentence)
    return (" FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n FINDINGS: " + " ".join(sentences)
            + "\n\n IMPRESSION: " + (" ".join(impression) or "No acute cardiopulmonary process.") + "\n")


def dx_dataset(path: str | Path, pixels: np.ndarray, view: str = "PA", photometric: str = "MONOCHROME2"):
    """A DX (for presentation) chest film data set holding ``uint16 [H, W]`` 12-bit ``pixels``, explicit VR little
    endian, with file meta; the caller adds header values and saves it (``ds.save_as(path, enforce_file_format=True)``)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def _write_dx(path: Path, pixels: np.ndarray, patient: str, study: str, view: str) -> None:
    ds = dx_dataset(path, pixels, view)
    ds.PatientName, ds.PatientID, ds.AccessionNumber = f"Standin^Patient{patient}", patient, f"ACC{study}"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _csv_gz(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with gzip.open(path, "wt", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _labels(rng: np.random.Generator) -> dict[str, str]:
    labels = {label: str(rng.choice(["1", "0", "-1", ""], p=VALUE_PROBABILITIES)) for label in CHEXPERT_LABELS}
    labels["No Finding"] = "1" if not any(v == "1" for k, v in labels.items() if k != "No Finding") else "0"
    return labels


def write_cxr_study(root: Path, subject: str, study: str, index: int, rng: np.random.Generator, prompts: dict,
                    size: int, report: bool = True) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """One study in the MIMIC-CXR layout: one or two DX films (PA, and LATERAL with probability 0.3) and, when
    ``report``, its ``s<study>.txt``. Returns its CheXpert labels and ``[(dicom_id, view), ...]``."""
    folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
    labels = _labels(rng)
    images = []
    for k, view in enumerate(["PA", "LATERAL"][: 1 + int(rng.random() < 0.3)]):
        dicom_id = f"{index:08x}-{k:08x}"
        _write_dx(folder / f"{dicom_id}.dcm", _film(labels, rng, size), subject, study, view)
        images.append((dicom_id, view))
    text = _report(labels, prompts, rng)  # drawn either way, so the films do not depend on `report`
    if report:
        (folder.parent / f"s{study}.txt").write_text(text)
    return labels, images


def write_cxr_tables(root: Path, studies: list[dict]) -> None:
    """The metadata, split and CheXpert CSVs (gzip) of ``studies``: dicts with ``subject``, ``study``, ``split``
    (``train`` / ``validate`` / ``test``), ``labels``, ``images`` (from :func:`write_cxr_study`) and optionally
    ``StudyDate`` / ``StudyTime`` (as MIMIC-CXR writes them: numbers; then the metadata has those columns)."""
    timed = any("StudyTime" in s for s in studies)
    meta_header = ["dicom_id", "subject_id", "study_id", "ViewPosition", *(["StudyDate", "StudyTime"] if timed else [])]
    meta_rows, split_rows, label_rows = [], [], []
    for s in studies:
        for dicom_id, view in s["images"]:
            times = [s.get("StudyDate", ""), s.get("StudyTime", "")] if timed else []
            meta_rows.append([dicom_id, s["subject"], s["study"], view, *times])
            split_rows.append([dicom_id, s["study"], s["subject"], s["split"]])
        label_rows.append([s["subject"], s["study"], *[s["labels"][label] for label in CHEXPERT_LABELS]])
    _csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta_header, meta_rows)
    _csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    _csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT_LABELS], label_rows)


def write_mimic_cxr_standin(root: str | Path, phrases: dict, studies: int = 200, seed: int = 0, size: int = 64,
                            splits: tuple[float, float] = (0.7, 0.85)) -> Path:
    """Write ``studies`` studies (one or two views each) in the MIMIC-CXR layout under ``root``; returns ``root``.

    ``phrases``: per snake-case CheXpert label, ``{"positive": [...], "negative": [...]}`` sentences the reports
    draw from (e.g. the shipped ``chexpert14`` zero-shot prompt set, so that zero-shot has something to find).
    ``splits``: cumulative fractions of train and validate (the rest is test), by study order.
    """
    root, rng = Path(root), np.random.default_rng(seed)
    prompts = phrases
    written = []
    for i in range(studies):
        subject, study = f"1{i // 2:07d}", f"5{i:07d}"
        labels, images = write_cxr_study(root, subject, study, i, rng, prompts, size)
        split = "train" if i < splits[0] * studies else ("validate" if i < splits[1] * studies else "test")
        written.append({"subject": subject, "study": study, "split": split, "labels": labels, "images": images})
    write_cxr_tables(root, written)
    return root
