"""The evaluation run at the end of a validation/test epoch: what :class:`~probmed.tasks.binding.ProbMedModule` calls.

It gathers the epoch's embeddings from all ranks (the only collectives), computes on rank 0 every metric the
:class:`~probmed.evaluation.config.EvaluationConfig` asks for at that stage — retrieval, uncertainty, zero-shot,
few-shot, prognosis, corruption robustness — and returns flat scalars (broadcast to every rank by the caller),
plus figures, the embedding projector and a JSON file of everything on rank 0.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from probmed.data.schema import FINDINGS
from probmed.data.studies import stable_hash
from probmed.embedding import GaussianEmbedding
from probmed.evaluation import plots
from probmed.evaluation.calibration import apply_platt, apply_temperature, fit_platt, fit_temperature
from probmed.evaluation.collect import EmbeddingCollector
from probmed.evaluation.confidence import (
    SIGNALS, ConfidenceRule, binned_recall, confidence_signals, oracle_aurc, random_aurc, selective_scores,
)
from probmed.evaluation.config import DEFAULT_PROGNOSIS_LABEL, EvaluationConfig, ZeroShotConfig
from probmed.evaluation.crossmodal import cross_modal_zero_shot
from probmed.evaluation.corruptions import corrupt, get_corruption
from probmed.evaluation.fewshot import few_shot
from probmed.evaluation.prognosis import prognosis
from probmed.evaluation.prompts import check_prompt_set, prompts_for_labels
from probmed.evaluation.retrieval import pair_ranks, retrieval_metrics
from probmed.evaluation.scoring import make_scorer, term_logit_scale
from probmed.evaluation.uncertainty import (
    aurc, expected_calibration_error, reliability_bins, risk_coverage, selective_risk, spearman, variance_quantiles,
)
from probmed.evaluation.zeroshot import zero_shot

SIMILARITY_PLOT_STUDIES = 32
#: bins of the PCME++ / ProLIP test (R@1 per equal-count uncertainty bin)
RECALL_BINS = 10
#: version of the fitted state the module stores in its checkpoint (:attr:`Evaluator.fitted`)
FITTED_VERSION = 1
#: what the test stage says when no validation-fitted state is loaded (checkpoint of an older version, or none)
NO_FITTED_STATE = ("no validation-fitted evaluation state (variance-aware confidence rules, zero-shot temperatures) "
                   "in this checkpoint: falling back to the untrained rules; the variance-aware confidence is not "
                   "reported (compare the margin's AURC) and zero-shot ECE is reported without temperature scaling. "
                   "A checkpoint written by `probmed fit` after a validation carries it.")


def _nanmean(values) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else math.nan


def _json_ready(value):
    """Plain JSON: tensors to lists, NaN/inf (undefined metrics) to null."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Tensor):
        return _json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _pair(a: str, b: str) -> str:
    return f"{a}->{b}"


