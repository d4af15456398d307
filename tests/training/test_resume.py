"""Fault tolerance on CPU: kill -9 a run after a checkpoint and resume it to the same weights; atomic and
truncated checkpoints."""
from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, clean_env, run_probmed
from probmed.training.checkpoint_io import AtomicCheckpointIO, CorruptCheckpointError, atomic_torch_save

SMOKE = str(REPO / "configs" / "smoke.yaml")
STEPS_PER_EPOCH, EPOCHS = 4, 2


def _config(tmp: Path, name: str) -> list[str]:
    """Smoke model, 2 epochs × 4 steps, a checkpoint after every step (step=N.ckpt), no validation, two persistent
    loader workers (the resumed epoch's position reaches them through shared memory); with the YAML
    compute switches on (bf16-mixed, activation checkpointing, micro-batching, torch.compile, throughput/FLOP counting), so the
    exact-resume check also shows that none of them breaks determinism (micro-batched CXR and text towers included)."""
    run_dir = tmp / name
    extra = {"trainer": {
        "max_epochs": EPOCHS, "limit_train_batches": STEPS_PER_EPOCH, "limit_val_batches": 0,
        "default_root_dir": str(run_dir),
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": str(run_dir), "name": "smoke"}},
        "precision": "bf16-mixed",
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                       "init_args": {"dirpath": str(run_dir / "ckpt"), "filename": "{step}",
                                     "every_n_train_steps": 1, "save_top_k": -1}},
                      {"class_path": "probmed.training.TowerCompute",
                       "init_args": {"checkpoint": ["echo"], "micro_batch_size": {"cxr": 3, "text": 3},
                                     "compile": ["ecg"],
                                     "compile_kwargs": {"backend": "eager"}}},
                      {"class_path": "probmed.training.Throughput", "init_args": {"flop_steps": 2, "window_size": 2}}],
    }}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(extra))
    return ["--config", SMOKE, "--config", str(path), "--data.num_workers", "2"]


def _check_switches(version_dir: Path) -> None:
    """bf16 trained finite losses; Throughput logged per-device samples/s and counted FLOP/s; no MFU on a CPU."""
    events = EventAccumulator(str(version_dir))
    events.Reload()
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert len(scalars["train/loss"]) == STEPS_PER_EPOCH * EPOCHS
    assert all(math.isfinite(v) for v in scalars["train/loss"])
    for tag in ("train/device/samples_per_sec", "train/device/flops_per_sec"):
        assert scalars.get(tag) and all(v > 0 for v in scalars[tag]), sorted(scalars)
    assert not any("mfu" in k for k in scalars)  # Lightning knows no peak FLOPs for a CPU: no made-up MFU


def _steps(ckpt_dir: Path) -> dict[int, Path]:
    return {int(p.stem.split("=")[1]): p for p in ckpt_dir.glob("step=*.ckpt")}


def _state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own Lightning checkpoint
    state = dict(ckpt["state_dict"])
    for i, opt in enumerate(ckpt["optimizer_states"]):
        for pid, slots in opt["state"].items():
            state.update({f"optim{i}/{pid}/{k}": v for k, v in slots.items() if torch.is_tensor(v)})
    return state


