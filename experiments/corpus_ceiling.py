"""What the embedded corpus allows a modality pair to reach, and what a trained model's towers measure of it.

The synthetic corpus links modalities only through hidden attributes (``meta.attributes`` in every shard sample):
heart rate and rhythm (ECG, echo), heart size (CXR cardiothoracic ratio ``ctr``; echo LV size ``lv_scale`` =
1 + 1.6·(ctr − 0.44) + 0.08·[reduced EF] + N(0, 0.03²)), ejection fraction (echo), cardiac structure (LV
hypertrophy: ECG voltage and strain, echo wall, with cardiomegaly on the film; left-atrial enlargement: film, echo,
P mitrale, with atrial fibrillation; see :mod:`probmed.data.synthetic.plan`), findings (all, in words in the
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

3. With ``--probe``: **what simple features of the rendered studies carry** — every study of the split(s) is
   decoded by the demo's own input pipelines (CXR 64 px, ECG 100 Hz × 10 s, echo 16 frames × 40 px) and
   reduced to honest, hand-made features: the film average-pooled to 16 × 16; per ECG lead the QRS maximum and
   minimum, ST-T and P-wave means about the PQ level of a median beat, plus heart rate and RR variability; the cine's
   mean and standard-deviation images pooled to 10 × 10 and the autocorrelation of its frame-difference energy;
   the report's word counts. A logistic probe (standardised features, L2, 5-fold cross-fitting grouped by patient)
   predicts each finding and the left-atrial-enlargement attribute; the table prints out-of-fold AUROC per
   modality (rows) and target (columns). A pair shares a finding when both rows reach it: e.g. CXR↔ECG through
   ``lvh`` / ``cardiomegaly`` and ``atrial_fibrillation`` / ``la_enlarged``.

Recalls use :func:`probmed.evaluation.retrieval.rank_of_true` (ties count against), in percent.

Usage::

    python experiments/corpus_ceiling.py --data data_shards/demo
    python experiments/corpus_ceiling.py --data data_shards/demo --split all --probe
    probmed predict --config configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt --embeddings.path emb.npz
    python experiments/corpus_ceiling.py --data data_shards/demo --embeddings emb.npz
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


def _shards(data: Path, split: str) -> list[Path]:
    return sorted(data.glob("*-*.tar" if split == "all" else f"{split}-*.tar"))


def read_meta(data: Path, split: str) -> dict[str, dict]:
    """``{study_id: meta}`` of every sample in ``<data>/<split>-*.tar`` (JSON only; nothing is unpickled)."""
    out = {}
    for shard in _shards(data, split):
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


# ---------------------------------------------------------------------------------------------------- probes
PROBE_TARGETS = ("cardiomegaly", "pleural_effusion", "la_enlarged", "atrial_fibrillation", "bradycardia",
                 "tachycardia", "lvh", "reduced_ef")


def read_studies(data: Path, split: str) -> list[tuple[dict, dict[str, bytes]]]:
    """``[(meta, {ext: bytes})]`` of every sample of the split(s), read with plain tarfile."""
    rows: dict[str, dict[str, bytes]] = {}
    for shard in _shards(data, split):
        with tarfile.open(shard) as tf:
            for member in tf:
                if member.isfile():
                    key, ext = member.name.split(".", 1)
                    rows.setdefault(key, {})[ext] = tf.extractfile(member).read()
    return [(json.loads(files[META_EXT]), files) for _, files in sorted(rows.items())]


def cxr_features(image: np.ndarray) -> np.ndarray:
    """``[256]``: the ``[1, 64, 64]`` model input average-pooled to 16 × 16."""
    x = image[0]
    return x.reshape(16, x.shape[0] // 16, 16, x.shape[1] // 16).mean(axis=(1, 3)).ravel()


def ecg_features(signal: np.ndarray, rate: float) -> np.ndarray:
    """``[12·4 + 3]``: per lead QRS max / min, ST-T mean and P mean of the median beat about its PQ level (mV);
    heart rate (bpm), RR mean (s) and RR coefficient of variation. ``signal``: ``[12, samples]`` mV at ``rate``."""
    from scipy import ndimage
    from scipy.signal import find_peaks

    fs = float(rate)
    x = signal - ndimage.uniform_filter1d(signal, int(0.8 * fs), axis=1)  # baseline wander out
    energy = ndimage.uniform_filter1d(np.abs(np.gradient(x, axis=1)).sum(0), max(1, int(0.05 * fs)))
    peaks, _ = find_peaks(energy, height=0.4 * np.percentile(energy, 99), distance=int(0.27 * fs))
    pre, post = int(0.3 * fs), int(0.45 * fs)
    peaks = peaks[(peaks >= pre) & (peaks < x.shape[1] - post)]
    if len(peaks) < 2:
        return np.zeros(12 * 4 + 3)
    # align each beat on the largest |deflection| of its summed QRS
    lead_sum = np.abs(x).sum(0)
    peaks = np.array([p - 3 + int(np.argmax(lead_sum[p - 3:p + 4])) for p in peaks])
    peaks = peaks[(peaks >= pre) & (peaks < x.shape[1] - post)]
    beats = np.stack([x[:, p - pre:p + post] for p in peaks])  # [beats, 12, pre + post]
    beat = np.median(beats, axis=0)
    t = (np.arange(pre + post) - pre) / fs
    base = beat[:, (t >= -0.09) & (t <= -0.06)].mean(1, keepdims=True)
    b = beat - base
    qrs = (t >= -0.06) & (t <= 0.06)
    feats = [b[:, qrs].max(1), b[:, qrs].min(1), b[:, (t >= 0.1) & (t <= 0.3)].mean(1),
             b[:, (t >= -0.25) & (t <= -0.1)].mean(1)]
    rr = np.diff(peaks) / fs
    return np.concatenate([*feats, [60.0 / rr.mean(), rr.mean(), rr.std() / rr.mean()]])


def echo_features(frames: np.ndarray) -> np.ndarray:
    """``[208]``: mean and standard-deviation images of ``[T, 1, 40, 40]`` pooled to 10 × 10, and the
    autocorrelation at lags 1-8 of the frame-difference energy."""
    x = frames[:, 0]
    pool = lambda im: im.reshape(10, im.shape[0] // 10, 10, im.shape[1] // 10).mean(axis=(1, 3)).ravel()  # noqa
    e = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2))
    e = e - e.mean()
    ac = np.array([(e[:-k] * e[k:]).mean() / max((e * e).mean(), 1e-9) for k in range(1, 9)])
    return np.concatenate([pool(x.mean(0)), pool(x.std(0)), ac])


def modality_features(studies) -> dict[str, tuple[list[int], np.ndarray]]:
    """``{modality: (study rows, features [n, F])}`` through the demo's input pipelines."""
    from probmed.data.inputs import CXRInput, ECGInput, EchoInput

    pipes = {"cxr": CXRInput(size=64), "ecg": ECGInput(rate=100.0, seconds=10.0),
             "echo": EchoInput(frames=16, size=40)}
    rng = np.random.default_rng(0)
    out: dict[str, tuple[list[int], list[np.ndarray]]] = {m: ([], []) for m in pipes}
    for i, (meta, files) in enumerate(studies):
        for name, pipe in pipes.items():
            if not pipe.stored(files):
                continue
            item = pipe.decode(files, meta, rng, train=False)
            if name == "cxr":
                f = cxr_features(item.numpy())
            elif name == "ecg":
                f = ecg_features(item["signal"].numpy().astype(np.float64), pipe.rate)
            else:
                f = echo_features(item["frames"].numpy())
            out[name][0].append(i)
            out[name][1].append(f)
    feats = {m: (rows, np.stack(f)) for m, (rows, f) in out.items() if rows}
    from sklearn.feature_extraction.text import CountVectorizer

    rows = [i for i, (_, files) in enumerate(studies) if "report.txt" in files]
    if rows:
        texts = [studies[i][1]["report.txt"].decode("utf-8") for i in rows]
        feats["text"] = (rows, CountVectorizer(min_df=3, binary=True).fit_transform(texts).toarray().astype(float))
    return feats


