"""The seed methods compared as their preset files define them, on the embedded corpus, over several seeds.

Every row is a preset under ``configs/presets/`` run as it is (its objective, pairs, head settings, embedding
size, data keys — MedProbCLIP's two views x two sections, MEDBind's text anchor + edge loss, ...) with one
override shared by all rows: the demo's small towers, input sizes, optimiser, batch and epoch budget (the presets'
own optimisers are recipes for pretrained towers; the small towers start from scratch). ``probmed-logbc`` is the
ProbMED preset with the Bhattacharyya logit in place of its Hellinger similarity.

    python experiments/compare_presets.py                                  # 7 rows x seeds 0,1,2, demo budget
    python experiments/compare_presets.py --epochs 3 --studies 600 --seeds 0 --only probmed,clip   # quick look

Printed per row, mean ± sd over seeds, on the test split (last checkpoint), every figure the evaluation suite's
(``probmed/evaluation/suite.py``, scalars of ``test_metrics.json``): R@1 and R@5 text<->cxr (the one pair every
preset trains), mean R@1 and R@5 and PMRP over the row's trained pairs, zero-shot AUROC and ECE raw and
temperature-scaled and Platt-scaled (fitted on validation), AURC and E-AURC of abstaining on the variance and on the
similarity margin, the 10-bin Pearson(variance bin, R@1) (PCME++ / ProLIP; negative = informative), and the
Spearman correlation of predicted variance with corruption severity (every registered corruption of every input at
severities 0-3; a second table gives the suite's per-modality value).
Runs stay under ``--workdir`` (``<row>/seed<k>/test_metrics.json``); the table also goes to
``<workdir>/comparison.json`` and, as Markdown, ``<workdir>/comparison.md``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import yaml

from probmed.evaluation.corruptions import all_corruptions

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "configs" / "presets"
DEMO_TOWERS = PRESETS / "towers" / "demo"

#: row -> (config under configs/, similarity replacing its InfoNCE similarity or None, objective file under
#: configs/ replacing its objective or None[, an overlay under configs/ whose model settings are laid over the
#: config's]). The ``demo*`` rows keep the demo's embedding size
#: (64) and validation cadence; the preset rows keep their presets' (512).
ROWS: dict[str, tuple] = {
    "probmed": ("presets/probmed.yaml", None, None),
    "probmed-logbc": ("presets/probmed.yaml", "bhattacharyya", None),
    "medprobclip": ("presets/medprobclip.yaml", None, None),
    "medbind": ("presets/medbind.yaml", None, None),
    "pcme++": ("presets/pcmepp.yaml", None, None),
    "clip": ("presets/clip.yaml", None, None),
    "siglip": ("presets/siglip.yaml", None, None),
    "demo": ("demo.yaml", None, None),
    "demo-logbc": ("demo.yaml", "bhattacharyya", None),
    "demo-clip": ("demo.yaml", None, "presets/objectives/clip_six_pairs.yaml"),
    "demo-pcme++": ("demo.yaml", None, "presets/objectives/pcmepp_six_pairs.yaml"),
    "demo-difficulty": ("demo.yaml", None, "presets/objectives/probmed_difficulty.yaml"),
    # ablations of the demo's objective (configs/ablations/, issue 25 part 3)
    "demo-no-sampling": ("demo.yaml", None, "ablations/probmed_no_sampling.yaml"),
    "demo-difficulty-no-sampling": ("demo.yaml", None, "ablations/probmed_difficulty_no_sampling.yaml"),
    "demo-quality": ("demo.yaml", None, None, "presets/overlays/quality_augmentation.yaml"),
    "demo-logbc-quality": ("demo.yaml", "bhattacharyya", None, "presets/overlays/quality_augmentation.yaml"),
    "demo-quality-narrow": ("demo.yaml", None, None, "ablations/quality_narrow.yaml"),
    "demo-quality-all-kinds": ("demo.yaml", None, None, "ablations/quality_all_kinds.yaml"),
    "demo-quality-margin4": ("demo.yaml", None, None, "ablations/quality_margin4.yaml"),
    "demo-quality-margin8": ("demo.yaml", None, None, "ablations/quality_margin8.yaml"),
    "demo-quality-ranking-only": ("demo.yaml", None, None, "ablations/quality_ranking_only.yaml"),
    "demo-quality-substitution": ("demo.yaml", None, None, "ablations/quality_substitution.yaml"),
    "demo-quality-head": ("demo.yaml", None, None, "ablations/quality_head.yaml"),
    "demo-quality-head-anchor0.1": ("demo.yaml", None, None, "ablations/quality_head_anchor01.yaml"),
}
CONFIGS = REPO / "configs"

#: The demo's input sizes, per input class (merged into each preset's own input options).
DEMO_INPUT_SIZES = {"CXRInput": {"size": 64}, "CXRSecondViewInput": {"size": 64}, "ECGInput": {"rate": 100},
                    "EchoInput": {"frames": 16, "size": 40}, "TextInput": {"max_length": 96},
                    "ImpressionInput": {"max_length": 96}}

SEVERITIES = (1.0, 2.0, 3.0)
ROBUSTNESS = "test/robustness/mean_variance_spearman"
COLUMNS = ["R@1 text<->cxr", "R@5 text<->cxr", "mean R@1", "mean R@5", "PMRP", "zero-shot AUROC", "ECE",
           "ECE scaled", "ECE Platt", "AURC", "AURC margin", "AURC var-aware", "E-AURC", "E-AURC margin",
           "10-bin Pearson", "var-aware wins", "var~severity rho"]
LOWER_IS_BETTER = {"ECE", "ECE scaled", "ECE Platt", "AURC", "AURC margin", "AURC var-aware", "E-AURC",
                   "E-AURC margin", "10-bin Pearson"}


def preset_config(name: str, objective_file: str | None = None) -> dict:
    """The row's config (``name`` under configs/) as a dict, its objective read in (or ``objective_file``'s)."""
    path = CONFIGS / name
    preset = yaml.safe_load(path.read_text())
    if objective_file is not None:
        preset["model"]["objective"] = yaml.safe_load((CONFIGS / objective_file).read_text())
    objective = preset.get("model", {}).get("objective")
    if isinstance(objective, str):  # a file named relative to the config (presets/objectives/...): its content
        preset["model"]["objective"] = yaml.safe_load((path.parent / objective).read_text())
    return preset


def base_modality(key: str) -> str:
    """``cxr_view2`` -> ``cxr``, ``text_impression`` -> ``text`` (an extra view/section of a modality)."""
    return key.split("_")[0]


def override(preset: dict, similarity: str | None, args, seed: int, data_dir: Path, run_dir: Path,
             overlay: str | None = None) -> dict:
    """The config laid over the preset: demo towers, sizes, optimiser, budget, data and output places."""
    enc = preset["model"].get("encoders", {})
    inputs = {}
    for key, spec in preset["data"].get("inputs", {}).items():
        cls = spec["class_path"] if isinstance(spec, dict) else spec
        inputs[key] = {"class_path": cls, "init_args": dict(DEMO_INPUT_SIZES.get(cls.rsplit(".", 1)[-1], {}))}
    model: dict = {
        "warmup_steps": 30,
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": args.lr, "weight_decay": 1.0e-4}},
        "encoders": {m: str(DEMO_TOWERS / f"{m}.yaml") for m in enc},
    }
    objective = copy.deepcopy(preset["model"]["objective"])
    if similarity is not None:
        for group in objective["init_args"].get("pairs", []):
            if group["term"].endswith("ProbabilisticInfoNCE"):
                group.setdefault("args", {})["similarity"] = similarity
    model["objective"] = objective
    if overlay is not None:
        model.update(yaml.safe_load((CONFIGS / overlay).read_text())["model"])
    return {
        "seed_everything": seed,
        "trainer": {
            "max_epochs": args.epochs, "enable_progress_bar": False, "log_every_n_steps": 10,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(run_dir), "name": "", "version": ""}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(run_dir / "checkpoints"), "save_last": True,
                                         "save_top_k": 0}}],
        },
        "model": {**model, "evaluation": {"corruptions": all_corruptions(list(inputs), SEVERITIES)}},
        "data": {"data_dir": str(data_dir), "batch_size": args.batch_size, "num_workers": args.workers,
                 "inputs": inputs},
    }


def probmed(*words: str, log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with log.open("a") as out:
        proc = subprocess.run([sys.executable, "-m", "probmed", *words], cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"`probmed {' '.join(words[:2])}` failed (exit {proc.returncode}); see {log}")


def summarise(scalars: dict, modalities: list[str]) -> dict[str, float]:
    """The table's columns from one run's test scalars; trained pairs = pairs of the preset's modalities."""
    mods = sorted({base_modality(m) for m in modalities})
    pairs = [(a, b) for a, b in combinations(mods, 2)]

    def mean_of(keys):
        vals = [scalars[k] for k in keys if scalars.get(k) is not None]
        return sum(vals) / len(vals) if vals else math.nan

    def both(k, a, b):
        return [f"test/R@{k}/{a}->{b}", f"test/R@{k}/{b}->{a}"]

    return {
        "R@1 text<->cxr": mean_of(both(1, "text", "cxr")),
        "R@5 text<->cxr": mean_of(both(5, "text", "cxr")),
        "mean R@1": mean_of([key for a, b in pairs for key in both(1, a, b)]),
        "mean R@5": mean_of([key for a, b in pairs for key in both(5, a, b)]),
        "PMRP": mean_of([f"test/pmrp/{x}->{y}" for a, b in pairs for x, y in ((a, b), (b, a))]),
        "zero-shot AUROC": mean_of(["test/zeroshot/mean_auroc"]),
        "ECE": mean_of(["test/zeroshot/mean_ece"]),
        "ECE scaled": mean_of(["test/zeroshot/mean_ece_scaled"]),
        "ECE Platt": mean_of(["test/zeroshot/mean_ece_platt"]),
        "AURC": mean_of(["test/mean_aurc"]),
        "AURC margin": mean_of(["test/confidence/margin/mean_aurc"]),
        "AURC var-aware": mean_of(["test/confidence/variance_aware/mean_aurc"]),
        "E-AURC": mean_of(["test/confidence/variance/mean_e_aurc"]),
        "E-AURC margin": mean_of(["test/confidence/margin/mean_e_aurc"]),
        "10-bin Pearson": mean_of(["test/confidence/variance/mean_binned_pearson"]),
        "var-aware wins": var_aware_wins(scalars, pairs),
        "var~severity rho": mean_of(["test/robustness/mean_variance_spearman"]),
    }


