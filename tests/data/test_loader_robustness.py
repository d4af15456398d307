"""A hostile dataset — corrupt and truncated DICOM, NaN/inf ECG, wrong lead count, empty report, unknown file
extension, pickle payloads, an empty shard, a truncated shard, fewer shards than ranks × workers — is read to the
end: every bad input skipped and counted by cause, nothing unpickled, and a real 2-rank DDP fit completes with the
counts in TensorBoard. (Reader-level cases and the truncated-shard count of one stream are in
test_data_pipeline.py; this file covers whole runs.)"""
from __future__ import annotations

import math
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, run_probmed
from probmed.data import schema
from probmed.data.datamodule import ProbMedDataModule
from probmed.data.streams import EvalStream, TrainStream

from shardkit import dicom_bytes, npy_bytes, small_inputs, study, write_split

SMOKE = str(REPO / "configs" / "smoke.yaml")
CAUSES = {"cxr_corrupt_dicom", "ecg_nonfinite", "ecg_wrong_lead_count", "text_empty", "unknown_extension",
          "unsafe_sample", "empty_shard"}


class _Exploit:
    """Unpickling this calls ``open(path, "w")``: the marker file exists iff something unpickled shard content."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _hostile_train_shard(marker: Path, rng) -> list[dict]:
    bad = {name: study(f"bad{name}", rng=rng) for name in ("pyd", "pkl", "dcm", "cut", "nan", "inf", "leads", "text",
                                                           "ext")}
    bad["dcm"]["cxr.0.dcm"] = b"\0" * 200 + b"not a DICOM"
    bad["cut"]["cxr.0.dcm"] = dicom_bytes(np.ones((32, 32), np.uint16))[:-700]
    nan = (rng.standard_normal((12, 500)) * 0.3).astype(np.float32)
    nan[2, 10] = np.nan
    bad["nan"][schema.ECG_EXT] = npy_bytes(nan)
    bad["inf"][schema.ECG_EXT] = npy_bytes(np.full((12, 500), np.inf, np.float32))
    bad["leads"][schema.ECG_EXT] = npy_bytes(np.ones((8, 500), np.int16))
    bad["text"][schema.REPORT_EXT] = b"FINDINGS:\n\nIMPRESSION:  "
    bad["ext"]["scan.tiff"] = b"II*\0 unknown format"
    bad["pyd"]["payload.pyd"] = pickle.dumps(_Exploit(str(marker)))
    bad["pkl"]["payload.pickle"] = pickle.dumps(_Exploit(str(marker)))
    return [*bad.values(), *(study(f"good{i}", rng=rng) for i in range(6))]  # bad first: read in a short epoch


@pytest.fixture
def hostile(tmp_path) -> tuple[Path, Path]:
    """Train: a clean shard, a hostile shard, an empty shard (3 shards < 2 ranks × 2 workers); val: a clean shard
    and a truncated one."""
    rng = np.random.default_rng(0)
    marker = tmp_path / "PWNED"
    data = tmp_path / "data"
    write_split(data, "train", [[study(f"t{i}", rng=rng) for i in range(8)], _hostile_train_shard(marker, rng), []])
    val = write_split(data, "val", [[study(f"v{i}", split="val", rng=rng) for i in range(6)],
                                    [study(f"w{i}", split="val", rng=rng) for i in range(6)]])
    val[1].write_bytes(val[1].read_bytes()[: val[1].stat().st_size // 2 + 100])
    return data, marker


def test_every_bad_input_is_skipped_and_counted_over_ranks_and_workers(hostile):
    data, marker = hostile
    dm = ProbMedDataModule(str(data), batch_size=4, inputs=small_inputs())
    urls, _ = dm.shards("train")
    world, workers = 2, 2
    counts, per_worker = Counter(), []
    for global_worker in range(world * workers):
        stream = TrainStream(urls, dm.decoder, dm.collator, 4, 0, batches_per_worker=5, num_workers=workers,
                             shuffle_buffer=4)
        got = list(stream.batches_for(global_worker, world * workers))
        per_worker.append(len(got))
        assert all(len(b["study_id"]) == 4 for b in got)
        for batch in got:
            counts.update(batch["skipped"])
            assert not any(sid.startswith("badp") for sid in batch["study_id"])  # pickle carriers never appear
    assert per_worker == [5] * 4  # every worker fed, though there are fewer shards than workers
    assert CAUSES <= set(counts), f"missing causes: {CAUSES - set(counts)}"
    assert counts["unsafe_sample"] >= 2 and not marker.exists()
    val = EvalStream(dm.shards("val")[0], dm.decoder, dm.collator, 4, 0)
    val_counts = Counter()
    ids = []
    for batch in val.batches_for(0, 1):
        val_counts.update(batch["skipped"])
        ids += batch["study_id"]
    assert val_counts["shard_read_error"] >= 1 and {f"v{i}" for i in range(6)} <= set(ids)


def test_a_dataset_with_no_usable_study_fails_clearly_instead_of_hanging(tmp_path):
    write_split(tmp_path, "train", [[], []])
    dm = ProbMedDataModule(str(tmp_path), batch_size=2, inputs=small_inputs())
    stream = TrainStream(dm.shards("train")[0], dm.decoder, dm.collator, 2, 0, batches_per_worker=1, num_workers=1,
                         shuffle_buffer=1)
    with pytest.raises(RuntimeError, match="no usable study"):
        next(iter(stream.batches_for(0, 1)))


@pytest.mark.ddp
def test_two_rank_ddp_fit_on_hostile_shards_completes_and_logs_skips(hostile, tmp_path):
    data, marker = hostile
    args = ["fit", "--config", SMOKE, "--data.data_dir", str(data), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.strategy", "ddp",
            "--trainer.devices", "2", "--data.batch_size", "4", "--data.num_workers", "2",
            "--data.shuffle_buffer", "4", "--data.inputs.ecg.init_args.rate", "50", "--data.inputs.ecg.init_args.seconds", "10"]
    fit = run_probmed(args, cwd=tmp_path, timeout=400)
    assert fit.returncode == 0, fit.output[-4000:]
    assert "MEMBER: 1/2" in fit.output and "MEMBER: 2/2" in fit.output
    (version,) = sorted((tmp_path / "smoke").glob("version_*"))[-1:]
    events = EventAccumulator(str(version))
    events.Reload()
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert all(math.isfinite(v) for v in scalars["train/loss"])
    logged = {tag.split("/", 3)[3] for tag in scalars if tag.startswith("data/train/skipped/")}
    assert {"unsafe_sample", "empty_shard"} <= logged, sorted(logged)
    assert sum(scalars["data/train/skipped_total"]) >= 5
    assert "shard_read_error" in {tag.split("/", 3)[3] for tag in scalars if tag.startswith("data/val/skipped/")}
    assert not marker.exists()
