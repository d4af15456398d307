"""Acquisition quality of the synthetic corpus: a per-study, per-modality ambiguity ``a ∈ [0, 1]`` and the
mechanisms that render it, plus borderline studies whose attributes sit at a clinical threshold.

Ambiguity is ground truth for evaluation only: it is written into each shard sample's JSON metadata
(``"ambiguity": {modality: a}``, ``"quality": {modality: {mechanism: strength}}``) and the model never reads it.

**Distribution** (per study and modality, independent, from the generator ``[seed, 12, study index, modality
code]``): a two-component mixture — with probability :data:`CLEAN_FRACTION` = 0.7 a *clean* study,
``a ~ U(0, CLEAN_MAX)`` with ``CLEAN_MAX`` = 0.05; otherwise a *tail* study,
``a = CLEAN_MAX + (1 − CLEAN_MAX) · Beta(1.2, 1.8)`` (mean ≈ 0.43, more mass at moderate than at extreme
degradation, reaching 1). So ≈ 70 % of studies have a < 0.05, ≈ 20 % have a > 0.4 and ≈ 6 % a > 0.7.

**Mechanisms.** Each mechanism's strength is ``a · U(0.5, 1)`` (drawn from the generator ``[seed, 13, study
index, modality code]``; the degradation's own noise from ``[seed, 16, study index, modality code]``, so the
anatomy, noise and draws of the underlying rendering are exactly those of the corpus without quality), so every
mechanism grows with ``a``:

* CXR (:func:`cxr_mechanisms`): a portable **AP** projection with probability clip((a − 0.2) / 0.5, 0, 1)
  (the heart, nearer the source, is magnified by 15 %: the apparent cardiothoracic ratio rises, so a normal heart
  can look enlarged); **rotation** (up to ±14° in-plane tilt); **low inspiration** (lungs up to 22 % shorter, the
  heart up to 10 % broader); **exposure** (signed: under-exposure washes the film out, over-exposure burns it
  dark; contrast compressed by up to 55 %, quantum noise up to 0.05); **motion blur** (a directional box blur up
  to 4 % of the image width). The geometric ones are applied inside :func:`~.cxr.render_cxr`, the photometric ones
  by :func:`degrade_cxr`.
* ECG (:func:`degrade_ecg`), the four noise columns of PTB-XL: **baseline drift** (sub-hertz sinusoids up to
  1.5 mV), **static noise** (band-limited Gaussian noise up to 0.2 mV rms), **burst noise** (1-4 bursts of
  0.3-1.5 s of up to 1.2 mV rms), **electrode problems** (with probability clip((a − 0.3) / 0.4, 0, 1): a flat
  lead — 1-3 leads replaced by a few µV of noise — or a limb-lead reversal, LA/RA swapped: I inverted, II↔III,
  aVR↔aVL).
* Echo (CAMUS good / medium / poor): **contrast loss** (the tissue-blood contrast blended away by up to 85 % and
  filled with clutter speckle that changes every frame), **wall dropout** (a wedge of up to 0.6 rad of the sector
  attenuated by up to 90 %), **foreshortening** (in :func:`~.echo.render_echo`: the LV drawn up to 30 % shorter and
  its apparent contraction damped by up to 70 %, so the apparent EF is wrong).
* Text (in :func:`~.report.make_report`): with probability clip((a − 0.5) / 0.35, 0, 1) a **terse** template
  report that names at most the first positive finding in a fixed order, word for word the same for many studies
  (``"No acute cardiopulmonary process."`` for every normal one); otherwise each finding topic is **hedged** with
  probability 0.8·a (a phrase shared by present and absent findings: "cannot be excluded", "possible", "difficult
  to assess"), and numbers and device descriptions are dropped with probability a.
* CT (when generated): low-dose noise (up to 60 HU rms) and motion blur.

**Borderline studies** (:func:`borderline_finding`): a fraction :data:`BORDERLINE_FRACTION` = 0.1 of studies
(generator ``[seed, 14, study index]``) gets one continuous attribute moved onto its clinical threshold —
cardiothoracic ratio 0.49-0.51 (cardiomegaly at 0.5), EF 48-52 % (reduced at 50 %), Sokolow-Lyon 3.4-3.6 mV
(LVH at 3.5 mV), heart rate 58.5-61.5 (bradycardia at 60) or 98.5-101.5 bpm (tachycardia at 100) — and that
finding's label becomes uncertain (-1) with a hedged ("borderline ...") report. The other studies keep the gap.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from probmed.data.synthetic.seeds import MODALITY_CODE

CLEAN_FRACTION = 0.7
CLEAN_MAX = 0.05
TAIL_BETA = (1.2, 1.8)
BORDERLINE_FRACTION = 0.1
#: The borderline attribute of each finding: (attribute, low, high) of the window around its threshold.
BORDERLINE_WINDOWS: dict[str, tuple[str, float, float]] = {
    "cardiomegaly": ("ctr", 0.49, 0.51),
    "reduced_ef": ("ef", 48.0, 52.0),
    "lvh": ("sokolow_lyon_mv", 3.4, 3.6),
    "bradycardia": ("heart_rate", 58.5, 61.5),
    "tachycardia": ("heart_rate", 98.5, 101.5),
}


def draw_ambiguity(seed: int, index: int, modality: str) -> float:
    """The ambiguity of one study's modality (the documented mixture), rounded to 4 decimals."""
    rng = np.random.default_rng([int(seed), 12, int(index), MODALITY_CODE[modality]])
    if rng.random() < CLEAN_FRACTION:
        a = CLEAN_MAX * rng.random()
    else:
        a = CLEAN_MAX + (1.0 - CLEAN_MAX) * rng.beta(*TAIL_BETA)
    return round(float(a), 4)


