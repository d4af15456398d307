"""Do the registered corruptions move an input the way its poor-quality studies differ from its clean ones?

A quality augmentation teaches the variance whatever its corruptions have in common. If they all *add* energy
(noise, blanked frames) while real poor acquisitions *lose* it (low contrast, blur, damped motion), the variance
learns "more energy, less sure" and runs against the real ambiguity. This script measures, per modality, a few
model-free statistics of the decoded batch input on the split's studies with recorded ambiguity:

* image (CXR) ``[B, 1, S, S]``: contrast (per-image sd of the pixels), detail (mean |horizontal difference|),
  brightness (mean pixel);
* cine (echo) ``[B, T, 1, S, S]``: the same per frame, plus motion (mean |frame-to-frame difference|);
* ECG ``[B, leads, T]``: amplitude (rms), high frequency (mean |sample-to-sample difference|), low frequency (rms
  of a 1 s moving average), flat leads (fraction of leads with rms below 20 µV);
* text: attended tokens.

It prints, per statistic, the ratio poor / clean of its mean (ambiguity ≥ 0.4 against < 0.05: the recorded truth;
``=x``: the mean itself, where the clean one is 0) and, for every registered corruption of the modality applied to
the clean studies at ``--severity``, the ratio corrupted / clean. A corruption whose ratios point the other way
from the poor studies' teaches the wrong signature.

    python experiments/corruption_match.py data_shards/demo --split val --severity 1.5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from probmed.evaluation.corruptions import _pixels, _signal  # noqa: E402
CLEAN_BELOW, POOR_FROM = 0.05, 0.4
#: The demo's inputs (configs/demo.yaml): the sizes the towers see.
DEMO_INPUTS = {"cxr": ("CXRInput", {"size": 64}), "ecg": ("ECGInput", {"rate": 100}),
               "echo": ("EchoInput", {"frames": 16, "size": 40}), "text": ("TextInput", {"max_length": 96})}


def statistics(modality: str, x) -> dict[str, torch.Tensor]:
    """Per-study statistics ``{name: [B]}`` of one modality's batch input (see the module docstring)."""
    if modality == "text":
        return {"tokens": x["attention_mask"].sum(1).double()}
    if modality == "ecg":
        s = _signal(x, "signal").double()
        kernel = max(1, s.shape[-1] // 10)  # 1 s of a 10 s record
        slow = torch.nn.functional.avg_pool1d(s, kernel, stride=1)
        return {"amplitude": s.pow(2).mean((1, 2)).sqrt(), "high_freq": s.diff(dim=-1).abs().mean((1, 2)),
                "low_freq": slow.pow(2).mean((1, 2)).sqrt(),
                "flat_leads": (s.pow(2).mean(-1).sqrt() < 0.02).double().mean(1)}
    px = _pixels((_signal(x, "frames") if modality == "echo" else x).double())  # standardisation undone: 0-1
    dims = tuple(range(1, px.ndim))
    out = {"contrast": px.std(dim=(-2, -1)).mean(dim=tuple(range(1, px.ndim - 2))),
           "detail": px.diff(dim=-1).abs().mean(dims), "brightness": px.mean(dims)}
    if modality == "echo":
        out["motion"] = px.diff(dim=1).abs().mean(dims)
    return out


def measure(data_dir: Path, split: str, modalities: list[str], severity: float) -> dict[str, dict]:
    """Per modality, the :func:`statistics` of the split's clean studies, of its poor ones, and of each registered
    corruption of the clean ones at ``severity``: ``{m: {"clean" | "poor" | kind: {name: [N]}}}``, batch by batch
    (a batch's clean rows are corrupted together, with the batch index as seed)."""
    from probmed.data import inputs as inputs_module
    from probmed.data.datamodule import ProbMedDataModule
    from probmed.data.registry import SPECS
    from probmed.encoders.tower_input import select_rows
    from probmed.evaluation.corruptions import corrupt, corruptions_for

    inputs = {m: getattr(inputs_module, DEMO_INPUTS[m][0])(**DEMO_INPUTS[m][1]) for m in modalities}
    dm = ProbMedDataModule(str(data_dir), modalities=modalities, batch_size=64, num_workers=0, inputs=inputs)
    dm.setup("validate" if split == "val" else "test")
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    parts: dict[str, dict[str, dict[str, list]]] = {m: {} for m in modalities}

    def add(m: str, group: str, stats: dict) -> None:
        for name, values in stats.items():
            parts[m].setdefault(group, {}).setdefault(name, []).append(values)

    for index, batch in enumerate(loader):
        for m in modalities:
            amb, present, x = batch["ambiguity"][m], batch["present"][m], batch["inputs"][m]
            clean = (present & (amb < CLEAN_BELOW)).nonzero().squeeze(1)  # NaN (unknown) is neither
            poor = (present & (amb >= POOR_FROM)).nonzero().squeeze(1)
            if len(poor):
                add(m, "poor", statistics(m, select_rows(x, poor)))
            if len(clean):
                clean_x = select_rows(x, clean)
                add(m, "clean", statistics(m, clean_x))
                for kind in corruptions_for(SPECS[m].pipeline):
                    add(m, kind, statistics(m, corrupt(m, kind, clean_x, severity, seed=index)))
    return {m: {g: {k: torch.cat(v) for k, v in stats.items()} for g, stats in groups.items()}
            for m, groups in parts.items() if "clean" in groups}


def _ratio(value: torch.Tensor, clean: torch.Tensor) -> str:
    """``value / clean`` in a 12-wide column, or ``=value`` where the clean mean is 0 (e.g. no flat lead)."""
    if float(clean) == 0.0:
        return f"{'=' + format(float(value), '.2f'):>12s}"
    return f"{float(value / clean):12.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--severity", type=float, default=1.5)
    p.add_argument("--modalities", nargs="+", default=list(DEMO_INPUTS), choices=list(DEMO_INPUTS))
    args = p.parse_args(argv)
    for m, groups in measure(args.data_dir, args.split, args.modalities, args.severity).items():
        base = {k: v.mean() for k, v in groups["clean"].items()}
        names = list(base)
        n_poor = len(next(iter(groups["poor"].values()))) if "poor" in groups else 0
        print(f"\n{m}: {len(next(iter(groups['clean'].values())))} clean, {n_poor} poor studies ({args.split}); "
              f"ratio of the mean to the clean studies'")
        print(f"  {'':26s}" + "".join(f"{k:>12s}" for k in names))
        rows = [("poor (recorded)", groups["poor"])] if "poor" in groups else []
        rows += [(f"{kind} s={args.severity:g}", groups[kind]) for kind in sorted(set(groups) - {"clean", "poor"})]
        for label, stats in rows:
            print(f"  {label:26s}" + "".join(_ratio(stats[k].mean(), base[k]) for k in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
