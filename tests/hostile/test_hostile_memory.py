"""Bounded memory on hostile shards (issue 28): each bomb — a few KB to a few MB on disk, declaring hundreds of MB
to GBs — is read by the shard reader and the readers in a child process whose peak RSS must stay within 1.5× the
peak on a normal shard (+ 32 MB), with the bomb refused by a counted ``*_too_large`` cause and the normal studies
beside it still read.

The child imports only what the loader's decoding needs (the ``probmed`` package's ``__init__``, which imports
torch, is bypassed), so the bound is not hidden under the ~1 GB of a torch import. Its peak is read from
``/proc/self/status`` (``VmHWM``, the peak of the child's own address space): on Linux
``getrusage(RUSAGE_SELF).ru_maxrss`` keeps the parent's peak across ``exec``, so a child of the pytest process
(torch imported) would report pytest's ~800 MB whatever it read."""
from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import generate_uid

from conftest import REPO
from shardkit import study

_CHILD = r"""
import json, resource, sys, types
pkg = types.ModuleType("probmed"); pkg.__path__ = [sys.argv[1] + "/probmed"]; sys.modules["probmed"] = pkg
from collections import Counter
from probmed.data.shard_members import shard_samples
from probmed.data.readers import UnreadableInput, read_cxr, read_ecg_npy, read_echo_npy, read_report
counts, keys = Counter(), []
def handler(exc):
    counts["shard_read_error"] += 1
    return True
for sample in shard_samples(sys.argv[2], handler, lambda cause, detail: counts.update([cause])):
    keys.append(sample["__key__"])
    for ext, data in sample.items():
        try:
            if ext.startswith("cxr."):
                read_cxr(ext, data)
            elif ext == "ecg.npy":
                read_ecg_npy(data, 12)
            elif ext == "echo.npy":
                read_echo_npy(data)
            elif ext == "report.txt":
                read_report(data)
            elif ext == "json":
                json.loads(data)
        except UnreadableInput as exc:
            counts[exc.reason] += 1
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rss_kb": hwm, "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "counts": counts, "keys": keys, "torch": "torch" in sys.modules}))
"""

MiB = 1 << 20


