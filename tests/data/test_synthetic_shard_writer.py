"""ShardSetWriter: naming, max count per shard, sizes.json, reproducible bytes, atomicity."""
from __future__ import annotations

import json
import tarfile

import pytest

from probmed.data.shard_writer import FIXED_MTIME, ShardSetWriter, shard_name, write_shards


def _samples(n, split="train"):
    return [(split, {"__key__": f"s{i:04d}", "json": json.dumps({"i": i}), "report.txt": f"FINDINGS: {i}"})
            for i in range(n)]


def test_shards_sizes_and_members(tmp_path):
    sizes = write_shards(tmp_path, _samples(7) + _samples(2, "val"), maxcount=3)
    assert sizes == {"train-000000.tar": 3, "train-000001.tar": 3, "train-000002.tar": 1, "val-000000.tar": 2}
    assert json.loads((tmp_path / "sizes.json").read_text()) == sizes
    assert shard_name("test", 12) == "test-000012.tar"
    with tarfile.open(tmp_path / "train-000000.tar") as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == ["s0000.json", "s0000.report.txt", "s0001.json", "s0001.report.txt",
                                             "s0002.json", "s0002.report.txt"]
        assert all(m.mtime == FIXED_MTIME and m.uname == "probmed" for m in members)
        assert tf.extractfile("s0001.report.txt").read() == b"FINDINGS: 1"


def test_reproducible_bytes(tmp_path):
    write_shards(tmp_path / "a", _samples(5), maxcount=2)
    write_shards(tmp_path / "b", _samples(5), maxcount=2)
    for name in ("train-000000.tar", "train-000001.tar", "train-000002.tar", "sizes.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_interrupted_run_leaves_no_sizes_json(tmp_path):
    write_shards(tmp_path, _samples(4), maxcount=2)  # an earlier complete run
    assert (tmp_path / "sizes.json").exists()
    with pytest.raises(RuntimeError):
        with ShardSetWriter(tmp_path, maxcount=2) as w:
            for split, s in _samples(3):
                w.write(split, s)
            raise RuntimeError("killed")
    assert not (tmp_path / "sizes.json").exists()  # the stale one was removed when writing started
    assert not list(tmp_path.glob("*.tmp"))
    # only complete shards were renamed into place
    assert [p.name for p in sorted(tmp_path.glob("*.tar"))] == ["train-000000.tar"]


def test_rejects_bad_samples(tmp_path):
    with ShardSetWriter(tmp_path) as w:
        with pytest.raises(ValueError):
            w.write("train", {"__key__": "a.b", "json": b"{}"})
        with pytest.raises(TypeError):
            w.write("train", {"__key__": "ab", "npy": [1, 2]})
        with pytest.raises(ValueError):
            w.write("holdout", {"__key__": "ab", "json": b"{}"})
        w.write("test", {"__key__": "ab", "json": b"{}", "_private": b"x"})
    with tarfile.open(tmp_path / "test-000000.tar") as tf:
        assert tf.getnames() == ["ab.json"]
