"""Text burned into radiograph and ultrasound pixels (names, ids, dates), found by OCR that runs offline and blanked
or refused at ``probmed data build``, whatever the header's ``BurnedInAnnotation`` says (issue 28).

The engine is Tesseract (Debian ``tesseract-ocr`` + ``tesseract-ocr-eng``: a system binary with its English model on
disk, run as a subprocess with no network and no Python binding). EasyOCR was not taken: its detection and
recognition weights are downloaded at first use, and no PyPI package ships them.

What is looked at (:func:`find_text`):

* an image (a radiograph ``[H, W]``, or the sampled frames of a cine: their per-pixel minimum and maximum, where
  static text stays and moving speckle does not) is resampled so its
  longer side is :data:`OCR_SIDE` pixels (the cost per image is bounded, whatever the film's size; a small image is
  enlarged at most :data:`MAX_UPSCALE` times);
* the page Tesseract reads is the image's white and black top-hats (the image minus its grey opening, its grey
  closing minus the image, over :data:`STROKE_PX`), one under the other: strokes thinner than that — text, of
  either polarity — stay, while the anatomy, the collimation edges and the exposure gradient, which are wider,
  go (a 3 × 3 median first takes ultrasound speckle off). Differences under :data:`MIN_CONTRAST` grey levels (of
  255) are noise and are dropped, so a clean film is a blank page: text fainter than that is not found;
* a word counts when Tesseract's confidence is at least :data:`MIN_CONFIDENCE`, it holds at least
  :data:`MIN_LETTERS` letters or digits and is at least :data:`MIN_HEIGHT_PX` high on the page, unless it is a
  positioning marker of :data:`TECHNICAL_WORDS` (``PORTABLE``, ``SUPINE`` ...); the words on the same line as one
  that counts are blanked with it, whatever their confidence.

What is done (``--burned-in-text``, :data:`POLICIES`): ``blank`` (default) fills each word's box, padded, with the
median of the pixels around it (the local background) in every frame, then reads the page again and blanks what is
found there too (:data:`PASSES` reads in all); text still found after that refuses the view or cine.
``refuse`` refuses a view or cine on the first word. ``off`` reads nothing (a build without the engine).
A view whose text was blanked is stored as a 16-bit PNG of its blanked pixels (the source DICOM's pixel data is not
rewritten in its own transfer syntax). A refusal is the counted cause ``<modality>_burned_in_text``; a blanking is the note
``<modality>_burned_in_text_blanked``. A failure of the engine (exit status, :data:`OCR_TIMEOUT_S`) refuses the
input as ``<modality>_ocr_failed``: de-identification fails closed.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

#: What the builder does with burned-in text: blank it, refuse the input, or not look (no OCR engine).
POLICIES: tuple[str, ...] = ("blank", "refuse", "off")
#: Longer side (pixels) of the page Tesseract reads: a 4300 × 3500 film is shrunk to it, a 600 × 800 echo frame is
#: enlarged to it (a few hundred ms of OCR per page on one core, whatever the input's size).
OCR_SIDE = 1280
#: At most this enlargement: a tiny image (a 64 px test film) is read at 4× (its 6 px glyphs at 24 px), not at
#: :data:`OCR_SIDE`.
MAX_UPSCALE = 4.0
#: Width (page pixels) of the top-hat's structuring element: strokes of text up to ~1/10 of a 1280 px page's
#: height (letters up to ~100 px at the page's scale) pass, wider structures do not.
STROKE_PX = 15
#: Grey levels (of 255) a stroke must stand out from its surroundings by (the synthetic films' quantum noise reaches
#: ~12 after the top-hat).
MIN_CONTRAST = 24
#: Darkness on the page per grey level of contrast (a stroke of :data:`MIN_CONTRAST` is ~40 % grey, one of 64 black).
GAIN = 4
#: Tesseract's word confidence (0-100) from which a word counts (junk read from edges scores below ~55).
MIN_CONFIDENCE = 65
#: Letters or digits a word must hold to count (names, ids and dates have more; speckle reads as two-letter words).
MIN_LETTERS = 3
#: Height (page pixels) a word's box must have to count: glyphs of at least ~40 px on a 4300 px film, ~10 px on a
#: 600 × 800 echo frame (smaller junk is read from ultrasound speckle at up to 89 % confidence).
MIN_HEIGHT_PX = 12
#: Words printed by X-ray and ultrasound devices that identify no one: not counted, not blanked.
TECHNICAL_WORDS: frozenset[str] = frozenset({
    "PA", "AP", "LAT", "LATERAL", "PORTABLE", "SUPINE", "UPRIGHT", "ERECT", "SEMI", "SEMIERECT", "SITTING",
    "STANDING", "DECUBITUS", "DECUB", "INSP", "EXP", "LEFT", "RIGHT", "FRONTAL", "CHEST", "BED", "TRAUMA",
})
#: Reads of one image under ``blank``: the first, then one after each blanking.
PASSES = 3
#: Seconds one Tesseract run may take before the input is refused (``<modality>_ocr_failed``).
OCR_TIMEOUT_S = 120.0
#: Box padding, as a fraction of the word's height, on each side.
PAD = 0.35

_ALNUM = re.compile(r"[A-Za-z0-9]")


class OCRUnavailable(RuntimeError):
    """The OCR engine is not installed while the build was asked to look for burned-in text."""


@dataclass(frozen=True)
class Word:
    """One word Tesseract read: its text, confidence (0-100) and box ``(x0, y0, x1, y1)`` (exclusive ends) in the
    input image's pixels (for a cine: in one frame's)."""

    text: str
    confidence: float
    box: tuple[int, int, int, int]


def engine() -> str | None:
    """The Tesseract executable when it and its English model are installed (looked up on ``$PATH``), else None."""
    return _engine_on(os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=8)
def _engine_on(search_path: str) -> str | None:
    path = shutil.which("tesseract", path=search_path)
    if path is None:
        return None
    try:
        langs = subprocess.run([path, "--list-langs"], capture_output=True, text=True, timeout=OCR_TIMEOUT_S,
                               env=_engine_env())
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "eng" in langs.stdout.split() else None


def default_policy() -> str:
    """The policy when none is given: ``$PROBMED_BURNED_IN_TEXT`` if set (e.g. ``off`` on a machine without
    Tesseract, said once for every build), else ``blank``."""
    return os.environ.get("PROBMED_BURNED_IN_TEXT", "blank")


def require_engine(policy: str) -> None:
    """Raise :class:`OCRUnavailable` (with how to install it) when ``policy`` reads pixels and no engine is there."""
    if policy not in POLICIES:
        raise ValueError(f"burned-in text policy must be one of {POLICIES}, got {policy!r}")
    if policy != "off" and engine() is None:
        raise OCRUnavailable("burned-in text detection needs Tesseract with its English model "
                             "(Debian: apt-get install tesseract-ocr tesseract-ocr-eng); to build without looking "
                             "for text in the pixels, pass --burned-in-text off")


def _engine_env() -> dict[str, str]:
    """Tesseract's environment: the path, its model directory when set, one thread; nothing else (no secret)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_THREAD_LIMIT": "1"}
    if "TESSDATA_PREFIX" in os.environ:
        env["TESSDATA_PREFIX"] = os.environ["TESSDATA_PREFIX"]
    return env


