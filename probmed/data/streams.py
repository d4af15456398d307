"""Streaming shards into batches under DDP × DataLoader workers.

Training (:class:`TrainStream`): every epoch, every rank × worker ("global worker") reads its own deterministic
share of an endless sequence of shard permutations — rounds of ``permutation(seed, epoch, round)`` dealt out
round-robin — so shards are split by node and by worker while there are enough of them and resampled when there
are fewer shards than global workers. Each worker yields exactly ``batches_per_worker`` full batches, so every rank
gets the same number of batches (uneven counts hang DDP) and no partial batch is ever trained on.

Evaluation (:class:`EvalStream`): every shard exactly once, dealt round-robin over global workers, in order, with a
final partial batch; ranks may get different numbers of batches, so evaluation code must not run collectives per
step (ProbMed gathers embeddings once, at epoch end).
"""
from __future__ import annotations

import functools

import multiprocessing
import os
import random
import warnings
from typing import Iterator

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import shuffle

from probmed.data.child_processes import init_worker, requeue_signals_blocked, start_fork_server
from probmed.data.limits import DEFAULT_LIMITS
from probmed.data.shard_members import shard_samples
from probmed.data.studies import SkipCounter, StudyCollator, StudyDecoder, batches, stable_hash


def _checked_local(urls: list[str]) -> list[str]:
    """Only plain local files: no ``pipe:``/URL schemes, so a config can never make the loader run a command."""
    for url in urls:
        if "://" in url or url.startswith("pipe:") or not os.path.isfile(url):
            raise ValueError(f"shard {url!r} is not a local file (only local .tar shards are read)")
    return urls