def quality_rng(seed: int, index: int, modality: str) -> np.random.Generator:
    """The generator of one study's quality mechanisms and degradation noise."""
    return np.random.default_rng([int(seed), 13, int(index), MODALITY_CODE[modality]])


def noise_rng(seed: int, index: int, modality: str) -> np.random.Generator:
    """The generator of the noise a degradation adds to one study's modality."""
    return np.random.default_rng([int(seed), 16, int(index), MODALITY_CODE[modality]])


def _strength(rng: np.random.Generator, a: float) -> float:
    return round(float(a * rng.uniform(0.5, 1.0)), 4)


def _ramp(a: float, start: float, width: float) -> float:
    return float(np.clip((a - start) / width, 0.0, 1.0))


def cxr_mechanisms(rng: np.random.Generator, a: float) -> dict[str, Any]:
    """Strengths in [0, 1] (exposure signed in [-1, 1]) and the projection of a film of ambiguity ``a``."""
    return {
        "projection": "AP" if rng.random() < _ramp(a, 0.2, 0.5) else "PA",
        "rotation": _strength(rng, a) * (1.0 if rng.random() < 0.5 else -1.0),
        "inspiration": _strength(rng, a),
        "exposure": _strength(rng, a) * (1.0 if rng.random() < 0.5 else -1.0),
        "motion_blur": _strength(rng, a),
        "blur_angle": round(float(rng.uniform(0.0, np.pi)), 4),
    }


def ecg_mechanisms(rng: np.random.Generator, a: float) -> dict[str, Any]:
    """The four PTB-XL noise mechanisms' strengths and the electrode problem (``none``, ``flat``, ``swap``)."""
    out = {k: _strength(rng, a) for k in ("baseline_drift", "static_noise", "burst_noise")}
    problem = "none"
    if rng.random() < _ramp(a, 0.3, 0.4):
        problem = "flat" if rng.random() < 0.5 else "swap"
    return out | {"electrodes": problem}


def echo_mechanisms(rng: np.random.Generator, a: float) -> dict[str, Any]:
    return {k: _strength(rng, a) for k in ("contrast_loss", "wall_dropout", "foreshortening")}


def text_mechanisms(rng: np.random.Generator, a: float) -> dict[str, Any]:
    """``terse`` (a template report) and ``hedge`` (per-topic hedging probability)."""
    return {"terse": bool(rng.random() < _ramp(a, 0.5, 0.35)), "hedge": round(0.8 * a, 4),
            "drop_details": round(float(a), 4)}


