"""What the embedded corpus allows a modality pair to reach, and what a trained model's towers measure of it.

The synthetic corpus links modalities only through hidden attributes (``meta.attributes`` in every shard sample):
heart rate and rhythm (ECG, echo), heart size (CXR cardiothoracic ratio ``ctr``; echo LV size ``lv_scale`` =
1 + 1.6·(ctr − 0.44) + 0.08·[reduced EF] + N(0, 0.03²)), ejection fraction (echo), findings (all, in words in the
report). This script prints, on one split:

1. **Ceiling of CXR↔echo's heart-size link** — retrieval that knows both studies' hidden values exactly: a film's
   query is the LV size its ctr implies, a cine's key its ``lv_scale`` minus the EF-dependent dilation (EF is visible
   in a cine). The corpus noise (0.03) and the overlap of 200+ heart sizes keep it far from 100 %; a model can only
   beat it by chance or through a link the corpus did not mean to plant (at N ≈ 220 one query is 0.45 points, so
   R@1 of a few percent is mostly noise: compare R@5).
2. With ``--embeddings`` (``probmed predict ... --embeddings.path emb.npz``): **ridge probes** — how much of each
   hidden attribute a tower's embedding means carry (R², 5-fold cross-fitted closed-form ridge on standardised
   means), and CXR↔echo retrieval that matches the two towers' own LV-size read-outs (what the towers measure,
   without the shared embedding space).

Recalls use :func:`probmed.evaluation.retrieval.rank_of_true` (ties count against), in percent.

Usage::

    python benchmarks/corpus_ceiling.py --data data_shards/demo
    probmed predict --config configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt --embeddings.path emb.npz
    python benchmarks/corpus_ceiling.py --data data_shards/demo --embeddings emb.npz
"""
from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import numpy as np
import torch

from probmed.data.schema import META_EXT
from probmed.evaluation.export import load_embeddings
from probmed.evaluation.retrieval import rank_of_true, recall_at_k

ATTRIBUTES = ("heart_rate", "ef", "lv_scale", "ctr")


def read_meta(data: Path, split: str) -> dict[str, dict]:
    """``{study_id: meta}`` of every sample in ``<data>/<split>-*.tar`` (JSON only; nothing is unpickled)."""
    out = {}
    for shard in sorted(data.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tf:
            for member in tf:
                if member.isfile() and member.name.endswith("." + META_EXT):
                    meta = json.loads(tf.extractfile(member).read())
                    out[meta["study_id"]] = meta
    if not out:
        raise SystemExit(f"no {split}-*.tar samples under {data}")
    return out


def recalls(query: np.ndarray, key: np.ndarray) -> str:
    """R@1 / R@5 both ways when study i's query is ``query[i]`` and its partner's key ``key[i]`` (scalars)."""
    scores = -torch.from_numpy(np.abs(query[:, None] - key[None, :]))
    diag = torch.arange(len(query))
    a, b = recall_at_k(rank_of_true(scores, diag), (1, 5)), recall_at_k(rank_of_true(scores.T, diag), (1, 5))
    return f"cxr->echo R@1 {a[1]:.1f} R@5 {a[5]:.1f}   echo->cxr R@1 {b[1]:.1f} R@5 {b[5]:.1f}"


def ridge_cross_fit(x: np.ndarray, y: np.ndarray, folds: int = 5, alpha: float = 0.02) -> np.ndarray:
    """Out-of-fold predictions of ``y [N]`` from ``x [N, D]`` (standardised; penalty ``alpha · N_train``)."""
    pred = np.zeros(len(y))
    fold = np.arange(len(y)) % folds
    for f in range(folds):
        tr, te = fold != f, fold == f
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        a = (x[tr] - mu) / sd
        w = np.linalg.solve(a.T @ a + alpha * tr.sum() * np.eye(x.shape[1]), a.T @ (y[tr] - y[tr].mean()))
        pred[te] = ((x[te] - mu) / sd) @ w + y[tr].mean()
    return pred


def r2(pred: np.ndarray, y: np.ndarray) -> float:
    return float(1.0 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data_shards/demo"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--embeddings", type=Path, help="a `probmed predict` .npz of the same split")
    args = ap.parse_args()
    meta = read_meta(args.data, args.split)
    both = sorted(s for s, m in meta.items() if {"cxr", "echo"} <= set(m["modalities"]))
    attr = {k: np.array([meta[s]["attributes"][k] for s in both], float) for k in ("ctr", "lv_scale")}
    reduced = np.array([meta[s]["findings"]["reduced_ef"] for s in both], float)
    print(f"{args.split} split, {len(both)} studies with film and cine")
    print("ceiling (hidden values known exactly):        "
          + recalls(1 + 1.6 * (attr["ctr"] - 0.44), attr["lv_scale"] - 0.08 * reduced))
    if args.embeddings is None:
        return
    emb = load_embeddings(args.embeddings)
    row = {sid: i for i, sid in enumerate(emb["study_id"].tolist())}
    print("ridge probe R^2 of embedding means (rows: tower, columns: hidden attribute)")
    print("        " + "".join(f"{k:>12}" for k in ATTRIBUTES))
    for mod in ("cxr", "ecg", "echo", "text"):
        if f"{mod}/mean" not in emb:
            continue
        ids = [s for s in meta if s in row and emb[f"{mod}/present"][row[s]]]
        x = emb[f"{mod}/mean"][[row[s] for s in ids]]
        cells = [r2(ridge_cross_fit(x, y), y) for y in
                 (np.array([meta[s]["attributes"][k] for s in ids], float) for k in ATTRIBUTES)]
        print(f"{mod:<8}" + "".join(f"{c:>12.2f}" for c in cells))
    missing = [s for s in both if s not in row]
    if missing:
        raise SystemExit(f"{len(missing)} studies of the split are not in {args.embeddings} (another split?)")
    take = [row[s] for s in both]
    lv_from_cxr = ridge_cross_fit(emb["cxr/mean"][take], attr["lv_scale"])
    lv_from_echo = ridge_cross_fit(emb["echo/mean"][take], attr["lv_scale"])
    print("towers' own LV-size read-outs matched:        " + recalls(lv_from_cxr, lv_from_echo))


if __name__ == "__main__":
    main()