def _measure(shard: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(REPO), str(shard)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _normal_members() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    samples = [study(f"n{i}", split="val", rng=rng) for i in range(4)]
    return [(f"{s['__key__']}.{ext}", data) for s in samples for ext, data in s.items() if ext != "__key__"]


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _pad(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _gzip_shard(path: Path, bomb_name: str, bomb_size: int, bomb_head: bytes = b"", chunks=None) -> Path:
    """A gzip shard: normal studies, then a member of ``bomb_size`` bytes (``bomb_head`` then zeros, or ``chunks``)
    streamed into the compressor (never in memory), then more normal studies."""
    members = _normal_members()
    with gzip.open(path, "wb", compresslevel=9) as out:
        for name, data in members[:10]:
            out.write(_header(name, len(data)) + data + _pad(len(data)))
        out.write(_header(bomb_name, bomb_size))
        out.write(bomb_head)
        written, zeros = len(bomb_head), bytes(MiB)
        for chunk in (chunks or ()):
            out.write(chunk)
            written += len(chunk)
        while written < bomb_size:
            step = min(MiB, bomb_size - written)
            out.write(zeros[:step])
            written += step
        out.write(_pad(bomb_size))
        for name, data in members[10:]:
            out.write(_header(name, len(data)) + data + _pad(len(data)))
        out.write(b"\0" * 1024)
    return path


def _npy_head(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _png_rows(width: int, height: int) -> bytes:
    """A grey 8-bit PNG of ``width × height`` zeros, its IDAT compressed row by row (a few hundred KB)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor, idat, row = zlib.compressobj(9), [], bytes(width + 1)
    for _ in range(height):
        idat.append(compressor.compress(row))
    idat.append(compressor.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b""))


def _deflated_dicom(side: int) -> bytes:
    """A DX radiograph in the Deflated Explicit VR Little Endian syntax declaring ``side²`` 8-bit pixels, all
    present (zeros), the dataset deflated in 1 MiB steps (~1 KB per MB)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    pixel_header = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", side * side)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(body.getvalue() + pixel_header)]
    zeros = bytes(MiB)
    for start in range(0, side * side, MiB):
        parts.append(compressor.compress(zeros[: min(MiB, side * side - start)]))
    parts.append(compressor.flush())
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    return head.getvalue() + b"".join(parts)


def _plain_shard(path: Path, extra: list[tuple[bytes, bytes]]) -> Path:
    """An uncompressed shard: normal studies with raw ``(header, data)`` members inserted in the middle."""
    members = _normal_members()
    with open(path, "wb") as out:
        for name, data in members[:10]:
            out.write(_header(name, len(data)) + data + _pad(len(data)))
        for header, data in extra:
            out.write(header + data + _pad(len(data)))
        for name, data in members[10:]:
            out.write(_header(name, len(data)) + data + _pad(len(data)))
        out.write(b"\0" * 1024)
    return path


def _sparse_header(name: str, real_size: int) -> bytes:
    """An old-GNU sparse member header storing no data but declaring ``real_size`` bytes of holes (``tarfile``
    reads it as ``real_size`` bytes of zeros)."""
    header = bytearray(_header(name, 0, tarfile.GNUTYPE_SPARSE))
    header[483:495] = b"%011o\0" % real_size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


@pytest.fixture(scope="module")
def normal_rss(tmp_path_factory) -> int:
    shard = tmp_path_factory.mktemp("normal") / "val-000000.tar"
    _plain_shard(shard, [])
    got = _measure(shard)
    assert not got["torch"] and got["keys"] == [f"n{i}" for i in range(4)] and not got["counts"]
    return got["rss_kb"]


BOMBS = {
    # name: (builder, the cause it must be counted as)
    "gzip_member_of_600MiB_zeros": (lambda p: _gzip_shard(p, "b0.echo.npy", 600 * MiB), "echo_too_large"),
    "echo_npy_1500x512x512": (lambda p: _gzip_shard(p, "b0.echo.npy", 1500 * 512 * 512 + 128,
                                                    _npy_head((1500, 512, 512))), "echo_too_large"),
    "ecg_npy_declaring_12x50M": (lambda p: _gzip_shard(p, "b0.ecg.npy", 64 * MiB, _npy_head((12, 50_000_000), "<i2")),
                                 "ecg_too_large"),
    "json_of_64MiB": (lambda p: _gzip_shard(p, "b0.json", 64 * MiB, b'{"a": "'), "meta_too_large"),
    "sparse_member_of_4GiB": (lambda p: _plain_shard(p, [(_sparse_header("b0.echo.npy", 4 << 30), b"")]),
                              "echo_too_large"),
    "png_20000x20000": (lambda p: _plain_shard(p, [(_header("b0.cxr.0.png", len(d := _png_rows(20000, 20000))), d)]),
                        "cxr_too_large"),
    "deflated_dicom_32768x32768": (lambda p: _plain_shard(
        p, [(_header("b0.cxr.0.dcm", len(d := _deflated_dicom(32768))), d)]), "cxr_too_large"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_each_bomb_is_refused_with_a_cause_within_the_memory_bound(tmp_path, normal_rss, name):
    build, cause = BOMBS[name]
    shard = build(tmp_path / "val-000000.tar")
    assert shard.stat().st_size < 8 * MiB  # a compressed stream of a few KB to a few MB
    got = _measure(shard)
    print(f"\n{name}: {shard.stat().st_size} B on disk, peak {got['rss_kb']} kB "
          f"({got['rss_kb'] / normal_rss:.2f}x a normal shard's {normal_rss} kB), counted {dict(got['counts'])}")
    assert got["counts"].get(cause) == 1, got["counts"]
    assert [k for k in got["keys"] if k.startswith("n")] == [f"n{i}" for i in range(4)]  # the studies beside it
    assert got["rss_kb"] <= 1.5 * normal_rss + 32 * 1024, (got["rss_kb"], normal_rss)


def test_unpair_never_writes_out_a_sparse_member_declaring_4_gib(tmp_path):
    from probmed.data.unpair import unpair_shards

    src = tmp_path / "src"
    src.mkdir()
    _plain_shard(src / "train-000000.tar", [(_sparse_header("b0.echo.npy", 4 << 30), b"")])
    (src / "sizes.json").write_text(json.dumps({"train-000000.tar": 4}))
    summary = unpair_shards(src, tmp_path / "out", ["cxr", "ecg"])
    assert summary["skipped"] == {"echo_too_large": 1}
    assert (tmp_path / "out" / "train-000000.tar").stat().st_size < 4 * MiB
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        assert not any(m.name.startswith("b0.") for m in tar.getmembers())
