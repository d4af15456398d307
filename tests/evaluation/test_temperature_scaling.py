"""Zero-shot temperature scaling (probmed.evaluation.calibration) against a brute-force grid, its effect on ECE,
and the failure paths."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probmed.evaluation.calibration import (
    MIN_INVERSE_TEMPERATURE, apply_platt, apply_temperature, fit_platt, fit_temperature, scaled_nll,
)
from probmed.evaluation.plots import bins_ece, reliability_figure
from probmed.evaluation.uncertainty import expected_calibration_error, reliability_bins


def _overconfident(n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    true_logit = torch.randn(n, generator=g, dtype=torch.float64) * 1.5
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(true_logit)).double()
    return 4.0 * true_logit, y  # the model's logits are 4x too sharp: the right temperature is about 4


def test_fitted_temperature_minimises_the_nll_of_a_fine_grid():
    z, y = _overconfident()
    t = fit_temperature(z, y)
    betas = np.linspace(0.01, 2.0, 20_000)
    nll = [scaled_nll(z, y, b) for b in betas]
    best = betas[int(np.argmin(nll))]
    assert 1 / t == pytest.approx(best, abs=2e-4)
    assert scaled_nll(z, y, 1 / t) <= min(nll) + 1e-12
    assert 3.4 < t < 4.6


def test_temperature_scaling_lowers_ece_and_keeps_the_ranking():
    z, y = _overconfident(seed=1)
    t = fit_temperature(z, y)
    z2, y2 = _overconfident(seed=2)  # fitted on one split, applied to another
    raw, scaled = torch.sigmoid(z2).float(), apply_temperature(z2, t)
    assert expected_calibration_error(scaled, y2) < 0.5 * expected_calibration_error(raw, y2)
    by_logit = scaled[torch.argsort(z2)]
    assert bool((by_logit[1:] >= by_logit[:-1]).all())  # monotone in the logit: the ranking (AUROC) is unchanged
    bins = reliability_bins(scaled, y2)
    assert bins_ece(bins) == pytest.approx(expected_calibration_error(scaled, y2), abs=1e-5)
    fig = reliability_figure({"cxr raw": reliability_bins(raw, y2), f"cxr T={t:.3g}": bins})
    assert any("ECE" in ax.get_title() for ax in fig.axes)


def test_anticorrelated_logits_are_not_flipped_and_bad_input_fails_clearly():
    z, y = _overconfident(seed=3)
    assert fit_temperature(-z, y) == pytest.approx(1 / MIN_INVERSE_TEMPERATURE)
    with pytest.raises(ValueError, match="at least one"):
        fit_temperature(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="non-finite"):
        fit_temperature(torch.tensor([1.0, math.inf]), torch.tensor([1.0, 0.0]))
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="positive and finite"):
            apply_temperature(z, bad)


def _offset(n=3000, seed=1):
    """Logits of the right sharpness but shifted by +2: every study looks 'present'. No temperature fixes it."""
    g = torch.Generator().manual_seed(seed)
    true_logit = torch.randn(n, generator=g, dtype=torch.float64) * 1.5 - 1.0
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(true_logit)).double()
    return true_logit + 2.0, y


def test_platt_scaling_minimises_the_same_objective_as_scipy_and_fixes_an_offset_temperature_cannot():
    from scipy.optimize import minimize

    z, y = _offset()
    a, b = fit_platt(z, y, l2=1e-4)

    def objective(w):
        p = torch.nn.functional.binary_cross_entropy_with_logits(w[0] * z + w[1], y)
        return float(p) + 1e-4 * w[1] ** 2

    ref = minimize(objective, x0=[1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14}).x
    assert (a, b) == pytest.approx(tuple(ref), abs=1e-4)
    assert a == pytest.approx(1.0, abs=0.1) and b == pytest.approx(-2.0, abs=0.15)
    raw = expected_calibration_error(torch.sigmoid(z).float(), y.float())
    scaled = expected_calibration_error(apply_temperature(z, fit_temperature(z, y)), y.float())
    platt = expected_calibration_error(apply_platt(z, a, b), y.float())
    assert platt < 0.03 < 0.15 < min(raw, scaled)


def test_platt_scaling_keeps_a_single_class_finding_finite_and_refuses_bad_input():
    z = torch.linspace(-2, 2, 50, dtype=torch.float64)
    a, b = fit_platt(z, torch.zeros(50, dtype=torch.float64))
    assert math.isfinite(a) and math.isfinite(b) and a >= MIN_INVERSE_TEMPERATURE
    with pytest.raises(ValueError, match="at least one"):
        fit_platt(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="non-finite"):
        fit_platt(torch.tensor([float("nan")]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="finite"):
        apply_platt(z, float("inf"), 0.0)
