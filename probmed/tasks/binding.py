"""The LightningModule: per-modality towers and Gaussian heads, a distributed probabilistic objective, evaluation."""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from probmed.distributed import all_gather_objects
from probmed.embedding import GaussianEmbedding
from probmed.encoders import HeadOptions
from probmed.encoders._common import batch_norm_layers
from probmed.encoders.tower_input import run_tower, select_rows
from probmed.evaluation.collect import EmbeddingCollector
from probmed.evaluation.config import EvaluationConfig
from probmed.evaluation.retrieval import format_table
from probmed.evaluation.suite import Evaluator, format_uncertainty_summary
from probmed.losses import Objective
from probmed.training.accumulation import refuse_gradient_accumulation
from probmed.training.checkpoint_io import TeacherSpec, load_frozen_module
from probmed.training.determinism import seed_step
from probmed.training.eval_loss import EvalLoss
from probmed.training.metric_sync import logging_step, mean_over_ranks
from probmed.training.nonfinite import NonFiniteGuard
from probmed.training.quality_augmentation import QualityAugmentation
from probmed.optim import ParamGroups, apply_lr_scales
from probmed.user_errors import did_you_mean


def copy_initial_weights(encoders: nn.ModuleDict, heads: nn.ModuleDict, init_from: dict[str, str]) -> None:
    """Give each ``key`` of ``init_from`` the tower and head weights of its source key (a clear error for an
    unknown key, a chain, or towers whose parameters differ in names or shapes)."""
    for key, source in init_from.items():
        if key not in encoders or source not in encoders or key == source:
            raise ValueError(f"init_from: {key!r} <- {source!r} needs two distinct encoders; "
                             f"encoders: {sorted(encoders)}")
        if source in init_from:
            raise ValueError(f"init_from: {source!r} is itself initialised from {init_from[source]!r}; give the origin")
        for part in (encoders, heads):
            target, origin = part[key].state_dict(), part[source].state_dict()
            shapes = {k: tuple(v.shape) for k, v in target.items()}
            if shapes != {k: tuple(v.shape) for k, v in origin.items()}:
                raise ValueError(f"init_from: {key!r} and {source!r} differ in architecture (parameter names or "
                                 f"shapes); they must be built from the same tower config")
            part[key].load_state_dict(origin)


