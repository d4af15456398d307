"""Loader throughput at reference sizes, beside the raw tar read rate of the same shards in the same run.

Writes a temporary shard set of ``--studies`` studies at the reference sizes — CXR: a 2048 × 2048 16-bit DICOM
(decoded and resized to 224²), ECG: int16 ``[12, 5000]`` at 500 Hz, echo: ``uint8 [64, 112, 112]`` at 50 frames/s
(clips of 16 × 112²), report: ~200 words (tokenised to ≤ 256 tokens) — then measures, in one process:

* ``raw tar read``       webdataset's tar iteration alone (bytes and samples per second: the I/O ceiling);
* ``decode <modality>``  one modality's ``decode`` (+ ``collate`` for text: tokenisation) per study, one core;
* ``end to end``         ``ProbMedDataModule`` training batches with all four modalities (``num_workers=0``: one
                         worker's rate; and with ``--workers`` DataLoader workers);
* ``memory``             resident set size over ``--epochs`` epochs of the in-process loader (start, peak, end);
* ``colour cine``        peak memory (tracemalloc) of reading one RGB cine DICOM of ``--cine FRAMES,H,W`` (default
                         120 × 480 × 640) with the build's echo reader, beside the whole-cine float64 luma it
                         replaced, on the same decoded pixels (``--cine-only`` runs this part alone).
* ``epochs``             a corpus at the demo's sizes (``probmed data synth``, ``--epoch-studies`` studies, the
                         inputs of configs/demo.yaml) read for ``--epochs`` epochs by 0, 1 and 2 DataLoader workers,
                         each with workers started every epoch (``restart``: the loader before persistent workers)
                         and once (``persistent``); the loaders take turns epoch by epoch (the order rotates), so
                         all rows share the machine's load. Per loader: studies/s over all epochs, time to the
                         first batch in the first epoch and, median, in the later ones (the per-epoch start-up).

``headroom`` = a worker's studies/s divided by the studies/s one training step consumes (``--step-studies-per-s``;
default 130 = batch 64 / 0.49 s, the demo step measured by ``benchmarks/bench_demo_step.py`` on the 2-core
development machine).

Usage::

    python benchmarks/bench_data.py                 # 48 studies, about a minute on 2 cores, then the epochs study
    python benchmarks/bench_data.py --studies 96 --workers 2
    python benchmarks/bench_data.py --only-epochs --epoch-studies 320 --epochs 4
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from probmed.data import schema
from probmed.data.converters import downsized_png
from probmed.data.datamodule import ProbMedDataModule
from probmed.data.readers import read_cxr_dicom
from probmed.data.inputs import CXRInput, ECGInput, EchoInput, TextInput
from probmed.data.shard_writer import write_shards

WORDS = ("heart size is normal the lungs are clear without focal consolidation effusion or pneumothorax "
         "mediastinal contours are unremarkable degenerative changes of the thoracic spine no acute process").split()


def _cxr_dicom(rng: np.random.Generator, side: int = 2048) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.PhotometricInterpretation = "DX", "PA", "MONOCHROME2"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, 0, 2048, 4000
    ramp = np.add.outer(np.arange(side), np.arange(side)) * (4000 / (2 * side))
    ds.PixelData = (ramp + rng.integers(0, 64, (side, side))).astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def make_samples(n: int, seed: int = 0, cxr_size: int | None = None) -> list[dict]:
    """Studies at the reference sizes; with ``cxr_size`` the radiograph is stored as ``probmed data build
    --cxr-size`` stores it (decoded, shrunk to that side, 16-bit PNG)."""
    rng = np.random.default_rng(seed)
    cxr = _cxr_dicom(rng)  # one 8 MiB radiograph reused: decoding cost does not depend on content here
    cxr_name = "cxr.0.dcm"
    if cxr_size:
        cxr, cxr_name = downsized_png(read_cxr_dicom(cxr)[0], cxr_size), "cxr.0.png"
    samples = []
    for i in range(n):
        meta = {"study_id": f"s{i:05d}", "patient_id": f"p{i:05d}", "split": "train", "findings": {},
                "cxr_views": ["PA"], "ecg_leads": list(schema.ECG_LEADS), "ecg_sampling_rate": 500, "echo_fps": 50}
        samples.append({
            "__key__": f"s{i:05d}", "json": json.dumps(meta).encode(), cxr_name: cxr,
            schema.ECG_EXT: _npy((rng.standard_normal((12, 5000)) * 300).astype(np.int16)),
            schema.ECHO_EXT: _npy(rng.integers(0, 255, (64, 112, 112), dtype=np.uint8)),
            schema.REPORT_EXT: f"FINDINGS: {' '.join(rng.choice(WORDS, 200))}\nIMPRESSION: No acute.".encode(),
        })
    return samples


def inputs() -> dict:
    return {"cxr": CXRInput(size=224), "ecg": ECGInput(rate=500, seconds=10), "echo": EchoInput(frames=16, size=112),
            "text": TextInput(max_length=256)}


def rate(fn, n: int, repeat: int = 3) -> float:
    """Items per second of ``fn`` (which processes ``n`` items), best of ``repeat`` (least disturbed by others)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / min(times)


