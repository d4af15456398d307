"""What the burned-in-text OCR adds to ``probmed data build``, as a ratio against the rest of the build, in one process.

Writes ``--studies`` studies, each a synthetic 2048 × 2048 12-bit DX film (the repo's renderer) and a 48-frame
600 × 800 ultrasound cine (the repo's echo renderer in a black frame, uncompressed DICOM), then builds them twice in
this process, alternating, ``--repeats`` times each: with ``--burned-in-text off`` and with the default ``blank``.
It prints the median build time of each, the OCR's share (``blank − off``) per CXR view and per cine, and the ratio
``(blank − off) / off``. No input holds text, so this is the cost on clean studies (one Tesseract read per view and
per cine); a study with text costs up to two more reads.

Usage::

    python benchmarks/bench_burned_in_text.py --studies 4 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np



def _inputs(root: Path, studies: int) -> Path:
    """The manifest of ``studies`` clean studies (film + cine) under ``root``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    from probmed.data.manifest import write_manifest
    from probmed.data.synthetic.cxr import render_cxr, to_dicom_bytes
    from probmed.data.synthetic.echo import render_echo

    rows = []
    for i in range(studies):
        rng = np.random.default_rng(i)
        film = root / f"film{i}.dcm"
        film.write_bytes(to_dicom_bytes(render_cxr(rng, "PA", {"ctr": 0.5}, {}, size=2048), rng, seed=i,
                                        study_id=f"S{i}", view="PA", view_index=0, photometric="MONOCHROME2",
                                        bits=12, phi={k: "X" for k in (
                                            "StudyDate", "StudyTime", "AccessionNumber", "InstitutionName",
                                            "ReferringPhysicianName", "StationName", "OperatorsName",
                                            "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                                            "PatientAge")} | {"StudyDate": "20230101", "StudyTime": "101010"},
                                        n_views=1))
        cine = np.zeros((48, 600, 800), np.uint8)
        cine[:, 44:556, 144:656] = render_echo(rng, heart_rate=70, rhythm="sinus", ef=0.55, lv_scale=1.0, traits={},
                                               frames=48, size=512)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UltrasoundMultiFrameImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.NumberOfFrames, ds.Rows, ds.Columns = "US", *cine.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.FrameTime, ds.PixelData = 20.0, cine.tobytes()
        ds.save_as(root / f"echo{i}.dcm", enforce_file_format=True)
        rows.append({"study_id": f"S{i}", "patient_id": f"P{i}", "split": "train", "cxr": film.name,
                     "echo": f"echo{i}.dcm"})
    write_manifest(root / "studies.csv", rows)
    return root / "studies.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from probmed.data.builder import BuildOptions, build_dataset

    with tempfile.TemporaryDirectory() as tmp:
        manifest = _inputs(Path(tmp), args.studies)
        times: dict[str, list[float]] = {"off": [], "blank": []}
        for repeat in range(args.repeats):
            for policy in ("off", "blank") if repeat % 2 == 0 else ("blank", "off"):
                start = time.perf_counter()
                summary = build_dataset(manifest, Path(tmp) / f"out-{policy}-{repeat}", salt="bench-salt-0123",
                                        progress=False, options=BuildOptions(burned_in_text=policy))
                times[policy].append(time.perf_counter() - start)
                assert summary["written"] == args.studies and not summary["skipped"], summary
                assert not any("burned_in_text" in note for note in summary["notes"]), summary["notes"]
    off, blank = statistics.median(times["off"]), statistics.median(times["blank"])
    per_input = (blank - off) / (2 * args.studies)
    print(f"{args.studies} studies (2048^2 DX + 48 x 600 x 800 cine each), median of {args.repeats}:")
    print(f"  build, --burned-in-text off   {off:7.2f} s")
    print(f"  build, --burned-in-text blank {blank:7.2f} s")
    print(f"  OCR per view or cine          {per_input:7.2f} s")
    print(f"  OCR / rest of the build       {(blank - off) / off:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
