"""Readers, study decoding, and shard streaming: shapes, masks, splitting over ranks × workers, bad input."""
from __future__ import annotations

import io
import os
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from probmed.data import schema
from probmed.data.datamodule import ProbMedDataModule
from probmed.data.readers import UnreadableInput, read_cxr_dicom, read_ecg_npy, read_report, resample_ecg
from probmed.data.readers.text import split_sections
from probmed.data.streams import EvalStream, TrainStream
from probmed.data.studies import SkipCounter, StudyCollator, StudyDecoder

from shardkit import dicom_bytes, npy_bytes, small_inputs, study, write_split


# -- readers ---------------------------------------------------------------------------------------------------------
def test_cxr_monochrome1_is_inverted_and_rescale_applied():
    ramp = np.tile(np.arange(0, 4000, 125, dtype=np.uint16), (32, 1))  # brighter to the right in stored values
    mono2, view = read_cxr_dicom(dicom_bytes(ramp, "MONOCHROME2", view="LATERAL"))
    mono1, _ = read_cxr_dicom(dicom_bytes(ramp, "MONOCHROME1"))
    assert view == "LATERAL"
    assert mono2[0, 0] == 0.0 and mono2[0, -1] == 1.0
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    # a positive linear rescale does not change the normalised image; a negative slope (an inverted film, which no
    # device writes) is refused (issue 28; tests/hostile/test_hostile_values.py)
    scaled, _ = read_cxr_dicom(dicom_bytes(ramp, "MONOCHROME2", slope=2.0, intercept=5000))
    np.testing.assert_allclose(scaled, mono2, atol=1e-6)
    with pytest.raises(UnreadableInput, match="cxr_implausible_rescale"):
        read_cxr_dicom(dicom_bytes(ramp, "MONOCHROME2", slope=-2.0, intercept=5000))


@pytest.mark.parametrize("payload, reason", [
    (b"not a dicom file at all", "cxr_corrupt_dicom"),
    (None, "cxr_corrupt_dicom"),  # a valid header whose pixel data is cut short
])
def test_cxr_corrupt_input_is_a_clear_error(payload, reason):
    if payload is None:
        payload = dicom_bytes(np.ones((32, 32), np.uint16))[:-600]
    with pytest.raises(UnreadableInput) as err:
        read_cxr_dicom(payload)
    assert err.value.reason == reason


def test_ecg_reader_units_and_failures():
    raw = np.arange(24, dtype=np.int16).reshape(12, 2) * 100
    np.testing.assert_allclose(read_ecg_npy(npy_bytes(raw), 12), raw / 1000.0)
    bad = np.ones((12, 10), np.float32)
    bad[3, 4] = np.nan
    cases = {
        "ecg_nonfinite": npy_bytes(bad),
        "ecg_wrong_lead_count": npy_bytes(np.ones((8, 10), np.int16)),
        "ecg_unreadable": b"\x93NUMPY garbage",
        "ecg_empty": npy_bytes(np.ones((12, 0), np.int16)),
    }
    for reason, payload in cases.items():
        with pytest.raises(UnreadableInput) as err:
            read_ecg_npy(payload, 12)
        assert err.value.reason == reason


