"""Test-time corruptions: exact effects at known severities, determinism, no in-place change, clear errors."""
from __future__ import annotations

import math

import pytest
import torch

from probmed.data.registry import SPECS
from probmed.evaluation.corruptions import PIXEL_SCALE, corrupt, corruptions_for, get_corruption

CORRUPTIONS = {name: corruptions_for(spec.pipeline) for name, spec in SPECS.items() if spec.view_of is None}


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {
        "cxr": torch.randn(3, 1, 16, 16, generator=g),
        "ct": torch.randn(3, 1, 16, 16, generator=g),
        "ecg": torch.randn(3, 12, 200, generator=g),
        "echo": torch.randn(3, 8, 1, 16, 16, generator=g),
        "text": {"input_ids": torch.arange(1, 25).reshape(2, 12),
                 "attention_mask": torch.tensor([[1] * 12, [1] * 7 + [0] * 5])},
    }


@pytest.mark.parametrize("modality,kind", [(m, k) for m, kinds in CORRUPTIONS.items() for k in kinds])
def test_every_corruption_is_deterministic_leaves_its_input_alone_and_is_identity_at_severity_zero(modality, kind):
    x = _inputs()[modality]
    before = {k: v.clone() for k, v in x.items()} if isinstance(x, dict) else x.clone()
    a, b = corrupt(modality, kind, x, 2.0, seed=7), corrupt(modality, kind, x, 2.0, seed=7)
    zero = corrupt(modality, kind, x, 0.0, seed=7)
    if isinstance(x, dict):
        assert all(torch.equal(a[k], b[k]) and torch.equal(x[k], before[k]) and torch.equal(zero[k], x[k]) for k in x)
        assert any(not torch.equal(a[k], x[k]) for k in x)  # the mask (words dropped) or the ids (replaced)
    else:
        assert torch.equal(a, b) and torch.equal(x, before) and a.shape == x.shape
        torch.testing.assert_close(zero, x)
        assert not torch.allclose(a, x)


def test_known_magnitudes():
    x = _inputs()
    noisy = corrupt("cxr", "noise", x["cxr"], 2.0, seed=0)
    # 0.05 * s in pixel units = 0.1 / 0.25 = 0.4 in standardised units
    assert (noisy - x["cxr"]).std().item() == pytest.approx(0.1 / PIXEL_SCALE, rel=0.1)
    flat = corrupt("cxr", "contrast", x["cxr"], 2.0, seed=0)  # deviations from the image mean halved
    m = x["cxr"].mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(flat - m, (x["cxr"] - m) / 2)
    dropped = corrupt("ecg", "lead_dropout", x["ecg"], 2.0, seed=0)
    assert ((dropped.abs().sum(-1) == 0).sum(1) == 4).all()  # 2 * s leads zeroed per study
    assert ((corrupt("ecg", "lead_dropout", x["ecg"], 50.0, seed=0).abs().sum(-1) == 0).sum(1) == 11).all()
    wander = corrupt("ecg", "baseline_wander", x["ecg"], 1.0, seed=0) - x["ecg"]
    assert wander.abs().max().item() <= 0.2 + 1e-6 and wander.abs().max().item() > 0.15
    text = corrupt("text", "word_dropout", x["text"], 8.0, seed=0)["attention_mask"]
    assert text[:, 0].tolist() == [1, 1] and text[0, 11] == 1 and text[1, 6] == 1  # first and closing kept
    assert text[1, 7:].sum() == 0  # padding stays padding
    frames = corrupt("echo", "frame_dropout", x["echo"], 6.0, seed=0)  # p = 0.9
    blank = (frames.flatten(2).abs().sum(-1) == 0)
    assert 0 < blank.float().mean() < 1
    assert corrupt("cxr", "blur", x["cxr"], 1.0, seed=0).std().item() < x["cxr"].std().item()  # smoother
    # rotation by 90 degrees (s = 22.5) of a film is a transpose-flip, up to the border replication at the edges
    turned = corrupt("cxr", "rotation", x["cxr"], 22.5, seed=0)
    assert any(torch.allclose(turned[i, 0, 2:-2, 2:-2], x["cxr"][i, 0].rot90(k)[2:-2, 2:-2], atol=1e-4)
               for i in range(3) for k in (1, -1))
    pixel = (x["cxr"] * PIXEL_SCALE + 0.5).clamp(0, 1)
    gamma = (corrupt("cxr", "exposure", x["cxr"], 2.0, seed=0) * PIXEL_SCALE + 0.5)
    for i in range(3):  # a gamma of exp(+0.5) or exp(-0.5) on the clipped pixels
        assert any(torch.allclose(gamma[i], pixel[i] ** e, atol=1e-5) for e in (math.exp(0.5), math.exp(-0.5)))
    short = corrupt("text", "truncation", x["text"], 2.0, seed=0)["attention_mask"]  # keep ceil(0.5 n) words
    assert short[0].tolist() == [1] * 6 + [0] * 5 + [1] and short[1].tolist() == [1] * 4 + [0, 0, 1] + [0] * 5
    flat = corrupt("echo", "contrast_loss", x["echo"], 2.0, seed=0)
    assert flat.std().item() < x["echo"].std().item()
    shaded = corrupt("echo", "sector_dropout", torch.zeros(2, 1, 1, 16, 16), 3.0, seed=0)
    pixels = shaded * PIXEL_SCALE + 0.5  # a uniform grey cine: only the wedge changes, darkened to 0.1 of it
    assert ((pixels - 0.5).abs() < 1e-6).float().mean() > 0.5 and pixels.min().item() == pytest.approx(0.05)


