"""`make test-fast` (the inner loop) leaves out exactly the multi-process tests: every test that starts DDP ranks,
"nodes" or a Slurm job carries the `ddp` / `slurm` marker, and the Makefile's marker expression deselects them."""
from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys

from conftest import REPO

TESTS = REPO / "tests"
#: string constants that start more than one process: a DDP strategy, a rank launcher's argument, a 2-"node" job,
#: a Slurm submission
LAUNCH_STRINGS = {"ddp", "ddp_spawn", "--world-size", "--trainer.num_nodes", "sbatch"}
LAUNCH_CALLS = {"init_process_group", "spawn", "start_processes"}
MULTI_PROCESS_MARKS = {"ddp", "slurm"}


def _marks(decorators: list[ast.expr]) -> set[str]:
    """Names X of ``@pytest.mark.X`` / ``@pytest.mark.X(...)`` (and of a ``pytestmark`` list)."""
    names = set()
    for node in decorators:
        node = node.func if isinstance(node, ast.Call) else node
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark":
            names.add(node.attr)
    return names


def _launches(fn: ast.AST, launchers: set[str]) -> bool:
    compared = {id(c) for node in ast.walk(fn) if isinstance(node, ast.Compare)
                for c in (node.left, *node.comparators)}
    for node in ast.walk(fn):
        if isinstance(node, ast.Constant) and node.value in LAUNCH_STRINGS and id(node) not in compared:
            return True  # an argument or command word, not a name compared against (`program == "sbatch"`)
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in LAUNCH_CALLS or name in launchers:
                return True
    return False


def multi_process_tests() -> dict[str, set[str]]:
    """``{"tests/<area>/test_x.py::test_name": marks}`` for every test function that starts several processes, directly,
    through a helper of its module or through a fixture of its module (helpers that call helpers included)."""
    found = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        module_marks: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
                value = node.value
                module_marks |= _marks(value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value])
        launchers: set[str] = set()
        while True:  # helpers and fixtures that launch, to a fixed point
            more = {name for name, fn in functions.items() if name not in launchers and _launches(fn, launchers)}
            if not more:
                break
            launchers |= more
        for name, fn in functions.items():
            params = {a.arg for a in fn.args.args}
            if name.startswith("test_") and (name in launchers or params & launchers):
                found[f"{path.relative_to(REPO).as_posix()}::{name}"] = _marks(fn.decorator_list) | module_marks
    return found


def test_every_multi_process_test_is_marked_ddp_or_slurm():
    found = multi_process_tests()
    # the suite has them in these files today: if this list shrinks to nothing the detector is broken, not the suite
    assert {key.split("::")[0] for key in found} >= {"tests/end_to_end/test_cli.py", "tests/losses/test_loss_ddp.py",
                                                     "tests/evaluation/test_collect_ddp.py",
                                                     "tests/training/test_multinode.py", "tests/training/test_slurm.py"}
    unmarked = sorted(key for key, marks in found.items() if not marks & MULTI_PROCESS_MARKS)
    assert not unmarked, f"start several processes but are not marked ddp/slurm (make test-fast would run them): " \
                         f"{unmarked}"


def test_make_test_fast_deselects_them_and_make_test_keeps_them():
    def recipe(target: str) -> list[str]:
        """The -m expression of the target's pytest command (`make -n` prints, runs nothing)."""
        out = subprocess.run(["make", "-n", "-C", str(REPO), target], capture_output=True, text=True,
                             check=True).stdout
        (line,) = [line for line in out.splitlines() if "pytest" in line]
        words = shlex.split(line)
        return words[words.index("-m", words.index("pytest")) + 1:][:1]

    (fast,), (full,) = recipe("test-fast"), recipe("test")
    assert full == "not slow"  # `make test` (what .ci/run calls) stays the whole suite
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", fast, "-p",
                                "no:cacheprovider", *map(str, sorted(TESTS.rglob("test_*.py")))],
                               cwd=REPO, capture_output=True, text=True, timeout=600)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    ids = {re.sub(r"\[.*\]$", "", line) for line in collected.stdout.splitlines() if "::" in line}
    assert "tests/end_to_end/test_suite_markers.py::test_every_multi_process_test_is_marked_ddp_or_slurm" in ids
    assert not ids & set(multi_process_tests()), sorted(ids & set(multi_process_tests()))