def var_aware_wins(scalars: dict, pairs) -> float:
    """Ordered pairs on which the variance-aware confidence's AURC is below the margin's (NaN if none reported)."""
    c = "test/confidence"
    found = [(scalars.get(f"{c}/variance_aware/aurc/{x}->{y}"), scalars.get(f"{c}/margin/aurc/{x}->{y}"))
             for a, b in pairs for x, y in ((a, b), (b, a))]
    found = [(v, m) for v, m in found if v is not None and m is not None]
    return float(sum(v < m for v, m in found)) if found else math.nan


#: per-modality figures: table title -> scalar key with {m} for the modality and {stage}
PER_MODALITY = {
    "Spearman(mean σ², recorded ambiguity), test split": "test/ambiguity_spearman/{m}",
    "Spearman(mean σ², recorded ambiguity), validation split (what selects)": "val/ambiguity_spearman/{m}",
    "Pearson(variance decile, R@1) over the pairs the modality queries, test split":
        "test/confidence/variance/binned_pearson/{m}",
    "Spearman(predicted variance, corruption severity 0-3), mean over the modality's corruptions":
        "test/robustness/{m}/variance_spearman",
}


def mean_sd(values: list[float]) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    m = statistics.fmean(vals)
    digits = 1 if abs(m) >= 10 else 3
    return f"{m:.{digits}f} ± {statistics.stdev(vals):.{digits}f}" if len(vals) > 1 else f"{m:.{digits}f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (initialisation and data order)")
    p.add_argument("--epochs", type=int, default=14, help="training epochs of every run (the demo's budget)")
    p.add_argument("--studies", type=int, default=3000, help="studies in the generated corpus (the demo's)")
    p.add_argument("--data", help="an existing dataset directory (default: generate one under --workdir)")
    p.add_argument("--lr", type=float, default=5.0e-3, help="AdamW learning rate of every run (the demo's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="data loader workers")
    p.add_argument("--only", help=f"comma-separated rows (default: all of {', '.join(ROWS)})")
    p.add_argument("--workdir", default=str(REPO / "runs" / "compare"))
    p.add_argument("--report-only", action="store_true",
                   help="print the table of the runs already tested under --workdir; start nothing")
    args = p.parse_args(argv)

    rows = dict(ROWS)
    if args.only:
        unknown = [n for n in args.only.split(",") if n not in ROWS]
        if unknown:
            raise SystemExit(f"unknown row(s) {unknown}; have {list(ROWS)}")
        rows = {n: ROWS[n] for n in args.only.split(",")}
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data).resolve() if args.data else workdir / f"corpus-{args.studies}"
    if not args.report_only and not (data_dir / "sizes.json").is_file():
        print(f"generating {args.studies} studies into {data_dir}", flush=True)
        probmed("data", "synth", "--out", str(data_dir), "--studies", str(args.studies), "--seed", "0",
                "--workers", str(args.workers), "--quiet", log=workdir / "synth.log")

    results: dict[str, dict[str, list[float]]] = {}
    per_modality: dict[str, dict[str, list[float]]] = {}  # row -> modality -> variance~severity rho per seed
    for name, (preset_file, similarity, objective_file, *overlay) in rows.items():
        preset = preset_config(preset_file, objective_file)
        modalities = list(preset["data"].get("modalities") or preset["data"]["inputs"])
        for seed in seeds:
            run_dir = workdir / name / f"seed{seed}"
            metrics_file = run_dir / "test_metrics.json"
            fitted = run_dir / "fit.done"  # a finished fit (an interrupted one leaves an earlier last.ckpt)
            tested = metrics_file.is_file() and ROBUSTNESS in json.loads(metrics_file.read_text())["scalars"]
            if not tested and args.report_only:
                print(f"[{name} seed {seed}] not tested yet: left out", flush=True)
                continue
            if not tested:
                run_dir.mkdir(parents=True, exist_ok=True)
                over = run_dir / "override.yaml"
                config = override(preset, similarity, args, seed, data_dir, run_dir, *overlay)
                over.write_text(yaml.safe_dump(config,
                                               sort_keys=False))
                cfg = ["--config", str(CONFIGS / preset_file), "--config", str(over)]
                log = run_dir / "log.txt"
                start = time.perf_counter()
                if not (fitted.is_file() or metrics_file.is_file()):
                    log.write_text("")
                    print(f"[{name} seed {seed}] fit ({args.epochs} epochs) ...", flush=True)
                    probmed("fit", *cfg, log=log)
                    fitted.touch()
                print(f"[{name} seed {seed}] test ...", flush=True)
                probmed("test", *cfg, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), log=log)
                print(f"[{name} seed {seed}] done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
            scalars = json.loads(metrics_file.read_text())["scalars"]
            val_file = run_dir / "val_metrics.json"  # the last validation of the fit
            if val_file.is_file():
                scalars = {**json.loads(val_file.read_text())["scalars"], **scalars}
            for col, v in summarise(scalars, modalities).items():
                results.setdefault(name, {}).setdefault(col, []).append(v)
            for title, key in PER_MODALITY.items():
                for m in sorted({base_modality(k) for k in modalities}):
                    per_modality.setdefault(title, {}).setdefault(name, {}).setdefault(m, []).append(
                        scalars.get(key.format(m=m), math.nan))

    head = "| row | seeds | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, cols in results.items():
        lines.append(f"| {name} | {len(cols['mean R@1'])} | " + " | ".join(mean_sd(cols[c]) for c in COLUMNS) + " |")
    table = "\n".join(lines)
    print(f"\nTest split of {data_dir.name}, {args.epochs} epoch(s), seeds {seeds} (mean ± sd; R@K in percent; "
          f"{', '.join(sorted(LOWER_IS_BETTER))} lower is better):\n{table}")
    md = [table]
    for title, by_row in per_modality.items():
        mods = sorted({m for by in by_row.values() for m in by})
        lines = ["| row | " + " | ".join(mods) + " |", "|" + "---|" * (len(mods) + 1)]
        for name, by in by_row.items():
            lines.append(f"| {name} | " + " | ".join(mean_sd(by[m]) if m in by else "" for m in mods) + " |")
        print(f"\n{title}:\n" + "\n".join(lines))
        md.append(f"{title}:\n\n" + "\n".join(lines))
    (workdir / "comparison.json").write_text(json.dumps({"args": vars(args), "results": results,
                                                         "per_modality": per_modality}, indent=2))
    (workdir / "comparison.md").write_text("\n\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
