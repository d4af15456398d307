"""The README is a guide that stays true: every command in the shell blocks of README.md and docs/*.md, and every
command a config file's comments give, parses against the real CLI, Makefile, sbatch templates, scripts and `hf`;
the cheap ones are executed as written (tiny corpus): see EXECUTED and PARSE_ONLY; every YAML example (README,
docs/design.md) resolves as a config; its links resolve; it stays short and free of run history."""
from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from dockit import shell_commands

README = REPO / "README.md"
#: the documents whose ```bash blocks are checked command by command
COMMAND_DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
#: links to documents written on another branch of the same change (the lead merges them; delete the entry then)
PENDING_LINKS: set[str] = set()


#: the programs a config comment's command may start with
_PROGRAMS = r"(?:probmed|lightning|hf|python|make|sbatch|tensorboard)"


def config_commands(root: Path = REPO / "configs") -> list[tuple[str, dict[str, str], list[str]]]:
    """``(where, env, words)`` of each command in the comments of the config files: a comment line that starts with
    a program (continued over ``\\`` line ends) or a backquoted ``probmed ...`` span. Placeholders (``<shards>``)
    become ``PLACEHOLDER``; a trailing annotation set off by two spaces, ``(make data)``, is dropped; a span with
    ``...`` or without an option is an abbreviation, not a command. A tower file's comment line of options
    (``--model.encoders.text.init_args.pretrained ...``) is checked on ``configs/presets/clip.yaml``."""
    found = []
    for path in sorted(root.rglob("*.yaml")):
        pending: list[str] = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            text = line.strip()
            if not text.startswith("#"):
                pending = []
                continue
            text = text.lstrip("#").strip()
            if pending or re.match(rf"{_PROGRAMS} ", text):
                pending.append(text)
                if text.endswith("\\"):
                    continue
                spans, pending = [" ".join(p.removesuffix("\\") for p in pending)], []
            elif text.startswith("--") and "towers" in path.parts:  # a tower's options, on a preset using it
                spans = [f"probmed fit --config configs/presets/clip.yaml {text}"]
            else:
                spans = [m for m in re.findall(r"`(probmed [^`]+)`", text) if "..." not in m and " --" in m]
            for span in spans:
                span = re.sub(r"\s{2,}\(.*\)$", "", re.sub(r"<[^>]+>", "PLACEHOLDER", span))
                found.append((f"{path.relative_to(REPO)}:{number}", {}, shlex.split(span)))
    return found


COMMANDS = [c for doc in COMMAND_DOCS for c in shell_commands(doc)] + config_commands()

#: documented commands the suite executes as written (on the tiny corpus in place of ``data_shards/demo``), in order:
#: the README's M3Bind stage 1 + 2 sequence on the tiny presets
EXECUTED = [
    ["probmed", "fit", "--config", "configs/presets/clip.yaml", "--config", "configs/presets/tiny/clip.yaml",
     "--data.data_dir", "data_shards/demo"],
    ["probmed", "fit", "--config", "configs/presets/medbind.yaml", "-c", "configs/presets/tiny/medbind.yaml",
     "--data.data_dir", "data_shards/demo"],
    ["probmed", "distill", "fit", "--config", "configs/presets/m3bind_distill.yaml", "--config",
     "configs/presets/tiny/m3bind_distill.yaml", "--data.data_dir", "data_shards/demo"],
]


def parse_only_reason(words: list[str]) -> str | None:
    """Why a documented command is parse-checked only (None: it is in EXECUTED or has no reason: a test failure)."""
    if words in EXECUTED:
        return None
    text = " ".join(words)
    program = words[0]
    reasons = [
        (program == "make", "make targets train the demo (minutes) or run the suite itself"),
        (program == "sbatch", "needs a Slurm cluster (tests/training/test_slurm.py runs the templates on one)"),
        (program == "hf", "downloads weights over the network"),
        (program in ("python", "export", "mkdir", "tensorboard"),
         "benchmarks, experiments, pytest and tensorboard run minutes to hours or serve; their options are checked"),
        (program == "probmed" and words[1:2] == ["data"],
         "data commands read public datasets or write thousands of studies (tests/data run them at tiny sizes)"),
        ("PLACEHOLDER" in words or any(w.startswith("PLACEHOLDER") for w in words),
         "a template with placeholders (the same command with tiny sizes is executed in EXECUTED or tests/)"),
        (any("tiny/" in w for w in words), "tiny presets train in tests/end_to_end/test_presets.py"),
        (program in ("probmed", "lightning"),
         "full-size configs or real-data directories (hours of training); the resolved config is checked"),
    ]
    return next((why for applies, why in reasons if applies), None) or f"no reason given for {text}"


def _options(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]


def _lightning_cli_parses(args: list[str], monkeypatch, capsys) -> None:
    """`probmed ARGS --print_config` in this process: the whole command line parses and the config resolves."""
    from probmed.cli import main

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    for i, word in enumerate(args):  # every --config file the command names exists
        if word in ("--config", "-c"):
            assert (REPO / args[i + 1]).is_file(), f"{args[i + 1]} does not exist"  # (absolute paths stay absolute)
    with pytest.raises(SystemExit) as done:
        main([*args, *([] if "--print_config" in args else ["--print_config"])])
    out = capsys.readouterr()
    assert done.value.code in (0, None), out.out[-2000:] + out.err[-3000:]
    assert "model:" in out.out


