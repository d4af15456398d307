"""Burned-in text (issue 28): a patient's name drawn into the pixels of a chest film that says
``BurnedInAnnotation=NO``, or inside the imaging sector of an echo cine, is found by offline OCR (Tesseract) at
``probmed data build`` and blanked (the default) or refused with a counted cause; a clean film is left as it was.

"Not legible" is checked with the same reader that recovers the name from the input: every word of the name is read
from the source pixels, and none from the built ones. These tests need Tesseract and its English model; they skip
(saying so) where it is not installed, and fail under CI, whose ``.ci/run`` installs it."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont

from probmed.data import burned_in_text
from probmed.data.builder import BuildOptions, build_dataset
from probmed.data.commands import main
from probmed.data.manifest import write_manifest
from probmed.data.readers import read_cxr
from probmed.data.synthetic.cxr import render_cxr, to_dicom_bytes
from probmed.data.synthetic.echo import render_echo

SALT = "burned-in-text-test-salt"
NAME = ("JOHN", "PUBLIC", "12345678")
PHI = {"StudyDate": "20230314", "StudyTime": "101010", "AccessionNumber": "ACC1", "InstitutionName": "St Nowhere",
       "ReferringPhysicianName": "Jones^Ann", "StationName": "ROOM1", "OperatorsName": "Op^One",
       "PatientName": "Public^John", "PatientID": "12345678", "PatientBirthDate": "19500101", "PatientSex": "M",
       "PatientAge": "073Y"}


@pytest.fixture(scope="module", autouse=True)
def ocr_engine():
    if burned_in_text.engine() is None:
        reason = ("Tesseract with its English model is not installed (apt-get install tesseract-ocr "
                  "tesseract-ocr-eng; .ci/run installs it)")
        if os.environ.get("CI"):
            pytest.fail(reason + " — and CI must run these tests")
        pytest.skip(reason)


def _draw(image: np.ndarray, text: str, xy: tuple[int, int], height: int, fill: int = 255) -> np.ndarray:
    """``image`` (``uint8 [H, W]``) with ``text`` drawn at ``xy`` in a ``height``-pixel sans font."""
    canvas = Image.fromarray(image)
    ImageDraw.Draw(canvas).text(xy, text, fill=fill, font=ImageFont.load_default(size=height))
    return np.asarray(canvas)


def _film(path: Path, seed: int, text: str | None) -> Path:
    """A 1024² synthetic DX (the repo's renderer, 12-bit, MONOCHROME2) with ``text`` burned in at the top left,
    over the collimation edge and the shoulder, and a header saying ``BurnedInAnnotation=NO``."""
    rng = np.random.default_rng(seed)
    density = render_cxr(rng, "PA", {"ctr": 0.5}, {}, size=1024)
    if text:
        grey = _draw(np.rint(density * 255).astype(np.uint8), text, (50, 50), 56)
        density = np.where(grey == 255, 1.0, density).astype(np.float32)  # the text at full white
    path.write_bytes(to_dicom_bytes(density, rng, seed=seed, study_id=path.stem, view="PA", view_index=0,
                                    photometric="MONOCHROME2", bits=12, phi=PHI, n_views=1))
    assert pydicom.dcmread(path).BurnedInAnnotation == "NO"
    return path


def _cine(path: Path, text: str | None) -> Path:
    """A 16-frame 512² synthetic echo (the repo's renderer) with ``text`` burned inside its sector, as an
    uncompressed multi-frame ultrasound DICOM saying ``BurnedInAnnotation=NO``."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    cine = render_echo(np.random.default_rng(3), heart_rate=70, rhythm="sinus", ef=0.55, lv_scale=1.0, traits={},
                       frames=16, size=512)
    if text:
        cine = np.stack([_draw(frame, text, (130, 300), 28) for frame in cine])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UltrasoundMultiFrameImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "US"
    ds.PatientName, ds.BurnedInAnnotation = "Public^John", "NO"
    ds.NumberOfFrames, ds.Rows, ds.Columns = cine.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime, ds.PixelData = 20.0, np.ascontiguousarray(cine).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _read_words(frames: np.ndarray) -> set[str]:
    """Every word of the name the OCR reads in ``frames`` (any confidence, any part of a word)."""
    page, _ = burned_in_text._page(np.ascontiguousarray(frames if frames.ndim == 3 else frames[None], np.uint8))
    texts = [text.upper() for text, _, _ in burned_in_text._tesseract(page, "cxr")]
    return {word for word in NAME if any(word in text for text in texts)}


def _members(out: Path) -> dict[str, bytes]:
    members = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return members


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("films")
    rows = []
    for i, text in enumerate(["JOHN PUBLIC 12345678", None]):
        film = _film(root / f"film{i}.dcm", seed=i, text=text)
        rows.append({"study_id": f"S{i}", "patient_id": f"P{i}", "split": "train", "cxr": film.name,
                     "report_text": "No acute disease."})
    write_manifest(root / "studies.csv", rows)
    return root / "studies.csv"


def _grey(data: bytes, ext: str) -> np.ndarray:
    image, _ = read_cxr(f"view.{ext}", data)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def test_a_name_burned_into_a_film_that_says_no_is_blanked_and_counted_and_a_clean_film_is_untouched(films, tmp_path):
    source = _grey((films.parent / "film0.dcm").read_bytes(), "dcm")
    assert _read_words(source) == set(NAME)  # the reader recovers the whole name from the source pixels

    summary = build_dataset(films, tmp_path / "out", salt=SALT, progress=False)
    assert summary["notes"].get("cxr_burned_in_text_blanked") == 1 and summary["written"] == 2, summary
    members = _members(tmp_path / "out")
    views = {name.split(".", 1)[0]: name for name in members if ".cxr." in f".{name}"}
    assert len(views) == 2
    texts = [name for name in views.values() if name.endswith(".png")]
    assert len(texts) == 1  # the blanked film, stored as its blanked pixels
    built = _grey(members[texts[0]], "png")
    assert built.shape == source.shape
    assert _read_words(built) == set()  # not one word of the name is legible any more
    changed = np.abs(built.astype(int) - source.astype(int)) > 2
    rows, cols = np.nonzero(changed)
    assert rows.max() < 200 and cols.max() < 900  # only around the text (rows 50-106, columns 50-~750) changed
    assert changed.mean() < 0.05

    (clean,) = [name for name in views.values() if name.endswith(".dcm")]  # the clean film: the de-identified DICOM
    original = pydicom.dcmread(films.parent / "film1.dcm").pixel_array
    np.testing.assert_array_equal(pydicom.dcmread(io.BytesIO(members[clean])).pixel_array, original)


def test_refuse_counts_the_film_and_keeps_the_clean_one(films, tmp_path):
    summary = build_dataset(films, tmp_path / "out", salt=SALT, progress=False,
                            options=BuildOptions(burned_in_text="refuse"))
    assert summary["skipped"] == {"cxr_burned_in_text": 1}, summary
    members = _members(tmp_path / "out")
    assert sum(".cxr." in f".{name}" for name in members) == 1 and summary["written"] == 2  # its report is kept
    example = next(s for s in summary["skipped_examples"] if s["reason"] == "cxr_burned_in_text")
    assert not any(word in example["detail"] for word in NAME)  # the refusal never quotes the text


def test_text_inside_the_echo_sector_is_blanked_in_every_frame(tmp_path):
    cine = _cine(tmp_path / "echo0.dcm", "JOHN PUBLIC 12345678")
    clean = _cine(tmp_path / "echo1.dcm", None)
    source = pydicom.dcmread(cine).pixel_array
    assert _read_words(source[[0, 8, 15]]) == set(NAME)
    rows = [{"study_id": f"E{i}", "patient_id": f"P{i}", "split": "train", "echo": p.name}
            for i, p in enumerate([cine, clean])]
    write_manifest(tmp_path / "studies.csv", rows)
    for policy, expect in (("blank", {}), ("refuse", {"echo_burned_in_text": 1, "no_usable_modality": 1})):
        out = tmp_path / policy
        summary = build_dataset(tmp_path / "studies.csv", out, salt=SALT, progress=False,
                                options=BuildOptions(echo_size=None, burned_in_text=policy))
        assert summary["skipped"] == expect, summary
        assert summary["notes"].get("echo_burned_in_text_blanked", 0) == (policy == "blank"), summary
        cines = [np.load(io.BytesIO(data)) for name, data in _members(out).items() if name.endswith("echo.npy")]
        assert len(cines) == (2 if policy == "blank" else 1)
        for built in cines:
            assert built.shape == source.shape
            assert _read_words(built[[0, 5, 10, 15]]) == set()  # frames the OCR did not sample, too
    clean_built = next(c for c in cines)  # under refuse only the clean cine is left: unchanged by the OCR
    unblanked = build_dataset(tmp_path / "studies.csv", tmp_path / "off", salt=SALT, progress=False,
                              options=BuildOptions(echo_size=None, burned_in_text="off"))
    assert unblanked["written"] == 2
    off = {n: np.load(io.BytesIO(d)) for n, d in _members(tmp_path / "off").items() if n.endswith("echo.npy")}
    assert any(np.array_equal(clean_built, c) for c in off.values())


def test_without_the_engine_the_build_stops_with_how_to_install_it(films, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no tesseract on the path
    with pytest.raises(burned_in_text.OCRUnavailable, match="tesseract-ocr"):
        build_dataset(films, tmp_path / "out", salt=SALT, progress=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tar"))
    code = main(["build", "--manifest", str(films), "--out", str(tmp_path / "cli"), "--salt", SALT, "--quiet"])
    assert code == 2 and "--burned-in-text off" in capsys.readouterr().err
    summary = build_dataset(films, tmp_path / "off", salt=SALT, progress=False,
                            options=BuildOptions(burned_in_text="off"))
    assert summary["written"] == 2 and "cxr_burned_in_text_blanked" not in summary["notes"]