def _page(frames: np.ndarray) -> tuple[np.ndarray, float]:
    """The page Tesseract reads for ``frames`` (``uint8 [n, H, W]``), resampled to a longer side of
    :data:`OCR_SIDE`: the white top-hat of the frames' per-pixel minimum (bright text: static, it stays in the
    minimum while moving speckle drops out) above the black top-hat of their maximum (dark text), each as dark strokes
    on white (the two polarities kept apart: together, the gaps between bright letters read as dark strokes).
    Returns ``(page uint8 [2 h, w], scale page pixels per input pixel)``."""
    from PIL import Image
    from scipy import ndimage

    height, width = frames.shape[1:]
    scale = min(OCR_SIDE / max(height, width), MAX_UPSCALE)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))

    def grey(image: np.ndarray) -> np.ndarray:  # resampled, speckle off (strokes of 3+ page pixels stay)
        return ndimage.median_filter(np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), np.int16), size=3)

    low, high = grey(frames.min(axis=0)), grey(frames.max(axis=0))
    white = low - ndimage.grey_opening(low, size=(STROKE_PX, STROKE_PX))
    black = ndimage.grey_closing(high, size=(STROKE_PX, STROKE_PX)) - high
    pages = []
    for strokes in (white, black):
        strokes[strokes < MIN_CONTRAST] = 0
        pages.append(255 - np.clip(strokes * GAIN, 0, 255).astype(np.uint8))
    return np.concatenate(pages, axis=0), scale


