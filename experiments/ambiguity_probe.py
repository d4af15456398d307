"""Model-free check that the corpus's recorded ambiguity destroys information (issue 25): a linear probe on the
rendered signals predicts each modality's findings worse on high-ambiguity studies than on clean ones.

Per modality, fixed features of what the loader decodes (no training of a network): CXR the 32×32 film; ECG the
per-lead magnitude spectrum (100 Hz, 10 s, pooled into 50 bands) and amplitude percentiles; echo the mean and the
temporal standard deviation of the 24×24 cine, pooled 2×2; text TF-IDF uni- and bigrams. A standardised logistic
regression per finding, 5-fold cross-validated predictions over the whole corpus (every split), then the AUROC of
the out-of-fold predictions among *clean* studies (ambiguity < 0.05) and among *poor* ones (ambiguity ≥ 0.4) of that
modality. Borderline (-1) labels are left out.

    python experiments/ambiguity_probe.py data_shards/demo [--out probe.json] [--modalities echo ...]
    python experiments/ambiguity_probe.py data_shards/demo --embeddings emb.npz    (``probmed predict``'s output)

With ``--embeddings``, instead: Spearman(mean predicted log σ², recorded ambiguity) per modality over the studies of the
``.npz`` that have the modality (``data_dir`` may hold just that split's shards or all of them), the mean log σ² per
ambiguity band, and σ² against each recorded mechanism (which acquisition problems the variance sees). With
``--oracle-recall`` as well: the issue's 10-bin test (R@1 by decile of uncertainty) scored with the recorded
ambiguity in place of the variance — the best a variance that follows the ambiguity could do.

    python experiments/ambiguity_probe.py data_shards/demo --embeddings emb.npz --oracle-recall
"""
from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np

#: The findings each modality shows (what its probe predicts).
TARGETS = {
    "cxr": ("cardiomegaly", "pleural_effusion"),
    "ecg": ("atrial_fibrillation", "bradycardia", "tachycardia", "lvh"),
    "echo": ("reduced_ef", "lvh"),
    "text": ("cardiomegaly", "pleural_effusion", "atrial_fibrillation", "bradycardia", "tachycardia", "lvh",
             "reduced_ef"),
}
CLEAN_BELOW, POOR_FROM = 0.05, 0.4


def _samples(data_dir: Path):
    for shard in sorted(data_dir.glob("*.tar")):
        files: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                files.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
        yield from files.values()


