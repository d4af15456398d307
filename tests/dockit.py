"""Shell commands as the docs give them (```bash blocks), for the tests that execute or parse-check them."""
from __future__ import annotations

import re
import shlex
from pathlib import Path


def shell_commands(path: Path) -> list[tuple[str, dict[str, str], list[str]]]:
    """``(where, env, words)`` for each command of the file's ```bash blocks: continuation lines joined, comments
    dropped, leading ``VAR=value`` assignments moved to ``env``."""
    commands, fence, pending = [], None, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            fence = None if fence else (line.strip()[3:] or "text")
            continue
        if fence != "bash":
            continue
        pending.append((number, line.rstrip()))
        if pending[-1][1].endswith("\\"):
            continue
        where = f"{path.name}:{pending[0][0]}"
        words = shlex.split(" ".join(part.removesuffix("\\") for _, part in pending), comments=True)
        pending = []
        env = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        if words:
            commands.append((where, env, words))
    return commands