def ct_mechanisms(rng: np.random.Generator, a: float) -> dict[str, Any]:
    return {"low_dose": _strength(rng, a), "motion_blur": _strength(rng, a),
            "blur_angle": round(float(rng.uniform(0.0, np.pi)), 4)}


MECHANISMS = {"cxr": cxr_mechanisms, "ecg": ecg_mechanisms, "echo": echo_mechanisms, "text": text_mechanisms,
              "ct": ct_mechanisms}


def study_quality(seed: int, index: int, modalities) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """``(ambiguity, mechanisms)`` of one study, for each of ``modalities`` (those it has)."""
    amb = {m: draw_ambiguity(seed, index, m) for m in modalities}
    mech = {m: MECHANISMS[m](quality_rng(seed, index, m), amb[m]) for m in modalities}
    return amb, mech


def borderline_finding(seed: int, index: int, findings: dict[str, int]) -> str | None:
    """The finding a borderline study sits on (or None for the 90 % that keep the gap)."""
    rng = np.random.default_rng([int(seed), 14, int(index)])
    if rng.random() >= BORDERLINE_FRACTION:
        return None
    options = ["cardiomegaly", "reduced_ef", "lvh"]
    if findings["bradycardia"]:
        options.append("bradycardia")
    elif findings["tachycardia"]:
        options.append("tachycardia")
    else:
        options += ["bradycardia", "tachycardia"]
    return options[int(rng.integers(len(options)))]


