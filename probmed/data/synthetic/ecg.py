"""Synthetic 12-lead ECG: a small bank of neurokit2 ECGSYN beats, re-assembled per study with jitter.

Why a bank: neurokit2's dynamical model (McSharry et al. 2003, ``ecg_simulate``) costs ~0.05 s per beat for 12
leads on a 2-core machine, i.e. ~0.6 s per 10 s record — far too slow for thousands of studies. Instead:

1. **Bank** (cached on disk, simulated in worker processes): for each rhythm kind and heart-rate bin a short
   clean record of ~8 beats with a constant RR (``heart_rate_std=0``, ``noise=0``), for each of two
   morphology variants. Sinus bins are log-spaced 12 % apart over 36-157 bpm; AF bins are coarser.
2. **Per study** (fast, pure NumPy): the record's beats are cut at fixed phases of the cycle and re-assembled
   with a new RR sequence, then scaled, mixed and corrupted:

   * *sinus* (normal, brady, tachy): each cycle (P-QRS-T plus baseline) is time-stretched by at most ±6 %
     from the nearest bin to the study's exact RR, with respiratory sinus arrhythmia (±3 %) and small
     beat-to-beat jitter, so the heart rate is a continuous attribute;
   * *atrial fibrillation*: beats come from the AF bank whose P-wave amplitude is **zero** (ECGSYN's
     ``ai[0] = 0``, passed through ``ecg_simulate(..., ai=...)``), re-assembled **without** stretching the QRS-T
     at irregularly irregular RR intervals (log-normal, CV ≈ 15-25 %, ≥ 0.27 s) whose mean gives the
     ventricular rate; long RR intervals are filled with baseline, short ones truncate the T wave (with a
     taper); low-amplitude fibrillatory waves (4-8 Hz, wandering phase, strongest in V1/II) replace the P waves.
     ECGSYN's own ``heart_rate_std`` only modulates RR smoothly at 0.1/0.25 Hz (Mayer / respiratory waves),
     which is not AF, hence the beat-level re-assembly.
3. **Leads.** neurokit2's ``method="multileads"`` uses a fixed gain table in which lead II has a tiny R and a
   T wave three times as tall, then rescales every lead to the same [-0.4, 1.2] mV range, so its lead relations
   are lost. We therefore run ECGSYN once per *independent* lead (I, II, V1-V6) with our own per-lead P/Q/R/S/T
   gains (exactly what ``multileads`` does internally, same RR process via the same ``random_state``), rescale
   each lead to a typical amplitude, and derive III, aVR, aVL, aVF by Einthoven/Goldberger
   (III = II − I, aVR = −(I+II)/2, aVL = I − II/2, aVF = II − I/2). Patient-level gains on I and II vary the
   electrical axis; a patient-level mix of the two morphology variants varies QRS width / T amplitude.
4. **Cardiac structure** (the link to the film, see :mod:`.plan`), applied to the assembled beats after the
   lead gains, with no random draw of its own (so the rest of the record is the same with or without it):

   * *QRS voltage:* the QRS complexes of V1-V6 are scaled about their PQ level by one factor (lead I by half as
     much) so that the Sokolow-Lyon voltage SV1 + max(RV5, RV6) of the record equals ``sokolow_lyon_mv``
     (> 3.5 mV is LVH; measured from the PQ level, :func:`sokolow_lyon`);
   * *strain* (``lv_strain``): in I, V5, V6 (V4 half) the ST-T segment is inverted (T at −0.4…−0.7 of its
     height, by the voltage) and depressed by 0.08-0.15 mV, so aVL (= I − II/2) shows it too;
   * *P mitrale* (``la_enlarged`` in sinus rhythm): a second P hump 45 ms after the first in I and II (a
     notched P of ≥ 120 ms) and a terminal negative P of 0.1 mV in V1.
5. **Noise:** baseline wander (0.05-0.5 Hz), EMG-like white noise, sometimes mains hum; int16 microvolts.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probmed.data.schema import ECG_LEADS

BANK_VERSION = "v1"

#: Leads simulated independently (the other four limb leads are derived from I and II).
INDEPENDENT_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")

# ECGSYN defaults (P, Q, R, S, T): angles (deg), amplitudes, widths.
_AI = np.array([1.2, -5.0, 30.0, -7.5, 0.75])
_BI = np.array([0.25, 0.1, 0.1, 0.1, 0.4])

#: Per-lead wave gains (P, Q, R, S, T) on ECGSYN's ``ai`` — small r / deep S in V1, R progression to V4-V5.
_LEAD_GAIN = {
    "I": (0.6, 0.5, 0.8, 0.3, 0.7),
    "II": (1.0, 0.3, 1.2, 0.3, 0.7),
    "V1": (0.6, 0.0, 0.25, 3.0, 0.3),
    "V2": (0.5, 0.1, 0.6, 2.5, 1.1),
    "V3": (0.5, 0.2, 0.9, 1.5, 1.2),
    "V4": (0.5, 0.4, 1.3, 0.8, 1.3),
    "V5": (0.5, 0.6, 1.2, 0.4, 1.1),
    "V6": (0.5, 0.6, 1.0, 0.2, 0.9),
}
#: Typical peak |amplitude| per independent lead, mV.
_LEAD_PEAK_MV = {"I": 0.7, "II": 1.1, "V1": 1.0, "V2": 1.5, "V3": 1.4, "V4": 1.6, "V5": 1.4, "V6": 1.0}
#: Morphology variants: (ai multiplier per wave, bi multiplier per wave).
_VARIANTS = (
    (np.array([1.0, 1.0, 1.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0, 1.0, 1.0])),
    (np.array([0.8, 1.6, 0.9, 1.3, 1.25]), np.array([1.2, 1.25, 1.25, 1.25, 1.15])),
)
#: Fibrillatory-wave weight per independent lead.
_FWAVE_WEIGHT = np.array([0.3, 0.6, 1.0, 0.7, 0.5, 0.4, 0.3, 0.25])

SINUS_BINS = tuple(float(x) for x in np.round(36.0 * 1.12 ** np.arange(14), 2))  # 36 ... 157 bpm, 12 % apart
AF_BINS = (45.0, 60.0, 80.0, 105.0, 135.0)
N_VARIANTS = len(_VARIANTS)
_SINUS_CUT = 0.4  # cycle cut at 40 % of RR before the R peak (between T end and next P start)
_AF_CUT = 0.3


@dataclass(frozen=True)
class TemplateKey:
    kind: str  # "sinus" or "af"
    bin_hr: float
    variant: int
    sampling_rate: int

    def file_name(self) -> str:
        return f"ecg-{BANK_VERSION}-{self.kind}-{self.bin_hr:.2f}-{self.variant}-{self.sampling_rate}.npy"


def nearest_bin(kind: str, hr: float) -> float:
    bins = np.asarray(SINUS_BINS if kind == "sinus" else AF_BINS)
    return float(bins[int(np.argmin(np.abs(np.log(bins / hr))))])


def needed_templates(rhythms_and_rates, sampling_rate: int) -> list[TemplateKey]:
    """The bank entries needed for ``[(rhythm, heart_rate), ...]`` (both variants of each bin)."""
    keys = set()
    for rhythm, hr in rhythms_and_rates:
        kind = "af" if rhythm == "atrial_fibrillation" else "sinus"
        b = nearest_bin(kind, hr)
        for v in range(N_VARIANTS):
            keys.add(TemplateKey(kind, b, v, int(sampling_rate)))
    return sorted(keys, key=lambda k: (k.kind, k.bin_hr, k.variant))


def _template_seed(key: TemplateKey) -> int:
    h = hashlib.sha256(f"{BANK_VERSION}|{key.kind}|{key.bin_hr:.2f}|{key.sampling_rate}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def simulate_template(key: TemplateKey, n_beats: float = 3.7) -> np.ndarray:
    """Simulate one bank record: float64 ``[8 independent leads, samples]`` in mV, baseline 0 (~0.3 s).

    ECGSYN starts on its limit cycle at the R peak (t = 0), and with a constant RR every later cycle is the same
    up to the slowly decaying start transient, so 3.7 cycles give 3 complete usable beats (R at RR, 2RR, 3RR).
    """
    import neurokit2 as nk  # imported lazily: ~2 s import, only needed on a cache miss

    fs = key.sampling_rate
    duration = n_beats * 60.0 / key.bin_hr + 0.25
    a_mult, b_mult = _VARIANTS[key.variant]
    seed = _template_seed(key)  # same seed for every lead and variant → same RR process, aligned R peaks
    leads = []
    for lead in INDEPENDENT_LEADS:
        ai = _AI * np.asarray(_LEAD_GAIN[lead]) * a_mult
        if key.kind == "af":
            ai[0] = 0.0  # no P wave
        bi = _BI * b_mult
        sig = nk.ecg_simulate(
            duration=duration, sampling_rate=fs, noise=0.0, heart_rate=key.bin_hr, heart_rate_std=0.0,
            method="ecgsyn", random_state=seed, ai=tuple(ai), bi=tuple(bi),
        )
        sig = np.asarray(sig, dtype=np.float64)
        sig = sig - np.median(sig)
        sig = sig / max(np.max(np.abs(sig)), 1e-6) * _LEAD_PEAK_MV[lead]
        leads.append(sig)
    return np.stack(leads)


class ECGBank:
    """Bank records by :class:`TemplateKey`, with their R peaks; optionally cached on disk."""

    def __init__(self, records: dict[TemplateKey, np.ndarray]):
        self.records = records
        self.peaks: dict[TemplateKey, np.ndarray] = {}
        self.rr: dict[TemplateKey, float] = {}
        for key, rec in records.items():
            self.peaks[key], self.rr[key] = _find_r_peaks(rec, key)

    @staticmethod
    def cache_dir_default() -> Path:
        root = os.environ.get("PROBMED_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "probmed")
        return Path(root) / "ecg_bank"

    @classmethod
    def build(cls, keys, cache_dir: str | os.PathLike | None = None, pool=None) -> "ECGBank":
        """Load cached records, simulate the missing ones (in ``pool`` when given), save them to the cache."""
        records: dict[TemplateKey, np.ndarray] = {}
        missing = []
        cdir = Path(cache_dir) if cache_dir is not None else None
        for key in keys:
            path = cdir / key.file_name() if cdir is not None else None
            if path is not None and path.exists():
                try:
                    records[key] = np.load(path, allow_pickle=False)
                    continue
                except (OSError, ValueError):
                    pass
            missing.append(key)
        if missing:
            results = pool.map(simulate_template, missing) if pool is not None else map(simulate_template, missing)
            for key, rec in zip(missing, results):
                records[key] = rec
                if cdir is not None:
                    try:
                        cdir.mkdir(parents=True, exist_ok=True)
                        tmp = cdir / f"{key.file_name()}.{os.getpid()}.tmp"
                        with open(tmp, "wb") as fh:
                            np.save(fh, rec, allow_pickle=False)
                        os.replace(tmp, cdir / key.file_name())
                    except OSError:
                        pass  # cache is an optimisation only
        return cls(records)


def _find_r_peaks(rec: np.ndarray, key: TemplateKey) -> tuple[np.ndarray, float]:
    from scipy.signal import find_peaks

    fs = key.sampling_rate
    lead2 = rec[1]
    rr_expected = 60.0 / key.bin_hr * fs
    peaks, _ = find_peaks(lead2, distance=max(1, int(0.7 * rr_expected)), height=0.5 * lead2.max())
    rr = float(np.median(np.diff(peaks))) if len(peaks) > 1 else rr_expected
    cut_pre = (_SINUS_CUT if key.kind == "sinus" else _AF_CUT) * rr
    # usable beats: skip the first (initial-condition transient) and any whose full cycle leaves the record
    ok = (peaks - cut_pre >= 0) & (peaks + (1 - _SINUS_CUT if key.kind == "sinus" else 1 - _AF_CUT) * rr + 2
                                   < rec.shape[1])
    ok &= peaks > 0.5 * rr
    usable = peaks[ok]
    if len(usable) == 0:
        raise RuntimeError(f"ECG bank record {key} has no usable beat")
    return usable, rr


def _interp(rec: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation of every lead of ``rec`` at fractional sample positions ``pos``."""
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, rec.shape[1] - 2)
    w = pos - i0
    return rec[:, i0] * (1.0 - w) + rec[:, i0 + 1] * w


