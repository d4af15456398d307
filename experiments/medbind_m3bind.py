"""MEDBind and M3Bind on the embedded corpus, over seeds: what docs/results.md reports for them.

    python experiments/medbind_m3bind.py emcl --data data_shards/demo --epochs 2
    python experiments/medbind_m3bind.py prompt --data data_shards/demo --binding runs/medbind/emcl/on/seed0
    python experiments/medbind_m3bind.py m3bind --data data_shards/demo --epochs 2

``emcl``: configs/medbind_demo.yaml with and without its EMCL term (same towers, optimiser, batch and epochs), per
seed: test R@1 / R@5 CXR->ECG and ECG->CXR, and cross-modal zero-shot AUROC per finding (CXR queries on the ECG's
findings and the reverse). ``prompt``: configs/medbind_soft_prompt.yaml on a frozen ``emcl`` run (its
``tb/version_0/config.yaml`` and last checkpoint), per seed and prompt condition (text only, CXR, ECG, CXR+ECG),
test accuracy and balanced accuracy per finding on the studies with both CXR and ECG. ``m3bind``: shards with the
CXR-ECG pairing dropped in train (``probmed data unpair``), configs/m3bind_stage1.yaml trained there, test R@K
CXR<->ECG; then stage 2 (one student text tower distilled from text_cxr and text_ecg) and its text->image retrieval
beside each teacher's. Runs stay under ``--workdir`` (an existing run is reused); the tables are printed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from compare_presets import mean_sd, probmed  # this folder: the same runner and mean ± sd as the preset comparison

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # stage 2's in-process evaluation imports this checkout's probmed, as the runs do
CONFIGS = REPO / "configs"
VIB_ONLY = "[{class_path: probmed.losses.VIB, init_args: {modalities: [cxr, ecg, text], weight: 1.0e-4}}]"
#: --report-only: tabulate the runs that exist, start none
REPORT_ONLY = False
CONDITIONS = {"text": [], "cxr": ["cxr"], "ecg": ["ecg"], "cxr+ecg": ["cxr", "ecg"]}


def run_args(run: Path, seed: int, epochs: int | None) -> list[str]:
    """Where a run logs and checkpoints, its seed and budget."""
    args = ["--seed_everything", str(seed), "--trainer.logger.init_args.save_dir", str(run),
            "--trainer.logger.init_args.name", "tb", "--trainer.callbacks.init_args.dirpath", str(run / "checkpoints")]
    return args + (["--trainer.max_epochs", str(epochs)] if epochs else [])


def fit_and_test(command: list[str], config: list[str], run: Path, seed: int, epochs: int | None) -> None:
    """``probmed [command] fit`` (unless the run has its last checkpoint) then ``test`` on that checkpoint (unless
    the run has its test logged)."""
    if list(run.glob("tb/version_1/events.*")):
        return
    if REPORT_ONLY:
        raise FileNotFoundError(run)
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.txt"
    print(f"[{run}] fit + test", flush=True)
    if not (run / "checkpoints" / "last.ckpt").is_file():
        probmed(*command, "fit", *config, *run_args(run, seed, epochs), log=log)
    probmed(*command, "test", *config, *run_args(run, seed, None),
            "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), log=log)


def ran(start) -> bool:
    """Run (or find) one run; False when ``--report-only`` finds it missing."""
    try:
        start()
    except FileNotFoundError:
        return False
    return True


def test_scalars(run: Path) -> dict[str, float]:
    """The test run's scalars: from ``test_metrics.json`` when the module writes one, else from TensorBoard."""
    metrics = run / "tb" / "version_1" / "test_metrics.json"
    if metrics.is_file():
        return {k: v for k, v in json.loads(metrics.read_text())["scalars"].items() if v is not None}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb" / "version_1"))
    events.Reload()
    return {t: events.Scalars(t)[-1].value for t in events.Tags()["scalars"]}


