"""M3Bind stage 2: distil several modality-specific text towers into one shared text encoder.

Stage 1 (M3Bind) trains one CLIP-like model per imaging modality (here: any ProbMed preset trained with
``probmed fit``, e.g. ``clip`` for CXR↔text and one with ECG↔text; or one model with a text tower per imaging
modality whose text spaces :class:`~probmed.losses.TextSpaceAlignment` aligns, ``configs/m3bind_stage1.yaml``,
each teacher then naming its text tower with ``tower``). Stage 2 trains a single *student* text trunk
with one light :class:`~probmed.encoders.GaussianHead` per teacher so that, for every report, the student's
embedding in teacher ``t``'s space matches teacher ``t``'s own text embedding. Each teacher's image/ECG tower stays
as it is, so the student's text embeddings can be used against every teacher's other modality: one text encoder
for all imaging modalities.

Loss per batch (rows = reports present in the batch)::

    L = sum_t [ mean_i ||mu_s,t(i) - mu_t(i)||^2 + log_var_weight * mean_i mean_d (lv_s,t(i)_d - lv_t(i)_d)^2 ]

Run it with ``probmed distill fit --config configs/presets/m3bind_distill.yaml`` (LightningCLI; the datamodule loads
only ``text``). Teachers are given by the ``config.yaml`` that ``probmed fit`` saved beside its run and a checkpoint
of that run; only the teacher's text tower and head are kept (frozen).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from probmed.embedding import GaussianEmbedding
from probmed.encoders import GaussianHead
from probmed.encoders.tower_input import run_tower, select_rows
from probmed.evaluation.retrieval import rank_of_true, recall_at_k
from probmed.tasks.binding import ProbMedModule
from probmed.training.checkpoint_io import TeacherSpec

__all__ = ["TeacherSpec", "TextDistillation", "distilled_retrieval"]


class TextDistillation(L.LightningModule):
    """One student text trunk + one Gaussian head per teacher, trained to reproduce each teacher's text embedding.

    Args:
        student: the shared text trunk (e.g. a :class:`~probmed.encoders.TextEncoder`), ``[B, F]`` features.
        teachers: teacher name → :class:`TeacherSpec` (the name is free, e.g. the imaging modality: ``cxr``).
        log_var_weight: weight of the log-variance matching term.
        optimizer: optimizer factory over the student's parameters.
        modality: the batch key the student and the teachers' towers read (the report text).
    """

    def __init__(
        self,
        student: nn.Module,
        teachers: dict[str, TeacherSpec],
        log_var_weight: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        modality: str = "text",
    ) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("give at least one teacher")
        self.save_hyperparameters(ignore=["student", "optimizer"])
        self.student = student
        self.modality = modality
        #: teacher name → the key of its text tower and head
        self.towers = {name: spec.tower or modality for name, spec in teachers.items()}
        for name, spec in teachers.items():
            _require_teacher_files(name, spec)
        self.teacher_specs = dict(teachers)
        loaded = {name: ProbMedModule.load_teacher(spec, self.towers[name]) for name, spec in teachers.items()}
        # frozen teacher parts live outside the state dict's trainable set; kept as plain attributes per name
        self.teachers = nn.ModuleDict(loaded)
        self.heads = nn.ModuleDict({name: _head_like(t.heads[self.towers[name]], student.output_dim)
                                    for name, t in loaded.items()})
        self.log_var_weight = float(log_var_weight)
        self.optimizer_factory = optimizer

    def setup(self, stage: str) -> None:
        """Refuse, before any step, a text length (``data.inputs.<modality>.init_args.max_length``) longer than the
        position embeddings of the student or of a teacher's text tower (else an opaque size mismatch mid-run)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        text_input = getattr(datamodule, "inputs", {}).get(self.modality)
        length = getattr(text_input, "max_length", None)
        if length is None:
            return
        towers = {"the student (model.student)": self.student}
        towers.update({f"teacher {name} ({self.teacher_specs[name].config})": self.teachers[name].encoders[key]
                       for name, key in self.towers.items()})
        for who, tower in towers.items():
            positions = _max_positions(tower)
            if positions is not None and length > positions:
                raise ValueError(
                    f"data.inputs.{self.modality}.init_args.max_length is {length} but {who} has {positions} text "
                    f"positions: set --data.inputs.{self.modality}.init_args.max_length {positions} (or lower), or "
                    "give the student and every teacher text towers of the same length")

    def train(self, mode: bool = True) -> "TextDistillation":
        super().train(mode)
        self.teachers.eval()  # teachers never train (dropout off, norm statistics fixed)
        return self

    def student_embedding(self, name: str, text: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(mean, log_var)`` ``[B, D_t]`` of the student in teacher ``name``'s space."""
        return self.heads[name](run_tower(self.student, text))

    @torch.no_grad()
    def teacher_embedding(self, name: str, text: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(mean, log_var)`` ``[B, D_t]`` of teacher ``name``'s own text tower and head."""
        teacher, key = self.teachers[name], self.towers[name]
        return teacher.heads[key](run_tower(teacher.encoders[key], text))

    def _loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        present = batch["present"][self.modality]
        text = select_rows(batch["inputs"][self.modality], present.nonzero().squeeze(1))
        total, parts = 0.0, {}
        for name in self.teachers:
            mean_t, lv_t = self.teacher_embedding(name, text)
            mean_s, lv_s = self.student_embedding(name, text)
            mean_term = (mean_s - mean_t).square().sum(1).mean()
            lv_term = (lv_s - lv_t).square().mean()
            parts[name] = mean_term.detach()
            total = total + mean_term + self.log_var_weight * lv_term
        return total, parts

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, parts = self._loss(batch)
        n = int(batch["present"][self.modality].sum())
        self.log("distill/loss", loss.detach(), batch_size=n)
        self.log_dict({f"distill/mean_mse/{k}": v for k, v in parts.items()}, batch_size=n)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, parts = self._loss(batch)
        n = int(batch["present"][self.modality].sum())
        self.log("val/distill_loss", loss, batch_size=n, sync_dist=True)
        self.log_dict({f"val/mean_mse/{k}": v for k, v in parts.items()}, batch_size=n, sync_dist=True)

    def configure_optimizers(self):
        return self.optimizer_factory([p for n, p in self.named_parameters() if not n.startswith("teachers.")])


def _require_teacher_files(name: str, spec: TeacherSpec) -> None:
    """A teacher's run must exist before the student can learn from it: say which file is missing and how to make it."""
    for key, path in (("config", spec.config), ("checkpoint", spec.checkpoint)):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"model.teachers.{name}.{key}: {path} does not exist. Train the teacher first (stage 1, e.g. "
                "`probmed fit --config configs/presets/clip.yaml` writes runs/clip/version_0/config.yaml and "
                f"checkpoints/last.ckpt), or point --model.teachers.{name}.{key} at a run's file")


def _max_positions(tower: nn.Module) -> int | None:
    """The number of token positions of a Hugging Face text tower (``config.max_position_embeddings``), or None."""
    config = getattr(getattr(tower, "model", None), "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def _head_like(head: GaussianHead, in_dim: int) -> GaussianHead:
    """A fresh head with a teacher head's output space and settings (D, variance kind, clamp, normalisation)."""
    return head.options.build(in_dim, head.embed_dim)


@torch.no_grad()
def distilled_retrieval(model: TextDistillation, batches, partners: dict[str, str], ks=(1, 5)) -> dict[str, Any]:
    """Text → partner-modality Recall@K of each teacher with its own text tower and with the distilled student.

    Args:
        model: the distillation module (teachers inside).
        batches: iterable of ProbMed batches holding ``text`` and every partner modality (e.g. a test loader).
        partners: teacher name → the modality its retrieval is measured against (e.g. ``{"cxr": "cxr"}``).
        ks: the K of Recall@K.

    Returns:
        ``{teacher: {"teacher": {K: R@K}, "student": {K: R@K}, "queries": N, "mean_cosine": c,
        "top1_agreement": a}}``: recalls in percent; ``c`` the mean cosine between the student's and the teacher's
        text means; ``a`` the fraction of queries whose top-1 gallery item is the same for student and teacher.
    """
    model.eval()
    store: dict[str, dict[str, list]] = {t: {"gal": [], "tea": [], "stu": []} for t in partners}
    key = model.modality
    for batch in batches:
        for t, modality in partners.items():
            both = batch["present"][key] & batch["present"][modality]
            if not bool(both.any()):
                continue
            teacher = model.teachers[t]
            rows = both.nonzero().squeeze(1)
            text = select_rows(batch["inputs"][key], rows)
            gal = select_rows(batch["inputs"][modality], rows)
            store[t]["gal"].append(teacher.heads[modality](run_tower(teacher.encoders[modality], gal)))
            store[t]["tea"].append(model.teacher_embedding(t, text))
            store[t]["stu"].append(model.student_embedding(t, text))
    out = {}
    for t, modality in partners.items():
        def cat(parts):
            mean, lv = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            return GaussianEmbedding(mean, lv, torch.ones(len(mean), dtype=torch.bool))

        gallery, tea, stu = cat(store[t]["gal"]), cat(store[t]["tea"]), cat(store[t]["stu"])
        truth = torch.arange(len(gallery))
        objective = model.teachers[t].objective
        result, top1 = {}, {}
        for who, queries in (("teacher", tea), ("student", stu)):
            scores = objective.score(queries, gallery, model.towers[t], modality)
            result[who] = recall_at_k(rank_of_true(scores, truth), tuple(ks))
            top1[who] = scores.argmax(1)
        result["top1_agreement"] = float((top1["teacher"] == top1["student"]).float().mean())
        result["queries"] = len(gallery)
        result["mean_cosine"] = float(torch.nn.functional.cosine_similarity(tea.mean, stu.mean).mean())
        out[t] = result
    return out