@pytest.mark.ddp
def test_kill9_after_a_checkpoint_then_resume_gives_the_uninterrupted_weights(smoke_corpus, tmp_path):
    data = ["--data.data_dir", str(smoke_corpus)]
    full = run_probmed(["fit", *_config(tmp_path, "full"), *data], cwd=tmp_path)
    assert full.returncode == 0, full.output[-4000:]
    last = STEPS_PER_EPOCH * EPOCHS
    reference = _steps(tmp_path / "full" / "ckpt")
    assert sorted(reference) == list(range(1, last + 1))
    _check_switches(tmp_path / "full" / "smoke" / "version_0")

    # the same run, killed with SIGKILL once the checkpoint of a random step (possibly in epoch 2) exists
    # random step (set KILL_AFTER=N to replay one): end-of-epoch and mid-epoch checkpoints are both in range
    kill_after = int(os.environ.get("KILL_AFTER", 0)) or random.Random(os.getpid()).randint(2, last - 2)
    ckpt_dir = tmp_path / "killed" / "ckpt"
    cmd = [sys.executable, "-m", "probmed", "fit", *_config(tmp_path, "killed"), *data]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while kill_after not in _steps(ckpt_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = _steps(ckpt_dir)
    resume_from = max(saved)
    assert kill_after <= resume_from < last, f"killed after step {resume_from}"

    resumed = run_probmed(["fit", *_config(tmp_path, "killed"), *data, "--ckpt_path", str(saved[resume_from])],
                          cwd=tmp_path)
    assert resumed.returncode == 0, resumed.output[-4000:]
    final = _steps(ckpt_dir)
    assert last in final, f"resumed run (from step {resume_from}) did not reach step {last}: {sorted(final)}"

    # CPU, one thread, the same data order and per-step random draws: the arithmetic is replayed operation for
    # operation, so every parameter, buffer (batch-norm statistics) and AdamW moment must be bit-identical
    want, got = _state(reference[last]), _state(final[last])
    assert want.keys() == got.keys()
    differing = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differing, f"resumed from step {resume_from}: {len(differing)} tensors differ, e.g. {differing[:5]}"
    # and the run really moved: the weights at the kill point are not the final ones
    at_kill = _state(saved[resume_from])
    assert any(not torch.equal(at_kill[k], want[k]) for k in want if "optim" not in k)


def test_lightning_default_io_stages_the_file_outside_the_checkpoint_directory(tmp_path, monkeypatch):
    """Why AtomicCheckpointIO exists: Lightning's own IO writes its temporary file in the system temp directory and
    then moves it; across file systems that move is a copy into the final name (not atomic)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    made: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def spy(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        made.append(name)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    target = tmp_path / "ckpts" / "a.ckpt"
    target.parent.mkdir()
    TorchCheckpointIO().save_checkpoint({"x": torch.ones(2)}, target)
    assert made and all(Path(m).parent != target.parent for m in made)
    made.clear()
    AtomicCheckpointIO().save_checkpoint({"x": torch.ones(2)}, target)
    assert made and all(Path(m).parent == target.parent for m in made)  # same directory: os.replace is atomic


def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, target)

    def die_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # a kill during the write

    monkeypatch.setattr(torch, "save", die_midway)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": torch.tensor(2)}, target)
    monkeypatch.undo()
    assert AtomicCheckpointIO().load_checkpoint(target)["step"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


@pytest.mark.parametrize("cut", [0.5, 0.98])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, cut):
    good = tmp_path / "good.ckpt"
    atomic_torch_save({"w": torch.randn(64, 64), "step": 3}, good)
    blob = good.read_bytes()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(blob[: int(len(blob) * cut)])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        AtomicCheckpointIO().load_checkpoint(bad)


def test_cli_refuses_a_truncated_checkpoint_with_a_clear_message(smoke_corpus, tmp_path):
    bad = tmp_path / "cut.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.randn(256, 256)}}, tmp_path / "whole.ckpt")
    bad.write_bytes((tmp_path / "whole.ckpt").read_bytes()[:20000])
    out = run_probmed(["test", "--config", SMOKE, "--data.data_dir", str(smoke_corpus),
                       "--trainer.logger", "false", "--ckpt_path", str(bad)], cwd=tmp_path)
    assert out.returncode != 0
    assert "CorruptCheckpointError" in out.output and "truncated or corrupt" in out.output
    assert "PytorchStreamReader" not in out.output


@pytest.mark.parametrize("done", [3, 6])
def test_restored_loader_with_two_workers_continues_exactly_where_the_epoch_stopped(smoke_corpus, done):
    """The DataLoader takes batches from its workers round-robin: after a restore at ``done`` batches each worker
    skips its share, and the loader yields exactly the uninterrupted epoch's remaining batches, in order."""
    from probmed.data.datamodule import ProbMedDataModule
    from probmed.data.inputs import ECGInput

    def data_module():
        dm = ProbMedDataModule(str(smoke_corpus), modalities=["ecg"], batch_size=8, num_workers=2,
                               inputs={"ecg": ECGInput(rate=100, seconds=5)})
        dm.setup("fit")
        return dm

    full = [b["study_id"] for b in data_module().train_dataloader()]
    assert len(full) == 12 and len({tuple(ids) for ids in full}) == 12
    resumed = data_module()
    resumed.load_state_dict({"seed": 0, "epoch": 0, "batches_done": done, "epoch_batches": 12, "world_size": 1,
                             "num_workers": 2})
    assert [b["study_id"] for b in resumed.train_dataloader()] == full[done:]


def test_workers_run_at_the_niceness_worker_nice_adds_and_serve_the_same_batches(smoke_corpus):
    """``worker_nice`` lowers the decoding workers' priority (the training threads preempt them); the batches are
    those of workers at the trainer's priority."""
    import os

    from probmed.data.datamodule import ProbMedDataModule
    from probmed.data.inputs import ECGInput

    def batches(nice: int) -> tuple[list, list[int]]:
        dm = ProbMedDataModule(str(smoke_corpus), modalities=["ecg"], batch_size=8, num_workers=2,
                               inputs={"ecg": ECGInput(rate=100, seconds=5)}, worker_nice=nice)
        dm.setup("fit")
        loader = dm.train_dataloader()
        it = iter(loader)
        ids = [b["study_id"] for b in it]
        return ids, [os.getpriority(os.PRIO_PROCESS, w.pid) for w in it._workers]

    own = os.getpriority(os.PRIO_PROCESS, 0)
    plain, plain_nice = batches(0)
    lowered, lowered_nice = batches(5)
    assert plain_nice == [own, own]
    assert lowered_nice == [min(19, own + 5)] * 2
    assert lowered == plain and len(plain) == 12
    with pytest.raises(ValueError, match="worker_nice must be ≥ 0"):
        ProbMedDataModule(str(smoke_corpus), modalities=["ecg"], worker_nice=-1)


# -- resume never silently starts over -------------------------------------------------------------------------------
def _short_config(tmp: Path, steps: int) -> list[str]:
    """Smoke model, ``steps`` steps, no validation, a checkpoint after every step (step=N.ckpt) and last.ckpt."""
    extra = {"trainer": {
        "max_epochs": 1, "limit_train_batches": steps, "limit_val_batches": 0, "default_root_dir": str(tmp),
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": str(tmp), "name": "smoke"}},
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                       "init_args": {"dirpath": str(tmp / "ckpt"), "filename": "{step}", "every_n_train_steps": 1,
                                     "save_top_k": -1, "save_last": True}}],
    }}
    path = tmp / f"short{steps}.yaml"
    path.write_text(yaml.safe_dump(extra))
    return ["--config", SMOKE, "--config", str(path)]


