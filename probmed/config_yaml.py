"""YAML configs read with a bound on what they expand to: an alias bomb (``a: &a [x, x]``, ``b: &b [*a, *a]``, ...)
is a few hundred bytes that PyYAML builds as shared references and jsonargparse then copies out, exponentially.

:func:`install` wraps jsonargparse's YAML loader (every ``--config`` file, every file a config names, every YAML
value on the command line) with :func:`check_expansion`, which walks the parser's events (no object is built) and
refuses a document whose nodes, with every alias expanded, exceed :data:`MAX_NODES`, or whose text exceeds
:data:`MAX_CHARS`. The largest shipped config expands to a few hundred nodes.
"""
from __future__ import annotations

import yaml
from jsonargparse import get_loader, set_loader

#: Most nodes (scalars, sequences, mappings) a config may expand to, aliases counted at their full size.
MAX_NODES = 200_000
#: Longest YAML text accepted (characters).
MAX_CHARS = 4 << 20


class ConfigTooLarge(ValueError):
    """A YAML document that would expand past :data:`MAX_NODES` nodes or is longer than :data:`MAX_CHARS`."""


def check_expansion(text: str, max_nodes: int = MAX_NODES) -> int:
    """The number of nodes ``text`` expands to (aliases at their anchor's full size); ConfigTooLarge past
    ``max_nodes``, raised as soon as the running count passes it (a bomb is never walked to the end)."""
    if len(text) > MAX_CHARS:
        raise ConfigTooLarge(f"a YAML config of {len(text)} characters (at most {MAX_CHARS})")
    anchored: dict[str, int] = {}
    open_nodes: list[list] = []  # [nodes so far, anchor] of each open sequence / mapping
    total = 0

    def add(count: int) -> None:
        nonlocal total
        if open_nodes:
            open_nodes[-1][0] += count
            count = open_nodes[-1][0]
        else:
            total += count
            count = total
        if count > max_nodes:
            raise ConfigTooLarge(f"a YAML config that expands to more than {max_nodes} nodes (its aliases repeat "
                                 f"anchored blocks: an alias bomb?); refused before loading")

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            add(anchored.get(event.anchor, 1))
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor:
                anchored[event.anchor] = 1
            add(1)
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            open_nodes.append([1, event.anchor])
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            count, anchor = open_nodes.pop()
            if anchor:
                anchored[anchor] = count
            add(count)
    return total


def install() -> None:
    """Make jsonargparse's ``yaml`` loader check :func:`check_expansion` first (idempotent)."""
    current = get_loader("yaml")
    if getattr(current, "checks_expansion", False):
        return

    def load(stream):
        if isinstance(stream, str):
            try:
                check_expansion(stream)
            except yaml.YAMLError:
                pass  # not YAML at all: the loader's own error (or a plain string value) as before
        return current(stream)

    load.checks_expansion = True  # type: ignore[attr-defined]
    set_loader("yaml", load, exceptions=(yaml.YAMLError,))
