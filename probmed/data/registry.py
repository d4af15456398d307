"""The modalities ProbMed knows by default: one :class:`ModalitySpec` per name, the list every other one derives from.

A spec says everything the data side needs about one modality: its default input pipeline (which names its shard
files, reader, options and placeholder: :mod:`probmed.data.inputs`) and how ``probmed data build`` makes its shard
files from a manifest column (:mod:`probmed.data.converters`). The registry reads only data-side modules; others
read it (the test-time corruptions of :mod:`probmed.evaluation.corruptions` are keyed by the input pipeline's
class there). Derived from :data:`SPECS`:

* :func:`default_modalities` — the default stored modalities (own shard files), in table order;
* :func:`modality_of` — which modality a shard file belongs to;
* the data module's default pipelines (``data.modalities`` without ``data.inputs``);
* :data:`probmed.data.manifest.COLUMNS` and the builder's conversions.

**Adding a modality.** One stored in a format a pipeline already reads needs no code: give it in the data config,
e.g. a retina photograph stored as ``retina.<i>.png`` beside the radiographs::

    data:
      inputs:
        retina: {class_path: probmed.data.inputs.ImageInput, init_args: {prefix: retina, size: 64}}

plus a tower under ``model.encoders.retina`` and the pairs that contrast it in ``model.objective``. A new format
needs a :class:`~probmed.data.inputs.ModalityInput` subclass (and, to build it from a manifest, a converter);
:func:`register` then makes it a default modality with its manifest column.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from probmed.data import converters
from probmed.data.inputs import (
    CTInput,
    CXRInput,
    CXRSecondViewInput,
    ECGInput,
    EchoInput,
    ImpressionInput,
    ModalityInput,
    TextInput,
)
from probmed.user_errors import did_you_mean

__all__ = ["BuildSpec", "ModalitySpec", "SPECS", "register", "spec", "stored_modalities",
           "default_modalities", "modality_of",
           "default_input", "check_names", "build_specs"]


@dataclass(frozen=True)
class BuildSpec:
    """How ``probmed data build`` makes a modality's shard files from one manifest row.

    Args:
        path_column: the manifest column holding its source file(s) (``;``-separated when ``many``).
        value_columns: further columns its converter reads (e.g. ``cxr_views``, ``echo_fps``, ``report_text``).
        convert: ``convert(entry, ctx) → (files {name: bytes}, meta {key: value})``; raises
            :class:`~probmed.data.readers.UnreadableInput` (counted by the builder) for an unusable source.
        many: the path column lists several files (e.g. radiograph views).
        inline_column: a value column that can stand in for the file (a report given inline): a row with either
            has the modality.
    """

    path_column: str
    convert: Callable
    value_columns: tuple[str, ...] = ()
    many: bool = False
    inline_column: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.path_column, *self.value_columns)


@dataclass(frozen=True)
class ModalitySpec:
    """One modality.

    Args:
        name: the modality key in batches, configs, loss pairs and logs.
        pipeline: its default input pipeline (a :class:`~probmed.data.inputs.ModalityInput` class; its
            constructor defaults are the default options, overridden by ``data.inputs.<name>``).
        view_of: the stored modality whose files it reads (``cxr_view2`` is a second view of ``cxr``); None for a
            modality with shard files of its own.
        build: how ``probmed data build`` writes it (None: not built from a manifest, e.g. a view).
        default: loaded when a data config names no modalities (and listed by :func:`default_modalities`); an opt-in
            modality (False, e.g. ``ct``: only ``probmed data synth --extra-modalities ct`` writes it) is known to
            the registry (files, pipeline) but loaded only where a config names it.
    """

    name: str
    pipeline: type[ModalityInput]
    view_of: str | None = None
    build: BuildSpec | None = None
    default: bool = True

    @property
    def files(self) -> tuple[str, ...]:
        """Glob patterns of its shard file names (from the default pipeline)."""
        return self.pipeline().files


#: Name → spec, in the fixed order used for logging and tables.
SPECS: dict[str, ModalitySpec] = {}


def register(new: ModalitySpec) -> ModalitySpec:
    """Add a modality (a name already registered is an error: two specs for one name would disagree)."""
    if new.name in SPECS:
        raise ValueError(f"modality {new.name!r} is already registered")
    if new.view_of is not None and new.view_of not in SPECS:
        raise ValueError(f"{new.name!r} is a view of {new.view_of!r}, which is not registered")
    SPECS[new.name] = new
    return new


register(ModalitySpec(
    "cxr", CXRInput,
    build=BuildSpec("cxr", converters.cxr_views, value_columns=("cxr_views",), many=True)))
register(ModalitySpec("ecg", ECGInput, build=BuildSpec("ecg", converters.ecg_record)))
register(ModalitySpec(
    "echo", EchoInput,
    build=BuildSpec("echo", converters.echo_cine, value_columns=("echo_fps",))))
register(ModalitySpec(
    "text", TextInput,
    build=BuildSpec("report", converters.report_text, value_columns=("report_text",), inline_column="report_text")))
register(ModalitySpec("ct", CTInput, default=False))
register(ModalitySpec("cxr_view2", CXRSecondViewInput, view_of="cxr"))
register(ModalitySpec("text_impression", ImpressionInput, view_of="text"))


def build_specs() -> list[ModalitySpec]:
    """The registered modalities ``probmed data build`` writes from a manifest, in table order."""
    return [s for s in SPECS.values() if s.build is not None]


def spec(name: str) -> ModalitySpec:
    """The spec of a registered modality, or a clear error listing the known ones."""
    if name not in SPECS:
        raise ValueError(f"unknown modality {name!r}{did_you_mean(name, SPECS)}; registered: {sorted(SPECS)} (a "
                         "modality the registry does not know needs its pipeline in the data config: "
                         f"data.inputs.{name}.class_path)")
    return SPECS[name]


def stored_modalities() -> tuple[str, ...]:
    """The registered modalities with shard files of their own (not views of another), in table order."""
    return tuple(name for name, s in SPECS.items() if s.view_of is None)


def default_modalities() -> tuple[str, ...]:
    """The stored modalities loaded when a config names none (the opt-in ones left out), in table order."""
    return tuple(name for name in stored_modalities() if SPECS[name].default)


def modality_of(file_name: str) -> str | None:
    """The stored modality a shard file belongs to (``"cxr.1.dcm"`` → ``"cxr"``), or None (metadata, unknown)."""
    for name in stored_modalities():
        if SPECS[name].pipeline().owns(file_name):
            return name
    return None


def default_input(name: str, **options) -> ModalityInput:
    """A registered modality's default pipeline, with ``options`` overriding its defaults."""
    return spec(name).pipeline(**options)


def check_names(names: list[str] | tuple[str, ...]) -> None:
    """Raise a clear error for a name listed twice."""
    if len(set(names)) != len(names):
        raise ValueError(f"modality listed twice in config: {list(names)}")
