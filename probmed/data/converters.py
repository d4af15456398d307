"""``probmed data build``'s per-modality conversions: a manifest row's source files → the modality's shard files.

Each converter is ``convert(entry, ctx) → (files {shard file name: bytes}, meta {key: value})`` and raises
:class:`~probmed.data.readers.UnreadableInput` for an unusable source (the builder counts it and goes on). The
registry (:mod:`probmed.data.registry`) names which converter builds which modality from which manifest column.
"""
from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from probmed.data import schema
from probmed.data.burned_in_text import remove_burned_in_text
from probmed.data.deid import (
    Pseudonymizer, blank_outside, deidentify_dicom, scrub_identifier_forms, scrub_text, strip_image_metadata,
    study_identifiers,
)
from probmed.data.readers.cxr import CXR_READERS, read_cxr
from probmed.data.readers.ecg_sources import read_ecg_source, standardize_ecg
from probmed.data.readers.echo_sources import echo_header, read_echo_source
from probmed.data.readers.errors import UnreadableInput
from probmed.data.readers.text import plain_report
from probmed.data.limits import check_dicom_image_header, check_raster_header, dicom_header, image_inflated_bytes
from probmed.data.safe_paths import read_checked

INT16_MAX_UV = 32767


@dataclass
class BuildContext:
    """What a converter may use besides the row: the study's pseudonyms, the build options, and where to count.

    ``attempt(modality, fn)`` runs one part of a conversion (e.g. one radiograph view) and records its failure as a
    skipped input instead of failing the whole modality; ``notes`` counts remarks (``ecg_clipped``, ...).
    """

    key: str
    patient: str
    pseudo: Pseudonymizer
    opts: Any
    notes: Counter
    attempt: Callable[[str, Callable], Any]


# -- chest X-ray views ------------------------------------------------------------------------------------------------
def _cxr_view(path: Path, ctx: BuildContext):
    """One radiograph → ``(stored extension, de-identified bytes, header view)``; decoded once to check it and to
    look for burned-in text (``--burned-in-text``: a view whose text was blanked is stored as a 16-bit PNG of the
    blanked pixels, :func:`downsized_png`)."""
    ext = path.suffix.lower().lstrip(".")
    ext = "jpg" if ext == "jpeg" else ext
    if ext not in CXR_READERS:
        raise UnreadableInput("cxr_unknown_format", f"{path.name}: no CXR reader for .{ext}")
    limits = ctx.opts.limits
    data = read_checked(path, limits.file_bytes, "cxr")
    if ext == "dcm":  # the declared size, from the header alone, before anything is decoded
        check_dicom_image_header(dicom_header(data, "cxr_corrupt_dicom", image_inflated_bytes(limits)), "cxr", limits)
    else:
        check_raster_header(data, "cxr", limits)
    if ext == "dcm":
        data, report = deidentify_dicom(data, ctx.pseudo, ctx.patient)
        if report.burned_in_annotation:
            ctx.notes["cxr_burned_in_annotation"] += 1
            if ctx.opts.drop_burned_in:
                raise UnreadableInput("cxr_burned_in_annotation", f"{path.name} declares burned-in text")
    else:
        data = strip_image_metadata(data, ext)
    image, header_view = read_cxr(f"view.{ext}", data, limits=limits)
    if ctx.opts.burned_in_text != "off":  # whatever BurnedInAnnotation says (probmed.data.burned_in_text)
        image = np.array(image, dtype=np.float32)
        if remove_burned_in_text(image, ctx.opts.burned_in_text, "cxr", path.name):
            ctx.notes["cxr_burned_in_text_blanked"] += 1  # the blanked pixels replace the source's, as a PNG
            return "png", downsized_png(image, min(max(image.shape), ctx.opts.cxr_size or max(image.shape))), \
                header_view
    if ctx.opts.cxr_size and max(image.shape) > ctx.opts.cxr_size:
        return "png", downsized_png(image, ctx.opts.cxr_size), header_view
    return ext, data, header_view