@functools.cache
def _help(*script: str) -> str:
    out = subprocess.run([*script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _script_accepts(script: list[str], options: list[str]) -> None:
    """A script's --help lists every option the command uses."""
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", _help(*script)), \
            f"{' '.join(script)} has no option {option}"


@pytest.mark.parametrize("where,env,words", COMMANDS, ids=[f"{w}:{' '.join(c[:3])}" for w, _, c in COMMANDS])
def test_every_documented_command_runs_or_parses(where, env, words, monkeypatch, capsys):
    program, args = words[0], words[1:]
    assert words in EXECUTED or not parse_only_reason(words).startswith("no reason"), where
    if program == "make":
        (target,) = args
        dry = subprocess.run(["make", "-n", "-C", str(REPO), target], capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, f"{where}: make {target}: {dry.stderr}"
    elif program == "export":
        assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=.+", a) for a in args), where
    elif program == "mkdir":
        assert args[0] == "-p" and len(args) == 2, where
    elif program == "hf":
        _script_accepts([str(Path(sys.executable).with_name("hf")), args[0]], _options(args[1:]))
    elif program in ("probmed", "lightning") and args[0] == "data":
        from probmed.data.commands import build_parser

        build_parser().parse_args(args[1:])  # argparse exits (fails the test) on any unknown option or value
    elif program in ("probmed", "lightning"):
        _lightning_cli_parses(args, monkeypatch, capsys)
    elif program == "sbatch":  # sbatch [its options] TEMPLATE [probmed fit args]; CONFIG from the environment
        (i,) = [k for k, a in enumerate(args) if a.endswith(".sbatch")]
        template = (REPO / args[i]).read_text()
        for option in _options(args[:i]):
            assert f"#SBATCH {option}=" in template, f"{where}: {args[i]} sets no {option}"
        _lightning_cli_parses(["fit", "--config", env["CONFIG"], *args[i + 1:]], monkeypatch, capsys)
    elif program == "tensorboard":
        _script_accepts([str(Path(sys.executable).with_name("tensorboard"))], _options(args))
    elif program == "python" and args[:2] == ["-m", "pytest"]:
        collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                  *args[2:]], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert collect.returncode == 0 and "::" in collect.stdout, collect.stdout[-2000:]
    elif program == "python" and args[0].endswith(".py"):
        _script_accepts([sys.executable, args[0]], _options(args[1:]))
    else:
        pytest.fail(f"{where}: teach this test to check `{program}` commands, or show one it knows")


def yaml_snippets(path: Path) -> list[tuple[str, str]]:
    """``(where, text)`` of each ```yaml block."""
    found, lines = [], path.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip() == "```yaml":
            end = next(i for i in range(number + 1, len(lines)) if lines[i].strip() == "```")
            found.append((f"{path.name}:{number + 1}", "\n".join(lines[number + 1:end])))
    return found


SNIPPETS = [s for doc in (README, REPO / "docs" / "design.md") for s in yaml_snippets(doc)]


@pytest.mark.parametrize("where,text", SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_every_documented_config_snippet_parses(where, text, tmp_path, monkeypatch, capsys):
    """Each YAML example, laid over configs/smoke.yaml, resolves (class paths and their arguments exist)."""
    snippet = tmp_path / "snippet.yaml"
    snippet.write_text(text + "\n")
    _lightning_cli_parses(["fit", "--config", "configs/smoke.yaml", "--config", str(snippet)], monkeypatch, capsys)


def test_the_readme_is_a_short_guide_without_run_history():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 250
    for doc in (README, *sorted((REPO / "docs").glob("*.md"))):
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if not line.startswith("|"):  # a Markdown table row cannot wrap
                assert len(line) <= 120, f"{doc.name}:{number} is {len(line)} characters long"
            hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", line) if re.search(r"\d", w) and
                      re.search(r"[a-f]", w)]
            assert not hashes, f"{doc.name}:{number}: commit hash {hashes}"
    assert not re.search(r"\bsessions?\b", text, re.I)
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "dated measurements belong in docs/results.md"
    assert not re.search(r"\d+ (passed|tests)\b", text), "test counts change with every commit"


def test_links_resolve():
    for doc in (README, *sorted((REPO / "docs").glob("*.md"))):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            path = (doc.parent / target).resolve()
            if path.relative_to(REPO).as_posix() in PENDING_LINKS:
                continue
            assert path.exists(), f"{doc.name} links to {target}, which does not exist"


def test_the_preset_table_lists_every_preset():
    listed = set(re.findall(r"^\| `([\w-]+\.yaml)` \|", README.read_text(), re.M))
    files = {p.name for p in (REPO / "configs" / "presets").glob("*.yaml") if not p.name.startswith("_")}
    assert listed == files


def test_the_readme_demo_table_is_the_one_in_results():
    def first_table(path: Path) -> str:
        match = re.search(r"```\n(query -> gallery.*?)```", path.read_text(), re.S)
        assert match, f"no retrieval table in {path.name}"
        return match[1]

    assert first_table(README) == first_table(REPO / "docs" / "results.md")


def test_the_executed_commands_are_documented():
    documented = [words for _, _, words in COMMANDS]
    for words in EXECUTED:
        assert words in documented, f"{' '.join(words)} is no longer documented: update EXECUTED"


def test_the_documented_m3bind_sequence_runs_as_written(smoke_corpus, tmp_path):
    """The README's stage 1 (two tiny presets) and stage 2 (`probmed distill fit` with the preset's default
    teachers), run as written from a fresh directory, the tiny corpus standing in for data_shards/demo."""
    from conftest import run_probmed

    (tmp_path / "configs").symlink_to(REPO / "configs")
    for words in EXECUTED:
        args = [str(smoke_corpus) if w == "data_shards/demo" else w for w in words[1:]]
        out = run_probmed(args, cwd=tmp_path)
        assert out.returncode == 0, f"{' '.join(words)}:\n{out.output[-3000:]}"
    assert (tmp_path / "runs" / "m3bind_distill" / "version_0" / "checkpoints" / "last.ckpt").is_file()