def place_on_threshold(seed: int, index: int, finding: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` with the finding's attribute drawn uniformly inside its :data:`BORDERLINE_WINDOWS` window."""
    name, lo, hi = BORDERLINE_WINDOWS[finding]
    value = np.random.default_rng([int(seed), 15, int(index)]).uniform(lo, hi)
    return dict(attrs) | {name: round(float(value), 3 if name in ("ctr", "sokolow_lyon_mv") else 1)}


# --------------------------------------------------------------------------------------------------------
# rendering the photometric / signal mechanisms (the geometric ones live in the modality renderers)
# --------------------------------------------------------------------------------------------------------
def _directional_blur(img: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Box blur of ``length`` pixels along ``angle`` (radians) of a 2-D image (or the last two axes)."""
    n = int(round(length))
    if n < 2:
        return img
    k = np.zeros((n, n), np.float32)
    c = (n - 1) / 2.0
    t = np.linspace(-c, c, 4 * n)
    rows = np.clip(np.round(c + t * np.sin(angle)).astype(int), 0, n - 1)
    cols = np.clip(np.round(c + t * np.cos(angle)).astype(int), 0, n - 1)
    k[rows, cols] = 1.0
    k /= k.sum()
    if img.ndim == 3:
        k = k[None]
    return ndimage.convolve(img, k, mode="nearest")


def degrade_cxr(density: np.ndarray, rng: np.random.Generator, mech: dict[str, Any]) -> np.ndarray:
    """Exposure error, extra quantum noise and motion blur of one view: ``float32 [S, S]`` density in [0, 1]."""
    size = density.shape[-1]
    e = float(mech["exposure"])
    img = density.astype(np.float32)
    if mech["motion_blur"] > 0:
        img = _directional_blur(img, 0.04 * size * float(mech["motion_blur"]), float(mech["blur_angle"]))
    if e != 0.0:
        mid = 0.5 + 0.3 * e  # under-exposed (e > 0): washed out towards white; over-exposed: burnt dark
        img = mid + (img - mid) * (1.0 - 0.55 * abs(e))
        img = img + np.float32(0.05 * abs(e)) * rng.standard_normal(size=img.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


#: Limb-lead reversal LA/RA in :data:`~probmed.data.schema.ECG_LEADS` order (I, II, III, aVR, aVL, aVF, V1-V6):
#: I → −I, II ↔ III, aVR ↔ aVL.
_LA_RA_SWAP = (0, 2, 1, 4, 3, 5, 6, 7, 8, 9, 10, 11)


def degrade_ecg(signal: np.ndarray, rng: np.random.Generator, mech: dict[str, Any], fs: float) -> np.ndarray:
    """The PTB-XL noise mechanisms on one record: ``int16 [12, L]`` µV in, ``int16 [12, L]`` µV out."""
    x = signal.astype(np.float64)
    leads, n = x.shape
    t = np.arange(n) / float(fs)
    drift = float(mech["baseline_drift"])
    if drift > 0:
        freqs = rng.uniform(0.05, 0.5, size=(leads, 2))
        phases = rng.uniform(0, 2 * np.pi, size=(leads, 2))
        amps = rng.uniform(0.4, 1.0, size=(leads, 2)) * 1500.0 * drift / 2
        x += (amps[..., None] * np.sin(2 * np.pi * freqs[..., None] * t + phases[..., None])).sum(1)
    static = float(mech["static_noise"])
    if static > 0:
        noise = ndimage.uniform_filter1d(rng.standard_normal((leads, n)), 2, axis=1)
        x += 200.0 * static * noise / noise.std()
    burst = float(mech["burst_noise"])
    if burst > 0.05:
        for _ in range(1 + int(rng.integers(int(1 + 3 * burst)))):
            length = int(rng.uniform(0.3, 1.5) * fs)
            start = int(rng.integers(max(1, n - length)))
            hit = rng.random(leads) < 0.7
            x[hit, start:start + length] += 1200.0 * burst * rng.standard_normal((int(hit.sum()), min(length, n - start)))
    if mech["electrodes"] == "flat":
        flat = rng.choice(leads, size=int(rng.integers(1, 4)), replace=False)
        x[flat] = 5.0 * rng.standard_normal((len(flat), n))
    elif mech["electrodes"] == "swap":
        x = x[list(_LA_RA_SWAP)]
        x[0] = -x[0]
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def degrade_echo(cine: np.ndarray, rng: np.random.Generator, mech: dict[str, Any]) -> np.ndarray:
    """Contrast loss (clutter filling the blood pool) and wall dropout: ``uint8 [T, S, S]`` in and out."""
    from probmed.data.synthetic.echo import APEX_DEPTH, SECTOR_HALF_ANGLE, _geometry

    frames, size, _ = cine.shape
    img = cine.astype(np.float32)
    U, W, R, sector = _geometry(size)
    c = float(mech["contrast_loss"])
    if c > 0:
        mean = float(img[:, sector > 0.5].mean()) if (sector > 0.5).any() else 0.0
        clutter = np.sqrt(2.0 * rng.standard_exponential(size=img.shape, dtype=np.float32))
        clutter = ndimage.uniform_filter(clutter, size=(1, 2, 2)) / 1.25
        img = img * (1.0 - 0.85 * c) + 0.85 * c * mean * clutter * sector[None]
    d = float(mech["wall_dropout"])
    if d > 0.05:
        th = np.arctan2(U, W - APEX_DEPTH)
        centre = rng.uniform(-0.5, 0.7) * SECTOR_HALF_ANGLE  # the lateral (image right) wall more often
        half = 0.3 * d
        wedge = np.clip(1.0 - np.abs(th - centre) / max(half, 1e-6), 0.0, 1.0) ** 0.5
        img = img * (1.0 - 0.9 * d * wedge)[None]
    return np.clip(img, 0.0, 255.0).astype(np.uint8)


def degrade_ct(hu: np.ndarray, rng: np.random.Generator, mech: dict[str, Any]) -> np.ndarray:
    """Low-dose noise and motion blur of one slice: ``float32 [S, S]`` Hounsfield units in and out."""
    size = hu.shape[-1]
    out = hu.astype(np.float32)
    if mech["motion_blur"] > 0:
        out = _directional_blur(out, 0.04 * size * float(mech["motion_blur"]), float(mech["blur_angle"]))
    if mech["low_dose"] > 0:
        out = out + np.float32(60.0 * float(mech["low_dose"])) * rng.standard_normal(size=out.shape,
                                                                                   dtype=np.float32)
    return np.clip(out, -1024.0, 3071.0).astype(np.float32)
