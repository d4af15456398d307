"""`lightning fit --config X.yaml`, the command a Lightning user types, is a console script of this package running
the same CLI as `probmed` and `python -m probmed`, and shadows no command Lightning installs itself."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import distributions

from conftest import REPO, SMOKE, clean_env


def test_the_lightning_script_is_probmeds_main_and_shadows_nothing():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lightning"] == scripts["probmed"] == "probmed.cli:main"
    owners = {d.metadata["Name"] for d in distributions() for e in d.entry_points
              if e.group == "console_scripts" and e.name == "lightning"}
    assert owners <= {"probmed"}, f"{owners} install their own `lightning` command: drop ours"


def _as_script(name: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    """What the console script named ``name`` runs: probmed.cli.main with ``sys.argv[0]`` its path."""
    code = f"import sys; sys.argv[0] = {str(cwd / name)!r}; from probmed.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=clean_env(), text=True,
                          capture_output=True, timeout=300)


def test_lightning_fit_parses_a_config_as_probmed_does(tmp_path):
    help_text = _as_script("lightning", ["--help"], tmp_path)
    assert help_text.returncode == 0 and help_text.stdout.startswith("usage: lightning COMMAND")
    configs = [_as_script(name, ["fit", "--config", SMOKE, "--print_config"], tmp_path).stdout
               for name in ("lightning", "probmed")]
    assert configs[0] == configs[1] and "model:" in configs[0]
    module = subprocess.run([sys.executable, "-m", "probmed", "fit", "--config", SMOKE, "--print_config"],
                            cwd=tmp_path, env=clean_env(), text=True, capture_output=True, timeout=300)
    assert module.stdout == configs[1]
