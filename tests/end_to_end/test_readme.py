"""The README is a guide that stays true: every command in its shell blocks (and in docs/results.md's) parses against
the real CLI, Makefile, sbatch templates and scripts; every YAML example (README, docs/design.md) resolves as a
config; its links resolve; it stays short and free of run history."""
from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from dockit import shell_commands

README = REPO / "README.md"
#: the documents whose ```bash blocks are checked command by command
COMMAND_DOCS = [README, REPO / "docs" / "results.md", REPO / "docs" / "real_data.md"]
#: links to documents written on another branch of the same change (the lead merges them; delete the entry then)
PENDING_LINKS: set[str] = set()


COMMANDS = [c for doc in COMMAND_DOCS for c in shell_commands(doc)]


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
    if program == "make":
        (target,) = args
        dry = subprocess.run(["make", "-n", "-C", str(REPO), target], capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, f"{where}: make {target}: {dry.stderr}"
    elif program == "export":
        assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=.+", a) for a in args), where
    elif program == "mkdir":
        assert args[0] == "-p" and len(args) == 2, where
    elif program == "probmed" and args[0] == "data":
        from probmed.data.commands import build_parser

        build_parser().parse_args(args[1:])  # argparse exits (fails the test) on any unknown option or value
    elif program == "probmed":
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
