"""Zero-shot AUROC per CheXpert label on a generated MIMIC-CXR-layout stand-in: the real-data path end to end.

Writes ``--studies`` studies in the MIMIC-CXR layout (DX films + reports + the 14-label CheXpert CSV with
uncertain and missing values, :mod:`probmed.data.synthetic.mimic_layout`), then runs ``probmed data manifest
mimic-cxr`` → ``probmed data build`` → ``probmed fit --config configs/mimic_standin.yaml`` (tiny CXR + text towers,
ProbMED's Hellinger InfoNCE) →
``probmed test`` and prints the test split's zero-shot AUROC per label, with the label counts.

Usage::

    python experiments/mimic_standin.py --studies 600 --epochs 8 --out /tmp/mimic_standin
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-m", "probmed", *args], cwd=cwd, env=env, text=True, capture_output=True)
    if proc.returncode:
        raise SystemExit(f"probmed {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--uncertain", default="ignore", choices=("ignore", "positive", "negative"))
    parser.add_argument("--out", default="mimic_standin")
    args = parser.parse_args()
    from probmed.data.synthetic.mimic_layout import write_mimic_cxr_standin
    from probmed.evaluation.prompts import load_prompt_set

    out = Path(args.out).resolve()
    root = write_mimic_cxr_standin(out / "mimic-cxr", load_prompt_set("chexpert14"), studies=args.studies, size=32)
    run(["data", "manifest", "mimic-cxr", "--root", str(root), "--out", str(out / "studies.csv")], out)
    run(["data", "build", "--manifest", str(out / "studies.csv"), "--out", str(out / "shards"), "--salt", "bench",
         "--quiet"], out)
    common = ["--config", str(REPO / "configs" / "mimic_standin.yaml"), "--data.data_dir", str(out / "shards"),
              "--data.uncertain", args.uncertain, "--trainer.max_epochs", str(args.epochs),
              "--trainer.logger.init_args.save_dir", str(out), "--trainer.default_root_dir", str(out)]
    run(["fit", *common], out)
    versions = sorted((out / "mimic").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    (checkpoint,) = versions[-1].glob("checkpoints/*.ckpt")
    run(["test", *common, "--ckpt_path", str(checkpoint)], out)
    versions = sorted((out / "mimic").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    metrics = json.loads((versions[-1] / "test_metrics.json").read_text())
    counts = json.loads((out / "shards" / "labels.json").read_text())["counts"]
    print(f"{'label':28s} {'AUROC':>6s} {'n test':>7s}   positive/negative/uncertain/missing (all splits)")
    for label, row in metrics["zero_shot"]["cxr"].items():
        if label == "ece":
            continue
        auroc = "  n/a" if row["auroc"] is None else f"{row['auroc']:.3f}"
        c = counts[label]
        print(f"{label:28s} {auroc:>6s} {row['n']:7d}   {c['positive']}/{c['negative']}/{c['uncertain']}/{c['missing']}")
    print(f"mean zero-shot AUROC (cxr): {metrics['scalars']['test/zeroshot/cxr/mean_auroc']:.3f}")


if __name__ == "__main__":
    main()
