"""Synthetic echocardiogram cine: an apical-four-chamber-like sector with a beating left ventricle.

Geometry (depth increases downwards, apex of the ultrasound sector at the top): the LV is an ellipse whose apex
sits near the transducer and whose long axis points down the image (slightly tilted per patient), on the image
right, with a bright myocardial wall around a dark blood pool; the RV lies to its left, the atria below the
mitral / tricuspid plane. Outside the sector everything is black.

* **Size:** the end-diastolic LV length and width scale with ``attributes["lv_scale"]`` (which follows the
  cardiothoracic ratio: dilated LV with cardiomegaly).
* **Structure:** the end-diastolic myocardial wall is ``lv_wall_mm`` thick (9 mm ↔ 0.028 of the image depth,
  ±0.004 jitter; LV hypertrophy 12.5-17 mm), the left atrium's two axes scale with ``la_diameter_mm`` / 35.
* **Contraction:** LV volume follows V(t) = V_ED · (1 − EF · c(t)) with a contraction curve c(t) ∈ [0, 1]
  (raised-cosine systole of ~0.16 + 0.15·RR s, relaxation, diastasis); with the length ∝ s^0.6 and width ∝
  s^1.2 for s = (V/V_ED)^(1/3), the long axis shortens (the base moves towards the fixed apex) and the wall
  thickens. The cavity area change is therefore ≈ 1 − (1 − EF)^0.6: ~42 % at EF 60 %, ~19 % at EF 30 %.
* **Timing:** the cine starts near end-diastole (ECG-gated, ±50 ms jitter); beats follow the heart rate with
  ±2 % variation in sinus rhythm and irregular (log-normal, CV ≈ 20 %) RR intervals in atrial fibrillation.
* **Appearance:** multiplicative speckle (a static pattern plus a per-frame decorrelating part), depth
  attenuation, gain jitter, a blurred sector edge; ``uint8`` frames.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

SECTOR_HALF_ANGLE = 0.6  # rad
APEX_DEPTH = 0.03


def default_fps(frames: int, seconds: float = 1.25) -> float:
    """Frame rate at which ``frames`` frames span ``seconds`` (≈ 1-2 beats at 50-100 bpm)."""
    return round(frames / seconds, 2)


@lru_cache(maxsize=8)
def _geometry(size: int):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    U, W = np.meshgrid(c - 0.5, c, indexing="xy")  # lateral (-0.5..0.5), depth (0..1)
    r = np.hypot(U, W - APEX_DEPTH)
    th = np.arctan2(U, W - APEX_DEPTH)
    sector = ((r < 0.97) & (np.abs(th) < SECTOR_HALF_ANGLE) & (W > APEX_DEPTH)).astype(np.float32)
    sector = ndimage.gaussian_filter(sector, 0.6)
    return U, W, r.astype(np.float32), sector


def _contraction(tau: np.ndarray, rr: np.ndarray) -> np.ndarray:
    ts = np.clip(0.16 + 0.15 * rr, 0.18, 0.42)
    tr = np.minimum(0.8 * ts, np.maximum(rr - ts - 0.02, 0.05))
    c = np.where(tau < ts, 0.5 * (1 - np.cos(np.pi * tau / ts)), 0.0)
    rel = (tau >= ts) & (tau < ts + tr)
    c = np.where(rel, 0.5 * (1 + np.cos(np.pi * (tau - ts) / tr)), c)
    return c


def _inside(U, W, cu, cw, au, aw, rot):
    """Soft inside-indicator of a rotated ellipse (rotation about its centre)."""
    cs, sn = float(np.cos(rot)), float(np.sin(rot))  # Python floats keep float32 arrays float32
    x = (U - cu) * cs - (W - cw) * sn
    y = (U - cu) * sn + (W - cw) * cs
    d = (1.0 - np.sqrt((x / au) ** 2 + (y / aw) ** 2)) * np.minimum(au, aw)
    return np.clip(0.5 + d / 0.012, 0.0, 1.0)


def render_echo(
    rng: np.random.Generator,
    *,
    heart_rate: float,
    rhythm: str,
    ef: float,
    lv_scale: float,
    traits: dict,
    frames: int = 16,
    size: int = 64,
    fps: float | None = None,
    lv_wall_mm: float = 9.0,
    la_diameter_mm: float = 35.0,
    foreshortening: float = 0.0,
) -> np.ndarray:
    """One study's cine, ``uint8 [frames, size, size]``; wall thickness and LA diameter in millimetres.

    ``foreshortening`` in [0, 1] (a quality mechanism, :mod:`probmed.data.synthetic.quality`): the imaging plane
    misses the true apex and cuts the ventricle obliquely, so the LV is drawn up to 30 % shorter and its apparent
    contraction (length, width and wall thickening) is damped by up to 70 % — the apparent EF is wrong; 0 renders
    the cine exactly as without it.
    """
    fps = fps or default_fps(frames)
    U, W, R, sector = _geometry(size)
    rr_mean = 60.0 / heart_rate
    n_beats = int(np.ceil(frames / fps / rr_mean * 2)) + 3
    if rhythm == "atrial_fibrillation":
        rr = np.clip(rr_mean * np.exp(rng.normal(0.0, 0.2, size=n_beats)), 0.27, 2.2)
    else:
        rr = rr_mean * (1.0 + rng.normal(0.0, 0.02, size=n_beats))
    starts = np.concatenate([[0.0], np.cumsum(rr)])
    t = rng.uniform(-0.05, 0.05) + np.arange(frames) / fps
    t = np.where(t < 0, t + rr[0], t)  # before the first R: late diastole of the previous beat (c = 0)
    k = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, n_beats - 1)
    c = _contraction(t - starts[k], rr[k])

    efrac = float(np.clip(ef / 100.0, 0.05, 0.9))
    aspect = traits.get("echo_lv_aspect", 1.0)
    tilt = float(traits.get("echo_tilt", 0.0) + rng.normal(0.0, 0.03))
    shift_u, shift_w = (float(x) for x in rng.uniform(-0.03, 0.03, size=2))
    l_ed = 0.44 * lv_scale
    w_ed = 0.095 * lv_scale * aspect
    apex_w = 0.1 + shift_w
    lv_u = 0.1 + shift_u
    wall_ed = 0.028 * float(lv_wall_mm) / 9.0 + float(rng.uniform(-0.004, 0.004))

    # static speckle pattern + per-frame part (Rayleigh-like magnitudes, lightly smoothed)
    def speckle(shape):
        z = np.sqrt(2.0 * rng.standard_exponential(size=shape, dtype=np.float32))  # Rayleigh(1)
        return ndimage.uniform_filter(z, size=(1, 2, 2) if len(shape) == 3 else 2) / 1.25

    static = speckle((size, size))
    dynamic = speckle((frames, size, size))
    tissue_base = 0.22 + 0.05 * float(rng.random())
    base_w_ed = apex_w + l_ed
    # per-frame geometry, broadcast over [frames, size, size] (no Python loop over frames)
    cf = c[:, None, None].astype(np.float32)
    s = (1.0 - efrac * cf) ** (1.0 / 3.0)
    fs = float(foreshortening)
    if fs > 0.0:
        s = s ** (1.0 - 0.7 * fs)
    L = l_ed * s**0.6 * (1.0 - 0.3 * fs)
    Wd = w_ed * s**1.2
    wall = wall_ed * (1.0 + 0.8 * (1.0 - s**3))  # systolic wall thickening
    cw = apex_w + L / 2.0
    cu = lv_u + np.sin(tilt) * L / 2.0
    cavity = _inside(U, W, cu, cw, Wd, L / 2.0, tilt)
    myo = _inside(U, W, cu, cw, Wd + wall, L / 2.0 + wall, tilt) * (1.0 - cavity)
    # RV (contracts with a fixed ~45 % area change), atria below the AV plane (static)
    srv = (1.0 - 0.45 * cf) ** 0.5
    rv_cu = lv_u - w_ed - 0.12
    rv_cw = apex_w + 0.05 + 0.3 * l_ed * srv
    rv = _inside(U, W, rv_cu, rv_cw, 0.07 * srv, 0.3 * l_ed * srv, tilt + 0.15)
    rv_wall = _inside(U, W, rv_cu, rv_cw, 0.07 * srv + 0.015, 0.3 * l_ed * srv + 0.015, tilt + 0.15) * (1.0 - rv)
    la_scale = float(la_diameter_mm) / 35.0
    la = _inside(U, W, lv_u + 0.02, base_w_ed + 0.02 + 0.11 * la_scale, 0.09 * lv_scale * la_scale, 0.11 * la_scale,
                 tilt)
    ra = _inside(U, W, rv_cu - 0.02, base_w_ed + 0.1, 0.07, 0.09, tilt)
    blood = np.clip(cavity + rv + (la + ra)[None], 0.0, 1.0)
    wallmask = np.clip(myo + rv_wall, 0.0, 1.0) * (1.0 - blood)
    amp = tissue_base * (1.0 - blood) + 0.04 * blood + 0.5 * wallmask
    out = amp * (0.55 * static[None] + 0.45 * dynamic)
    gain = rng.uniform(0.85, 1.15)
    att = (1.0 - 0.35 * R)[None]
    img = out * att * sector[None] * gain
    img = img + 0.01 * rng.standard_normal(size=img.shape, dtype=np.float32) * sector[None]
    return np.clip(img * 255.0, 0.0, 255.0).astype(np.uint8)