class _Exploit:
    """Unpickling this would create a file: proof that the loader never unpickles shard content."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_object_arrays_are_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = npy_bytes(np.array([_Exploit(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(UnreadableInput):
        read_ecg_npy(payload, 12)
    assert not marker.exists()
    # a whole sample carrying a pickle file is refused before anything in it is decoded
    sample = study("s1")
    sample["extra.pickle"] = pickle.dumps(_Exploit(str(marker)))
    skips = SkipCounter()
    decoder = StudyDecoder({k: v for k, v in small_inputs().items()})
    assert decoder(sample, np.random.default_rng(0), True, skips) is None
    assert skips == {"unsafe_sample": 1} and not marker.exists()


def test_ecg_resampling_keeps_a_sine():
    t = np.arange(1000) / 500.0
    signal = np.sin(2 * np.pi * 5 * t)[None].repeat(12, 0).astype(np.float32)
    out = resample_ecg(signal, 500, 100)
    assert out.shape == (12, 200)
    np.testing.assert_allclose(out[:, 20:-20], np.sin(2 * np.pi * 5 * np.arange(200) / 100.0)[20:-20][None].repeat(12, 0), atol=0.02)


def test_report_sections_and_empty_report():
    text = "INDICATION: dyspnoea\nFINDINGS: Heart is enlarged.\nNo effusion.\nIMPRESSION: Cardiomegaly."
    assert split_sections(text) == {"INDICATION": "dyspnoea", "FINDINGS": "Heart is enlarged.\nNo effusion.",
                                    "IMPRESSION": "Cardiomegaly."}
    assert read_report(text.encode(), ("IMPRESSION", "FINDINGS")) == (
        "IMPRESSION: Cardiomegaly. FINDINGS: Heart is enlarged. No effusion.")
    for empty in (b"", b"  \n ", b"FINDINGS:   \nIMPRESSION:"):
        with pytest.raises(UnreadableInput) as err:
            read_report(empty, ("FINDINGS", "IMPRESSION"))
        assert err.value.reason == "text_empty"


# -- decoding and batching -------------------------------------------------------------------------------------------
def test_missing_and_corrupt_modalities_become_masked_placeholders():
    inputs = small_inputs()
    decoder, collate = StudyDecoder(inputs), StudyCollator(inputs)
    good = study("s1")
    no_echo = study("s2", echo=False)
    corrupt = study("s3")
    corrupt["cxr.0.dcm"] = b"garbage"
    skips = SkipCounter()
    studies = [decoder(s, np.random.default_rng(0), False, skips) for s in (good, no_echo, corrupt)]
    batch = collate(studies, skips.pop_all())
    assert batch["skipped"] == {"cxr_corrupt_dicom": 1}
    assert batch["inputs"]["cxr"].shape == (3, 1, 16, 16)
    assert batch["inputs"]["ecg"]["signal"].shape == (3, 12, 500)
    assert batch["inputs"]["ecg"]["lead_mask"].tolist() == [[True] * 12] * 3  # synthetic records: 12 real leads
    assert batch["inputs"]["echo"]["frames"].shape == (3, 4, 1, 8, 8)
    assert batch["inputs"]["echo"]["frame_mask"].tolist() == [[True] * 4, [False] * 4, [True] * 4]
    assert batch["inputs"]["text"]["input_ids"].shape[0] == 3
    assert batch["present"]["cxr"].tolist() == [True, True, False]
    assert batch["present"]["echo"].tolist() == [True, False, True]
    assert torch.all(batch["inputs"]["echo"]["frames"][1] == 0) and torch.all(batch["inputs"]["cxr"][2] == 0)
    assert batch["labels"].shape == (3, len(schema.FINDINGS))
    assert len(set(batch["group"].tolist())) == 3


def test_patient_positives_share_a_group():
    inputs = small_inputs()
    decoder = StudyDecoder(inputs, positives="patient")
    a, b, c = (decoder(study(k, patient=p), np.random.default_rng(0), False, SkipCounter())
               for k, p in (("s1", "pA"), ("s2", "pA"), ("s3", "pB")))
    assert a["group"] == b["group"] != c["group"]


# -- streaming over ranks and workers --------------------------------------------------------------------------------
@pytest.fixture
def dataset_dir(tmp_path):
    rng = np.random.default_rng(0)
    shards = [[study(f"t{s}x{i}", rng=rng) for i in range(7)] for s in range(5)]
    write_split(tmp_path, "train", shards)
    write_split(tmp_path, "val", [[study(f"v{s}x{i}", split="val", rng=rng) for i in range(5)] for s in range(3)])
    return tmp_path


def _stream(cls, dm, split, **kw):
    urls, _ = dm.shards(split)
    return cls(urls, dm.decoder, dm.collator, dm.batch_size, dm.seed, **kw)


def _iterate_as(stream, rank, world, workers):
    """All batches that rank ``rank`` of ``world`` reads with ``workers`` DataLoader workers."""
    workers = max(workers, 1)
    return [b for w in range(workers) for b in stream.batches_for(rank * workers + w, world * workers)]


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 1), (3, 2), (2, 4)])
def test_eval_stream_reads_every_study_exactly_once(dataset_dir, world, workers):
    dm = ProbMedDataModule(str(dataset_dir), batch_size=4, inputs=small_inputs())
    seen = Counter()
    for rank in range(world):
        for batch in _iterate_as(_stream(EvalStream, dm, "val"), rank, world, workers):
            seen.update(batch["study_id"])
    assert sorted(seen) == sorted(f"v{s}x{i}" for s in range(3) for i in range(5))
    assert set(seen.values()) == {1}


@pytest.mark.parametrize("world, workers", [(1, 1), (3, 2), (4, 2)])
def test_train_stream_gives_every_rank_the_same_number_of_full_batches(dataset_dir, world, workers):
    dm = ProbMedDataModule(str(dataset_dir), batch_size=4, num_workers=workers, inputs=small_inputs())
    counts = []
    for rank in range(world):
        stream = _stream(TrainStream, dm, "train", batches_per_worker=3, num_workers=workers)
        got = _iterate_as(stream, rank, world, workers)
        assert all(len(b["study_id"]) == 4 for b in got)
        counts.append(len(got))
        assert len(got) == len(stream)
    assert len(set(counts)) == 1  # 5 shards, up to 8 global workers: resampling keeps everyone fed


def test_train_stream_is_deterministic_per_epoch(dataset_dir):
    dm = ProbMedDataModule(str(dataset_dir), batch_size=4, inputs=small_inputs())

    def order(epoch):
        stream = _stream(TrainStream, dm, "train", batches_per_worker=4, num_workers=1)
        stream.epoch = epoch
        return [sid for b in _iterate_as(stream, 0, 1, 1) for sid in b["study_id"]]

    assert order(0) == order(0)
    assert order(0) != order(1)


def test_truncated_shard_is_skipped_and_counted(dataset_dir):
    path = dataset_dir / "val-000001.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])
    dm = ProbMedDataModule(str(dataset_dir), batch_size=4, inputs=small_inputs())
    batches = _iterate_as(_stream(EvalStream, dm, "val"), 0, 1, 0)
    ids = [s for b in batches for s in b["study_id"]]
    skipped = Counter()
    for b in batches:
        skipped.update(b["skipped"])
    assert skipped == {"shard_read_error": 1}  # one shard, one count (webdataset reports it once per layer)
    assert all(f"v0x{i}" in ids and f"v2x{i}" in ids for i in range(5))  # the intact shards are read whole
    assert 10 <= len(ids) < 15


def test_an_all_garbage_shard_is_one_read_error_not_also_an_empty_shard(dataset_dir):
    (dataset_dir / "val-000001.tar").write_bytes(b"\x8b garbage, not a tar archive " * 40)
    (dataset_dir / "val-000002.tar").write_bytes(b"")  # a zero-byte file: a valid, empty tar? no: unreadable too
    dm = ProbMedDataModule(str(dataset_dir), batch_size=4, inputs=small_inputs())
    batches = _iterate_as(_stream(EvalStream, dm, "val"), 0, 1, 0)
    skipped = Counter()
    for b in batches:
        skipped.update(b["skipped"])
    assert skipped == {"shard_read_error": 2}, skipped
    assert sorted(s for b in batches for s in b["study_id"]) == sorted(f"v0x{i}" for i in range(5))


def test_config_errors_are_clear(dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown modality"):
        ProbMedDataModule(str(dataset_dir), modalities=["cxr", "mri"])
    with pytest.raises(FileNotFoundError, match="probmed data synth"):
        ProbMedDataModule(str(tmp_path / "nowhere")).setup("fit")
    os.remove(dataset_dir / "train-000002.tar")
    with pytest.raises(FileNotFoundError, match="missing"):
        ProbMedDataModule(str(dataset_dir), inputs=small_inputs()).setup("fit")
    with pytest.raises(ValueError, match="not a local file"):
        EvalStream(["pipe:curl http://x"], None, None, 1, 0)


def test_datamodule_real_dataloader_with_workers(dataset_dir):
    dm = ProbMedDataModule(str(dataset_dir), batch_size=4, num_workers=2, train_batches_per_epoch=4, inputs=small_inputs())
    dm.setup("fit")
    loader = dm.train_dataloader()
    # workers come from a fork server, never a plain fork of this (threaded) process: a fork while another thread
    # holds an interpreter lock left a DDP rank's worker blocked in PyOS_AfterFork_Child for ever
    assert loader.multiprocessing_context.get_start_method() in ("forkserver", "spawn")
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    assert all(b["inputs"]["ecg"]["signal"].shape == (4, 12, 500) for b in batches)
    val = [s for b in dm.val_dataloader() for s in b["study_id"]]
    assert sorted(val) == sorted(f"v{s}x{i}" for s in range(3) for i in range(5))


def _round_robin(stream, epoch: int, workers: int) -> list[list[str]]:
    """The batches a DataLoader with ``workers`` workers yields for ``epoch``, computed without one: each logical
    worker's batches, taken in turn (0, 1, ..., 0, 1, ...)."""
    stream.epoch, stream.skip_batches = epoch, 0
    per_worker = [[b["study_id"] for b in stream.batches_for(w, workers)] for w in range(workers)]
    return [ids for turn in zip(*per_worker, strict=True) for ids in turn]