def _beat_times(rr: np.ndarray, start: float) -> np.ndarray:
    return start + np.concatenate([[0.0], np.cumsum(rr)])


#: Independent-lead rows of the assembled record (see :data:`INDEPENDENT_LEADS`).
_I, _II, _V1, _V4, _V5, _V6 = 0, 1, 2, 5, 6, 7


def _plateau(n: int, starts: np.ndarray, ends: np.ndarray, taper: float) -> np.ndarray:
    """``[n]`` window: 1 on each ``[start, end]`` (samples), falling to 0 over ``taper`` samples (raised cosine)."""
    if len(starts) == 0:
        return np.zeros(n)
    t = np.arange(n, dtype=np.float64)[None, :]
    d = np.maximum(starts[:, None] - t, t - ends[:, None])  # > 0 outside the interval
    w = np.where(d <= 0, 1.0, 0.5 * (1.0 + np.cos(np.pi * np.clip(d / taper, 0.0, 1.0))))
    return w.max(axis=0)


def _bumps(n: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    """``[n]`` sum of unit Gaussians (width ``sigma`` samples) at ``centres``."""
    t = np.arange(n, dtype=np.float64)[None, :]
    return np.exp(-0.5 * ((t - centres[:, None]) / sigma) ** 2).sum(axis=0)


def _pq_window(r: np.ndarray, fs: int) -> np.ndarray:
    """``int [len(r), m]`` sample indices of each beat's PQ segment, R − 90 … 70 ms."""
    lo = np.round(np.asarray(r, dtype=np.float64) - 0.09 * fs).astype(np.int64)
    return lo[:, None] + np.arange(int(round(0.09 * fs)) - int(round(0.07 * fs)) + 1)[None, :]


def pq_level(beat: np.ndarray, r: float, fs: int) -> np.ndarray:
    """``[leads]`` isoelectric (PQ-segment) level of the beat with R at sample ``r``: mean of R − 90 … 70 ms."""
    idx = _pq_window(np.array([r]), fs)[0]
    return beat[:, np.clip(idx, 0, beat.shape[1] - 1)].mean(axis=1)


def sokolow_lyon(beat: np.ndarray, r: int, fs: int, gains: np.ndarray | None = None) -> float:
    """SV1 + max(RV5, RV6) in mV of the beat whose R peak is sample ``r`` of ``beat`` (``[8 independent leads,
    samples]``), after per-lead ``gains``: extremes within ±60 ms of R, from the PQ level (:func:`pq_level`)."""
    g = np.ones(len(INDEPENDENT_LEADS)) if gains is None else gains
    win = slice(max(0, r - int(0.06 * fs)), r + int(0.06 * fs) + 1)
    base = pq_level(beat, r, fs)
    s_v1 = (base[_V1] - beat[_V1, win].min()) * g[_V1]
    return float(s_v1 + max((beat[_V5, win].max() - base[_V5]) * g[_V5], (beat[_V6, win].max() - base[_V6]) * g[_V6]))


#: QRS scaling window: flat ±45 ms around R, raised-cosine taper over 20 ms (clear of the PQ level's samples).
_QRS_HALF_S, _QRS_TAPER_S = 0.045, 0.02


def _scale_qrs(sig: np.ndarray, r_at: np.ndarray, fs: int, lead_factor: np.ndarray) -> None:
    """In place: scale each beat's QRS about its PQ level, lead ``l`` by ``lead_factor[l]`` (beats ≥ 0.27 s apart,
    so the windows never overlap)."""
    n = sig.shape[1]
    half, taper = _QRS_HALF_S * fs, _QRS_TAPER_S * fs
    reach = int(np.ceil(half + taper)) + 1
    pos = np.floor(r_at).astype(np.int64)[:, None] + np.arange(-reach, reach + 1)[None, :]  # [beats, L]
    d = np.abs(pos - r_at[:, None]) - half
    w = np.where(d <= 0, 1.0, 0.5 * (1.0 + np.cos(np.pi * np.clip(d / taper, 0.0, 1.0))))
    base = sig[:, np.clip(_pq_window(r_at, fs), 0, n - 1)].mean(axis=2)  # [leads, beats]
    inside = (pos >= 0) & (pos < n)
    beat = np.broadcast_to(np.arange(len(r_at))[:, None], pos.shape)[inside]
    pos, w = pos[inside], w[inside]
    seg = sig[:, pos]
    sig[:, pos] = seg + (lead_factor - 1.0)[:, None] * w[None, :] * (seg - base[:, beat])


def _remodel(sig: np.ndarray, rec: np.ndarray, peaks: np.ndarray, fs: int, gains: np.ndarray, r_at: np.ndarray,
             rr_at: np.ndarray, end_at: np.ndarray, af: bool, structure: dict) -> np.ndarray:
    """Apply the study's QRS voltage, strain and P mitrale to the assembled ``[8, n]`` record (mV, before gains).

    ``rec``/``peaks``: the bank record the beats came from and its R peaks (samples); ``r_at``: R peak of every
    assembled beat in samples of ``sig``; ``rr_at``: each beat's cycle length (s) as its ST-T was laid out;
    ``end_at``: the sample where each beat's cycle ends (the strain never reaches past it).
    """
    sig = sig.copy()
    n = sig.shape[1]
    p0 = int(peaks[0])
    target = float(structure["sokolow_lyon_mv"])
    k = target / max(sokolow_lyon(rec, p0, fs, gains), 1e-6)
    factor = np.ones(len(INDEPENDENT_LEADS))
    factor[_V1:] = k
    factor[_I] = 1.0 + 0.5 * (k - 1.0)
    _scale_qrs(sig, r_at, fs, factor)
    if structure.get("lv_strain"):
        severity = float(np.clip((target - 3.8) / 1.8, 0.0, 1.0))
        invert, depress = 0.4 + 0.3 * severity, 0.08 + 0.07 * severity
        ends = np.minimum(r_at + np.minimum(0.42 * np.sqrt(rr_at), 0.5 * rr_at) * fs, end_at - 0.03 * fs)
        wt = _plateau(n, r_at + 0.08 * fs, ends, 0.03 * fs)
        for lead, weight in ((_I, 1.0), (_V4, 0.5), (_V5, 1.0), (_V6, 1.0)):
            sig[lead] = sig[lead] * (1.0 - weight * (1.0 + invert) * wt) - weight * depress * wt
    if structure.get("la_enlarged") and not af:
        lo = max(0, p0 - int(0.3 * fs))
        p_at = lo + int(np.argmax(rec[_II, lo:p0 - int(0.07 * fs)]))  # P peak of lead II
        second = _bumps(n, r_at - (p0 - p_at) + 0.045 * fs, 0.02 * fs)
        sig[_II] += 0.8 * rec[_II, p_at] * second
        sig[_I] += 0.8 * rec[_I, p_at] * second
        sig[_V1] -= 0.1 * _bumps(n, r_at - (p0 - p_at) + 0.05 * fs, 0.025 * fs)
    return sig


def synthesize_ecg(
    bank: ECGBank,
    rng: np.random.Generator,
    *,
    heart_rate: float,
    rhythm: str,
    traits: dict,
    sampling_rate: int = 250,
    seconds: float = 10.0,
    structure: dict | None = None,
) -> np.ndarray:
    """One study's ECG: ``int16`` microvolts ``[12, sampling_rate * seconds]`` in :data:`ECG_LEADS` order.

    ``structure``: the study's ``sokolow_lyon_mv`` (mV), ``lv_strain`` and ``la_enlarged`` (plan attributes);
    ``None`` leaves the bank's QRS voltage, ST-T and P waves as they are.
    """
    fs = int(sampling_rate)
    n_out = int(round(seconds * fs))
    af = rhythm == "atrial_fibrillation"
    kind = "af" if af else "sinus"
    b = nearest_bin(kind, heart_rate)
    keys = [TemplateKey(kind, b, v, fs) for v in range(N_VARIANTS)]
    w = float(np.clip(traits.get("ecg_variant_mix", 0.5) + rng.normal(0, 0.05), 0, 1))
    rec = (1 - w) * bank.records[keys[0]] + w * bank.records[keys[1]]
    peaks, rr_t = bank.peaks[keys[0]], bank.rr[keys[0]]  # variants share the RR process → same peaks
    rr_mean = 60.0 / heart_rate  # seconds

    # RR sequence covering the output plus one beat of margin on each side
    n_beats = int(np.ceil((seconds + 2 * rr_mean) / rr_mean * (1.6 if af else 1.1))) + 2
    if af:
        sigma = rng.uniform(0.15, 0.25)
        rr = rr_mean * np.exp(rng.normal(0.0, sigma, size=n_beats))
        rr = np.clip(rr, 0.27, 2.2)
        cut = _AF_CUT
    else:
        k = np.arange(n_beats)
        resp_period = rng.uniform(3.0, 5.0)
        phase = rng.uniform(0, 2 * np.pi)
        rr = rr_mean * (1.0 + 0.03 * np.sin(2 * np.pi * k * rr_mean / resp_period + phase)
                        + rng.normal(0.0, 0.006, size=n_beats))
        cut = _SINUS_CUT
    start = -rng.uniform(0.5, 1.5) * rr_mean  # random phase at the start of the record
    # Make the rate measured from the R peaks inside the output window equal ``heart_rate``:
    # (number of R peaks - 1) / (last R - first R); rescale the RR sequence (and start) a few times.
    r_offset = cut * rr_t / fs  # R peak lies this long after its cycle start
    for _ in range(4):
        r_times = _beat_times(rr, start)[:-1] + r_offset
        inside = r_times[(r_times >= 0.0) & (r_times < seconds)]
        if len(inside) < 2:
            break
        measured = 60.0 * (len(inside) - 1) / (inside[-1] - inside[0])
        factor = measured / heart_rate
        rr = rr * factor
        start = start * factor
    t = _beat_times(rr, start)  # cycle start times (s) of beat k, i.e. R_k - cut*RR
    bounds = np.round(t * fs).astype(np.int64)
    offset = -bounds[0]
    total = int(bounds[-1] - bounds[0])
    sig = np.zeros((rec.shape[0], total))
    j = int(rng.integers(len(peaks)))
    taper_n = max(2, int(0.03 * fs))
    r_at = np.full(n_beats, np.nan)  # R peak of each beat, in samples of the output record
    rr_at = np.zeros(n_beats)  # the beat's cycle length as its ST-T sees it, seconds
    for kbeat in range(n_beats):
        n_k = int(bounds[kbeat + 1] - bounds[kbeat])
        if n_k <= 0:
            continue
        if cut * (rr_t if af else n_k) + 0.06 * fs < n_k:  # a very short AF cycle may end before its QRS
            r_at[kbeat] = bounds[kbeat] + cut * (rr_t if af else n_k)
            rr_at[kbeat] = (rr_t if af else n_k) / fs
        r = float(peaks[j % len(peaks)])
        j += 1
        a0 = r - cut * rr_t
        if not af:
            # stretch one full cycle (source length rr_t samples) onto n_k samples
            pos = a0 + np.arange(n_k + 1) * (rr_t / n_k)
            piece = _interp(rec, pos)
            ramp = np.linspace(0.0, 1.0, n_k + 1)
            piece = piece - piece[:, :1] - (piece[:, -1:] - piece[:, :1]) * ramp
            piece = piece[:, :n_k]
        else:
            full_n = int(np.floor(rr_t))
            pos = a0 + np.arange(full_n + 1)
            full = _interp(rec, pos)
            ramp = np.linspace(0.0, 1.0, full_n + 1)
            full = (full - full[:, :1] - (full[:, -1:] - full[:, :1]) * ramp)[:, :full_n]
            if n_k <= full_n:
                piece = full[:, :n_k].copy()
                if n_k < full_n:
                    tn = min(taper_n, n_k)
                    piece[:, n_k - tn:] *= 0.5 * (1 + np.cos(np.linspace(0, np.pi, tn)))
            else:
                piece = np.concatenate([full, np.zeros((rec.shape[0], n_k - full_n))], axis=1)
        s0 = int(bounds[kbeat] + offset)
        sig[:, s0:s0 + n_k] = piece
    s_begin = offset  # time 0 of the output is sample `offset` of `sig`
    sig = sig[:, s_begin:s_begin + n_out]
    if sig.shape[1] < n_out:  # cannot happen with the margins above, but never return a short record
        sig = np.pad(sig, ((0, 0), (0, n_out - sig.shape[1])))
    time = np.arange(n_out) / fs

    fwave = 0.0
    if af:  # fibrillatory waves
        f0 = rng.uniform(4.0, 8.0)
        drift = np.cumsum(rng.normal(0.0, 0.08, size=n_out))
        fw = np.sin(2 * np.pi * f0 * time + drift) + 0.4 * np.sin(2 * np.pi * 1.7 * f0 * time + 1.3 * drift)
        fwave = rng.uniform(0.03, 0.07) * _FWAVE_WEIGHT[:, None] * fw[None, :]

    # patient-level gains (electrical axis, precordial amplitudes) with study jitter
    gains = np.array([traits.get("ecg_gain_I", 1.0), traits.get("ecg_gain_II", 1.0),
                      *traits.get("ecg_gain_V", [1.0] * 6)])
    gains = gains * rng.uniform(0.93, 1.07, size=gains.shape)
    if structure is not None:
        beats = np.isfinite(r_at)
        sig = _remodel(sig, rec, peaks, fs, gains, r_at[beats], rr_at[beats], bounds[1:][beats].astype(np.float64),
                       af, structure)
    sig = sig + fwave
    sig = sig * gains[:, None]
    lead_i, lead_ii, v = sig[0], sig[1], sig[2:]
    limb = np.stack([lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2,
                     lead_ii - lead_i / 2])
    ecg = np.concatenate([limb, v], axis=0)  # I II III aVR aVL aVF V1-V6

    # baseline wander, EMG-like noise, sometimes mains hum
    n_leads = ecg.shape[0]
    for f_lo, amp in ((rng.uniform(0.05, 0.15), rng.uniform(0.02, 0.12)), (rng.uniform(0.2, 0.5), rng.uniform(0.0, 0.05))):
        ph = rng.uniform(0, 2 * np.pi, size=(n_leads, 1))
        ecg += amp * rng.uniform(0.5, 1.0, size=(n_leads, 1)) * np.sin(2 * np.pi * f_lo * time[None, :] + ph)
    ecg += rng.normal(0.0, rng.uniform(0.005, 0.02), size=ecg.shape)
    if rng.random() < 0.25:
        mains = 50.0 if rng.random() < 0.5 else 60.0
        ecg += rng.uniform(0.003, 0.015) * np.sin(2 * np.pi * mains * time + rng.uniform(0, 2 * np.pi))[None, :]
    assert ecg.shape[0] == len(ECG_LEADS)
    return np.clip(np.round(ecg * 1000.0), -32768, 32767).astype(np.int16)