def raw_read(urls: list[str]) -> tuple[float, float]:
    from webdataset.tariterators import tarfile_samples

    def read():
        total = 0
        for sample in tarfile_samples([{"url": u} for u in urls]):
            total += sum(len(v) for k, v in sample.items() if isinstance(v, bytes))
        read.bytes = total

    studies_per_s = rate(read, sum(1 for _ in tarfile_samples([{"url": u} for u in urls])))
    return studies_per_s, studies_per_s * read.bytes / max(1, len(urls)) / 1e6  # MB/s per shard-set pass


def decode_rates(samples: list[dict]) -> dict[str, float]:
    rng = np.random.default_rng(0)
    out = {}
    for name, modality in inputs().items():
        metas = [json.loads(s["json"]) for s in samples]

        def run(modality=modality, metas=metas):
            items = [modality.decode(s, m, rng, True) for s, m in zip(samples, metas)]
            modality.collate(items)

        if name == "text":
            modality.load_tokenizer()
        out[name] = rate(run, len(samples))
    return out


def end_to_end(data_dir: Path, batch_size: int, workers: int, batches: int) -> float:
    dm = ProbMedDataModule(str(data_dir), batch_size=batch_size, num_workers=workers,
                           train_batches_per_epoch=batches, shuffle_buffer=8, inputs=inputs())
    dm.setup("fit")
    loader = dm.train_dataloader()

    def run():
        for _ in loader:
            pass

    return rate(run, len(loader) * batch_size, repeat=2)


def rss_mib() -> float:
    """This process's resident set size in MiB (Linux ``/proc/self/statm``)."""
    import resource

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def memory(data_dir: Path, batch_size: int, epochs: int) -> list[float]:
    dm = ProbMedDataModule(str(data_dir), batch_size=batch_size, num_workers=0, shuffle_buffer=8, inputs=inputs())
    dm.setup("fit")
    stream = dm._streams["train"]
    trace = [rss_mib()]
    for epoch in range(epochs):
        stream.epoch = epoch
        for _ in stream.batches_for(0, 1):
            trace.append(rss_mib())
    return trace


DEMO_INPUTS = {"cxr": lambda: CXRInput(size=64), "ecg": lambda: ECGInput(rate=100, seconds=10),
               "echo": lambda: EchoInput(frames=16, size=40), "text": lambda: TextInput(max_length=96)}


