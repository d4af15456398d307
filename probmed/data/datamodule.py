"""LightningDataModule streaming sharded multimodal studies (see :mod:`probmed.data.schema` for the layout)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from probmed.data import registry, schema
from probmed.data.labels import read_vocabulary
from probmed.user_errors import did_you_mean
from probmed.data.inputs import ModalityInput, TextInput
from probmed.data.limits import Limits
from probmed.data.streams import EvalStream, TrainStream, loader
from probmed.data.studies import StudyCollator, StudyDecoder


#: ``predict_split`` value -> the dataset splits it embeds
PREDICT_SPLITS = {"train": ("train",), "val": ("val",), "test": ("test",), "all": ("train", "val", "test")}


class ProbMedDataModule(L.LightningDataModule):
    """Streams ``<split>-NNNNNN.tar`` webdataset shards of one dataset directory.

    Args:
        data_dir: directory holding the shards and ``sizes.json`` (written by ``probmed data synth|build``).
        modalities: which modalities to load; default: the registry's default modalities (``cxr, ecg, echo, text``,
            :func:`probmed.data.registry.default_modalities`) plus every other modality ``inputs`` names (e.g. the
            opt-in ``ct``, or one the registry does not know). Views of a stored modality (``cxr_view2``,
            ``text_impression``) and subsets
            are loaded by listing them.
        batch_size: studies per batch per device.
        num_workers: DataLoader worker processes per device (0 decodes in the training process).
        worker_nice: niceness the workers add to their own (Unix ``nice``): on a CPU shared by training and
            decoding, e.g. 10 lets the training threads preempt the workers, which then decode in the time those
            threads leave idle (docs/results.md, "make demo's phases"); 0 leaves the workers at the trainer's.
        positives: ``"study"``: only a study's own modalities are positives; ``"patient"``: all studies of a patient.
        train_batches_per_epoch: batches per rank per epoch; default: the training split's size divided by
            ``batch_size × world size`` (rounded down to a multiple of ``num_workers``, at least one per worker).
        shuffle_buffer: studies held in each worker's shuffle buffer.
        seed: seeds shard order, shuffling and per-study random choices (with the epoch), identical on all ranks.
        inputs: modality name → its input pipeline, ``{class_path: ..., init_args: {...}}`` (any
            :class:`~probmed.data.inputs.ModalityInput`; a class name alone is enough, e.g. ``ImageInput`` with
            ``prefix: ct`` for a CT modality stored as ``ct.<i>.dcm``). A loaded modality without an entry gets
            the registry's default pipeline; one the registry does not know needs an entry. Override one option
            with ``--data.inputs.<name>.init_args.<option> VALUE``.
        uncertain: what an uncertain (-1) label of the dataset becomes: ``ignore`` (unknown), ``positive`` or
            ``negative`` (CheXpert's U-Ignore / U-Ones / U-Zeros). The label names come from the dataset's
            ``labels.json`` (:mod:`probmed.data.labels`), as :attr:`label_names`.
        limits: resource limits to change from their defaults, ``{name: value}`` (:mod:`probmed.data.limits`: shard
            members over them are skipped unread and counted as ``<modality>_too_large``).
        predict_split: the studies ``probmed predict`` embeds: ``train``, ``val``, ``test`` or ``all`` (the three
            splits, each study once).
    """

    def __init__(
        self,
        data_dir: str = "data_shards/demo",
        modalities: list[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        positives: Literal["study", "patient"] = "study",
        train_batches_per_epoch: int | None = None,
        shuffle_buffer: int = 256,
        seed: int = 0,
        inputs: dict[str, ModalityInput] | None = None,
        uncertain: Literal["ignore", "positive", "negative"] = "ignore",
        worker_nice: int = 0,
        limits: dict[str, int] | None = None,
        predict_split: Literal["train", "val", "test", "all"] = "test",
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.data_dir = Path(data_dir)
        self.inputs = resolve_inputs(modalities, inputs)
        self.modalities = list(self.inputs)
        self.limits = Limits.from_overrides(limits)
        for pipeline in self.inputs.values():
            pipeline.limits = self.limits
        if worker_nice < 0:
            raise ValueError(f"worker_nice must be ≥ 0 (workers can only lower their priority), got {worker_nice}")
        self.batch_size, self.num_workers, self.worker_nice = batch_size, num_workers, worker_nice
        if predict_split not in PREDICT_SPLITS:
            raise ValueError(f"predict_split must be one of {', '.join(PREDICT_SPLITS)}, got {predict_split!r}")
        self.positives, self.seed, self.predict_split = positives, seed, predict_split
        self.train_batches_per_epoch, self.shuffle_buffer = train_batches_per_epoch, shuffle_buffer
        self.label_names: list[str] = list(read_vocabulary(self.data_dir)["labels"])
        self.decoder = StudyDecoder(self.inputs, positives, labels=tuple(self.label_names), uncertain=uncertain)
        self.collator = StudyCollator(self.inputs)
        self._streams: dict[str, EvalStream | TrainStream] = {}
        self._resume_at: tuple[int, int] | None = None  # from a checkpoint: (epoch, batches per rank trained)

    # -- shards --------------------------------------------------------------------------------------------------
    def shards(self, split: str) -> tuple[list[str], int]:
        """``(shard paths, number of studies)`` of a split, from ``sizes.json`` (shards it lists that are missing
        on disk are an error: a half-written dataset must not train silently on part of itself)."""
        sizes_file = self.data_dir / schema.SIZES_FILE
        if not sizes_file.is_file():
            raise FileNotFoundError(
                f"{sizes_file} not found: build the dataset first, e.g. `probmed data synth --out {self.data_dir}`"
            )
        sizes = json.loads(sizes_file.read_text())
        names = sorted(n for n in sizes if n.startswith(f"{split}-") and n.endswith(".tar"))
        missing = [n for n in names if not (self.data_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) listed in {sizes_file} are missing, e.g. {missing[0]}")
        return [str(self.data_dir / n) for n in names], sum(int(sizes[n]) for n in names)

    def _place(self, stream):
        trainer = self.trainer
        if trainer is not None:
            stream.rank, stream.world_size = trainer.global_rank, trainer.world_size
        return stream

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    # -- Lightning hooks -----------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        for name in self.inputs:
            if isinstance(self.inputs[name], TextInput):
                self.inputs[name].load_tokenizer()  # fail early (and once) on a wrong tokenizer path
        if stage in (None, "fit"):
            urls, n_studies = self.shards("train")
            world = self.trainer.world_size if self.trainer is not None else 1
            workers = max(1, self.num_workers)
            per_rank = self.train_batches_per_epoch or n_studies // (self.batch_size * world)
            if per_rank < 1:
                raise ValueError(
                    f"training split has {n_studies} studies: too few for one batch of {self.batch_size} on each of "
                    f"{world} rank(s); lower batch_size or set train_batches_per_epoch"
                )
            per_worker = max(1, per_rank // workers)
            self._streams["train"] = TrainStream(
                urls, self.decoder, self.collator, self.batch_size, self.seed, per_worker, self.num_workers,
                self.shuffle_buffer,
            )
        for split in {"fit": ["val"], "validate": ["val"], "test": ["test"]}.get(stage or "", ["val", "test"]):
            urls, _ = self.shards(split)
            self._streams[split] = EvalStream(urls, self.decoder, self.collator, self.batch_size, self.seed)
        if stage in (None, "predict"):
            urls = [u for split in PREDICT_SPLITS[self.predict_split] for u in self.shards(split)[0]]
            self._streams["predict"] = EvalStream(urls, self.decoder, self.collator, self.batch_size, self.seed)
        for stream in self._streams.values():
            stream.limits = self.limits

    def train_dataloader(self):
        train = loader(self._place(self._streams["train"]), self.num_workers, self._epoch, nice=self.worker_nice)
        train.resume_at, self._resume_at = self._resume_at, None
        return train

    def val_dataloader(self):
        return loader(self._place(self._streams["val"]), self.num_workers, self._epoch, nice=self.worker_nice)

    def test_dataloader(self):
        return loader(self._place(self._streams["test"]), self.num_workers, self._epoch, nice=self.worker_nice)

    def predict_dataloader(self):
        """The ``predict_split`` studies (default ``test``), each once, in shard order."""
        return loader(self._place(self._streams["predict"]), self.num_workers, self._epoch, nice=self.worker_nice)

    def state_dict(self) -> dict:
        """The training stream's position: seed, epoch and batches per rank already trained in that epoch (the
        stream is a pure function of seed, epoch, rank and worker, so this is all exact resume needs)."""
        state = {"seed": self.seed}
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            state["epoch"] = trainer.current_epoch
            state["batches_done"] = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            state["epoch_batches"] = trainer.num_training_batches
            state["world_size"] = trainer.world_size
            state["num_workers"] = self.num_workers
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"checkpoint was trained with data seed {state['seed']}, config says {self.seed}")
        if "batches_done" not in state:
            return
        world = self.trainer.world_size if self.trainer is not None else 1
        layout = (state["world_size"], state["num_workers"])
        if layout != (world, self.num_workers):
            warnings.warn(
                f"resuming with world size × workers {(world, self.num_workers)} instead of {layout}: the rest of "
                f"epoch {state['epoch']} reads a different sample order than an uninterrupted run", stacklevel=2)
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= state["epoch_batches"]:  # saved at the end of an epoch: the next one starts from its beginning
            epoch, done = epoch + 1, 0
        self._resume_at = (epoch, done)


def resolve_inputs(modalities: list[str] | None, inputs: dict[str, ModalityInput] | None) -> dict[str, ModalityInput]:
    """The pipelines to load, by modality name (see :class:`ProbMedDataModule`'s ``modalities`` and ``inputs``)."""
    inputs = dict(inputs or {})
    if modalities is None:
        defaults = registry.default_modalities()
        modalities = [*defaults, *(n for n in inputs if n not in defaults)]
    names = list(modalities)
    registry.check_names(names)
    out: dict[str, ModalityInput] = {}
    for name in names:
        if name in inputs:
            if not isinstance(inputs[name], ModalityInput):
                raise TypeError(f"data.inputs.{name} must be a ModalityInput, got {type(inputs[name]).__name__}")
            out[name] = inputs[name]
        elif name in registry.SPECS:
            out[name] = registry.default_input(name)
        else:
            raise ValueError(
                f"data.modalities: unknown modality {name!r}{did_you_mean(name, registry.SPECS)}: the registry knows {sorted(registry.SPECS)}; a new one needs "
                f"its pipeline in data.inputs.{name} (class_path + init_args, e.g. probmed.data.inputs.ImageInput "
                f"with prefix: {name})")
    return out


__all__ = ["ProbMedDataModule", "resolve_inputs"]
