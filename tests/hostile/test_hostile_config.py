"""A YAML alias bomb as a config: refused from the parser's events before anything is built, within memory."""
from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from conftest import REPO, clean_env
from probmed.config_yaml import ConfigTooLarge, check_expansion


def alias_bomb(levels: int = 12, width: int = 9) -> str:
    """``width ** levels`` leaves in a few hundred bytes (the billion-laughs shape in YAML)."""
    lines = ["a0: &a0 [x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    lines.append(f"model: {{embed_dim: *a{levels}}}")
    return "\n".join(lines) + "\n"


def test_expansion_is_counted_with_aliases_at_full_size():
    assert check_expansion("a: 1\nb: [1, 2]\n") == 1 + 2 + 1 + (1 + 2)  # the mapping, 2 keys, 1, a 2-item list
    doc = "x: &x [1, 2, 3]\ny: [*x, *x]\n"  # y holds two copies of a 4-node sequence
    assert check_expansion(doc) == 1 + 1 + 4 + 1 + (1 + 4 + 4)
    with pytest.raises(ConfigTooLarge, match="alias bomb"):
        check_expansion(alias_bomb(levels=6, width=9), max_nodes=100_000)


def test_every_shipped_config_is_far_below_the_bound():
    from probmed.config_yaml import MAX_NODES

    assert max(check_expansion(p.read_text()) for p in (REPO / "configs").rglob("*.yaml")) < MAX_NODES // 100


def test_an_alias_bomb_config_is_refused_by_the_cli_within_a_memory_cap(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    assert len(bomb.read_text()) < 1000
    cap = 3 << 30  # the torch import alone takes ~1.3 GB of address space headroom; the bomb would take far more

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap * 4, cap * 4))

    proc = subprocess.run([sys.executable, "-m", "probmed", "fit", "--config", str(bomb), "--print_config"],
                          cwd=tmp_path, env=clean_env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "alias bomb" in out and "MemoryError" not in out, out[-3000:]