def demo_corpus(directory: Path, studies: int) -> Path:
    """``probmed data synth`` at its default (the demo's) sizes."""
    from probmed.data.commands import main as data_main

    with contextlib.redirect_stdout(io.StringIO()):  # its summary is not part of this benchmark's report
        code = data_main(["synth", "--out", str(directory), "--studies", str(studies), "--seed", "0", "--workers",
                          "1", "--shard-size", str(max(8, studies // 16)), "--quiet"])
    if code != 0:
        raise RuntimeError("probmed data synth failed")
    return directory


def epoch_loaders(data_dir: Path, batch_size: int, batches: int, worker_counts: list[int]) -> dict:
    """``{label: (loader, epoch holder)}``: in-process, and per worker count the loader with workers started every
    epoch (``restart``) and once (``persistent``)."""
    from probmed.data.streams import loader

    variants = [(0, False)] + [(w, p) for w in worker_counts if w > 0 for p in (False, True)]
    out = {}
    for workers, persistent in variants:
        dm = ProbMedDataModule(str(data_dir), batch_size=batch_size, num_workers=workers,
                               train_batches_per_epoch=batches, inputs={k: f() for k, f in DEMO_INPUTS.items()})
        dm.setup("fit")
        epoch = {"now": 0}
        label = "in-process (0 workers)" if workers == 0 else (
            f"{workers} worker{'s' * (workers > 1)}, {'persistent' if persistent else 'restart'}")
        out[label] = (loader(dm._streams["train"], workers, lambda e=epoch: e["now"], persistent=persistent), epoch)
    return out


def epoch_study(loaders: dict, epochs: int) -> dict[str, dict]:
    """Per loader: studies/s over ``epochs`` epochs and the seconds to each epoch's first batch. The loaders take
    turns, one epoch each, in a rotating order."""
    timing = {label: {"seconds": 0.0, "studies": 0, "first": []} for label in loaders}
    labels = list(loaders)
    for epoch in range(epochs):
        for label in labels[epoch % len(labels):] + labels[:epoch % len(labels)]:
            data_loader, holder = loaders[label]
            holder["now"] = epoch
            start = time.perf_counter()
            first = None
            for batch in data_loader:
                first = first if first is not None else time.perf_counter() - start
                timing[label]["studies"] += len(batch["group"])
            timing[label]["seconds"] += time.perf_counter() - start
            timing[label]["first"].append(first)
    return timing


def print_epoch_study(timing: dict[str, dict], epochs: int) -> None:
    print(f"\n{'loader (' + str(epochs) + ' epochs, turns interleaved)':34s} {'studies/s':>10s} "
          f"{'1st batch, epoch 0':>19s} {'1st batch, later (median)':>26s}")
    for label, t in timing.items():
        later = statistics.median(t["first"][1:]) if len(t["first"]) > 1 else float("nan")
        print(f"{label:34s} {t['studies'] / t['seconds']:10.1f} {t['first'][0]:17.2f} s {later:24.2f} s")


def shard_set(directory: Path, samples: list[dict], studies: int) -> list[str]:
    split_samples = [*(("train", s) for s in samples), ("val", samples[0])]  # setup("fit") needs a val split
    write_shards(directory, split_samples, maxcount=max(1, studies // 4))
    return sorted(str(p) for p in directory.glob("train-*.tar"))


def _rgb_cine_dicom(path: Path, frames: int, rows: int, cols: int) -> Path:
    """An uncompressed RGB multi-frame ultrasound DICOM (a colour-Doppler-like cine of random colours)."""
    rng = np.random.default_rng(0)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "US"
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.FrameTime = rows, cols, frames, 20.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rng.integers(0, 256, (frames, rows, cols, 3), dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def cine_memory(directory: Path, frames: int, rows: int, cols: int) -> dict[str, float]:
    """Peak traced MiB of (a) pydicom's decode alone, (b) the build's ``read_echo_dicom`` (decode + blockwise
    grey), (c) the decoded RGB → whole-cine float64 luma of the previous reader; measured one after the other in
    this process."""
    import tracemalloc

    from probmed.data.readers.echo_sources import LUMA, read_echo_dicom, rgb_to_grey

    path = _rgb_cine_dicom(directory / "cine.dcm", frames, rows, cols)

    def peak(fn) -> float:
        tracemalloc.start()
        fn()
        result = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        return result

    rgb = pydicom.dcmread(path).pixel_array
    return {"decode only": peak(lambda: pydicom.dcmread(path).pixel_array),
            "read_echo_dicom (decode + block grey)": peak(lambda: read_echo_dicom(path)),
            "grey only, blocks": peak(lambda: rgb_to_grey(rgb)),
            "grey only, whole-cine float64 (previous)": peak(
                lambda: np.clip(np.rint(rgb.astype(np.float64) @ LUMA), 0, 255).astype(np.uint8))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--step-studies-per-s", type=float, default=130.0)
    parser.add_argument("--cine", default="120,480,640", help="colour cine FRAMES,H,W for the memory probe")
    parser.add_argument("--cine-only", action="store_true", help="run only the colour-cine memory probe")
    parser.add_argument("--epoch-studies", type=int, default=320, help="studies of the epochs study's corpus")
    parser.add_argument("--epoch-batch-size", type=int, default=32)
    parser.add_argument("--only-epochs", action="store_true", help="run the epochs study only")
    args = parser.parse_args()
    if not args.only_epochs:
        frames, rows, cols = (int(x) for x in args.cine.split(","))
        with tempfile.TemporaryDirectory(prefix="bench-cine-") as tmp:
            cine = cine_memory(Path(tmp), frames, rows, cols)
        print(f"# colour cine {frames} x {rows} x {cols} RGB ({frames * rows * cols * 3 / 2**20:.0f} MiB of pixels): "
              "peak traced memory, MiB")
        for name, mib in cine.items():
            print(f"{name:58s} {mib:10.0f}")
        if args.cine_only:
            return
    import torch

    torch.set_num_threads(1)  # one worker = one core
    if not args.only_epochs:
        reference_sizes(args)
    with tempfile.TemporaryDirectory(prefix="bench-epochs-") as tmp:
        t0 = time.perf_counter()
        corpus = demo_corpus(Path(tmp) / "demo", args.epoch_studies)
        print(f"\n# epochs study: {args.epoch_studies} studies at the demo's sizes written in "
              f"{time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        batches = max(2, (args.epoch_studies * 8 // 10) // args.epoch_batch_size // 2 * 2)  # ~ the train split
        loaders = epoch_loaders(corpus, args.epoch_batch_size, batches, [1, 2])
        print_epoch_study(epoch_study(loaders, args.epochs), args.epochs)


def reference_sizes(args) -> None:
    """The reference-size rows: raw read, decodes, end to end, memory."""
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        data_dir, png_dir = Path(tmp) / "dicom", Path(tmp) / "png512"
        t0 = time.perf_counter()
        samples = make_samples(args.studies)
        urls = shard_set(data_dir, samples, args.studies)
        png_samples = make_samples(args.studies, cxr_size=512)
        shard_set(png_dir, png_samples, args.studies)
        print(f"# {args.studies} studies written in {time.perf_counter() - t0:.1f} s, "
              f"{sum(p.stat().st_size for p in data_dir.glob('*.tar')) / 2**20:.0f} MiB in "
              f"{len(urls)} training shards; {os.cpu_count()} cores shared with other jobs "
              f"(load average {os.getloadavg()[0]:.1f})")
        raw_studies, _ = raw_read(urls)
        raw_mb = raw_studies * sum(Path(u).stat().st_size for u in urls) / args.studies / 2**20
        rows = [("raw tar read", raw_studies, f"{raw_mb:.0f} MiB/s")]
        decoded = decode_rates(samples)
        sizes = {"cxr": "2048² DICOM -> 224²", "ecg": "12 x 5000 int16", "echo": "16 x 112² of 64 frames",
                 "text": "~210 words -> <=256 tok"}
        rows += [(f"decode {m} ({sizes[m]})", r, "") for m, r in decoded.items()]
        png_cxr = rate(lambda: [inputs()["cxr"].decode(s, {}, None, False) for s in png_samples], len(png_samples))
        rows.append(("decode cxr (512² PNG from build --cxr-size 512 -> 224²)", png_cxr, ""))
        rows.append(("sum of the four decodes (one study)", 1.0 / sum(1.0 / r for r in decoded.values()), ""))
        batches = max(1, args.studies // args.batch_size)
        e2e0 = end_to_end(data_dir, args.batch_size, 0, batches)
        rows.append(("end to end, datamodule, 1 worker (in-process)", e2e0, ""))
        rows.append(("end to end, 1 worker, shards built with --cxr-size 512",
                     end_to_end(png_dir, args.batch_size, 0, batches), ""))
        if args.workers > 0:
            batches_w = max(args.workers, (batches // args.workers) * args.workers)
            e2ew = end_to_end(data_dir, args.batch_size, args.workers, batches_w)
            rows.append((f"end to end, datamodule, {args.workers} DataLoader workers", e2ew,
                         f"{e2ew / args.workers:.1f}/s per worker"))
        trace = memory(data_dir, args.batch_size, args.epochs)
    print(f"\n{'what':58s} {'studies/s':>10s} {'vs raw':>8s} {'headroom':>9s}  note")
    for name, value, note in rows:
        print(f"{name:58s} {value:10.1f} {value / raw_studies:8.3f} {value / args.step_studies_per_s:8.2f}x  {note}")
    per_epoch = max(1, (len(trace) - 1) // args.epochs)
    ends = [trace[min(len(trace) - 1, (e + 1) * per_epoch)] for e in range(args.epochs)]
    print(f"\nheadroom = studies/s / {args.step_studies_per_s:g} studies/s consumed by the reference training step")
    print(f"memory (RSS, MiB): start {trace[0]:.0f}, peak {max(trace):.0f}, end of each epoch "
          + ", ".join(f"{x:.0f}" for x in ends) + f"  ({len(trace) - 1} batches over {args.epochs} epochs)")
    print(f"median per-batch RSS {statistics.median(trace[1:]):.0f} MiB")


if __name__ == "__main__":
    main()
