"""The CLI shows itself and answers a user's mistake in one line: `probmed --help` lists every command, each task
prints its own help, and a wrong option, YAML key, modality, similarity, pair or data directory is one line on
stderr (what, where, the nearest valid name) with exit status 2; --debug / PROBMED_DEBUG=1 shows the traceback."""
from __future__ import annotations

import re
import sys

import pytest
import yaml

from conftest import SMOKE, run_probmed

COMMANDS = ("fit", "validate", "test", "predict", "data", "distill", "prompt")


def _main(args, capsys, monkeypatch):
    """`probmed ARGS` in this process: (exit status, stdout, stderr)."""
    from probmed.cli import main

    monkeypatch.setattr(sys, "argv", ["probmed"])
    try:
        code = main(list(args))
    except SystemExit as done:
        code = done.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_every_command_with_a_whole_line_each(capsys, monkeypatch):
    code, out, _ = _main(["--help"], capsys, monkeypatch)
    assert code == 0
    listed = dict(re.findall(r"^  (\w+)\s{2,}(.+)$", out, re.M))
    assert tuple(listed) == COMMANDS
    for name, text in listed.items():  # a whole description: not cut off mid-sentence or mid-word
        assert len(text) > 20 and not text.endswith(("...", ",", "-")) and (text[-1] in ")" or text[-1].isalnum())


@pytest.mark.parametrize("task", ["distill", "prompt"])
def test_each_task_prints_its_own_help(task, capsys, monkeypatch):
    code, out, _ = _main([task, "--help"], capsys, monkeypatch)
    assert code == 0 and out.startswith(f"usage: probmed {task} {{fit,validate,test,predict}}")
    code, out, _ = _main([task, "fit", "--help"], capsys, monkeypatch)
    assert code == 0 and out.startswith(f"usage: probmed {task} fit ")


def _one_line_error(code, err) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    (line,) = [line for line in lines if line.startswith("probmed: error:")]
    return line


def _child(args, cwd):
    """`probmed ARGS` in a child process, as a user runs it: (exit status, stderr)."""
    out = run_probmed(list(args), cwd=cwd)
    return out.returncode, out.stderr


def test_an_unknown_option_names_the_nearest_one(tmp_path):
    code, err = _child(["fit", "--config", SMOKE, "--trainer.max_epochz", "3"], tmp_path)
    line = _one_line_error(code, err)
    assert "unknown option --trainer.max_epochz (did you mean 'trainer.max_epochs'?)" in line
    assert len(err.strip().splitlines()) == 1  # no 94 lines of usage


def test_a_yaml_key_typo_names_its_file_and_key(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  embed_dimm: 8\n")
    for extra in ([], ["--print_config"]):
        code, err = _child(["fit", "--config", SMOKE, "--config", str(typo), *extra], tmp_path)
        line = _one_line_error(code, err)
        assert f"{typo}: unknown key model.embed_dimm (did you mean 'model.embed_dim'?)" in line


def test_the_trainer_optimizer_flag_is_refused_pointing_to_the_modules(tmp_path):
    code, err = _child(["fit", "--config", SMOKE, "--optimizer", "torch.optim.SGD"], tmp_path)
    assert "--model.optimizer" in _one_line_error(code, err)


def _objective(tmp_path, similarity="hellinger", pair=("text", "cxr")):
    path = tmp_path / "objective.yaml"
    path.write_text(yaml.safe_dump({"model": {"objective": {"class_path": "probmed.losses.Objective", "init_args": {
        "pairs": [{"term": "probmed.losses.ProbabilisticInfoNCE", "args": {"similarity": similarity},
                   "over": [list(pair)]}]}}}}))
    return str(path)


@pytest.mark.parametrize("what,args,expected", [
    ("modality", ["--data.modalities", "[cxr, ecgg]"], "data.modalities: unknown modality 'ecgg' (did you mean 'ecg'?)"),
    ("similarity", "similarity", "unknown similarity 'helinger' (did you mean 'hellinger'?)"),
    ("pair", "pair", "model.objective contrasts ['cxx'], which have no tower in model.encoders (did you mean 'cxr'?)"),
    ("data", ["--data.data_dir", "nowhere"],
     "probmed: error: nowhere/sizes.json not found: build the dataset first, e.g. `probmed data synth --out nowhere`"),
])
def test_a_configuration_mistake_is_one_line_with_exit_2(what, args, expected, smoke_corpus, tmp_path):
    if args == "similarity":
        args = ["--config", _objective(tmp_path, similarity="helinger")]
    elif args == "pair":
        args = ["--config", _objective(tmp_path, pair=("text", "cxx"))]
    base = ["fit", "--config", SMOKE, "--data.data_dir", str(smoke_corpus), "--trainer.logger", "false"]
    code, err = _child([*base, *args], tmp_path)
    assert expected in _one_line_error(code, err)


def test_debug_and_the_environment_variable_show_the_traceback(smoke_corpus, tmp_path):
    args = ["fit", "--config", SMOKE, "--data.data_dir", str(smoke_corpus), "--data.modalities", "[cxr, mri]"]
    for how, env in ((["--debug"], {}), ([], {"PROBMED_DEBUG": "1"})):
        out = run_probmed([*args, *how], cwd=tmp_path, **env)
        assert out.returncode == 1 and "Traceback (most recent call last)" in out.stderr, how
        assert "ValueError: data.modalities: unknown modality 'mri'" in out.stderr


def test_called_from_python_the_exception_reaches_the_caller(smoke_corpus, tmp_path, monkeypatch):
    from probmed.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    with pytest.raises(ValueError, match="unknown modality 'mri'"):
        main(["fit", "--config", SMOKE, "--data.data_dir", str(smoke_corpus), "--data.modalities", "[cxr, mri]"])