class Evaluator:
    """Config-driven evaluation (see the module docstring). One instance per module.

    Args:
        config: what to compute, and at which stages.
        findings: names of the label columns of the batches; ``None``: set later from the data
            (:meth:`use_labels`, called by the module with the datamodule's label vocabulary), else the corpus
            findings.
    """

    def __init__(self, config: EvaluationConfig | None = None, findings: tuple[str, ...] | None = None):
        self.config = config or EvaluationConfig()
        for spec in self.config.corruptions:
            get_corruption(spec.modality, spec.kind, spec.like)  # unknown names fail at construction
            if any(s < 0 for s in spec.severities):
                raise ValueError(f"corruption severities must be ≥ 0, got {spec.severities}")
        zs = self.config.zero_shot
        if zs is not None and zs.prompts:
            check_prompt_set(zs.prompts, "model.evaluation.zero_shot.prompts")
        self.corrupted: dict[tuple[str, str, float], EmbeddingCollector] = {}
        #: what the last validation fitted (``{"version", "step", "confidence": {pair: rule state},
        #: "temperature": {modality: T}}``); saved in and loaded from the module's checkpoint; None: nothing fitted
        self.fitted: dict[str, Any] | None = None
        self.use_labels(FINDINGS if findings is None else findings, strict=findings is not None)

    def use_labels(self, labels, strict: bool = True) -> None:
        """Evaluate against the label vocabulary ``labels`` (the label-vector order of the batches): pick the
        zero-shot prompts of these labels and the prognosis label.

        Raises:
            ValueError: (when ``strict``) configured prompts or a configured prognosis label that ``labels`` lack.
        """
        self.findings = list(labels)
        self.prompts: dict = {}
        self.unprompted: list[str] = []
        self.prompt_problem = ""
        zs, pg = self._prompt_config(), self.config.prognosis
        if self.config.zero_shot is not None or self.config.cross_zero_shot is not None:
            try:
                self.prompts, self.unprompted = prompts_for_labels(self.findings, zs.prompts, zs.prompt_files)
            except ValueError as exc:
                if strict:
                    raise
                self.prompt_problem = str(exc)
        if self.config.cross_zero_shot is not None:
            self._check_cross_zero_shot()  # a label space the vocabulary or the prompts lack is a config error
        self.prognosis_label = None
        if pg is not None:
            label = pg.label or DEFAULT_PROGNOSIS_LABEL
            if label in self.findings:
                self.prognosis_label = label
            elif strict and pg.label is not None:
                raise ValueError(f"prognosis label {pg.label!r} is not among the data's labels {self.findings}")

    def load_fitted(self, state: dict | None) -> None:
        """Use a checkpoint's validation-fitted state (None: nothing fitted). A state of another
        :data:`FITTED_VERSION` is dropped with a warning (test then falls back as without one)."""
        if state is not None and state.get("version") != FITTED_VERSION:
            warnings.warn(f"ignoring the checkpoint's evaluation state of version {state.get('version')!r} "
                          f"(this code reads version {FITTED_VERSION})", stacklevel=2)
            state = None
        self.fitted = state

    def _check_cross_zero_shot(self) -> None:
        cz, prompts = self.config.cross_zero_shot, self.prompts
        for m, space in cz.label_spaces.items():
            unknown = sorted(set(space) - set(self.findings))
            if unknown:
                raise ValueError(f"cross_zero_shot.label_spaces.{m} names {unknown}, not among the labels {self.findings}")
            unprompted = sorted(set(space) - set(prompts))
            if unprompted:
                raise ValueError(f"cross_zero_shot.label_spaces.{m} names {unprompted}, which have no zero-shot prompts")
        for pair in cz.pairs:
            if len(pair) != 2 or pair[0] == pair[1] or pair[1] not in cz.label_spaces:
                raise ValueError(f"cross_zero_shot pair {pair} must be [query, target] of two modalities, the target "
                                 f"one of label_spaces {sorted(cz.label_spaces)}")

    def _prompt_config(self) -> ZeroShotConfig:
        """The zero-shot prompts, temperature and text modality (the defaults when the zero-shot block is off)."""
        return self.config.zero_shot or ZeroShotConfig()

    # -- during the epoch ------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.corrupted = {}

    @torch.no_grad()
    def add_corrupted(self, module, batch: dict) -> None:
        """Embed the configured corruptions of this test batch (each modality at each severity > 0)."""
        for spec in self.config.corruptions:
            m = spec.modality
            if m not in batch["inputs"] or m not in module.encoders or not bool(batch["present"][m].any()):
                continue
            for severity in spec.severities:
                if severity == 0:
                    continue  # severity 0 is the clean evaluation itself
                seed = stable_hash(f"{m}:{spec.kind}:{severity}:{batch['study_id'][0]}")
                x = corrupt(m, spec.kind, batch["inputs"][m], severity, seed, spec.like)
                emb = module.embed_modality(m, x, batch["present"][m])
                key = (m, spec.kind, float(severity))
                self.corrupted.setdefault(key, EmbeddingCollector()).add({m: emb}, batch["study_id"], batch["labels"])

    def gather_corrupted(self) -> dict[tuple[str, str, float], dict]:
        """Gather every corruption's embeddings from all ranks (collective: every rank calls it, same keys)."""
        out = {}
        for spec in self.config.corruptions:
            for severity in spec.severities:
                key = (spec.modality, spec.kind, float(severity))
                if severity == 0:
                    continue
                collector = self.corrupted.setdefault(key, EmbeddingCollector())
                out[key] = collector.gather()[0]
        return out

    # -- at the end of the epoch (rank 0) --------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, module, stage: str, embeddings: dict, labels: dict[str, Tensor], corrupted: dict,
            ks: tuple[int, ...], ambiguity: dict[str, dict[str, float]] | None = None, fit: bool = False,
            step: int = 0) -> dict[str, Any]:
        """Every metric for ``stage``: ``{"scalars": {name: float}, "retrieval": rows, "details": {...},
        "figures": {name: Figure}}``.

        Args:
            ambiguity: ``{modality: {study_id: ambiguity}}`` recorded in the shards (NaN unknown), for
                Spearman(σ², ambiguity); None or empty: not computed.
            fit: (validation) fit the variance-aware confidence rules and zero-shot temperatures on this split
                and keep them in :attr:`fitted` (stored in the checkpoint by the module); at test, the stored ones
                are applied.
            step: the global step, recorded with the fitted state.
        """
        cfg = self.config
        score = make_scorer(module.objective, cfg.untrained_similarity, module.device)
        scalars: dict[str, float] = {}
        details: dict[str, Any] = {}
        figures: dict[str, Any] = {}
        plot = stage in cfg.plots

        ranks: dict = {}
        rows = self._retrieval(embeddings, score, ks, labels, ranks, stage, scalars)
        scalars.update(variance_quantiles(embeddings, stage))
        details["retrieval"] = rows
        fitted: dict[str, Any] = {"version": FITTED_VERSION, "step": int(step), "confidence": {}, "temperature": {},
                                  "platt": {}}

        if stage in cfg.uncertainty and ranks:
            details["uncertainty"], curves = self._uncertainty(ranks, stage, scalars,
                                                                fitted["confidence"] if fit else None)
            if plot:
                figures["risk_coverage"] = plots.risk_coverage_figure(curves)
        if ambiguity:
            details["ambiguity"] = self._ambiguity(embeddings, ambiguity, stage, scalars)
        if plot and ranks:
            figures["similarity"] = plots.similarity_figure(self._similarity_matrices(embeddings, score))

        zs = cfg.zero_shot
        if zs is not None and stage in zs.stages:
            details["zero_shot"] = self._zero_shot(module, embeddings, labels, score, stage, scalars,
                                                   figures if plot else None, fitted if fit else None)
            details["zero_shot_unprompted"] = list(self.unprompted)

        cz = cfg.cross_zero_shot
        if cz is not None and stage in cz.stages:
            details["zero_shot_cross"] = self._cross_zero_shot(module, embeddings, labels, score, stage, scalars)

        fs = cfg.few_shot
        if fs is not None and stage in fs.stages:
            details["few_shot"] = self._few_shot(embeddings, labels, stage, scalars)

        pg = cfg.prognosis
        if pg is not None and stage in pg.stages:
            details["prognosis"] = self._prognosis(embeddings, labels, stage, scalars)

        if corrupted:
            robustness = self._robustness(embeddings, corrupted, score, stage, scalars)
            details["robustness"] = {name: {str(s): v for s, v in by.items()} for name, by in robustness.items()}
            if plot:
                figures["variance_vs_severity"] = plots.severity_figure(robustness)

        if fit:
            self.fitted = fitted
            details["fitted"] = fitted
        elif stage == "test":
            details["fitted_used"] = self.fitted or {"skipped": NO_FITTED_STATE}
        finite = {k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(float(v))}
        details["undefined_metrics"] = sorted(set(scalars) - set(finite))
        return {"scalars": finite, "retrieval": rows, "details": details, "figures": figures}

    @staticmethod
    def _retrieval(embeddings: dict, score, ks: tuple[int, ...], labels: dict[str, Tensor], ranks: dict, stage: str,
                   scalars: dict) -> list[dict]:
        """Cross-modal retrieval rows (:func:`retrieval_metrics`; the per-query ranks go into ``ranks``) and their
        scalars: ``<stage>/{R@k,label_P@k,rsum,pmrp}/<pair>``, then the means over pairs."""
        rows = retrieval_metrics(embeddings, score, ks, details=ranks, labels=labels)
        for r in rows:
            p = _pair(r["query"], r["gallery"])
            for k in ks:
                scalars[f"{stage}/R@{k}/{p}"] = r[f"R@{k}"]
                scalars[f"{stage}/label_P@{k}/{p}"] = r[f"P@{k}"]
            scalars[f"{stage}/rsum/{p}"] = r["rsum"]
            scalars[f"{stage}/pmrp/{p}"] = r["PMRP"]
        if rows:
            for k in ks:
                scalars[f"{stage}/mean_R@{k}"] = sum(r[f"R@{k}"] for r in rows) / len(rows)
                scalars[f"{stage}/mean_label_P@{k}"] = _nanmean(r[f"P@{k}"] for r in rows)
            scalars[f"{stage}/rsum"] = sum(r["rsum"] for r in rows)
            scalars[f"{stage}/mean_pmrp"] = _nanmean(r["PMRP"] for r in rows)
        return rows

    def _few_shot(self, embeddings: dict, labels: dict[str, Tensor], stage: str, scalars: dict) -> dict:
        """Few-shot linear probes (:func:`few_shot`): ``{modality: {k or "all": {finding: AUROC}}}``; scalars
        ``<stage>/fewshot/<modality>/k<k>_mean_auroc``."""
        fs = self.config.few_shot
        res = few_shot(embeddings, labels, self.findings, fs.ks, fs.features, fs.repeats, fs.support_fraction, fs.seed)
        for m, by_k in res.items():
            for k, per_finding in by_k.items():
                scalars[f"{stage}/fewshot/{m}/k{k if k else 'all'}_mean_auroc"] = _nanmean(per_finding.values())
        return {m: {str(k or "all"): v for k, v in by_k.items()} for m, by_k in res.items()}

    def _prognosis(self, embeddings: dict, labels: dict[str, Tensor], stage: str, scalars: dict) -> dict:
        """Prognosis probe (:func:`prognosis`) of :attr:`prognosis_label`: ``{"label", "auroc": {subset: AUROC}}``
        and scalars ``<stage>/prognosis/<label>/<subset>/auroc``; ``{"skipped": why}`` when there is no label."""
        pg = self.config.prognosis
        label = self.prognosis_label
        if label is None:
            return {"skipped": (
                f"prognosis label {pg.label!r} is not among the data's labels {self.findings}" if pg.label else
                f"no prognosis label configured and the data has no {DEFAULT_PROGNOSIS_LABEL!r}; "
                "set model.evaluation.prognosis.label")}
        res = prognosis(embeddings, labels, self.findings, label, pg.subsets, pg.support_fraction, pg.seed)
        for subset, value in res.items():
            scalars[f"{stage}/prognosis/{label}/{subset}/auroc"] = value
        return {"label": label, "auroc": res}

    def _uncertainty(self, ranks: dict, stage: str, scalars: dict, fit: dict | None) -> tuple[dict, dict]:
        """Selective retrieval per ordered pair (:mod:`probmed.evaluation.confidence`): AURC, oracle and random
        AURC and E-AURC of each signal, the binned-recall test, and the variance-aware rule (fitted here into
        ``fit["confidence"]`` when ``fit`` is given; else the stored rule of :attr:`fitted` is applied). Scalars:
        ``<stage>/aurc/<pair>`` (variance, as before), ``<stage>/confidence/<signal>/{aurc,e_aurc,binned_pearson}/
        <pair>``, ``<stage>/confidence/{oracle_aurc,random_aurc}/<pair>`` and their means over pairs."""
        out, curves = {}, {}
        stored = (self.fitted or {}).get("confidence", {}) if fit is None else {}
        for (a, b), found in ranks.items():
            p = _pair(a, b)
            var, err = found["query_variance"], (found["ranks"] > 0).double()
            entry = {
                "aurc": aurc(var, err),
                "spearman_variance_rank": spearman(var, found["ranks"].double()),
                **{f"selective_R@1@{c:g}": 100.0 * (1.0 - selective_risk(var, err, c)) for c in self.config.coverages},
                "oracle_aurc": oracle_aurc(err), "random_aurc": random_aurc(err),
            }
            signals = confidence_signals(found)
            if fit is not None:
                try:
                    fit[p] = ConfidenceRule.fit(found).state()
                except ValueError as exc:  # one class only on validation: no rule for this pair
                    fit[p] = {"skipped": str(exc)}
            else:
                rule = stored.get(p)
                if rule is not None and "skipped" not in rule:
                    signals["variance_aware"] = -ConfidenceRule.from_state(rule).probability(found)
            pair_curves = {"oracle": risk_coverage(err, err), "random": float(random_aurc(err))}
            for name, u in signals.items():
                sel = selective_scores(u, err)
                binned = binned_recall(u, 1.0 - err, RECALL_BINS)
                entry[name] = {"aurc": sel["aurc"], "e_aurc": sel["e_aurc"], "binned_recall": binned["recall"],
                               "binned_pearson": binned["pearson"]}
                pair_curves[name] = (*risk_coverage(u, err), sel["aurc"])
                scalars[f"{stage}/confidence/{name}/aurc/{p}"] = sel["aurc"]
                scalars[f"{stage}/confidence/{name}/e_aurc/{p}"] = sel["e_aurc"]
                scalars[f"{stage}/confidence/{name}/binned_pearson/{p}"] = binned["pearson"]
            out[p] = entry
            curves[p] = pair_curves
            scalars[f"{stage}/aurc/{p}"] = entry["aurc"]
            scalars[f"{stage}/confidence/oracle_aurc/{p}"] = entry["oracle_aurc"]
            scalars[f"{stage}/confidence/random_aurc/{p}"] = entry["random_aurc"]
            scalars[f"{stage}/spearman_variance_rank/{p}"] = entry["spearman_variance_rank"]
            for c in self.config.coverages:
                scalars[f"{stage}/selective_R@1@{c:g}/{p}"] = entry[f"selective_R@1@{c:g}"]
        scalars[f"{stage}/mean_aurc"] = _nanmean(e["aurc"] for e in out.values())
        scalars[f"{stage}/mean_spearman_variance_rank"] = _nanmean(e["spearman_variance_rank"] for e in out.values())
        for c in self.config.coverages:
            scalars[f"{stage}/mean_selective_R@1@{c:g}"] = _nanmean(e[f"selective_R@1@{c:g}"] for e in out.values())
        for name in (*SIGNALS, "variance_aware"):
            having = [e[name] for e in out.values() if name in e]
            if having:
                scalars[f"{stage}/confidence/{name}/mean_aurc"] = _nanmean(e["aurc"] for e in having)
                scalars[f"{stage}/confidence/{name}/mean_e_aurc"] = _nanmean(e["e_aurc"] for e in having)
                scalars[f"{stage}/confidence/{name}/mean_binned_pearson"] = _nanmean(e["binned_pearson"] for e in having)
        # per query modality: the binned test over the pairs it queries (the variance is the query's)
        for m in sorted({a for a, _ in ranks}):
            for name in SIGNALS:
                scalars[f"{stage}/confidence/{name}/binned_pearson/{m}"] = _nanmean(
                    out[_pair(a, b)][name]["binned_pearson"] for a, b in ranks if a == m)
        if stage == "test" and fit is None and not stored:
            warnings.warn(NO_FITTED_STATE, stacklevel=2)
        return out, curves

    def _ambiguity(self, embeddings: dict, ambiguity: dict, stage: str, scalars: dict) -> dict:
        """Spearman(mean σ², recorded ambiguity) per modality over its studies with a known ambiguity:
        ``<stage>/ambiguity_spearman/<m>`` (NaN, so left out, with fewer than 3 such studies or a constant one)."""
        out = {}
        for m, (emb, ids) in sorted(embeddings.items()):
            known = ambiguity.get(m) or {}
            rows = [i for i, sid in enumerate(ids) if math.isfinite(known.get(sid, math.nan))]
            if len(rows) < 3:
                continue
            var = emb.mean_variance()[rows].double()
            amb = torch.tensor([known[ids[i]] for i in rows], dtype=torch.float64)
            rho = spearman(var, amb)
            out[m] = {"spearman": rho, "n": len(rows)}
            scalars[f"{stage}/ambiguity_spearman/{m}"] = rho
        return out

    @staticmethod
    def _similarity_matrices(embeddings: dict, score) -> dict[str, Tensor]:
        out = {}
        for a in sorted(embeddings):
            for b in sorted(embeddings):
                if a >= b:
                    continue  # one direction per unordered pair keeps the figure readable
                (ea, ia), (eb, ib) = embeddings[a], embeddings[b]
                common = sorted(set(ia) & set(ib))[:SIMILARITY_PLOT_STUDIES]
                if not common:
                    continue
                ra = torch.tensor([ia.index(s) for s in common])
                rb = torch.tensor([ib.index(s) for s in common])
                out[_pair(a, b)] = score(ea.select(ra), eb.select(rb), a, b)
        return out

    def _embed_prompts(self, module) -> dict[str, tuple[GaussianEmbedding, GaussianEmbedding]] | None:
        datamodule = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
        zs = self._prompt_config()
        key = zs.modality
        text_input = getattr(datamodule, "inputs", {}).get(key) if datamodule is not None else None
        if key not in module.encoders or text_input is None:
            return None

        def embed(texts: list[str]) -> GaussianEmbedding:
            tokens = {k: v.to(module.device) for k, v in text_input.collate(list(texts)).items()}
            return module.embed_modality(key, tokens, torch.ones(len(texts), dtype=torch.bool, device=module.device))

        return {f: (embed(s["positive"]), embed(s["negative"])) for f, s in self.prompts.items()}

    def _prompt_scale(self, module, embeddings) -> dict[str, float]:
        """Modality → the multiplier of ``s_pos − s_neg``: the configured temperature, else the scoring term's."""
        zs = self._prompt_config()
        return {m: zs.temperature if zs.temperature is not None
                else term_logit_scale(module.objective.scoring_term(m, zs.modality)) for m in embeddings}

    def _cross_zero_shot(self, module, embeddings, labels, score, stage, scalars) -> dict:
        """Cross-modal zero-shot (:mod:`probmed.evaluation.crossmodal`): scalars
        ``<stage>/zeroshot_cross/<query>-><target>/auroc/<finding>`` and each pair's ``mean_auroc``."""
        prompts = self._embed_prompts(module)
        zs, cz = self._prompt_config(), self.config.cross_zero_shot
        if prompts is None:
            return {"skipped": f"no {zs.modality} encoder or input pipeline to embed prompts"}
        res = cross_modal_zero_shot(embeddings, labels, self.findings, prompts, cz.label_spaces, cz.pairs, score,
                                    self._prompt_scale(module, embeddings), cz.exclusive, text=zs.modality)
        out = {}
        for pair, per_finding in res.items():
            out[pair] = {f: {"auroc": v["auroc"], "n": len(v["target"])} for f, v in per_finding.items()}
            for f, v in per_finding.items():
                scalars[f"{stage}/zeroshot_cross/{pair}/auroc/{f}"] = v["auroc"]
            scalars[f"{stage}/zeroshot_cross/{pair}/mean_auroc"] = _nanmean(v["auroc"] for v in per_finding.values())
        if res:
            scalars[f"{stage}/zeroshot_cross/mean_auroc"] = _nanmean(
                scalars[f"{stage}/zeroshot_cross/{p}/mean_auroc"] for p in res)
        return out

    def _zero_shot(self, module, embeddings, labels, score, stage, scalars, figures, fit: dict | None = None) -> dict:
        """Zero-shot AUROC / balanced accuracy per finding, ECE and reliability per modality; with ``fit`` (a
        validation) one temperature per modality and a Platt slope and intercept per modality and finding are fitted
        (:mod:`probmed.evaluation.calibration`) into ``fit["temperature"]`` and ``fit["platt"]``, otherwise the
        stored ones of :attr:`fitted` give ``<stage>/zeroshot/<m>/ece_scaled`` (temperature), ``.../ece_platt`` and
        the scaled reliability diagrams beside the raw one."""
        prompts = self._embed_prompts(module)
        if prompts is None:
            return {"skipped": f"no {self.config.zero_shot.modality} encoder or input pipeline to embed prompts"}
        if not prompts:
            return {"skipped": self.prompt_problem or f"no prompts for any of the data's labels {self.findings}"}
        zs = self.config.zero_shot
        scale = self._prompt_scale(module, embeddings)
        res = zero_shot(embeddings, labels, self.findings, prompts, score, scale, text=zs.modality)
        temperatures = (self.fitted or {}).get("temperature", {}) if fit is None else {}
        platt = (self.fitted or {}).get("platt", {}) if fit is None else {}
        out, bins = {}, {}
        for m, per_finding in res.items():
            out[m] = {f: {"auroc": v["auroc"], "balanced_accuracy": v["balanced_accuracy"], "n": len(v["target"])}
                      for f, v in per_finding.items()}
            for f, v in per_finding.items():
                scalars[f"{stage}/zeroshot/{m}/auroc/{f}"] = v["auroc"]
                scalars[f"{stage}/zeroshot/{m}/balanced_accuracy/{f}"] = v["balanced_accuracy"]
            scalars[f"{stage}/zeroshot/{m}/mean_auroc"] = _nanmean(v["auroc"] for v in per_finding.values())
            scalars[f"{stage}/zeroshot/{m}/mean_balanced_accuracy"] = _nanmean(
                v["balanced_accuracy"] for v in per_finding.values())
            if per_finding:
                logits = torch.cat([v["logits"] for v in per_finding.values()])
                probs = torch.cat([v["probs"] for v in per_finding.values()])
                target = torch.cat([v["target"] for v in per_finding.values()])
                scalars[f"{stage}/zeroshot/{m}/ece"] = out[m]["ece"] = expected_calibration_error(probs, target)
                bins[f"{m} raw"] = reliability_bins(probs, target)
                if fit is not None and len(target):
                    fit["temperature"][m] = fit_temperature(logits, target)
                    scalars[f"{stage}/zeroshot/{m}/temperature"] = fit["temperature"][m]
                elif m in temperatures:
                    scaled = apply_temperature(logits, temperatures[m])
                    scalars[f"{stage}/zeroshot/{m}/temperature"] = temperatures[m]
                    scalars[f"{stage}/zeroshot/{m}/ece_scaled"] = out[m]["ece_scaled"] = \
                        expected_calibration_error(scaled, target)
                    bins[f"{m} T={temperatures[m]:.3g}"] = reliability_bins(scaled, target)
                self._platt(m, per_finding, fit, platt, f"{stage}/zeroshot/{m}", scalars, out, bins)
        scalars[f"{stage}/zeroshot/mean_auroc"] = _nanmean(scalars.get(f"{stage}/zeroshot/{m}/mean_auroc") for m in res)
        scalars[f"{stage}/zeroshot/mean_ece"] = _nanmean(scalars.get(f"{stage}/zeroshot/{m}/ece") for m in res)
        if any(f"{stage}/zeroshot/{m}/ece_scaled" in scalars for m in res):
            scalars[f"{stage}/zeroshot/mean_ece_scaled"] = _nanmean(
                scalars.get(f"{stage}/zeroshot/{m}/ece_scaled") for m in res)
        if any(f"{stage}/zeroshot/{m}/ece_platt" in scalars for m in res):
            scalars[f"{stage}/zeroshot/mean_ece_platt"] = _nanmean(
                scalars.get(f"{stage}/zeroshot/{m}/ece_platt") for m in res)
        if figures is not None and bins:
            figures["reliability"] = plots.reliability_figure(bins)
        return out

    @staticmethod
    def _platt(m, per_finding, fit, stored, prefix, scalars, out, bins) -> None:
        """Fit (``fit`` given) or apply the per-finding Platt scaling of modality ``m``: ``<prefix>/ece_platt``
        over all its findings' predictions and the Platt reliability diagram."""
        if fit is not None:
            fit["platt"][m] = {f: list(fit_platt(v["logits"], v["target"]))
                               for f, v in per_finding.items() if len(v["target"])}
            return
        found = [(apply_platt(v["logits"], *stored[m][f]), v["target"])
                 for f, v in per_finding.items() if f in stored.get(m, {}) and len(v["target"])]
        if found:
            probs, target = torch.cat([p for p, _ in found]), torch.cat([t for _, t in found])
            scalars[f"{prefix}/ece_platt"] = out[m]["ece_platt"] = expected_calibration_error(probs, target)
            bins[f"{m} Platt"] = reliability_bins(probs, target)

    def _robustness(self, embeddings, corrupted, score, stage, scalars) -> dict:
        """Per corruption and severity: mean R@1 of the corrupted modality as query against every other modality's
        clean gallery, and the corrupted modality's mean variance (severity 0 = clean). Per corruption also the
        Spearman correlation of each sample's predicted variance (mean over dimensions) with the severity, pooled
        over all severities including 0 (``variance_spearman``: +1 when the variance rises with every step), and per
        modality the mean of its corruptions' (``<stage>/robustness/<m>/variance_spearman``)."""
        out: dict[str, dict[float, dict[str, float]]] = {}
        per_sample: dict[str, dict[float, Tensor]] = {}

        def measure(emb_dict: dict, m: str) -> dict[str, float]:
            r1 = []
            for b in sorted(emb_dict):
                if b != m:
                    found = pair_ranks(emb_dict, score, m, b)
                    if found is not None:
                        r1.append(100.0 * float((found["ranks"] == 0).double().mean()))
            var = float(emb_dict[m][0].mean_variance().mean()) if len(emb_dict[m][1]) else math.nan
            return {"mean_R@1": _nanmean(r1), "variance": var}

        for (m, kind, severity), gathered in corrupted.items():
            if m not in embeddings or m not in gathered:
                continue
            name = f"{m}/{kind}"
            by = out.setdefault(name, {0.0: measure(embeddings, m)})
            by[severity] = measure({**embeddings, m: gathered[m]}, m)
            samples = per_sample.setdefault(name, {0.0: embeddings[m][0].mean_variance()})
            samples[severity] = gathered[m][0].mean_variance()
        rhos, by_modality = [], {}
        for name, by in out.items():
            for severity, v in by.items():
                scalars[f"{stage}/robustness/{name}/s{severity:g}/mean_R@1"] = v["mean_R@1"]
                scalars[f"{stage}/robustness/{name}/s{severity:g}/variance"] = v["variance"]
            sev = torch.cat([torch.full_like(v, s, dtype=torch.float64) for s, v in per_sample[name].items()])
            var = torch.cat([v.double() for v in per_sample[name].values()])
            rho = spearman(var, sev) if len(var) > 2 else math.nan
            scalars[f"{stage}/robustness/{name}/variance_spearman"] = rho
            rhos.append(rho)
            by_modality.setdefault(name.split("/")[0], []).append(rho)
        for m, values in by_modality.items():
            scalars[f"{stage}/robustness/{m}/variance_spearman"] = _nanmean(values)
        if rhos:
            scalars[f"{stage}/robustness/mean_variance_spearman"] = _nanmean(rhos)
        return out

    # -- outputs (rank 0) ------------------------------------------------------------------------------------------
    def publish(self, module, stage: str, report: dict, embeddings: dict, labels: dict) -> None:
        """Figures to TensorBoard and PNG, the projector, and ``<log_dir>/<stage>_metrics.json`` (undefined
        metrics, e.g. AUROC of a finding with one class only in the split, are ``null`` there)."""
        logger = module.logger
        experiment = getattr(logger, "experiment", None) if logger is not None else None
        log_dir = getattr(logger, "log_dir", None) if logger is not None else None
        step = getattr(module, "log_step", module.global_step)  # the step of the epoch's scalars
        plots.publish(report["figures"], experiment, log_dir, stage, step)
        if experiment is not None and hasattr(experiment, "add_histogram"):
            for m, (emb, _) in sorted(embeddings.items()):
                if len(emb):
                    experiment.add_histogram(f"{stage}/variance/{m}", emb.mean_variance(), global_step=step)
        if stage in self.config.projector and experiment is not None and hasattr(experiment, "add_embedding"):
            self._projector(experiment, stage, embeddings, labels, step)
        if log_dir:
            path = Path(log_dir) / f"{stage}_metrics.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            payload = {"scalars": report["scalars"], **report["details"], "config": asdict(self.config)}
            path.write_text(json.dumps(_json_ready(payload), indent=2, allow_nan=False))

    def _projector(self, experiment, stage: str, embeddings: dict, labels: dict, step: int) -> None:
        means, meta = [], []
        for m, (emb, ids) in sorted(embeddings.items()):
            n = min(len(ids), self.config.projector_max)
            means.append(emb.mean[:n].float())
            var = emb.mean_variance()[:n]
            for i in range(n):
                lab = labels.get(ids[i])
                found = [f for j, f in enumerate(self.findings) if lab is not None and lab[j] == 1]
                meta.append([m, ids[i], "+".join(found) or "none", f"{float(var[i]):.4g}"])
        if means:
            experiment.add_embedding(torch.cat(means), metadata=meta, metadata_header=["modality", "study", "findings", "variance"],
                                     tag=f"{stage}_embeddings", global_step=step)