def table(rows: dict[str, dict[str, list[float]]], columns: list[str]) -> str:
    lines = ["| run | seeds | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for name, cols in rows.items():
        n = max(len(v) for v in cols.values())
        lines.append(f"| {name} | {n} | " + " | ".join(mean_sd(cols.get(c, [])) for c in columns) + " |")
    return "\n".join(lines)


def emcl(args) -> str:
    config = ["--config", str(CONFIGS / "medbind_demo.yaml"), "--data.data_dir", str(args.data)]
    columns = ["R@1 cxr->ecg", "R@5 cxr->ecg", "R@1 ecg->cxr", "R@5 ecg->cxr", "cross AUROC cxr->ecg",
               "cross AUROC ecg->cxr", "AUROC cxr->AF", "AUROC cxr->LVH", "AUROC ecg->cardiomegaly"]
    rows: dict[str, dict[str, list[float]]] = {}
    for variant, extra in (("on", []), ("off", ["--model.objective.init_args.terms", VIB_ONLY])):
        for seed in args.seeds:
            run = args.workdir / "emcl" / variant / f"seed{seed}"
            if not ran(lambda: fit_and_test([], config + extra, run, seed, args.epochs)):
                continue
            s = test_scalars(run)
            z = "test/zeroshot_cross/"
            values = [s.get("test/R@1/cxr->ecg"), s.get("test/R@5/cxr->ecg"), s.get("test/R@1/ecg->cxr"),
                      s.get("test/R@5/ecg->cxr"), s.get(z + "cxr->ecg/mean_auroc"), s.get(z + "ecg->cxr/mean_auroc"),
                      s.get(z + "cxr->ecg/auroc/atrial_fibrillation"), s.get(z + "cxr->ecg/auroc/lvh"),
                      s.get(z + "ecg->cxr/auroc/cardiomegaly")]
            for c, v in zip(columns, values):
                rows.setdefault(f"EMCL {variant}", {}).setdefault(c, []).append(math.nan if v is None else v)
    return table(rows, columns)


def prompt(args) -> str:
    binding = Path(args.binding).resolve()
    config = ["--config", str(CONFIGS / "medbind_soft_prompt.yaml"), "--data.data_dir", str(args.data),
              "--model.binding.config", str(binding / "tb" / "version_0" / "config.yaml"),
              "--model.binding.checkpoint", str(binding / "checkpoints" / "last.ckpt")]
    findings = ["atrial_fibrillation", "lvh"]
    columns = [f"{k} {f}" for f in findings for k in ("accuracy", "balanced_accuracy")]
    rows: dict[str, dict[str, list[float]]] = {}
    for name in args.conditions.split(","):
        modalities = CONDITIONS[name]
        for seed in args.seeds:
            run = args.workdir / "prompt" / name / f"seed{seed}"
            if not ran(lambda: fit_and_test(["prompt"], config + ["--model.modalities", json.dumps(modalities)], run,
                                            seed, args.epochs)):
                continue
            s = test_scalars(run)
            for f in findings:
                for k in ("accuracy", "balanced_accuracy"):
                    rows.setdefault(name, {}).setdefault(f"{k} {f}", []).append(s.get(f"test/qa/{f}/{k}", math.nan))
    return table(rows, columns)


#: M3Bind stage-1 variants: (row, train on the unpaired shards?, overrides of configs/m3bind_stage1.yaml)
M3BIND_PAIRS = "[[text_cxr, cxr], [text_ecg, ecg]]"
M3BIND_VARIANTS = {
    "independent": ("stage 1, text towers initialised apart, align weight 1, unpaired", True,
                    ["--model.init_from", "{}", "--model.objective.init_args.terms",
                     "[{class_path: probmed.losses.TextSpaceAlignment, init_args: {modalities: [text_cxr, text_ecg], "
                     "weight: 1.0}}, {class_path: probmed.losses.VIB, init_args: {modalities: [cxr, ecg, text_cxr, "
                     "text_ecg], weight: 1.0e-4}}]"]),
    "tied": ("stage 1, text_ecg initialised as text_cxr, align weight 10, unpaired", True, []),
    "paired": ("paired upper bound: stage 1 + CXR<->ECG InfoNCE, paired train", False,
               ["--model.objective.init_args.pairs",
                "[{term: probmed.losses.ProbabilisticInfoNCE, args: {similarity: cosine}, "
                "over: [[text_cxr, cxr], [text_ecg, ecg], [cxr, ecg]]}]"]),
}


def both_count(data: Path, split: str = "test") -> int:
    """Studies of a split holding both CXR and ECG (from each sample's ``json``): the gallery of CXR<->ECG
    retrieval, so chance R@K = K / this."""
    import tarfile

    n = 0
    for shard in sorted(data.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    present = json.loads(tar.extractfile(member).read())["modalities"]
                    n += "cxr" in present and "ecg" in present
    return n


def m3bind(args) -> str:
    unpaired = args.workdir / f"{args.data.name}_unpaired"
    if not (unpaired / "sizes.json").is_file():
        probmed("data", "unpair", "--src", str(args.data), "--out", str(unpaired), "--modalities", "cxr", "ecg",
                log=args.workdir / "unpair.log")
    columns = ["R@1 cxr->ecg", "R@5 cxr->ecg", "R@1 ecg->cxr", "R@5 ecg->cxr", "R@5 text_cxr->cxr", "R@5 text_ecg->ecg",
               "R@5 text_cxr->ecg", "R@5 text_ecg->cxr", "R@5 text->cxr", "R@5 text->ecg"]
    rows: dict[str, dict[str, list[float]]] = {}
    for key in args.variants.split(","):
        name, on_unpaired, extra = M3BIND_VARIANTS[key]
        data = unpaired if on_unpaired else args.data
        config = ["--config", str(CONFIGS / "m3bind_stage1.yaml"), "--data.data_dir", str(data), *extra]
        for seed in args.seeds:
            run = args.workdir / "m3bind" / key / f"seed{seed}"
            if not ran(lambda: fit_and_test([], config, run, seed, args.epochs)):
                continue
            s = test_scalars(run)
            for c in columns:
                k, pair = c.split(" ")
                rows.setdefault(name, {}).setdefault(c, []).append(s.get(f"test/{k}/{pair}", math.nan))
            if not on_unpaired or args.no_stage2:
                continue
            try:
                distilled = stage2(args, run, unpaired, seed)
            except FileNotFoundError:  # --report-only: no stage-2 run yet
                continue
            for who, recalls in distilled.items():
                for pair, r5 in recalls.items():
                    rows.setdefault(f"{name}; stage 2, {who} text tower", {}).setdefault(f"R@5 {pair}", []).append(r5)
    n = both_count(args.data)
    chance = f"chance (test studies with CXR and ECG: {n}): R@1 {100 / n:.2f} %, R@5 {500 / n:.2f} %"
    return table(rows, columns) + "\n\n" + chance


FIVE_IMAGES = ("cxr", "ecg", "echo", "ct")


def five(args) -> str:
    """configs/m3bind_five.yaml (CXR, ECG, echo, CT, one text tower each) on a corpus generated with
    ``--extra-modalities ct``: test R@5 of each image modality from its own text tower, and between every two
    image modalities (no term pairs them), per seed."""
    config = ["--config", str(CONFIGS / "m3bind_five.yaml"), "--data.data_dir", str(args.data)]
    pairs = [f"text_{m}->{m}" for m in FIVE_IMAGES]
    pairs += [f"{a}->{b}" for i, a in enumerate(FIVE_IMAGES) for b in FIVE_IMAGES[i + 1:]]
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        run = args.workdir / "five" / f"seed{seed}"
        if not ran(lambda: fit_and_test([], config, run, seed, args.epochs)):
            continue
        s = test_scalars(run)
        for pair in pairs:
            a, b = pair.split("->")
            values = [s.get(f"test/R@5/{pair}", math.nan)]
            if not a.startswith("text_"):
                values.append(s.get(f"test/R@5/{b}->{a}", math.nan))
            for direction, v in zip(("", " (reverse)"), values):
                rows.setdefault("stage 1, five modalities", {}).setdefault(f"R@5 {pair}{direction}", []).append(v)
    columns = list(next(iter(rows.values()))) if rows else []
    return table(rows, columns)


def stage2(args, stage1: Path, data: Path, seed: int) -> dict[str, dict[str, float]]:
    """Stage 2: the demo's text tower as student, distilled from stage 1's text_cxr and text_ecg on the unpaired
    train reports; test-split text->CXR / text->ECG R@5 of each teacher's own text tower and of the student."""
    import torch
    import yaml

    from probmed.data.datamodule import ProbMedDataModule
    from probmed.data.inputs import CXRInput, ECGInput, TextInput
    from probmed.tasks.distill import TeacherSpec, TextDistillation
    from probmed.encoders import TextEncoder
    from probmed.encoders.pretrained import load_state_dict_file

    tower = CONFIGS / "presets" / "towers" / "demo" / "text.yaml"
    run = stage1 / "stage2"
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file() and REPORT_ONLY:
        raise FileNotFoundError(ckpt)
    if not ckpt.is_file():
        run.mkdir(parents=True, exist_ok=True)
        words = ["distill", "fit", "--config", str(CONFIGS / "presets" / "m3bind_distill.yaml"), "--data.data_dir",
                 str(data), "--model.student", str(tower), "--data.inputs.text.init_args.max_length", "96",
                 "--data.num_workers", "2", "--model.optimizer.init_args.lr", "1.0e-3",
                 *run_args(run, seed, args.epochs)]
        for m in ("cxr", "ecg"):
            words += [f"--model.teachers.{m}.config", str(stage1 / "tb" / "version_0" / "config.yaml"),
                      f"--model.teachers.{m}.checkpoint", str(stage1 / "checkpoints" / "last.ckpt"),
                      f"--model.teachers.{m}.tower", f"text_{m}"]
        probmed(*words, log=run / "log.txt")
    student = TextEncoder(**yaml.safe_load(tower.read_text())["init_args"])
    teacher = dict(config=str(stage1 / "tb" / "version_0" / "config.yaml"),
                   checkpoint=str(stage1 / "checkpoints" / "last.ckpt"))
    model = TextDistillation(student, {m: TeacherSpec(**teacher, tower=f"text_{m}") for m in ("cxr", "ecg")})
    model.load_state_dict(load_state_dict_file(str(ckpt)))
    test = ProbMedDataModule(str(data), modalities=["cxr", "ecg", "text"], batch_size=64, num_workers=0,
                             inputs=dict(cxr=CXRInput(size=64), ecg=ECGInput(rate=100, seconds=10),
                                         text=TextInput(max_length=96)))
    test.setup("test")
    from probmed.tasks.distill import distilled_retrieval

    with torch.no_grad():
        result = distilled_retrieval(model, test.test_dataloader(), {"cxr": "cxr", "ecg": "ecg"}, ks=(5,))
    return {who: {f"text->{t}": r[who][5] for t, r in result.items()} for who in ("teacher", "student")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["emcl", "prompt", "m3bind", "five"])
    p.add_argument("--data", default=str(REPO / "data_shards" / "demo"), help="the embedded corpus's shards")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    p.add_argument("--binding", help="prompt: an `emcl` run directory (its tb/version_0/config.yaml, checkpoints/)")
    p.add_argument("--conditions", default=",".join(CONDITIONS), help=f"prompt: conditions among {list(CONDITIONS)}")
    p.add_argument("--workdir", default=str(REPO / "runs" / "medbind"))
    p.add_argument("--variants", default=",".join(M3BIND_VARIANTS),
                   help=f"m3bind: stage-1 variants among {list(M3BIND_VARIANTS)}")
    p.add_argument("--no-stage2", action="store_true", help="m3bind: stage 1 only")
    p.add_argument("--report-only", action="store_true", help="tabulate the finished runs only; start none")
    args = p.parse_args(argv)
    global REPORT_ONLY
    REPORT_ONLY = args.report_only
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.workdir, args.data = Path(args.workdir).resolve(), Path(args.data).resolve()
    if args.what == "prompt" and not args.binding:
        p.error("prompt needs --binding (an emcl run directory)")
    if set(args.variants.split(",")) - set(M3BIND_VARIANTS):
        p.error(f"--variants: choose among {list(M3BIND_VARIANTS)}")
    if set(args.conditions.split(",")) - set(CONDITIONS):
        p.error(f"--conditions: choose among {list(CONDITIONS)}")
    print({"emcl": emcl, "prompt": prompt, "m3bind": m3bind, "five": five}[args.what](args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