def test_echo_contrast_loss_blur_and_persistence_attenuate_as_a_poor_window_does():
    """A poor acoustic window lowers a cine's contrast, fine detail and frame-to-frame change: the three
    attenuating corruptions must move those the same way (and persistence is the running average, exactly)."""
    g = torch.Generator().manual_seed(1)
    cine = torch.randn(4, 8, 1, 16, 16, generator=g)

    def contrast(x):
        return x.std(dim=(-2, -1)).mean().item()

    def change(x):
        return (x[:, 1:] - x[:, :-1]).abs().mean().item()

    def detail(x):
        return (x[..., 1:] - x[..., :-1]).abs().mean().item()

    for kind in ("contrast_loss", "blur", "persistence"):
        out = corrupt("echo", kind, cine, 2.0, seed=0)
        assert change(out) < 0.9 * change(cine), kind
        assert detail(out) < detail(cine) and contrast(out) < contrast(cine), kind
    flat = corrupt("echo", "contrast_loss", cine, 2.0, seed=0)  # k = 0.5: the deviations from the mean halved
    mean = cine.mean(dim=(-2, -1), keepdim=True) * PIXEL_SCALE + 0.5
    clutter = (flat - cine.mean(dim=(-2, -1), keepdim=True) - 0.5 * (cine - cine.mean(dim=(-2, -1), keepdim=True)))
    assert clutter.abs().max().item() > 0  # clutter present, scaled by the frame's mean brightness
    assert (clutter * PIXEL_SCALE / (0.3 * 0.5 * mean)).std().item() < 1.0  # smoothed: below a unit white noise
    smeared = corrupt("echo", "persistence", cine, 2.0, seed=0)  # keep = 0.5
    expected = [cine[:, 0]]
    for t in range(1, 8):
        expected.append(0.5 * cine[:, t] + 0.5 * expected[-1])
    torch.testing.assert_close(smeared, torch.stack(expected, 1))
    framed = corrupt("echo", "blur", {"frames": cine, "frame_mask": torch.ones(4, 8, dtype=torch.bool)}, 2.0, seed=0)
    assert framed["frame_mask"].all() and framed["frames"].shape == cine.shape


def test_word_substitution_draws_words_of_the_other_reports_and_keeps_the_frame():
    x = {"input_ids": torch.tensor([[101, 5, 6, 7, 102, 0], [101, 50, 60, 102, 0, 0],
                                    [101, 500, 600, 700, 800, 102]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])}
    words = [{5, 6, 7}, {50, 60}, {500, 600, 700, 800}]
    changed = 0
    for seed in range(20):
        out = corrupt("text", "word_substitution", x, 9.0, seed=seed)  # p = 0.9
        assert torch.equal(out["attention_mask"], x["attention_mask"])
        ids = out["input_ids"]
        assert ids[:, 0].tolist() == [101] * 3 and ids[0, 4] == 102 and ids[1, 3] == 102 and ids[2, 5] == 102
        assert ids[0, 5] == 0 and ids[1, 4:].tolist() == [0, 0]  # padding stays padding
        for row, (n, own) in enumerate(zip((3, 2, 4), words)):
            for t in ids[row, 1:1 + n].tolist():
                assert t in own or any(t in other for j, other in enumerate(words) if j != row)
            changed += sum(t not in own for t in ids[row, 1:1 + n].tolist())
    assert changed > 0.7 * 20 * 9  # ≈ 90 % of the 9 words replaced, never by a word of the same report
    one = {k: v[:1] for k, v in x.items()}
    assert torch.equal(corrupt("text", "word_substitution", one, 9.0, seed=0)["input_ids"], one["input_ids"])


def test_unknown_names_and_bad_severities_are_clear_errors():
    with pytest.raises(ValueError, match="no corruptions registered for modality 'mri'"):
        get_corruption("mri", "noise")
    with pytest.raises(ValueError, match="choose one of"):
        get_corruption("ecg", "blur")
    with pytest.raises(ValueError, match="severity"):
        corrupt("ecg", "noise", _inputs()["ecg"], -1.0, seed=0)
