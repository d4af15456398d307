"""Train demo-size models with the same towers, budget, data and seeds for several objectives and print one table:
mean R@1 over modality pairs, zero-shot AUROC, AURC (retrieval, abstaining on variance) and zero-shot ECE.

Each objective replaces ``model.objective`` of ``configs/demo.yaml``; everything else (towers, data, optimiser,
seed) stays as the demo has it. The objectives come from the table :data:`OBJECTIVES` below or from files::

    python benchmarks/compare_presets.py --epochs 14                       # the full comparison (long on CPU)
    python benchmarks/compare_presets.py --studies 300 --epochs 1          # a quick check that it all runs
    python benchmarks/compare_presets.py --objective mine=my_objective.yaml --only probmed,mine

A file given with ``--objective NAME=PATH`` holds an objective block (``class_path: probmed.losses.Objective``,
``init_args: {terms: [...]}``), or a whole config whose ``model.objective`` is taken.
Results (per run: ``<workdir>/<name>/test_metrics.json``) and the table (``<workdir>/comparison.json``) stay on disk.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
#: The modality pairs that share hidden findings in the embedded corpus (the demo's trained pairs).
PAIRS = [["text", "cxr"], ["text", "ecg"], ["text", "echo"], ["cxr", "echo"], ["ecg", "echo"]]
ALL = ["cxr", "ecg", "echo", "text"]


def _infonce(pair, similarity, **kw):
    return {"class_path": "probmed.losses.ProbabilisticInfoNCE",
            "init_args": {"modalities": pair, "similarity": similarity, **kw}}


def _vib(weight=1.0e-4):
    return {"class_path": "probmed.losses.VIB", "init_args": {"modalities": ALL, "weight": weight}}


def _synthetic(weight=0.1):
    return [{"class_path": "probmed.losses.SyntheticSampling", "init_args": {"modality": m, "weight": weight, "num_samples": 4}}
            for m in ALL]


def _objective(terms):
    return {"class_path": "probmed.losses.Objective", "init_args": {"terms": terms}}


#: name → objective block. MedProbCLIP-style: its distance (``medprob``) in InfoNCE over the same pairs plus VIB
#: (the MedProbCLIP term itself is CXR-view × report-section specific). MEDBind: cosine InfoNCE text↔each
#: modality (text anchor) plus the Edge-Modality Contrastive Loss on the non-text pairs, on studies having both.
OBJECTIVES: dict[str, dict] = {
    "probmed": _objective([_infonce(p, "bhattacharyya") for p in PAIRS] + _synthetic() + [_vib()]),
    "probmed-hellinger": _objective([_infonce(p, "hellinger") for p in PAIRS] + _synthetic() + [_vib()]),
    "clip": _objective([_infonce(p, "cosine") for p in PAIRS]),
    "pcme++": _objective([{"class_path": "probmed.losses.PCMEpp", "init_args": {"modalities": p}} for p in PAIRS] + [_vib()]),
    "medprobclip": _objective([_infonce(p, "medprob") for p in PAIRS] + [_vib()]),
    "medbind": _objective([_infonce(p, "cosine") for p in PAIRS if "text" in p]
                          + [{"class_path": "probmed.losses.EdgeModalityContrastive", "init_args": {"modalities": p}}
                             for p in PAIRS if "text" not in p]),
}

COLUMNS = [("mean R@1 %", "test/mean_R@1"), ("zero-shot AUROC", "test/zeroshot/mean_auroc"),
           ("AURC", "test/mean_aurc"), ("ECE", "test/zeroshot/mean_ece")]


def load_objective(path: Path) -> dict:
    """An objective block from a YAML file (the block itself, or a config holding ``model.objective``)."""
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and "model" in data:
        data = (data["model"].get("init_args") or data["model"]).get("objective")
    if not isinstance(data, dict) or "class_path" not in data:
        raise SystemExit(f"{path}: no objective block (class_path/init_args, or model.objective) found")
    return data


def run_config(base: dict, name: str, objective: dict, args, data_dir: Path, run_dir: Path) -> dict:
    """The demo config with this objective, budget, data and output places."""
    cfg = copy.deepcopy(base)
    cfg["seed_everything"] = args.seed
    cfg["model"]["objective"] = objective
    trainer = cfg["trainer"]
    trainer["max_epochs"] = args.epochs
    trainer["enable_progress_bar"] = False
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                         "init_args": {"save_dir": str(run_dir), "name": "", "version": ""}}
    for cb in trainer.get("callbacks", []):
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["dirpath"] = str(run_dir / "checkpoints")
    cfg["data"]["data_dir"] = str(data_dir)
    cfg["data"]["num_workers"] = args.workers
    if args.batch_size:
        cfg["data"]["batch_size"] = args.batch_size
    return cfg


def probmed(*words: str, log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with log.open("a") as out:
        proc = subprocess.run([sys.executable, "-m", "probmed", *words], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"`probmed {' '.join(words[:2])}` failed (exit {proc.returncode}); see {log}")


def fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"), help="base config (default: the demo)")
    p.add_argument("--epochs", type=int, default=14, help="training epochs for every objective (the budget)")
    p.add_argument("--studies", type=int, default=3000, help="studies in the generated corpus")
    p.add_argument("--data", help="an existing dataset directory (default: generate one under --workdir)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus, the initialisation and the data order")
    p.add_argument("--workers", type=int, default=2, help="data loader workers")
    p.add_argument("--batch-size", type=int, help="override the config's batch size")
    p.add_argument("--objective", action="append", default=[], metavar="NAME=PATH", help="add/replace an objective from a YAML file")
    p.add_argument("--only", help="comma-separated objective names to run (default: all)")
    p.add_argument("--workdir", default=str(REPO / "runs" / "compare"))
    args = p.parse_args(argv)

    objectives = dict(OBJECTIVES)
    for item in args.objective:
        name, _, path = item.partition("=")
        if not name or not path:
            raise SystemExit(f"--objective wants NAME=PATH, got {item!r}")
        objectives[name] = load_objective(Path(path))
    if args.only:
        wanted = args.only.split(",")
        unknown = [n for n in wanted if n not in objectives]
        if unknown:
            raise SystemExit(f"unknown objective(s) {unknown}; have {sorted(objectives)}")
        objectives = {n: objectives[n] for n in wanted}

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.config).read_text())
    data_dir = Path(args.data).resolve() if args.data else workdir / f"corpus-{args.studies}-seed{args.seed}"
    if not (data_dir / "sizes.json").is_file():
        print(f"generating {args.studies} studies into {data_dir}", flush=True)
        probmed("data", "synth", "--out", str(data_dir), "--studies", str(args.studies), "--seed", str(args.seed),
                "--workers", str(args.workers), "--quiet", log=workdir / "synth.log")

    results = {}
    for name, objective in objectives.items():
        run_dir = workdir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = run_dir / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(run_config(base, name, objective, args, data_dir, run_dir), sort_keys=False))
        log = run_dir / "log.txt"
        log.write_text("")
        start = time.perf_counter()
        print(f"[{name}] fit ({args.epochs} epochs) ...", flush=True)
        probmed("fit", "--config", str(cfg_path), log=log)
        probmed("test", "--config", str(cfg_path), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), log=log)
        metrics = json.loads((run_dir / "test_metrics.json").read_text())["scalars"]
        results[name] = {col: metrics.get(key) for col, key in COLUMNS}
        results[name]["minutes"] = (time.perf_counter() - start) / 60
        print(f"[{name}] done in {results[name]['minutes']:.1f} min", flush=True)

    head = f"{'objective':<20}" + "".join(f"{c:>17}" for c, _ in COLUMNS) + f"{'minutes':>9}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:<20}" + "".join(f"{fmt(r[c]):>17}" for c, _ in COLUMNS) + f"{r['minutes']:>9.1f}")
    table = "\n".join(lines)
    print(f"\nTest split of {data_dir.name}, {args.epochs} epoch(s), seed {args.seed} "
          f"(R@1 in percent, higher is better; AURC and ECE lower is better):\n{table}")
    (workdir / "comparison.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
