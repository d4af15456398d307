"""Bounded memory of ``probmed data build`` on hostile source files (issue 28, item 2): each bomb — a few KB to a
few MB on disk (or a sparse file), declaring hundreds of MB to GBs — sits in a manifest beside normal studies, and
the build, in a child process, must refuse it with a counted ``*_too_large`` cause, write the normal studies, and
peak within 1.5× the peak of the same build without the bomb (+ 32 MB).

As in ``test_hostile_memory.py`` (the loader's bound), the child bypasses the ``probmed`` package's ``__init__``
(the builder itself imports torch, through the modality registry: that import alone is most of the peak, so
the test also measures a child that only imports the builder and holds what each build adds to it to the same
bound) and reads its peak from ``/proc/self/status`` (``VmHWM``):
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` seen from pytest is the maximum over every child it ever waited for, and a
child's own ``ru_maxrss`` starts from pytest's RSS at the fork, so neither isolates one build. The child's
``ru_maxrss`` is printed beside it. The OCR subprocess (Tesseract, reading a bounded page) is not part of the
figure; the bombs are refused before any pixel reaches it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import REPO
from realkit import cxr_dicom, wfdb_record
from test_hostile_memory import MiB, _deflated_dicom, _png_rows

from probmed.data.burned_in_text import engine
from probmed.data.manifest import write_manifest

_CHILD = r"""
import json, resource, sys, types
pkg = types.ModuleType("probmed"); pkg.__path__ = [sys.argv[1] + "/probmed"]; sys.modules["probmed"] = pkg
from probmed.data.builder import BuildOptions, build_dataset
policy = "blank" if sys.argv[4] == "1" else "off"
summary = {"skipped": {}, "written": 0}
if sys.argv[2] != "-":  # "-": the import alone
    summary = build_dataset(sys.argv[2], sys.argv[3], salt="build-memory-test-salt", progress=False,
                            options=BuildOptions(burned_in_text=policy))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rss_kb": hwm, "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "skipped": summary["skipped"], "written": summary["written"], "torch": "torch" in sys.modules}))
"""
NORMAL = 4


def _measure(manifest: Path, out: Path) -> dict:
    ocr = "1" if engine() is not None else "0"  # the default build (OCR on) where Tesseract is installed
    done = subprocess.run([sys.executable, "-c", _CHILD, str(REPO), str(manifest), str(out), ocr],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _normal_rows(root: Path) -> list[dict]:
    """Four ordinary studies: a 1024² 12-bit radiograph, a 10 s 12-lead ECG at 500 Hz (WFDB) and a report each."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(NORMAL):
        pixels = (np.tile(np.linspace(200, 3800, 1024), (1024, 1)) + rng.normal(0, 40, (1024, 1024))).astype(np.uint16)
        film = cxr_dicom(root / f"n{i}" / "film.dcm", pixels)
        ecg = wfdb_record(root / f"n{i}", "ecg", seconds=10.0, seed=i)
        (root / f"n{i}" / "report.txt").write_text("FINDINGS: Normal heart size. IMPRESSION: No acute disease.")
        rows.append({"study_id": f"N{i}", "patient_id": f"P{i}", "split": "train",
                     "cxr": str(film.relative_to(root)), "ecg": str(ecg.relative_to(root)),
                     "report": f"n{i}/report.txt"})
    return rows


def _declared_dicom(path: Path, rows: int, cols: int, frames: int = 1, modality: str = "DX") -> Path:
    """A DICOM whose header declares ``frames × rows × cols`` 16-bit pixels and holds 4 KB of them."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = (pydicom.uid.DigitalXRayImageStorageForPresentation if modality == "DX"
                                    else pydicom.uid.UltrasoundMultiFrameImageStorage)
    meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = generate_uid(), ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = bytes(4096)
    ds.save_as(path, enforce_file_format=True)
    return path


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes on disk as a hole (a few KB used): ``head`` then zeros."""
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def _ecg_header(path: Path, samples: int) -> Path:
    """A WFDB header declaring 12 leads × ``samples`` at 500 Hz, with a 4 KB signal file."""
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    lines = [f"{path.stem} 12 500 {samples}"] + [f"{path.stem}.dat 16 1000/mV 16 0 0 0 0 {lead}" for lead in leads]
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".dat").write_bytes(bytes(4096))
    return path


