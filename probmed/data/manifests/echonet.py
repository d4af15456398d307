"""EchoNet-Dynamic → manifest.

Layout (Stanford AIMI)::

    <root>/FileList.csv        FileName, EF, ESV, EDV, FrameHeight, FrameWidth, FPS, NumberOfFrames, Split
    <root>/VolumeTracings.csv  (not used)
    <root>/Videos/0X100009310A3BD7FC.avi

``FileName`` is written with or without ``.avi`` depending on the release; both are handled. Each video is its own
study and patient (EchoNet-Dynamic has one echo per patient). Split: the file's TRAIN / VAL / TEST. Labels:
``finding:reduced_ef`` = EF < 40 %. ``acquired_at`` is blank: the release carries no acquisition time.
"""
from __future__ import annotations

from pathlib import Path

from probmed.data.manifest import FINDING_PREFIX
from probmed.data.manifests.common import dataset_root, read_table, relative, write_studies

REDUCED_EF_PERCENT = 40.0


def make_echonet_manifest(root: str | Path, out: str | Path):
    root, out = dataset_root(root, "EchoNet-Dynamic"), Path(out)
    files = read_table(root, "FileList.csv")
    if files is None:
        raise FileNotFoundError(f"{root}/FileList.csv not found (is this the EchoNet-Dynamic root?)")
    rows = []
    for row in files.to_dict("records"):
        name = row["FileName"] if row["FileName"].lower().endswith(".avi") else f"{row['FileName']}.avi"
        stem = name[:-4]
        ef = row.get("EF", "")
        rows.append({"study_id": stem, "patient_id": stem, "split": row["Split"].strip().lower(),
                     "echo": relative(root / "Videos" / name, out.parent), "echo_fps": row.get("FPS", ""),
                     FINDING_PREFIX + "reduced_ef": int(float(ef) < REDUCED_EF_PERCENT) if ef else ""})
    return write_studies(out, rows, root, "EchoNet-Dynamic", "FileList.csv rows")
