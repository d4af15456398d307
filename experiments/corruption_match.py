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

It prints, per statistic, the ratio poor / clean of its mean (``=x``: the mean itself, where the clean one is 0) (ambiguity ≥ 0.4 against < 0.05: the recorded truth)
and, for every registered corruption of the modality applied to the clean studies at ``--severity``, the ratio
corrupted / clean. A corruption whose ratios point the other way from the poor studies' teaches the wrong signature.

    python experiments/corruption_match.py data_shards/demo --split val --severity 1.5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CLEAN_BELOW, POOR_FROM = 0.05, 0.4
#: The demo's inputs (configs/demo.yaml): the sizes the towers see.
DEMO_INPUTS = {"cxr": ("CXRInput", {"size": 64}), "ecg": ("ECGInput", {"rate": 100}),
               "echo": ("EchoInput", {"frames": 16, "size": 40}), "text": ("TextInput", {"max_length": 96})}


def _signal(x, key):
    return x[key] if isinstance(x, dict) else x


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
    px = _signal(x, "frames").double() if modality == "echo" else x.double()
    px = px * 0.25 + 0.5  # the pipeline's standardisation undone: pixels in 0-1
    dims = tuple(range(1, px.ndim))
    out = {"contrast": px.std(dim=(-2, -1)).mean(dim=tuple(range(1, px.ndim - 2))),
           "detail": px.diff(dim=-1).abs().mean(dims), "brightness": px.mean(dims)}
    if modality == "echo":
        out["motion"] = px.diff(dim=1).abs().mean(dims)
    return out


def collect(data_dir: Path, split: str, modalities: list[str]):
    """``{m: (inputs of the split's studies that have m, concatenated), ambiguity [N]}``."""
    from probmed.data import inputs as inputs_module
    from probmed.data.datamodule import ProbMedDataModule
    from probmed.encoders.tower_input import concat_rows, select_rows

    inputs = {m: getattr(inputs_module, DEMO_INPUTS[m][0])(**DEMO_INPUTS[m][1]) for m in modalities}
    dm = ProbMedDataModule(str(data_dir), modalities=modalities, batch_size=64, num_workers=0, inputs=inputs)
    dm.setup("validate" if split == "val" else "test")
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    got: dict[str, list] = {m: [] for m in modalities}
    for batch in loader:
        for m in modalities:
            rows = batch["present"][m].nonzero().squeeze(1)
            if len(rows):
                got[m].append((select_rows(batch["inputs"][m], rows), batch["ambiguity"][m][rows]))
    out = {}
    for m, parts in got.items():
        if not parts:
            continue
        x = parts[0][0]
        for more, _ in parts[1:]:
            x = concat_rows(x, more) if m != "text" else _pad_cat(x, more)
        out[m] = (x, torch.cat([a for _, a in parts]))
    return out


def _pad_cat(a: dict, b: dict) -> dict:
    width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    return {k: torch.cat([pad(a[k]), pad(b[k])]) for k in ("input_ids", "attention_mask")}


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
    sys.path.insert(0, str(REPO))
    from probmed.data.registry import SPECS
    from probmed.encoders.tower_input import select_rows
    from probmed.evaluation.corruptions import corrupt, corruptions_for

    for m, (x, amb) in collect(args.data_dir, args.split, args.modalities).items():
        clean = (amb < CLEAN_BELOW).nonzero().squeeze(1)
        poor = (amb >= POOR_FROM).nonzero().squeeze(1)
        stats = statistics(m, x)
        base = {k: v[clean].mean() for k, v in stats.items()}
        names = list(stats)
        print(f"\n{m}: {len(clean)} clean, {len(poor)} poor studies ({args.split}); ratio of the mean to the clean "
              f"studies'")
        print(f"  {'':26s}" + "".join(f"{k:>12s}" for k in names))
        print(f"  {'poor (recorded)':26s}" + "".join(_ratio(stats[k][poor].mean(), base[k]) for k in names))
        clean_x = select_rows(x, clean)
        for kind in sorted(corruptions_for(SPECS[m].pipeline)):
            c = statistics(m, corrupt(m, kind, clean_x, args.severity, seed=0))
            print(f"  {kind + f' s={args.severity:g}':26s}" + "".join(_ratio(c[k].mean(), base[k]) for k in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