BOMBS = {
    # name: (column, file maker, the cause it must be counted as)
    "dicom_declaring_60000x60000": ("cxr", lambda d: _declared_dicom(d / "b.dcm", 60000, 60000), "cxr_too_large"),
    "deflated_dicom_32768x32768": ("cxr", lambda d: _write(d / "b.dcm", _deflated_dicom(32768)), "cxr_too_large"),
    "png_20000x20000": ("cxr", lambda d: _write(d / "b.png", _png_rows(20000, 20000)), "cxr_too_large"),
    "report_of_100MB": ("report", lambda d: _sparse(d / "b.txt", 100 * 10**6, b"FINDINGS: " * 100), "text_too_large"),
    "sparse_echo_file_of_4GiB": ("echo", lambda d: _sparse(d / "b.avi", 4 << 30, b"RIFF"), "echo_too_large"),
    "echo_dicom_declaring_1500x1024x1024": ("echo", lambda d: _declared_dicom(d / "b.dcm", 1024, 1024, 1500, "US"),
                                            "echo_too_large"),
    "ecg_header_declaring_12x50M": ("ecg", lambda d: _ecg_header(d / "b.hea", 50_000_000), "ecg_too_large"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def normal(tmp_path_factory) -> tuple[Path, list[dict], int, int]:
    """The normal inputs, their manifest rows, the normal build's peak and the builder import's peak (kB)."""
    root = tmp_path_factory.mktemp("normal")
    rows = _normal_rows(root)
    write_manifest(root / "studies.csv", rows)
    got = _measure(root / "studies.csv", root / "out")
    assert got["written"] == NORMAL and not got["skipped"], got
    imported = _measure(Path("-"), root / "unused")["rss_kb"]
    print(f"\nimport alone: peak {imported} kB; normal build: peak {got['rss_kb']} kB "
          f"(ru_maxrss {got['ru_maxrss_kb']} kB, torch imported: {got['torch']})")
    return root, rows, got["rss_kb"], imported


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_data_build_refuses_each_bomb_with_a_cause_within_the_memory_bound(normal, name, tmp_path):
    root, normal_rows, normal_rss, imported = normal
    column, make, cause = BOMBS[name]
    bomb_dir = root / name
    bomb_dir.mkdir()
    bomb = make(bomb_dir)
    assert sum(p.stat().st_blocks * 512 for p in bomb_dir.iterdir()) < 8 * MiB  # a few KB to a few MB on disk
    rows = [dict(row) for row in normal_rows] + [{"study_id": "B0", "patient_id": "PB", "split": "train",
                                  column: str(bomb.relative_to(root)), "report_text": "No acute disease."}]
    if column == "report":
        del rows[-1]["report_text"]
        rows[-1]["cxr"] = rows[0]["cxr"]  # the bomb's study keeps a modality: only the report is refused
    write_manifest(root / f"{name}.csv", rows)
    got = _measure(root / f"{name}.csv", tmp_path / "out")
    added, normal_added = got["rss_kb"] - imported, normal_rss - imported
    print(f"\n{name}: {os.path.getsize(bomb)} B declared, peak {got['rss_kb']} kB "
          f"({got['rss_kb'] / normal_rss:.2f}x the normal build's {normal_rss} kB; over the import "
          f"{added} kB vs {normal_added} kB), skipped {got['skipped']}")
    assert got["skipped"].get(cause) == 1, got["skipped"]
    assert got["written"] == NORMAL + 1  # the normal studies, and the bomb's study by its other modality
    assert got["rss_kb"] <= 1.5 * normal_rss + 32 * 1024, (got["rss_kb"], normal_rss)
    assert added <= 1.5 * normal_added + 32 * 1024, (added, normal_added)  # the bound without torch's share
