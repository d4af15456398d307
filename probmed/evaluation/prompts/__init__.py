"""Zero-shot prompt sets: the ones shipped with ProbMed and the user's, matched to the dataset's label vocabulary.

A prompt set is ``{label: {"positive": [...], "negative": [...]}}`` (YAML in a file). Shipped sets (by name):
``corpus`` (the embedded corpus's findings), ``chexpert14`` (the 14 CheXpert labels, MIMIC-CXR / CheXpert) and
``ptbxl_superclasses`` (PTB-XL's NORM / MI / STTC / CD / HYP).

Without configured prompts, each label of the data takes its prompts from the shipped set that covers the most of
the data's labels, then the next (so MIMIC-CXR's ``cardiomegaly`` gets the CheXpert phrasing, the corpus's gets the
corpus's); labels no set covers are reported as unprompted.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from probmed.evaluation.config import DEFAULT_PROMPTS

PromptSet = dict[str, dict[str, list[str]]]
_HERE = Path(__file__).parent


def check_prompt_set(prompts: object, origin: str) -> PromptSet:
    """``prompts`` if every label has non-empty ``positive`` and ``negative`` lists of strings, else ValueError."""
    if not isinstance(prompts, dict):
        raise ValueError(f"{origin}: a prompt set maps label → {{positive: [...], negative: [...]}}")
    for label, sets in prompts.items():
        ok = isinstance(sets, dict) and all(
            isinstance(sets.get(k), list) and sets.get(k) and all(isinstance(t, str) for t in sets[k])
            for k in ("positive", "negative"))
        if not ok:
            raise ValueError(f"{origin}: zero-shot prompts for {label!r} need non-empty 'positive' and 'negative' "
                             "lists of strings")
    return {str(k): {"positive": list(v["positive"]), "negative": list(v["negative"])} for k, v in prompts.items()}


def shipped_prompt_sets() -> dict[str, PromptSet]:
    """Name → prompt set of every shipped set (``corpus`` first)."""
    sets = {"corpus": {k: dict(v) for k, v in DEFAULT_PROMPTS.items()}}
    for path in sorted(_HERE.glob("*.yaml")):
        sets[path.stem] = check_prompt_set(yaml.safe_load(path.read_text()), str(path))
    return sets


def load_prompt_set(name_or_path: str) -> PromptSet:
    """A shipped set by name (``chexpert14``) or a YAML file by path."""
    shipped = shipped_prompt_sets()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {name_or_path!r} not found (shipped sets: {sorted(shipped)})")
    return check_prompt_set(yaml.safe_load(path.read_text()), str(path))


def prompts_for_labels(labels: list[str], prompts: PromptSet | None = None,
                       files: list[str] | tuple[str, ...] = ()) -> tuple[PromptSet, list[str]]:
    """``(prompts of the data's labels, labels without prompts)``.

    Configured prompts (``files`` in order, then ``prompts`` on top) are used when given: a label in ``prompts``
    that the data does not have is an error (a typo would otherwise silently drop it), labels of a file that the
    data lacks are left out (a file covers a vocabulary, a dataset may use part of it). Without configured prompts
    the shipped sets are ranked by how many of the data's labels they cover (see the module docstring).

    Raises:
        ValueError: configured ``prompts`` naming labels the data does not label.
    """
    if prompts:
        unknown = sorted(set(prompts) - set(labels))
        if unknown:
            raise ValueError(f"zero-shot prompts name {unknown}, not among the labels {labels}")
    if prompts or files:
        chosen: PromptSet = {}
        for name in files:
            chosen.update(load_prompt_set(name))
        chosen.update(prompts or {})
    else:
        ranked = sorted(shipped_prompt_sets().values(), key=lambda s: -len(set(s) & set(labels)))  # stable
        chosen = {}
        for prompt_set in ranked:
            for label, sets in prompt_set.items():
                chosen.setdefault(label, sets)
    found = {label: chosen[label] for label in labels if label in chosen}
    return found, [label for label in labels if label not in chosen]