def test_persistent_workers_start_once_and_follow_the_epoch_and_a_resume(dataset_dir):
    """Two workers started once serve three epochs (the first resumed after 3 batches) exactly as the streams
    computed in this process: the epoch and the resume position reach them through shared memory."""
    epoch = {"now": 0}
    dm = ProbMedDataModule(str(dataset_dir), batch_size=4, num_workers=2, train_batches_per_epoch=6,
                           inputs=small_inputs())
    dm.setup("fit")
    reference = _stream(TrainStream, dm, "train", batches_per_worker=3, num_workers=2)
    want = {e: _round_robin(reference, e, 2) for e in range(3)}
    assert want[0] != want[1] != want[2]
    dm._epoch = lambda: epoch["now"]
    dm.load_state_dict({"seed": 0, "epoch": 0, "batches_done": 3, "epoch_batches": 6, "world_size": 1,
                        "num_workers": 2})
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    got, pids = {}, set()
    for e in range(3):
        epoch["now"] = e
        got[e] = [b["study_id"] for b in loader]
        pids.add(tuple(w.pid for w in loader._iterator._workers))
    assert got == {0: want[0][3:], 1: want[1], 2: want[2]}
    assert len(pids) == 1  # the same two worker processes every epoch


def test_a_stream_copied_outside_a_worker_start_keeps_its_position_but_not_the_sharing(dataset_dir):
    import copy

    dm = ProbMedDataModule(str(dataset_dir), batch_size=4, inputs=small_inputs())
    stream = _stream(TrainStream, dm, "train", batches_per_worker=3, num_workers=2)
    stream.epoch, stream.skip_batches = 5, 2
    twin = copy.deepcopy(stream)
    assert (twin.epoch, twin.skip_batches) == (5, 2)
    twin.epoch = 6
    assert stream.epoch == 5