class ProbMedModule(L.LightningModule):
    """Towers (``encoders``) → :class:`GaussianHead` per modality → :class:`Objective` over the configured pairs.

    Args:
        encoders: modality name → tower; each has ``output_dim`` and maps its batch input to ``[B, output_dim]``
            (a tensor input is its one argument, a mapping input its keyword arguments, e.g. ECG
            ``signal``/``lead_mask``; see :mod:`probmed.encoders.tower_input`).
        objective: the loss terms and which modality pairs they contrast.
        embed_dim: D, the size of the shared embedding space.
        head: every modality's :class:`~probmed.encoders.GaussianHead` settings (variance kind, mean normalisation,
            log-variance clamp kind and range, initial log-variance, separate or shared layers; see
            :class:`~probmed.encoders.HeadOptions`).
        heads: per modality, the settings that differ from ``head`` (e.g. ``{ecg: {log_var_init: -1.0}}``).
        optimizer: builds the optimizer from the parameters (default ``torch.optim.AdamW`` with its defaults;
            configs set ``class_path``/``init_args``).
        warmup_steps: linear learning-rate warm-up, then cosine decay to ``min_lr_ratio × lr`` at the last step.
        min_lr_ratio: final learning rate as a fraction of the peak.
        retrieval_ks: the K of Recall@K at validation/test.
        evaluation: what validation/test compute beyond Recall@K (zero-/few-shot, uncertainty, corruptions,
            prognosis, plots; see :class:`~probmed.evaluation.config.EvaluationConfig`).
        shared: extra modality key → the key whose tower and head embed it (e.g. ``{cxr_view2: cxr,
            text_impression: text}``: MedProbCLIP's second view and second report section, one tower each).
        param_groups: builds the optimizer's parameter groups (per-tower learning rates, layer-wise decay; see
            :class:`probmed.optim.ParamGroups`); None puts every trainable parameter in one group.
        channels_last: keep the towers' 2-D convolution weights (and so their activations) channels-last (NHWC), the
            layout oneDNN on CPU and cuDNN under mixed precision run fastest; the values are the same up to float
            rounding (docs/results.md, "make demo's phases").
        init_from: modality key → the key whose tower and head it copies at construction (e.g. ``{text_ecg:
            text_cxr}``: M3Bind's text towers start as one text encoder and are then trained apart); unlike
            ``shared`` the two keep separate weights. The towers must have the same architecture.
        quality_augmentation: per step, degrade a random subset of each listed modality's rows with its registered
            corruptions and rank the copies' mean log-variance above the originals' by a margin that grows with the
            severity (:class:`~probmed.training.quality_augmentation.QualityAugmentation`); None: off.
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        objective: Objective,
        embed_dim: int = 128,
        head: HeadOptions = HeadOptions(),  # noqa: B008 (jsonargparse needs an instance)
        heads: dict[str, dict[str, Any]] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.05,
        retrieval_ks: tuple[int, ...] = (1, 5, 10),
        evaluation: EvaluationConfig = EvaluationConfig(),  # noqa: B008 (jsonargparse needs an instance)
        shared: dict[str, str] | None = None,
        param_groups: ParamGroups | None = None,
        channels_last: bool = False,
        init_from: dict[str, str] | None = None,
        quality_augmentation: QualityAugmentation | None = None,
    ):
        super().__init__()
        self.shared = dict(shared or {})
        unknown = {k: v for k, v in self.shared.items() if v not in encoders or k in encoders}
        if unknown:
            raise ValueError(f"shared maps keys to an encoder of another key; bad entries {unknown}, encoders: {sorted(encoders)}")
        missing = sorted(set(objective.modalities) - set(encoders) - set(self.shared))
        if missing:
            hint = "".join(did_you_mean(m, encoders) for m in missing)
            raise ValueError(f"model.objective contrasts {missing}, which have no tower in model.encoders{hint}; "
                             f"encoders: {sorted(encoders)} (add a tower, e.g. model.encoders.{missing[0]}: "
                             f"presets/towers/..., or drop the pair)")
        unknown_heads = sorted(set(heads or {}) - set(encoders))
        if unknown_heads:
            raise ValueError(f"heads gives settings for {unknown_heads}, which have no encoder; "
                             f"encoders: {sorted(encoders)}")
        self.save_hyperparameters(ignore=["encoders", "objective", "optimizer", "evaluation", "param_groups",
                                          "quality_augmentation"])
        self.quality_augmentation = quality_augmentation
        self.param_groups = param_groups
        self.encoders = nn.ModuleDict(encoders)
        if channels_last:
            self.encoders.to(memory_format=torch.channels_last)  # only 4-D weights change layout
        self._has_batchnorm = {name: bool(batch_norm_layers(enc)) for name, enc in encoders.items()}
        self.heads = nn.ModuleDict({
            name: head.override((heads or {}).get(name), f"heads.{name}").build(enc.output_dim, embed_dim)
            for name, enc in encoders.items()
        })
        copy_initial_weights(self.encoders, self.heads, dict(init_from or {}))
        taught = {self.shared.get(m, m) for m in (quality_augmentation.modalities if quality_augmentation else [])}
        untaught = sorted(n for n, h in self.heads.items() if h.row_level == "quality" and n not in taught)
        if untaught:
            raise ValueError(f"the heads of {untaught} have row_level: quality, whose quality part only the quality "
                             f"augmentation trains; add them to model.quality_augmentation.modalities")
        self.objective = objective
        self.optimizer_factory = optimizer
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.retrieval_ks = tuple(retrieval_ks)
        #: stage -> the last evaluation's retrieval rows (query, gallery, gallery_size, R@K, chance@K ...)
        self.retrieval_rows: dict[str, list[dict]] = {}
        self.collector = EmbeddingCollector()
        self.evaluator = Evaluator(evaluation)
        self.skipped: dict[str, Counter] = {"train": Counter(), "val": Counter(), "test": Counter()}
        self._batch_end_time: float | None = None
        self._data_wait = 0.0
        self.nonfinite = NonFiniteGuard()
        self.eval_loss = EvalLoss()

    # -- embedding -------------------------------------------------------------------------------------------------
    @classmethod
    def load_teacher(cls, run: TeacherSpec, modality: str = "text") -> "ProbMedModule":
        """A trained binding model, rebuilt from its run's ``config.yaml`` and checkpoint, frozen in eval mode, that
        must have a ``modality`` tower (the one a distillation or a soft prompt reads)."""
        module = load_frozen_module(cls, run.config, run.checkpoint)
        if modality not in module.encoders:
            raise ValueError(f"teacher {run.config} has no {modality} tower; towers: {sorted(module.encoders)}")
        return module

    def embed_modality(self, name: str, inputs: Any, present: Tensor) -> GaussianEmbedding:
        """Embed one modality of a batch. ``inputs`` is a tensor ``[B, ...]`` or a mapping of tensors (signal and
        masks) passed to the tower as keyword arguments (:mod:`probmed.encoders.tower_input`). Towers run on the
        studies that have the modality only (placeholders would pollute batch-norm statistics); missing rows get a
        zero mean and log-variance and ``present=False``."""
        tower = self.shared.get(name, name)
        rows = present.nonzero().squeeze(1)
        # No present row: run on the placeholders anyway so DDP sees the same graph on every rank. One present row
        # in a training batch-norm tower: batch statistics of a single row are undefined (torch raises), so the
        # placeholders join that one forward; only the present row is kept.
        if len(rows) == 0 or (len(rows) == 1 and self.training and self._has_batchnorm[tower]):
            rows = torch.arange(len(present), device=present.device)
        picked = select_rows(inputs, rows)
        mean_rows, log_var_rows, quality_rows = self.heads[tower].parts(run_tower(self.encoders[tower], picked))
        keep = present[rows][:, None]  # all False when no row is present: zero values, zero gradients

        def scatter(values: Tensor) -> Tensor:  # each in its own dtype (under autocast mean and log_var may differ)
            values = values * keep.to(values.dtype)
            return values.new_zeros(len(present), values.shape[1]).index_copy(0, rows, values)

        return GaussianEmbedding(scatter(mean_rows), scatter(log_var_rows), present,
                                 None if quality_rows is None else scatter(quality_rows))

    def embeddable(self, batch: dict, modalities=None) -> list[str]:
        """The batch's modality keys that have an encoder (and are among ``modalities`` when given)."""
        return [n for n in batch["inputs"] if (n in self.encoders or n in self.shared)
                and (modalities is None or n in modalities)]

    def embed(self, batch: dict, modalities=None) -> dict[str, GaussianEmbedding]:
        """``{modality: GaussianEmbedding [B, D]}`` for the batch's modalities that have an encoder."""
        return {n: self.embed_modality(n, batch["inputs"][n], batch["present"][n])
                for n in self.embeddable(batch, modalities)}

    def forward(self, batch: dict) -> dict[str, GaussianEmbedding]:
        return self.embed(batch)

    @property
    def log_step(self) -> int:
        """The step Lightning logs metrics at now (``_batches_that_stepped``: during a validation inside ``fit``
        one less than ``global_step``; in ``validate`` / ``test`` the checkpoint's): figures, histograms and counts
        logged by hand use it, so they sit at the same step as the epoch's scalars."""
        if self._trainer is None:
            return self.global_step
        return int(self._trainer.fit_loop.epoch_loop._batches_that_stepped)

    # -- training --------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Evaluate against the dataset's label vocabulary (the datamodule's ``label_names``, from its
        ``labels.json``) rather than the embedded corpus's findings; gather the loss's embeddings padded to the
        datamodule's batch size (no batch-size check collective per step)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        labels = getattr(datamodule, "label_names", None)
        if labels:
            self.evaluator.use_labels(labels)
        if self.objective.max_local_rows is None:
            self.objective.max_local_rows = getattr(datamodule, "batch_size", None)

    def on_fit_start(self):
        refuse_gradient_accumulation(self.trainer.accumulate_grad_batches)  # see probmed.training.accumulation

    def on_train_batch_start(self, batch, batch_idx):
        self._batch_start_time = time.perf_counter()
        seed_step(self.current_epoch, batch_idx, self.global_rank)  # random draws depend on the step: exact resume
        if self._batch_end_time is not None:
            self._data_wait = self._batch_start_time - self._batch_end_time

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        self._count_skipped(batch, "train")
        missing = sorted(set(self.objective.modalities) - set(batch["inputs"]))
        if missing:
            raise ValueError(f"the objective needs {missing} but the data module does not load them")
        self.nonfinite.snapshot(self)  # batch-norm statistics before this step's forward (restored if skipped)
        if self.quality_augmentation is None:
            embeddings, copies = self.embed(batch, self.objective.modalities), None
            seen = embeddings
        else:
            embeddings, copies = self.quality_augmentation.embed(self, batch, self.objective.modalities)
            seen = self.quality_augmentation.for_objective(embeddings)
        out = self.objective(seen, batch["group"])
        raw = out.total
        if copies is not None:
            quality, quality_logs = self.quality_augmentation.loss(embeddings, copies)
            raw = raw + quality
            out.extras.update(quality_logs)
        batch_size = len(batch["group"])
        total = self.nonfinite.loss(raw, self.global_rank, batch_idx, self)
        finite = self.nonfinite.all_finite(total, self)
        self.log_dict({"train/skipped_nonfinite": float(self.nonfinite.skipped),
                       "train/skipped_nonfinite_buffers": float(self.nonfinite.skipped_buffers)},
                      on_step=True, on_epoch=False, rank_zero_only=True, batch_size=batch_size)
        if logging_step(self.trainer):  # built and reduced (one packed reduction) only when they reach the loggers
            logs = self._step_metrics(total, out, embeddings, finite)
            self.log_dict(mean_over_ranks(logs), on_step=True, on_epoch=False, batch_size=batch_size)
        return total  # backward as usual on every rank (DDP); optimizer_step drops the gradients of a skipped step

    @staticmethod
    def _step_metrics(total: Tensor, out, embeddings: dict[str, GaussianEmbedding], finite: bool) -> dict:
        """The training step's loss, its parts and extras, and each modality's mean predicted variance over the
        present rows; all NaN for a skipped non-finite step (not the previous step's values again)."""
        logs = {"train/loss": total.detach()}
        logs.update({f"train/{k}": v for k, v in out.parts.items()})
        logs.update({f"train/{k}": v for k, v in out.extras.items()})
        for name, emb in embeddings.items():
            var = emb.detach().mean_variance()
            present = emb.present.float()
            logs[f"variance/{name}"] = (var * present).sum() / present.sum().clamp_min(1)
        if not finite:  # all ranks agree: no update on any rank
            logs = {k: torch.full_like(torch.as_tensor(v, dtype=torch.float32), float("nan")) for k, v in logs.items()}
        return logs

    def on_train_batch_end(self, outputs, batch, batch_idx):
        """``perf/data_wait_fraction``: time waiting for the loader / (that + the step). Samples per second are
        :class:`probmed.training.Throughput`'s (``train/device/samples_per_sec``), the one throughput figure."""
        now = time.perf_counter()
        total = now - self._batch_start_time + self._data_wait
        self.log("perf/data_wait_fraction", self._data_wait / max(total, 1e-9), on_step=True, on_epoch=False,
                 rank_zero_only=True, batch_size=len(batch["group"]))
        self._batch_end_time = now

    def on_train_epoch_end(self):
        self._log_skipped("train")
        self._batch_end_time = None

    # -- evaluation ------------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, stage: str) -> None:
        self._count_skipped(batch, stage)
        embeddings = self.embed(batch)
        self.collector.add(embeddings, batch["study_id"], batch["labels"], batch.get("ambiguity"))
        self.eval_loss.add(self.objective, embeddings, batch["group"])  # <stage>/loss (probmed.training.eval_loss)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")
        self.evaluator.add_corrupted(self, batch)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Per study: ``<m>/mean``, ``<m>/log_var``, ``<m>/present``, ``<m>/ambiguity`` ([B], NaN unknown or when
        the batch records none) and ``labels`` ``[B, L]`` (for :class:`~probmed.evaluation.export.EmbeddingWriter`)."""
        embeddings = self.embed(batch)
        recorded = batch.get("ambiguity") or {}
        unknown = torch.full((len(batch["study_id"]),), float("nan"))
        return {
            "study_id": batch["study_id"],
            "labels": batch["labels"],
            **{f"{n}/mean": e.mean for n, e in embeddings.items()},
            **{f"{n}/log_var": e.log_var for n, e in embeddings.items()},
            **{f"{n}/present": e.present for n, e in embeddings.items()},
            **{f"{n}/ambiguity": recorded.get(n, unknown) for n in embeddings},
        }

    def on_validation_epoch_start(self):
        self._start_eval_epoch()

    def on_test_epoch_start(self):
        self._start_eval_epoch()

    def _start_eval_epoch(self) -> None:
        """Empty the collector and skip DDP's buffer broadcast for evaluation.

        Evaluation must run no per-step collective: ranks read different numbers of eval batches (a rank may
        read none). DDP's forward broadcasts buffers (batch-norm statistics) on the first forward after a training
        step; a rank without an eval batch never joins that broadcast and the others wait forever. No buffer can
        change between that training step's own broadcast and evaluation, so clearing DDP's pending-sync flag is
        exact; DDP sets it again on the next training forward."""
        self.collector.reset()
        self.evaluator.reset()
        self.eval_loss.reset()
        wrapper = getattr(self.trainer.strategy, "model", None) if self._trainer is not None else None
        if isinstance(wrapper, DistributedDataParallel):
            wrapper.require_forward_param_sync = False

    def _eval_epoch_end(self, stage: str) -> tuple[list[dict], dict[str, float]]:
        """Gather on every rank, evaluate on rank 0 (:class:`Evaluator`), log the broadcast scalars everywhere.
        A validation outside the sanity check also fits the evaluation's validation-fitted state (variance-aware
        confidence, zero-shot temperatures: :attr:`Evaluator.fitted`), broadcast to every rank and saved with the
        checkpoint. Returns the retrieval rows and the scalars."""
        gathered, labels, ambiguity = self.collector.gather_all()
        corrupted = self.evaluator.gather_corrupted() if stage == "test" else {}
        fit = stage == "val" and not self.trainer.sanity_checking
        result, failure = None, None
        if self.trainer.is_global_zero:
            try:
                report = self.evaluator.run(self, stage, gathered, labels, corrupted, self.retrieval_ks,
                                            ambiguity=ambiguity, fit=fit, step=self.global_step)
                self.evaluator.publish(self, stage, report, gathered, labels)
                result = (report["scalars"], report["retrieval"], self.evaluator.fitted)
            except Exception as exc:  # tell the other ranks (waiting in the broadcast) instead of leaving them hung
                failure = exc
        result = self.trainer.strategy.broadcast(result if failure is None else f"{type(failure).__name__}: {failure}", src=0)
        if failure is not None:
            raise failure
        if isinstance(result, str):
            raise RuntimeError(f"evaluation failed on rank 0: {result}")
        scalars, rows, self.evaluator.fitted = result
        scalars = {**scalars, **self.eval_loss.scalars(stage)}  # a collective on every rank, like the broadcast
        # identical on every rank after the broadcast: the synced mean is exact
        self.log_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in scalars.items()}, sync_dist=True)
        self._log_skipped(stage)
        return rows, scalars

    def on_validation_epoch_end(self):
        self.retrieval_rows["val"], _ = self._eval_epoch_end("val")

    def on_test_epoch_end(self):
        rows, scalars = self._eval_epoch_end("test")
        if self.trainer.is_global_zero and rows:
            table = format_table(rows, ks=tuple(k for k in self.retrieval_ks if k <= 5) or self.retrieval_ks)
            print(f"\nCross-modal retrieval on the test split (percent; chance = K / N; PMRP = plausible-match "
                  f"R-precision, a study with the query's labels counts):\n{table}\n", flush=True)
            summary = format_uncertainty_summary(scalars, "test")
            if summary:
                print(f"{summary}\n", flush=True)
            log_dir = getattr(self.logger, "log_dir", None) if self.logger else None
            if log_dir:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                (Path(log_dir) / "test_retrieval.json").write_text(json.dumps(rows, indent=2))

    # -- data accounting -------------------------------------------------------------------------------------------
    def _count_skipped(self, batch: dict, stage: str) -> None:
        self.skipped[stage].update(batch.get("skipped") or {})

    def _log_skipped(self, stage: str) -> None:
        """Log the epoch's skipped-input counts of ``stage`` (train / val / test: separate series), summed over
        ranks (object gather: causes differ between ranks): ``data/<stage>/skipped_total`` and
        ``data/<stage>/skipped/<cause>``."""
        mine = dict(self.skipped[stage])
        self.skipped[stage].clear()
        counts = all_gather_objects(mine)
        total = Counter()
        for c in counts:
            total.update(c)
        if self.trainer.is_global_zero and self.logger is not None:
            step = self.log_step
            self.logger.log_metrics({f"data/{stage}/skipped_total": float(sum(total.values()))}, step=step)
            if total:
                self.logger.log_metrics({f"data/{stage}/skipped/{k}": float(v) for k, v in total.items()}, step=step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Also stores what the last validation fitted for evaluation (``evaluation_fitted``: plain lists and
        floats; absent before any validation)."""
        checkpoint["nonfinite"] = self.nonfinite.state_dict()
        if self.evaluator.fitted is not None:
            checkpoint["evaluation_fitted"] = self.evaluator.fitted

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite.load_state_dict(checkpoint.get("nonfinite", {}))
        self.evaluator.load_fitted(checkpoint.get("evaluation_fitted"))

    # -- optimisation ----------------------------------------------------------------------------------------------
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        self.nonfinite.optimizer_step(optimizer, optimizer_closure, self)

    def configure_optimizers(self):
        groups = self.param_groups(self) if self.param_groups is not None else self.parameters()
        optimizer = apply_lr_scales(self.optimizer_factory(groups))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.warmup_steps, max(0, total - 1))
        floor = self.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
