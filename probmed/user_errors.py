"""A user's mistake is one line, not a traceback.

``probmed`` turns a mistake in a command line or a config (an unknown option or YAML key, an unknown modality or
similarity, a pair without a tower, a missing data directory or teacher file) into ONE line on stderr, ending in
the nearest valid name where there is one, and exit status 2 (:func:`report`). ``--debug`` or ``PROBMED_DEBUG=1``
re-raises instead, with the whole traceback.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from argparse import ArgumentError
from collections.abc import Iterable
from pathlib import Path

import yaml

#: exit status of a usage error (argparse's)
USAGE_ERROR = 2
#: exceptions that are the user's mistake when they reach the command line: configuration and input problems
USER_ERRORS = (ArgumentError, ValueError, FileNotFoundError, NotADirectoryError)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices`` to ``name`` (difflib), else ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def debug_requested(words: list[str]) -> bool:
    """``--debug`` among the words, or ``PROBMED_DEBUG`` set to anything but empty / ``0``."""
    return "--debug" in words or os.environ.get("PROBMED_DEBUG", "") not in ("", "0")


def _config_files(words: list[str]) -> list[Path]:
    files = []
    for i, word in enumerate(words):
        if word in ("--config", "-c") and i + 1 < len(words):
            files.append(Path(words[i + 1]))
        elif word.startswith("--config="):
            files.append(Path(word.split("=", 1)[1]))
    return files


def _file_with_key(files: list[Path], key: str) -> str | None:
    """The config file (or a file it names as a whole section, e.g. ``trainer: _trainer.yaml``) holding the dotted
    ``key``, or None."""
    parts = key.split(".")
    for path in files:
        todo = [(path, [])]
        while todo:
            file, prefix = todo.pop()
            try:
                node = yaml.safe_load(file.read_text())
            except (OSError, yaml.YAMLError):
                continue
            for depth, part in enumerate(parts[len(prefix):], len(prefix)):
                if isinstance(node, str) and node.endswith((".yaml", ".yml")):
                    todo.append((file.parent / node, parts[:depth]))
                    break
                if not isinstance(node, dict) or part not in node:
                    break
                node = node[part]
            else:
                return str(file)
    return None


def _parser_keys(parser, subcommand: str | None) -> list[str]:
    """Every option (dotted key) a (sub)command's parser accepts."""
    action = getattr(parser, "_subcommands_action", None)
    if subcommand and action is not None and subcommand in action._name_parser_map:
        parser = action._name_parser_map[subcommand]
    return [a.dest for a in parser._actions if a.dest and a.dest not in ("help", "==SUPPRESS==")]


def explain(error: BaseException, words: list[str], parser=None) -> str:
    """The one line that says what is wrong, where (file and key, or the command line) and the nearest valid name."""
    message = " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())
    if isinstance(error, ArgumentError):
        group = re.search(r"Group '([^']+)' does not accept options? '([^']+)'", message)
        unknown = (re.search(r"does not accept options? '([^']+)'", message)
                   or re.search(r"[Uu]nrecognized arguments:\s*(\S+)", message))
        if unknown:
            key = unknown[1].lstrip("-").split("=", 1)[0]
            key = f"{group[1]}.{key}" if group and not key.startswith(f"{group[1]}.") else key
            subcommand = next((w for w in words if not w.startswith("-")), None)
            hint = did_you_mean(key, _parser_keys(parser, subcommand)) if parser is not None else ""
            where = _file_with_key(_config_files(words), key)
            if where:
                return f"{where}: unknown key {key}{hint}"
            return f"unknown option --{key}{hint}"
    if isinstance(error, FileNotFoundError) and not message:
        message = f"{error.filename}: no such file"
    return message


def report(error: BaseException, words: list[str], parser=None, program: str = "probmed") -> int:
    """Print ``<program>: error: <one line>`` on stderr and return the usage-error status (2)."""
    print(f"{program}: error: {explain(error, words, parser)}  [--debug shows the traceback]", file=sys.stderr,
          flush=True)
    return USAGE_ERROR


__all__ = ["USAGE_ERROR", "USER_ERRORS", "debug_requested", "did_you_mean", "explain", "report"]