def probe_auroc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5) -> float:
    """Out-of-fold AUROC of an L2 logistic probe on standardised ``x`` (folds grouped by patient)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    if y.min() == y.max():
        return float("nan")
    score = np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=folds).split(x, y, groups):
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        clf = LogisticRegression(C=0.05, max_iter=2000).fit((x[tr] - mu) / sd, y[tr])
        score[te] = clf.decision_function((x[te] - mu) / sd)
    return float(roc_auc_score(y, score))


def target_values(meta: dict, name: str) -> float:
    """A probe target of one study: a finding (0/1), an attribute, or NaN when the corpus lacks it."""
    if name in meta["findings"]:
        return float(meta["findings"][name])
    value = meta.get("attributes", {}).get(name)
    return float("nan") if value is None else float(value)


def probe_table(studies) -> dict[str, dict[str, float]]:
    """``{modality: {target: AUROC}}`` (NaN where the corpus has no such target)."""
    feats = modality_features(studies)
    table: dict[str, dict[str, float]] = {}
    for mod, (rows, x) in feats.items():
        groups = np.array([studies[i][0]["patient_id"] for i in rows])
        table[mod] = {}
        for name in PROBE_TARGETS:
            y = np.array([target_values(studies[i][0], name) for i in rows])
            table[mod][name] = float("nan") if np.isnan(y).any() else probe_auroc(x, y.astype(int), groups)
    return table


def print_probe_table(table: dict[str, dict[str, float]], n: int) -> None:
    print(f"probe AUROC from simple features of {n} rendered studies (rows: features, columns: target)")
    print("        " + "".join(f"{t[:11]:>12}" for t in PROBE_TARGETS))
    for mod, cells in table.items():
        print(f"{mod:<8}" + "".join(f"{cells[t]:>12.3f}" if np.isfinite(cells[t]) else f"{'-':>12}"
                                    for t in PROBE_TARGETS))
    if {"cxr", "ecg"} <= set(table):
        c, e = table["cxr"], table["ecg"]
        print(f"CXR->ECG-side  lvh {c['lvh']:.3f}  atrial_fibrillation {c['atrial_fibrillation']:.3f}   "
              f"ECG->CXR-side  cardiomegaly {e['cardiomegaly']:.3f}  la_enlarged {e['la_enlarged']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data_shards/demo"))
    ap.add_argument("--split", default="test", help="a split name, or `all`")
    ap.add_argument("--embeddings", type=Path, help="a `probmed predict` .npz of the same split")
    ap.add_argument("--probe", action="store_true", help="print the simple-feature probe table (section 3)")
    args = ap.parse_args()
    if args.probe:
        studies = read_studies(args.data, args.split)
        if not studies:
            raise SystemExit(f"no {args.split}-*.tar samples under {args.data}")
        print_probe_table(probe_table(studies), len(studies))
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