def format_uncertainty_summary(scalars: dict[str, float], stage: str = "test") -> str:
    """The few lines ``probmed test`` prints under the retrieval table, from the suite's scalars: per modality
    Spearman(mean σ², recorded ambiguity) (``n/a`` without recorded truth), then per ordered pair the AURC of
    abstaining on the variance, on the margin and on the variance-aware rule, beside the oracle and random AURC,
    and a count of the pairs where the rule beats the margin and where the variance is worse than random. Empty
    when the stage computed no selective-retrieval metric."""
    prefix = f"{stage}/confidence/margin/aurc/"
    pairs = sorted(k[len(prefix):] for k in scalars if k.startswith(prefix))
    if not pairs:
        return ""

    def num(key: str) -> str:
        value = scalars.get(key)
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"

    modalities = sorted({p.split("->")[0] for p in pairs})
    rho = "  ".join(f"{m} {num(f'{stage}/ambiguity_spearman/{m}')}" for m in modalities)
    if not any(f"{stage}/ambiguity_spearman/{m}" in scalars for m in modalities):
        rho += "  (the shards record no ambiguity)"
    lines = [f"Uncertainty on the {stage} split (AURC of abstaining on each signal, lower is better; oracle = "
             "the best any signal could do, random = the error rate):",
             f"Spearman(variance, recorded ambiguity): {rho}",
             f"{'query -> gallery':<18}{'variance':>10}{'margin':>9}{'var-aware':>11}{'oracle':>9}{'random':>9}"]
    better = worse = fitted = 0
    for p in pairs:
        c = f"{stage}/confidence"
        lines.append(f"{p.replace('->', ' -> '):<18}{num(f'{c}/variance/aurc/{p}'):>10}{num(f'{c}/margin/aurc/{p}'):>9}"
                     f"{num(f'{c}/variance_aware/aurc/{p}'):>11}{num(f'{c}/oracle_aurc/{p}'):>9}"
                     f"{num(f'{c}/random_aurc/{p}'):>9}")
        aware, margin = scalars.get(f"{c}/variance_aware/aurc/{p}"), scalars.get(f"{c}/margin/aurc/{p}")
        if aware is not None and margin is not None:
            fitted += 1
            better += aware < margin
        variance, chance = scalars.get(f"{c}/variance/aurc/{p}"), scalars.get(f"{c}/random_aurc/{p}")
        worse += variance is not None and chance is not None and variance > chance
    verdict = (f"variance-aware beats the margin on {better} of {fitted} pairs" if fitted else
               "variance-aware: n/a (no rule fitted on validation in this checkpoint; margin only)")
    lines.append(f"{verdict}; abstaining on the variance is worse than random on {worse} of {len(pairs)} pairs")
    return "\n".join(lines)