@pytest.fixture(scope="module")
def three_steps(smoke_corpus, tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished 3-step smoke run: (its directory, the data arguments)."""
    tmp = tmp_path_factory.mktemp("three_steps")
    data = ["--data.data_dir", str(smoke_corpus)]
    out = run_probmed(["fit", *_short_config(tmp, 3), *data], cwd=tmp)
    assert out.returncode == 0, out.output[-4000:]
    assert sorted(p.name for p in (tmp / "ckpt").iterdir()) == ["last.ckpt", "step=1.ckpt", "step=2.ckpt",
                                                                 "step=3.ckpt"]
    return tmp, data


def test_last_after_a_kill_during_the_first_write_of_last_ckpt_resumes_from_the_newest_complete_one(three_steps):
    tmp, data = three_steps
    ckpt = tmp / "ckpt"
    # what a kill during the first write of last.ckpt (atomic: a temporary file), and during a non-atomic write
    # of step=3.ckpt (a truncated final file, the newest) leave behind
    (ckpt / "last.ckpt").unlink()
    temp = ckpt / ".last.ckpt.x1y2z3.tmp"
    temp.write_bytes((ckpt / "step=2.ckpt").read_bytes()[:5000])
    (ckpt / "step=3.ckpt").write_bytes((ckpt / "step=3.ckpt").read_bytes()[:7000])
    out = run_probmed(["fit", *_short_config(tmp, 3), *data, "--ckpt_path", "last"], cwd=tmp)
    assert out.returncode == 0, out.output[-4000:]
    assert "no last checkpoint available" not in out.output
    assert f"--ckpt_path last: passed over {ckpt / 'step=3.ckpt'}" in out.output, out.output[-3000:]
    assert f"--ckpt_path last: using {ckpt / 'step=2.ckpt'}" in out.output, out.output[-3000:]
    assert f"Restored all states from the checkpoint at {ckpt / 'step=2.ckpt'}" in out.output
    assert f"removed {temp}" in out.output and not temp.exists()
    # one run, one folder: the resumed fit logs into the checkpoint's run, from step=2.ckpt: the third step again
    assert not (tmp / "smoke" / "version_1").exists()
    events = EventAccumulator(str(tmp / "smoke" / "version_0"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1, 2, 2]
    assert len(list((tmp / "smoke" / "version_0").glob("events.out.tfevents.*"))) == 2


def test_last_with_no_checkpoint_says_it_starts_from_step_0(smoke_corpus, tmp_path):
    out = run_probmed(["fit", *_short_config(tmp_path, 1), "--data.data_dir", str(smoke_corpus),
                       "--ckpt_path", "last"], cwd=tmp_path)
    assert out.returncode == 0, out.output[-4000:]
    said = [line for line in out.output.splitlines() if "--ckpt_path last: no complete checkpoint in" in line]
    assert len(said) == 1 and str(tmp_path / "ckpt") in said[0] and said[0].endswith("starting from step 0")


def test_resuming_a_different_model_is_refused_listing_the_keys(three_steps):
    from probmed.cli import main

    tmp, data = three_steps
    args = ["fit", *_short_config(tmp, 3), *data, "--trainer.logger", "false", "--ckpt_path",
            str(tmp / "ckpt" / "step=2.ckpt")]
    with pytest.raises(ValueError, match=r"refusing to resume .*model\.embed_dim: config 32, checkpoint 16.*"
                                         r"model\.warmup_steps: config 7, checkpoint 1"):
        main([*args, "--model.embed_dim", "32", "--model.warmup_steps", "7"])


def test_evaluating_with_other_model_settings_warns_and_uses_the_checkpoints(three_steps, capsys):
    from probmed.cli import TRAINER_DEFAULTS, ProbMedCLI
    from probmed.data.datamodule import ProbMedDataModule
    from probmed.tasks.binding import ProbMedModule

    tmp, data = three_steps
    ckpt = tmp / "ckpt" / "step=2.ckpt"
    cli = ProbMedCLI(ProbMedModule, ProbMedDataModule, trainer_defaults=TRAINER_DEFAULTS, args=[
        "validate", *_short_config(tmp, 2), *data, "--trainer.logger", "false", "--model.warmup_steps", "7",
        "--ckpt_path", str(ckpt)])
    assert cli.model.hparams.warmup_steps == 1  # the checkpoint's, as LightningCLI does ...
    err = capsys.readouterr().err  # ... but no longer silently
    assert f"WARNING: {ckpt} was trained with other model settings than configured" in err
    assert "model.warmup_steps: config 7, checkpoint 1" in err


def test_a_torch_save_file_that_is_not_a_lightning_checkpoint_is_a_clear_error(smoke_corpus, tmp_path):
    from probmed.cli import main
    from probmed.training.resume import NotALightningCheckpointError

    bare = tmp_path / "weights.pt"
    torch.save({"encoders.ecg.stem.0.weight": torch.zeros(3)}, bare)
    with pytest.raises(NotALightningCheckpointError, match=r"weights\.pt is a torch\.save file but not a Lightning "
                                                           r"checkpoint.*a bare state_dict"):
        main(["test", "--config", SMOKE, "--data.data_dir", str(smoke_corpus), "--trainer.logger", "false",
              "--ckpt_path", str(bare)])


def test_killing_the_trainer_takes_its_fork_server_and_loader_workers_down(smoke_corpus, tmp_path):
    """The OOM killer's way: SIGKILL to the training process alone. Its fork server and loader workers (which
    watch only the fork server) must not outlive it."""
    from _slurm_gate import descendants

    cmd = [sys.executable, "-m", "probmed", "fit", "--config", SMOKE, "--data.data_dir", str(smoke_corpus),
           "--data.num_workers", "2", "--trainer.limit_train_batches", "1000", "--trainer.limit_val_batches", "0",
           "--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while len(children) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # resource tracker, fork server and two workers
            children = descendants(proc.pid)
        assert len(children) >= 4, f"the run never started its loader workers (exit code {proc.poll()})"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while (alive := {p for p in children if _proc_state(p) != "Z"}) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive, f"{len(alive)} of {len(children)} child processes outlived the killed trainer"
    finally:
        proc.kill()
        for pid in children:  # only this test's own processes, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