class SharedPosition:
    """A stream's epoch and the batches per rank of that epoch already trained, in shared memory (open_clip's
    ``SharedEpoch`` pattern): loader workers persist across epochs (they start once per loader), so they cannot
    receive the position with a fresh copy of the stream at every ``iter``; the training process writes it here
    before each iteration and every worker reads it when the iteration starts.

    Pickled while a worker process is being started it stays shared; pickled at any other time (``deepcopy``,
    saving) it becomes an unshared copy holding the current values.
    """

    def __init__(self, epoch: int = 0, skip_batches: int = 0):
        self._values = multiprocessing.RawArray("q", [epoch, skip_batches])

    @property
    def epoch(self) -> int:
        return int(self._values[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._values[0] = int(value)

    @property
    def skip_batches(self) -> int:
        return int(self._values[1])

    @skip_batches.setter
    def skip_batches(self, value: int) -> None:
        self._values[1] = int(value)

    def __reduce__(self):
        if multiprocessing.context.get_spawning_popen() is not None:
            return _shared_position, (self._values,)
        return SharedPosition, (self.epoch, self.skip_batches)


def _shared_position(values) -> SharedPosition:
    position = SharedPosition.__new__(SharedPosition)
    position._values = values
    return position


class _ShardStream(IterableDataset):
    """Common state: the shard list, this process's rank and world size, decoding and collation; the epoch lives in
    :class:`SharedPosition` (seen by persistent loader workers)."""

    def __init__(self, urls: list[str], decoder: StudyDecoder, collator: StudyCollator, batch_size: int, seed: int):
        super().__init__()
        self.urls = _checked_local(list(urls))
        if not self.urls:
            raise ValueError("no shards to read")
        self.decoder, self.collator = decoder, collator
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = 0, 1
        self.position = SharedPosition()
        self.limits = DEFAULT_LIMITS  # member size limits (probmed.data.limits); the data module may set others

    @property
    def epoch(self) -> int:
        return self.position.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.position.epoch = value

    def batches_for(self, global_worker: int, total_workers: int) -> Iterator[dict]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        worker = (worker + self.worker_offset()) % workers
        return self.batches_for(self.rank * workers + worker, self.world_size * workers)

    def worker_offset(self) -> int:
        """Which logical worker DataLoader worker 0 serves (a rotation of the workers); 0 unless resuming."""
        return 0

    def _studies(self, urls: Iterator[str], train: bool, skips: SkipCounter, shuffle_rng: random.Random | None,
                 buffer: int) -> Iterator[dict]:
        """Decoded studies of ``urls`` in order (or through a shuffle buffer). A shard that fails to read, wholly or
        part-way, is counted once (``shard_read_error``; the samples read before the failure are used), one that
        reads cleanly but holds no sample once as ``empty_shard``; ``2 × len(self.urls) + 1 + buffer`` shards in a
        row without one usable study (the buffer term: a full shuffle buffer is read before the first study comes
        out) raise a clear error instead of looping forever on an endless training sequence (which would hang every
        other rank)."""
        barren = {"shards": 0}
        limit = 2 * len(self.urls) + 1 + max(buffer, 0)

        def raw_samples() -> Iterator[dict]:
            for url in urls:
                if barren["shards"] >= limit:
                    raise RuntimeError(f"no usable study in {limit} shards in a row (all empty or unreadable; "
                                       f"skipped so far: {dict(skips)}): check the dataset")
                count, errors = 0, []

                def read_error(exc: BaseException, url=url, errors=errors) -> bool:
                    # webdataset reports one broken tar once per layer it passes (tar reader, expander): count the
                    # shard once, as unreadable (never also as empty)
                    if not errors:
                        skips.add("shard_read_error", f"{url}: {type(exc).__name__}: {exc}")
                    errors.append(exc)
                    return True

                # bounded: members over their limit skipped unread, gzip read in chunks (probmed.data.shard_members)
                for sample in shard_samples(url, read_error, skips.add, self.limits):
                    if errors:  # the incomplete sample at the break: part of this shard's one read error
                        continue
                    count += 1
                    yield sample
                if count == 0 and not errors:
                    skips.add("empty_shard", url)
                barren["shards"] += 1

        raw = raw_samples()
        if shuffle_rng is not None and buffer > 1:
            raw = shuffle(buffer, initial=buffer, rng=shuffle_rng)(raw)
        for sample in raw:
            rng = np.random.default_rng([self.seed, self.epoch, stable_hash(sample.get("__key__", ""))])
            study = self.decoder(sample, rng, train, skips)
            if study is not None:
                barren["shards"] = 0
                yield study


class TrainStream(_ShardStream):
    """Endless, resampled, deterministic training stream; one epoch = ``batches_per_worker × workers`` batches per
    rank. ``len()`` is the number of batches per rank per epoch."""

    def __init__(self, urls, decoder, collator, batch_size, seed, batches_per_worker: int, num_workers: int,
                 shuffle_buffer: int = 256):
        super().__init__(urls, decoder, collator, batch_size, seed)
        self.batches_per_worker, self.num_workers, self.shuffle_buffer = batches_per_worker, num_workers, shuffle_buffer

    @property
    def skip_batches(self) -> int:
        """Batches per rank of this epoch already trained (exact resume: skipped on the next iteration)."""
        return self.position.skip_batches

    @skip_batches.setter
    def skip_batches(self, value: int) -> None:
        self.position.skip_batches = value

    def __len__(self) -> int:
        return self.batches_per_worker * max(1, self.num_workers)

    def worker_offset(self) -> int:
        """After a restore at ``skip_batches``, DataLoader worker ``i`` serves logical worker ``(i + skip_batches) %
        workers``: the DataLoader always starts its round-robin at worker 0, and the next batch of the interrupted
        epoch belongs to logical worker ``skip_batches % workers``."""
        return self.skip_batches

    def shard_sequence(self, global_worker: int, total_workers: int) -> Iterator[str]:
        """Shards for one global worker: positions ``global_worker, global_worker + total_workers, ...`` of the
        endless concatenation of per-round permutations (seeded by ``seed, epoch, round``)."""
        n = len(self.urls)
        position, round_cached, permutation = global_worker, -1, []
        while True:
            round_index = position // n
            if round_index != round_cached:
                permutation = np.random.default_rng([self.seed, self.epoch, round_index, 7]).permutation(n)
                round_cached = round_index
            yield self.urls[permutation[position % n]]
            position += total_workers

    def batches_for(self, global_worker: int, total_workers: int) -> Iterator[dict]:
        """The ``batches_per_worker`` batches of one global worker (``rank × workers + worker``) this epoch."""
        skips = SkipCounter()
        rng = random.Random(stable_hash(f"{self.seed}/{self.epoch}/{global_worker}"))
        studies = self._studies(self.shard_sequence(global_worker, total_workers), True, skips, rng,
                                self.shuffle_buffer)
        stream = batches(studies, self.collator, self.batch_size, skips, partial=False)
        done = already_consumed(self.skip_batches, global_worker % max(1, self.num_workers), max(1, self.num_workers))
        for _ in range(done):  # exact resume: re-read (no model compute) what this worker yielded before the stop
            next(stream)
        for _ in range(self.batches_per_worker - done):
            yield next(stream)


def already_consumed(rank_batches: int, worker: int, workers: int) -> int:
    """Batches worker ``worker`` of ``workers`` had produced when its rank had consumed ``rank_batches``: the
    DataLoader takes batches from its workers round-robin (0, 1, ..., W-1, 0, ...), in order."""
    return max(0, (rank_batches - worker + workers - 1) // workers)


class EvalStream(_ShardStream):
    """Every shard once, round-robin over global workers, in order, last batch partial."""

    def batches_for(self, global_worker: int, total_workers: int) -> Iterator[dict]:
        """The batches of one global worker (``rank × workers + worker``): shards ``global_worker::total_workers``."""
        mine = self.urls[global_worker::total_workers]
        skips = SkipCounter()
        yield from batches(self._studies(iter(mine), False, skips, None, 0), self.collator, self.batch_size, skips,
                           partial=True)


# Lightning warns that an IterableDataset's __len__ "could be inaccurate if each worker is not configured
# independently"; TrainStream configures every worker independently (its own shard share and exactly
# batches_per_worker batches), so len() is exact and the warning only misleads users.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")


class EpochAwareLoader(DataLoader):
    """A DataLoader that stamps the current epoch (and, after a restore, the batches to skip) on its stream's
    :class:`SharedPosition` before every iteration, so each epoch draws a new deterministic shard order while the
    workers, started at the first iteration, persist across epochs."""

    def __init__(self, dataset: _ShardStream, epoch_source, **kwargs):
        super().__init__(dataset, batch_size=None, **kwargs)
        self.epoch_source = epoch_source
        self.resume_at: tuple[int, int] | None = None  # (epoch to run next, batches per rank already trained)

    def __iter__(self):
        self.dataset.epoch = int(self.epoch_source())
        if isinstance(self.dataset, TrainStream):
            # The first iteration after a restore is the one that finishes the interrupted epoch (Lightning may
            # still report the previous epoch at that point, when the checkpoint was taken at an epoch's end).
            if self.resume_at is not None:
                self.dataset.epoch, self.dataset.skip_batches = self.resume_at
            else:
                self.dataset.skip_batches = 0
            self.resume_at = None
        with requeue_signals_blocked():  # workers started now never act on Slurm's requeue signal
            return super().__iter__()


def worker_context():
    """How loader workers start: ``forkserver`` (``spawn`` where the platform has no forkserver), never plain fork
    of the (multi-threaded) training process. The fork server has imported this module once; workers are forked
    from it and receive the stream pickled. Why, and what it costs: docs/design.md, "Data loading".

    The fork server first imports :mod:`probmed.data.child_processes` (it dies with the process that started it)
    and is started here, from the calling (main) thread, with Slurm's requeue signals blocked.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["probmed.data.child_processes", __name__])
    start_fork_server(ctx)
    return ctx


def loader(dataset: _ShardStream, num_workers: int, epoch_source, pin_memory: bool = False,
           persistent: bool = True, nice: int = 0) -> DataLoader:
    """The DataLoader for a stream (batches are built in the workers; ``batch_size=None``; workers started by
    :func:`worker_context` at the first iteration and, with ``persistent``, kept for the loader's life: they learn
    each epoch's position through the stream's :class:`SharedPosition`; without, they start again every epoch —
    ``benchmarks/bench_data.py`` compares the two). Workers add ``nice`` to their niceness."""
    return EpochAwareLoader(
        dataset,
        epoch_source,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent and num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
        multiprocessing_context=worker_context() if num_workers > 0 else None,
        worker_init_fn=functools.partial(init_worker, nice=nice) if num_workers > 0 else None,
    )
