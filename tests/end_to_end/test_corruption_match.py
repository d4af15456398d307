"""experiments/corruption_match.py: the model-free statistics are the quantities they name, on inputs built by hand."""
from __future__ import annotations

import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import corruption_match  # noqa: E402


def test_image_and_cine_statistics_in_pixel_units():
    pixels = torch.tensor([[0.25, 0.75], [0.25, 0.75]]).expand(3, 1, 2, 2)  # a stripe pattern: sd 0.25 (population)
    stats = corruption_match.statistics("cxr", (pixels - 0.5) / 0.25)
    torch.testing.assert_close(stats["brightness"], torch.full((3,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(stats["detail"], torch.full((3,), 0.5, dtype=torch.float64))
    assert stats["contrast"][0].item() == pytest.approx(torch.tensor([0.25, 0.75, 0.25, 0.75]).std().item())
    frames = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)] * 2)[None]  # [1, 4, 1, 2, 2]: 0.5 ↔ 0.75
    cine = corruption_match.statistics("echo", {"frames": frames, "frame_mask": torch.ones(1, 4, dtype=torch.bool)})
    assert cine["motion"].item() == pytest.approx(0.25) and cine["detail"].item() == 0.0


def test_ecg_statistics_count_flat_leads_and_separate_slow_from_fast():
    t = torch.arange(1000, dtype=torch.float64) / 100.0
    slow = torch.sin(2 * torch.pi * 0.1 * t).expand(12, -1).clone()
    slow[:3] = 0.001  # three flat leads (1 µV)
    fast = slow + 0.5 * (-1.0) ** torch.arange(1000)  # a 50 Hz alternation on every lead
    s_slow = corruption_match.statistics("ecg", slow[None].float())
    s_fast = corruption_match.statistics("ecg", fast[None].float())
    assert s_slow["flat_leads"].item() == pytest.approx(0.25) and s_fast["flat_leads"].item() == 0.0
    assert s_fast["high_freq"].item() > 10 * s_slow["high_freq"].item()
    assert s_fast["low_freq"].item() == pytest.approx(s_slow["low_freq"].item(), rel=0.05)  # averaged away in 1 s


def test_ratio_shows_the_value_where_the_clean_mean_is_zero():
    assert corruption_match._ratio(torch.tensor(0.3), torch.tensor(0.0)).strip() == "=0.30"
    assert corruption_match._ratio(torch.tensor(0.3), torch.tensor(0.6)).strip() == "0.50"