def _tesseract(page: np.ndarray, modality: str) -> list[tuple[str, float, tuple[int, int, int, int]]]:
    """Run Tesseract (sparse text, English) on a grey page; ``(text, confidence, page box)`` of every word."""
    import io

    from PIL import Image

    from probmed.data.readers.errors import UnreadableInput

    path = engine()
    if path is None:
        raise OCRUnavailable("Tesseract disappeared during the build")
    buffer = io.BytesIO()
    Image.fromarray(page).save(buffer, format="PNG")
    try:
        done = subprocess.run([path, "stdin", "stdout", "-l", "eng", "--psm", "11", "tsv"], input=buffer.getvalue(),
                              capture_output=True, timeout=OCR_TIMEOUT_S, env=_engine_env())
    except subprocess.TimeoutExpired as exc:
        raise UnreadableInput(f"{modality}_ocr_failed", f"Tesseract ran past {OCR_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        raise UnreadableInput(f"{modality}_ocr_failed", done.stderr.decode("utf-8", "replace")[-300:])
    words = []
    for line in done.stdout.decode("utf-8", "replace").splitlines()[1:]:
        cells = line.split("\t")
        if len(cells) == 12 and cells[11].strip():
            left, top, w, h = (int(c) for c in cells[6:10])
            words.append((cells[11].strip(), float(cells[10]), (left, top, left + w, top + h)))
    return words


def counts_as_text(text: str, confidence: float, height: int) -> bool:
    """Whether a word read by Tesseract (its box ``height`` page pixels) is burned-in text to act on: see
    :data:`MIN_CONFIDENCE`, :data:`MIN_LETTERS`, :data:`MIN_HEIGHT_PX`, :data:`TECHNICAL_WORDS`."""
    letters = "".join(_ALNUM.findall(text))
    return (confidence >= MIN_CONFIDENCE and len(letters) >= MIN_LETTERS and height >= MIN_HEIGHT_PX
            and letters.upper() not in TECHNICAL_WORDS)


def _same_line(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two page boxes are neighbours on one line of text: they overlap vertically by half the smaller
    height and lie at most 1.5 heights apart horizontally."""
    height = min(a[3] - a[1], b[3] - b[1])
    overlap = min(a[3], b[3]) - max(a[1], b[1])
    gap = max(a[0], b[0]) - min(a[2], b[2])
    return height > 0 and overlap >= 0.5 * height and gap <= 1.5 * max(a[3] - a[1], b[3] - b[1])


def _with_line_neighbours(words: list[tuple[str, float, tuple]], counted: list[int]) -> list[int]:
    """``counted`` grown by every word read on the same line as a counted one (transitively), whatever its
    confidence: a name read as ``JOHN`` (96) beside ``PUBL1C`` (40) is blanked whole."""
    chosen, todo = set(counted), list(counted)
    while todo:
        box = words[todo.pop()][2]
        for index, (_, _, other) in enumerate(words):
            if index not in chosen and _same_line(box, other):
                chosen.add(index)
                todo.append(index)
    return sorted(chosen)


def find_text(frames: np.ndarray, modality: str = "cxr") -> list[Word]:
    """The words of burned-in text in ``frames`` (``[n, H, W]`` or one image ``[H, W]``: ``uint8`` grey levels, or
    floats in [0, 1]), boxes in a frame's pixels (a word found in any frame has its box in every frame). Words that
    do not count themselves (:func:`counts_as_text`) but sit on the line of one that does are included."""
    frames = frames[None] if frames.ndim == 2 else frames
    if frames.dtype != np.uint8:
        frames = np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
    page, scale = _page(np.ascontiguousarray(frames, dtype=np.uint8))
    frame_h = page.shape[0] // 2  # two polarities, one above the other
    height, width = frames.shape[1:]
    words = _tesseract(page, modality)
    counted = [i for i, (text, confidence, box) in enumerate(words)
               if counts_as_text(text, confidence, box[3] - box[1])]
    found = []
    for index in _with_line_neighbours(words, counted):
        text, confidence, (x0, y0, x1, y1) = words[index]
        top = (y0 // frame_h) * frame_h  # the polarity's half of the page
        box = (int(x0 / scale), int((y0 - top) / scale), int(np.ceil(x1 / scale)), int(np.ceil((y1 - top) / scale)))
        found.append(Word(text, confidence, (max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3]))))
    return found


def blank_words(frames: np.ndarray, words: list[Word]) -> None:
    """Fill each word's box, padded by :data:`PAD` of its height, with the median of a ring of the same width
    around it, per frame (in place; ``frames`` ``[n, H, W]`` or ``[H, W]``, any dtype)."""
    frames = frames[None] if frames.ndim == 2 else frames
    height, width = frames.shape[1:]
    for word in words:
        x0, y0, x1, y1 = word.box
        pad = max(2, int(round(PAD * (y1 - y0))))
        inner = (slice(max(0, y0 - pad), min(height, y1 + pad)), slice(max(0, x0 - pad), min(width, x1 + pad)))
        outer = (slice(max(0, y0 - 2 * pad), min(height, y1 + 2 * pad)),
                 slice(max(0, x0 - 2 * pad), min(width, x1 + 2 * pad)))
        ring = np.ones((outer[0].stop - outer[0].start, outer[1].stop - outer[1].start), dtype=bool)
        ring[inner[0].start - outer[0].start : inner[0].stop - outer[0].start,
             inner[1].start - outer[1].start : inner[1].stop - outer[1].start] = False
        for frame in frames:
            around = frame[outer][ring]
            frame[inner] = np.median(around) if around.size else 0


def remove_burned_in_text(frames: np.ndarray, policy: str, modality: str, name: str,
                          sample: np.ndarray | None = None) -> int:
    """Apply ``policy`` to ``frames`` (``[n, H, W]`` or ``[H, W]``, ``uint8`` or floats in [0, 1]; blanked in place,
    every frame); OCR reads the frames of index ``sample`` (all when None). Returns the number of words blanked (0:
    none found, or ``off``); ``name`` (a file name) only labels a refusal, which never quotes the text read.

    Raises:
        UnreadableInput: ``<modality>_burned_in_text`` (``refuse``, or text left after :data:`PASSES` reads),
            ``<modality>_ocr_failed``.
    """
    from probmed.data.readers.errors import UnreadableInput

    if policy == "off":
        return 0
    stack = frames[None] if frames.ndim == 2 else frames
    blanked = 0
    for attempt in range(PASSES):
        words = find_text(stack if sample is None else stack[sample], modality)
        if not words:
            return blanked
        if policy == "refuse" or attempt == PASSES - 1:
            shown = " ".join(sorted({"#" * len(w.text) for w in words}))  # lengths only: never the text itself
            raise UnreadableInput(f"{modality}_burned_in_text",
                                  f"{name}: {len(words)} word(s) of burned-in text ({shown}), policy {policy}")
        blank_words(stack, words)
        blanked += len(words)
    return blanked