def _pool(a: np.ndarray, k: int) -> np.ndarray:
    h, w = (a.shape[-2] // k) * k, (a.shape[-1] // k) * k
    a = a[..., :h, :w]
    return a.reshape(*a.shape[:-2], h // k, k, w // k, k).mean(axis=(-3, -1))


def features(data_dir: Path) -> dict[str, dict]:
    """modality → {"x": features (text: list of strings), "y": {finding: labels}, "a": ambiguity, "id": ids}."""
    from probmed.data.modalities import CXRInput, ECGInput, EchoInput

    rng = np.random.default_rng(0)
    cxr, ecg, echo = CXRInput(size=32, view="first"), ECGInput(rate=100, seconds=10), EchoInput(frames=16, size=24)
    out = {m: {"x": [], "y": {f: [] for f in TARGETS[m]}, "a": [], "id": []} for m in TARGETS}
    for sample in _samples(data_dir):
        meta = json.loads(sample["json"])
        got = {}
        if cxr.stored(sample):
            got["cxr"] = cxr.decode(sample, meta, rng, False).numpy().ravel()
        if ecg.stored(sample):
            sig = ecg.decode(sample, meta, rng, False)["signal"].numpy()
            spec = np.abs(np.fft.rfft(sig - sig.mean(1, keepdims=True), axis=1))[:, 1:501]
            bands = np.log1p(spec.reshape(12, 50, 10).mean(2))
            amp = np.percentile(sig, [1, 5, 95, 99], axis=1).T
            got["ecg"] = np.concatenate([bands.ravel(), amp.ravel()])
        if echo.stored(sample):
            frames = echo.decode(sample, meta, rng, False)["frames"].numpy()[:, 0]
            got["echo"] = np.concatenate([_pool(frames.mean(0), 2).ravel(), _pool(frames.std(0), 2).ravel()])
        if "report.txt" in sample:
            got["text"] = sample["report.txt"].decode("utf-8")
        for m, x in got.items():
            out[m]["x"].append(x)
            out[m]["a"].append(float(meta.get("ambiguity", {}).get(m, np.nan)))
            out[m]["id"].append(meta["study_id"])
            for f in TARGETS[m]:
                out[m]["y"][f].append(int(meta["findings"][f]))
    return out


def probe(data: dict, modality: str, folds: int = 5) -> dict:
    """Out-of-fold AUROC per finding, overall / clean / poor, and the group sizes."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = np.asarray(data["a"])
    groups = {"all": np.ones(len(a), bool), "clean": a < CLEAN_BELOW, "poor": a >= POOR_FROM}
    result = {"n": {g: int(mask.sum()) for g, mask in groups.items()}, "auroc": {}}
    for finding, labels in data["y"].items():
        y = np.asarray(labels)
        keep = y >= 0  # borderline (-1) labels out
        if modality == "text":
            x = np.asarray(data["x"], dtype=object)[keep]
            model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2), LogisticRegression(C=4.0, max_iter=3000))
        else:
            x = np.stack(data["x"])[keep]
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
        yk = y[keep]
        if yk.min() == yk.max():
            continue
        cv = StratifiedKFold(folds, shuffle=True, random_state=0)
        p = cross_val_predict(model, x, yk, cv=cv, method="predict_proba")[:, 1]
        scores = {}
        for g, mask in groups.items():
            m = mask[keep]
            scores[g] = round(float(roc_auc_score(yk[m], p[m])), 3) if len(set(yk[m])) == 2 else None
        result["auroc"][finding] = scores
    for g in groups:
        vals = [s[g] for s in result["auroc"].values() if s[g] is not None]
        result.setdefault("mean", {})[g] = round(float(np.mean(vals)), 3) if vals else None
    return result


#: Ambiguity bands of the ``--embeddings`` breakdown: clean, then the tail in four steps.
BANDS = (0.0, 0.05, 0.2, 0.4, 0.6, 1.01)


def variance_against_ambiguity(embeddings: Path, data_dir: Path) -> dict[str, dict]:
    """Per modality, on the mean over the D dimensions of ``log <m>/var`` (the mean log σ²): ``n``, ``rho`` =
    its Spearman ρ with ``meta["ambiguity"][m]``,
    ``mechanisms`` = ρ with each recorded numeric mechanism's strength (its absolute value: exposure and rotation
    are signed) or, for a categorical one (projection, electrodes), the median mean log σ² per category, and
    ``bands`` = (studies, mean, sd of the mean log σ²) per ambiguity band of :data:`BANDS`, and ``findings`` =
    finding → (median mean log σ² of the positive studies, of the negative ones): how much the variance follows
    content rather than quality."""
    from scipy.stats import spearmanr

    npz = np.load(embeddings, allow_pickle=False)
    meta = {}
    for sample in _samples(data_dir):
        m = json.loads(sample["json"])
        meta[m["study_id"]] = m
    ids = [str(s) for s in npz["study_id"]]
    out = {}
    for m in TARGETS:
        if f"{m}/var" not in npz:
            continue
        log_var = np.log(np.maximum(npz[f"{m}/var"], 1e-30)).mean(1)
        amb = np.array([float(meta.get(s, {}).get("ambiguity", {}).get(m, np.nan)) for s in ids])
        ok = npz[f"{m}/present"].astype(bool) & ~np.isnan(amb)
        rows = np.flatnonzero(ok)
        quality = [meta[ids[i]].get("quality", {}).get(m, {}) for i in rows]
        mechanisms: dict[str, object] = {}
        for name in sorted({k for q in quality for k in q} - {"blur_angle"}):
            values = [q.get(name) for q in quality]
            if all(isinstance(v, (int, float)) for v in values):
                rho = spearmanr(log_var[rows], np.abs(np.asarray(values, float))).correlation
                mechanisms[name] = round(float(rho), 3)
            else:
                mechanisms[name] = {str(c): round(float(np.median(log_var[rows][[v == c for v in values]])), 2)
                                    for c in sorted({str(v) for v in values})}
        bands = []
        for lo, hi in zip(BANDS[:-1], BANDS[1:]):
            band = log_var[ok][(amb[ok] >= lo) & (amb[ok] < hi)]
            bands.append((int(band.size), round(float(band.mean()), 2) if band.size else None,
                          round(float(band.std()), 2) if band.size else None))
        content = {}  # what the variance also follows: the study's findings
        if "labels" in npz and "label_names" in npz:
            for j, name in enumerate(npz["label_names"]):
                pos, neg = ok & (npz["labels"][:, j] == 1), ok & (npz["labels"][:, j] == 0)
                if pos.sum() >= 5 and neg.sum() >= 5:
                    content[str(name)] = (round(float(np.median(log_var[pos])), 2),
                                          round(float(np.median(log_var[neg])), 2))
        out[m] = {"n": int(ok.sum()), "rho": round(float(spearmanr(log_var[ok], amb[ok]).correlation), 3),
                  "mechanisms": mechanisms, "bands": bands, "findings": content}
    return out


def oracle_binned_recall(embeddings: Path) -> dict[str, dict]:
    """The 10-bin test with the recorded ambiguity itself as the uncertainty (what a variance that followed it
    perfectly would score): per query modality, R@1 (cosine of the means: the exact ranking of a CLIP
    checkpoint) pooled over its pairs, in ten equal-count bins of the query's ambiguity, and
    Pearson(bin index, R@1) (:func:`probmed.evaluation.confidence.binned_recall`)."""
    import torch

    from probmed.evaluation.confidence import binned_recall
    from probmed.evaluation.retrieval import rank_of_true

    npz = np.load(embeddings, allow_pickle=False)
    mods = [m for m in TARGETS if f"{m}/mean" in npz and f"{m}/ambiguity" in npz]
    out = {}
    for a in mods:
        amb, hits = [], []
        for b in mods:
            if b == a:
                continue
            both = npz[f"{a}/present"].astype(bool) & npz[f"{b}/present"].astype(bool)
            q, g = npz[f"{a}/mean"][both], npz[f"{b}/mean"][both]
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            g = g / np.linalg.norm(g, axis=1, keepdims=True)
            ranks = rank_of_true(torch.from_numpy(q @ g.T), torch.arange(len(q)))  # the suite's hit: rank 0
            hits.append((ranks == 0).double().numpy())
            amb.append(npz[f"{a}/ambiguity"][both])
        u, h = np.concatenate(amb), np.concatenate(hits)
        keep = ~np.isnan(u)
        r = binned_recall(torch.from_numpy(u[keep]), torch.from_numpy(h[keep]))
        out[a] = {"queries": int(keep.sum()), "recall": [round(float(x), 1) for x in r["recall"]],
                  "pearson": round(float(r["pearson"]), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--modalities", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--embeddings", type=Path, help="probmed predict's .npz: report Spearman(σ², ambiguity)")
    parser.add_argument("--oracle-recall", action="store_true",
                        help="with --embeddings: R@1 by decile of the recorded ambiguity itself (see docstring)")
    args = parser.parse_args()
    if args.embeddings and args.oracle_recall:
        for m, r in oracle_binned_recall(args.embeddings).items():
            print(f"{m:8s} {r['queries']:5d} queries  Pearson(ambiguity decile, R@1) = {r['pearson']:+.2f}  "
                  f"R@1 by decile {r['recall']}")
        return
    if args.embeddings:
        heads = "  ".join(f"{lo:.2f}-{min(hi, 1.0):.2f}" for lo, hi in zip(BANDS[:-1], BANDS[1:]))
        for m, r in variance_against_ambiguity(args.embeddings, args.data_dir).items():
            print(f"{m:8s} n={r['n']:5d}  Spearman(mean log var, ambiguity) = {r['rho']:+.3f}")
            print(f"         mean log var by ambiguity band ({heads}): "
                  + "  ".join(f"{mu:+.2f}±{sd:.2f} (n={n})" if n else "-" for n, mu, sd in r["bands"]))
            print("         per mechanism: " + ", ".join(f"{k} {v}" for k, v in r["mechanisms"].items()))
            print("         median log var, finding positive / negative: "
                  + ", ".join(f"{k} {p:+.2f}/{n:+.2f}" for k, (p, n) in r["findings"].items()))
        return
    data = features(args.data_dir)
    results = {m: probe(data[m], m) for m in args.modalities if data[m]["x"]}
    print(f"{'modality':8s} {'n clean':>8s} {'n poor':>7s} {'AUROC all':>10s} {'clean':>7s} {'poor':>7s}")
    for m, r in results.items():
        print(f"{m:8s} {r['n']['clean']:8d} {r['n']['poor']:7d} {r['mean']['all']:10.3f} "
              f"{r['mean']['clean'] or float('nan'):7.3f} {r['mean']['poor'] or float('nan'):7.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
