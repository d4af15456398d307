"""The package's shape, checked from its source: imports point one way, each idea is written once, functions stay
short enough to read. Parsed with ``ast`` (nothing is imported or run)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "probmed"
#: what the data side may never import: it stands below everything that trains or evaluates
ABOVE_DATA = ("probmed.evaluation", "probmed.losses", "probmed.training", "probmed.tasks", "probmed.cli")
#: functions allowed past the length limit: the corpus's rendering maths (one signal model, one screen of formulas)
RENDERING_MATHS = {("probmed/data/synthetic/ecg.py", "synthesize_ecg"), ("probmed/data/synthetic/echo.py", "render_echo")}
MAX_FUNCTION_LINES = 80


def module_files() -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under probmed/."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of probmed it imports}``, module-level and function-level (lazy) imports alike."""
    files = module_files()

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            targets |= {t for n in names if n.startswith("probmed") and (t := known(n)) and t != module}
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_anywhere_in_the_package():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_data_side_imports_nothing_above_it():
    arrows = sorted(f"{m} -> {t}" for m, ts in import_graph().items() if m.startswith("probmed.data")
                    for t in ts if t.startswith(ABOVE_DATA))
    assert arrows == []


def test_no_function_outside_the_rendering_maths_exceeds_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in RENDERING_MATHS:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{rel}::{node.name} ({lines} lines)")
    assert long == []


def _files_matching(pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return sorted(p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py") if regex.search(p.read_text()))


def test_the_distributed_world_is_asked_in_one_place():
    """Whether a process group exists is decided by probmed/distributed.py alone (it once was inline six times)."""
    assert _files_matching(r"dist\.is_initialized\(\)|dist\.get_world_size\(\)") == ["probmed/distributed.py"]


def test_the_mean_variance_of_an_embedding_is_computed_in_one_place():
    assert _files_matching(r"log_var(\.float\(\))?\.exp\(\)\.mean\(") == ["probmed/embedding.py"]


def test_similarity_names_are_interpreted_by_the_similarity_table_only():
    """No module outside probmed/losses/similarity.py compares a value with a similarity's name: what a similarity
    is (its function, logit scale, kernel code, exponent) is read from SIMILARITY_TABLE."""
    names = "|".join(("hellinger", "hellinger_joint", "bhattacharyya", "csd", "medprob", "cosine"))
    compared = rf"""(==|!=)\s*["']({names})["']|\bin\s*[\(\[{{]\s*["']({names})["']"""
    assert [f for f in _files_matching(compared) if f != "probmed/losses/similarity.py"] == []