def downsized_png(image: np.ndarray, max_side: int) -> bytes:
    """A decoded radiograph (``float32 [H, W]`` in [0, 1], LUTs applied, MONOCHROME1 already inverted) shrunk so its
    longer side is ``max_side`` (anti-aliased, aspect kept), as a lossless 16-bit grey PNG."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    scale = max_side / max(image.shape)
    size = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    small = F.interpolate(torch.from_numpy(image)[None, None], size=size, mode="bilinear", antialias=True,
                          align_corners=False)[0, 0].clamp(0, 1).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.rint(small * 65535).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def cxr_views(entry, ctx: BuildContext) -> tuple[dict[str, bytes], dict]:
    """The readable views as ``cxr.<i>.<ext>`` (renumbered over the readable ones) and ``meta["cxr_views"]``
    (the manifest's ``cxr_views`` column, else each header's ViewPosition); an unreadable view is skipped alone."""
    files, views = {}, []
    given = entry.values_of("cxr_views")
    for position, path in enumerate(entry.paths.get("cxr", [])):
        got = ctx.attempt("cxr", lambda path=path: _cxr_view(path, ctx))
        if got is not None:
            ext, data, header_view = got
            files[f"{schema.CXR_PREFIX}{len(files)}.{ext}"] = data
            views.append(given[position] if position < len(given) else header_view)
    return files, ({"cxr_views": views} if files else {})


# -- ECG, echo, report ----------------------------------------------------------------------------------------------
def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def ecg_record(entry, ctx: BuildContext) -> tuple[dict[str, bytes], dict]:
    """DICOM / WFDB / MUSE XML → standard 12-lead order, optional resampling and cleaning → ``ecg.npy`` (int16 µV)
    with the lead mask in ``meta["ecg_lead_mask"]``."""
    opts = ctx.opts
    (source,) = entry.paths["ecg"]
    record = read_ecg_source(source, opts.limits)
    signal, mask, rate = standardize_ecg(record, schema.ECG_LEADS, opts.ecg_rate, opts.ecg_clean)
    microvolts = np.rint(signal * 1000.0)
    if np.abs(microvolts).max() > INT16_MAX_UV:
        ctx.notes["ecg_clipped"] += 1
    if not mask.all():
        ctx.notes["ecg_missing_leads"] += 1
    meta = {"ecg_leads": list(schema.ECG_LEADS), "ecg_sampling_rate": rate,
            "ecg_lead_mask": [int(m) for m in mask]}
    return {schema.ECG_EXT: _npy(np.clip(microvolts, -INT16_MAX_UV, INT16_MAX_UV).astype(np.int16))}, meta


def echo_cine(entry, ctx: BuildContext) -> tuple[dict[str, bytes], dict]:
    """Multi-frame DICOM / AVI / MP4 → grey ``uint8 [frames, size, size]`` ``echo.npy`` (aspect kept: padded or
    centre-cropped by ``--fit``), blanked outside its sector and of burned-in text inside it (OCR of the first,
    middle and last frames, :mod:`probmed.data.burned_in_text`), at its own frame rate
    (``meta["echo_fps"]``: the file's, else the manifest's ``echo_fps``, else ``--echo-fps``)."""
    import torch

    from probmed.data.inputs import fit_square

    (source,) = entry.paths["echo"]
    cine, fps = read_echo_source(source, ctx.opts.limits)
    cine = _without_burned_in_text(cine, echo_header(source), source.name, ctx)
    sample = np.unique([0, len(cine) // 2, len(cine) - 1])  # OCR reads the first, middle and last frames
    if remove_burned_in_text(cine, ctx.opts.burned_in_text, "echo", source.name, sample):
        ctx.notes["echo_burned_in_text_blanked"] += 1  # text inside the sector, blanked in every frame
    given = entry.values_of("echo_fps")
    fps = fps or (float(given[0]) if given else None) or ctx.opts.echo_fps
    if not fps:
        raise UnreadableInput("echo_no_frame_rate", f"{source.name}: no frame rate in the file, manifest "
                                                    "(echo_fps) or --echo-fps")
    if ctx.opts.echo_size:
        resized = fit_square(torch.from_numpy(cine).float(), ctx.opts.echo_size, ctx.opts.fit)
        cine = resized.round().clamp(0, 255).to(torch.uint8).numpy()
    return {schema.ECHO_EXT: _npy(np.ascontiguousarray(cine, dtype=np.uint8))}, {"echo_fps": float(fps)}


def _without_burned_in_text(cine: np.ndarray, header: dict, name: str, ctx: BuildContext) -> np.ndarray:
    """Blank the cine outside its imaging area (``--us-blank``, :func:`~probmed.data.deid.blank_outside`); a cine
    whose header says BurnedInAnnotation YES is refused unless it was blanked by its sector or region geometry or
    the user opted in (``--keep-burned-in``)."""
    cine = np.array(cine, copy=True)
    kept = blank_outside(cine, ctx.opts.us_blank, header["regions"])
    if kept is None:
        ctx.notes["echo_sector_not_found"] += 1
    declared = header["burned_in"] == "YES"
    if declared and not ctx.opts.keep_burned_in and (kept is None or ctx.opts.us_blank != "sector"):
        raise UnreadableInput("echo_burned_in_annotation", f"{name} declares burned-in text and was not blanked by "
                                                           "its imaging sector (--us-blank sector, --keep-burned-in)")
    if declared:
        ctx.notes["echo_burned_in_annotation"] += 1
    return cine


def report_text(entry, ctx: BuildContext) -> tuple[dict[str, bytes], dict]:
    """A UTF-8 report file, or the row's inline ``report_text`` when it has no file → ``report.txt``; an HL7 CDA
    document becomes its narrative, other markup (HTML, XML) is refused (:func:`~probmed.data.readers.text.plain_report`).
    Every identifying value the builder knows for the study (:func:`~probmed.data.deid.study_identifiers`: its
    ids, and the names, dates, ids and UIDs in its DICOM headers and ECG XML) is replaced by ``___``, and so is every
    identifier form of :data:`~probmed.data.deid.IDENTIFIER_PATTERNS` (dates, phones, ids, addresses, titled names)."""
    paths = entry.paths.get("report", [])
    try:
        raw = (read_checked(paths[0], ctx.opts.limits.report_bytes, "text").decode("utf-8") if paths
               else "".join(entry.values_of("report_text")))
    except UnicodeDecodeError as exc:
        raise UnreadableInput("text_not_utf8", str(exc)) from exc
    text, scrubbed = scrub_text(plain_report(raw), study_identifiers(entry))
    text, forms = scrub_identifier_forms(text)  # dates, phones, ids, addresses, titled names the build does not know
    if scrubbed:
        ctx.notes["report_identifiers_scrubbed"] += scrubbed
    if forms:
        ctx.notes["report_identifier_forms_scrubbed"] += forms
    if not text.strip():
        raise UnreadableInput("text_empty", "empty report")
    return {schema.REPORT_EXT: text.encode("utf-8")}, {}
