"""Every YAML under configs/ parses (``--print_config``), names only files that exist, and each preset builds its
method's defining settings: distance, clamp, mean normalisation, term weights."""
from __future__ import annotations

import math
import re
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import REPO

CONFIGS = REPO / "configs"
PRESETS = CONFIGS / "presets"


def _print_config(args: list[str], capsys, monkeypatch, prefix: tuple[str, ...] = ()) -> dict:
    """``probmed [prefix] fit ARGS --print_config`` in this process; the printed config, parsed."""
    from probmed.cli import main

    monkeypatch.setattr(sys, "argv", ["probmed"])
    with pytest.raises(SystemExit) as done:
        main([*prefix, "fit", *args, "--print_config"])
    out = capsys.readouterr()
    assert done.value.code in (0, None), out.err[-3000:]
    return yaml.safe_load(out.out)


def _how_to_load(path, tmp_path) -> list[str]:
    """The ``probmed fit`` arguments that load one YAML file: a whole config, an overlay on its base, or a fragment
    (tower, trainer, data block) in its place in the smoke config."""
    rel = path.relative_to(CONFIGS)
    smoke = ["--config", str(CONFIGS / "smoke.yaml")]
    if rel.parts[:2] == ("presets", "tiny") and len(rel.parts) == 3 and not rel.name.startswith("_"):
        return ["--config", str(PRESETS / rel.name), "--config", str(path)]
    if rel.name == "demo_minilm.yaml":
        return ["--config", str(CONFIGS / "demo.yaml"), "--config", str(path)]
    if "towers" in rel.parts:  # a tower file is the value of an encoders entry (a path inside a config file)
        overlay = tmp_path / "tower.yaml"
        overlay.write_text(yaml.safe_dump({"model": {"encoders": {"cxr": str(path)}}}))
        return [*smoke, "--config", str(overlay)]
    if rel.name == "_trainer.yaml":
        return [*smoke, "--trainer", str(path)]
    if rel.name == "_data.yaml":
        return [*smoke, "--data", str(path)]
    if "objectives" in rel.parts or (rel.parts[0] == "ablations" and "model" not in yaml.safe_load(path.read_text())):
        return [*smoke, "--model.objective", str(path)]  # the value of model.objective (no `model:` of its own)
    if "overlays" in rel.parts or rel.parts[0] == "ablations":  # settings laid over a whole config
        return [*smoke, "--config", str(path)]
    return ["--config", str(path)]


def _assert_throughput_on(config: dict) -> None:
    """Samples/s, FLOP/s (and MFU where the peak is known) are logged by every config, out of the box."""
    names = [c.get("class_path") for c in config["trainer"].get("callbacks") or []]
    assert "probmed.training.Throughput" in names, names


ALL_YAML = sorted(p for p in CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL_YAML, ids=[str(p.relative_to(CONFIGS)) for p in ALL_YAML])
def test_every_yaml_under_configs_parses_with_print_config(path, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    if path.name == "m3bind_distill.yaml":  # the M3Bind stage-2 model: `probmed distill fit`
        tiny = ["--config", str(path)] if "tiny" in path.parts else []  # the tiny variant overlays the preset
        config = _print_config(["--config", str(PRESETS / path.name), *tiny], capsys, monkeypatch,
                               prefix=("distill",))
        assert config["model"]["log_var_weight"] == 0.1
        _assert_throughput_on(config)
        return
    if path.name == "medbind_soft_prompt.yaml":  # embeddings as LM soft prompts: `probmed prompt fit`
        config = _print_config(["--config", str(path)], capsys, monkeypatch, prefix=("prompt",))
        assert config["model"]["modalities"] == ["cxr", "ecg"] and config["model"]["tokens_per_modality"] == 4
        return
    config = _print_config(_how_to_load(path, tmp_path), capsys, monkeypatch)
    assert {"trainer", "model", "data"} <= set(config)
    _assert_throughput_on(config)
    own = yaml.safe_load(path.read_text())
    if "towers" in path.parts:  # the fragment is what the parsed config holds in its place
        assert config["model"]["encoders"]["cxr"]["class_path"] == own["class_path"]


def test_config_comments_name_only_files_that_exist():
    """Headers cite configs to combine (``--config configs/presets/tiny/probmed.yaml``): each must exist."""
    cited = set()
    for path in ALL_YAML:
        for match in re.finditer(r"configs/[\w/.-]+\.(?:yaml|sbatch)", path.read_text()):
            cited.add(match.group(0))
    missing = sorted(c for c in cited if not (REPO / c).is_file())
    assert cited and not missing, missing


# -- each preset's defining settings, built from its YAML ------------------------------------------------------------
def _build(preset: str, monkeypatch):
    """The preset's module and data module, instantiated from its YAML and its tiny variant (tiny towers; the
    objective, heads and input options are the preset's own)."""
    from probmed.cli import TRAINER_DEFAULTS, ProbMedCLI
    from probmed.data.datamodule import ProbMedDataModule
    from probmed.tasks.binding import ProbMedModule

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    cli = ProbMedCLI(ProbMedModule, ProbMedDataModule, run=False, trainer_defaults=TRAINER_DEFAULTS,
                     args=["--config", str(PRESETS / f"{preset}.yaml"),
                           "--config", str(PRESETS / "tiny" / f"{preset}.yaml"), "--trainer.logger", "false"])
    return cli.model, cli.datamodule


def _terms(model) -> list[tuple]:
    """``(type, name, weight, similarity)`` of every term in order (similarity: the pair terms' ``similarity_name``)."""
    return [(type(t).__name__, t.name, t.weight, getattr(t, "similarity_name", None)) for t in model.objective.terms]


def _heads(model) -> dict[str, tuple]:
    return {n: (h.clamp, h.log_var_min, h.log_var_max, h.normalize_mean, h.variance) for n, h in model.heads.items()}


SOFT_DEFAULT = ("soft", -10.0, 5.0, True, "diagonal")


def test_probmed_preset(monkeypatch):
    """ProbMED: InfoNCE over the Hellinger similarity for all six pairs of four modalities, synthetic instance
    sampling (0.1, K = 4) per modality, VIB 1e-4; soft-clamped diagonal heads with unit means."""
    model, data = _build("probmed", monkeypatch)
    pairs = [("text", "cxr"), ("text", "ecg"), ("text", "echo"), ("cxr", "ecg"), ("cxr", "echo"), ("ecg", "echo")]
    assert _terms(model) == (
        [("ProbabilisticInfoNCE", f"infonce/{a}-{b}", 1.0, "hellinger") for a, b in pairs]
        + [("SyntheticSampling", f"synthetic/{m}", 0.1, None) for m in ("cxr", "ecg", "echo", "text")]
        + [("VIB", "vib", 1e-4, None)])
    assert all(t.num_samples == 4 for t in model.objective.terms if type(t).__name__ == "SyntheticSampling")
    assert _heads(model) == {m: SOFT_DEFAULT for m in ("cxr", "ecg", "echo", "text")}
    assert list(data.inputs) == ["cxr", "ecg", "echo", "text"]


def test_demo_trains_the_probmed_loss_on_every_pair(monkeypatch):
    """The embedded demo uses the ProbMED preset's own similarity (the per-dimension Hellinger PS) on all six
    pairs, with its synthetic sampling and VIB: the demo shows the method the project is named after."""
    from probmed.cli import TRAINER_DEFAULTS, ProbMedCLI
    from probmed.data.datamodule import ProbMedDataModule
    from probmed.tasks.binding import ProbMedModule

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["probmed"])
    demo = ProbMedCLI(ProbMedModule, ProbMedDataModule, run=False, trainer_defaults=TRAINER_DEFAULTS,
                      args=["--config", str(REPO / "configs" / "demo.yaml"), "--trainer.logger", "false"]).model
    preset, _ = _build("probmed", monkeypatch)
    assert _terms(demo) == _terms(preset)
    assert {getattr(t, "similarity_name", None) for t in demo.objective.terms} == {"hellinger", None}


def test_clip_preset(monkeypatch):
    """CLIP: cosine InfoNCE CXR<->text, temperature 0.07 learnable, scale clamped at 100."""
    model, _ = _build("clip", monkeypatch)
    assert _terms(model) == [("ProbabilisticInfoNCE", "infonce/cxr-text", 1.0, "cosine"), ("VIB", "vib", 1e-4, None)]
    scale = model.objective.terms[0].logit_scale
    assert math.isclose(float(scale().detach()), 1 / 0.07, rel_tol=1e-6) and math.isclose(scale.max_log, math.log(100))
    assert _heads(model) == {"cxr": SOFT_DEFAULT, "text": SOFT_DEFAULT}


def test_siglip_preset(monkeypatch):
    """SigLIP: sigmoid loss over cosine, scale 10 and bias -10 at initialisation."""
    model, _ = _build("siglip", monkeypatch)
    assert _terms(model) == [("SigLIP", "siglip/cxr-text", 1.0, "cosine"), ("VIB", "vib", 1e-4, None)]
    term = model.objective.terms[0]
    assert math.isclose(float(term.logit_scale().detach()), 10.0, rel_tol=1e-6) and float(term.bias) == -10.0


def test_pcmepp_preset(monkeypatch):
    """PCME++: closed-form sampled distance, match logit -a d + b with a = 5 and b = 7 at init, 0.1 x
    pseudo-positives, log-variance -8 at init."""
    model, _ = _build("pcmepp", monkeypatch)
    assert _terms(model) == [("PCMEpp", "pcmepp/cxr-text", 1.0, "csd"), ("VIB", "vib", 1e-4, None)]
    term = model.objective.terms[0]
    assert float(term.scale) == 5.0 and float(term.shift) == 7.0 and term.pseudo_weight == 0.1
    assert model.objective.terms[1].dim_reduction == "mean"  # PCME++'s KL: .mean() over batch and dimensions
    assert _heads(model) == {"cxr": SOFT_DEFAULT, "text": SOFT_DEFAULT}
    for head in model.heads.values():
        _, log_var = head(torch.zeros(1, head.in_dim))
        assert torch.allclose(log_var, torch.full_like(log_var, -8.0), atol=1e-5)


def _unrelated_match_probability(scale: float, shift: float, log_var: float, batch: int = 64, dim: int = 512):
    """Mean sigmoid(-a CSD + b) over the off-diagonal pairs of independent random unit means (float64)."""
    from probmed.losses.similarity import csd

    gen = torch.Generator().manual_seed(0)
    mu_a, mu_b = (F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=-1) for _ in "ab")
    lv = torch.full((batch, dim), log_var, dtype=torch.float64)
    prob = torch.sigmoid(-scale * csd(mu_a, lv, mu_b, lv) + shift)
    return float(prob[~torch.eye(batch, dtype=torch.bool)].mean())


def test_pcmepp_preset_starts_at_the_base_rate():
    """At the preset's init an unrelated pair's match probability is about 1 / (B - 1), so positives' pull and
    negatives' push balance as in InfoNCE at a uniform start; the paper's b = 5 with the head's default
    log-variance -2 puts every pair at sigmoid(-700): only positives pull, and training collapses each modality to
    one point (docs/results.md, "PCME++ on the embedded corpus")."""
    base_rate = 1 / 63
    assert base_rate / 3 < _unrelated_match_probability(5.0, 7.0, -8.0) < 3 * base_rate
    assert _unrelated_match_probability(5.0, 5.0, -2.0) < 1e-100


def test_medbind_preset(monkeypatch):
    """MEDBind: text-anchored cosine InfoNCE (text<->CXR, text<->ECG) plus the Edge-Modality loss CXR<->ECG on the
    studies that have both."""
    model, _ = _build("medbind", monkeypatch)
    assert _terms(model) == [("ProbabilisticInfoNCE", "infonce/text-cxr", 1.0, "cosine"),
                             ("ProbabilisticInfoNCE", "infonce/text-ecg", 1.0, "cosine"),
                             ("EdgeModalityContrastive", "emcl/cxr-ecg", 1.0, "cosine"), ("VIB", "vib", 1e-4, None)]
    assert model.objective.terms[2].paired_only and not model.objective.terms[0].paired_only


def test_medprobclip_preset_clamps_hard_to_plus_minus_six(monkeypatch):
    """MedProbCLIP: log sigma^2 hard-clamped to [-6, 6] (so 7 -> 6, not the soft clamp's 4.94), means not
    normalised; two views x two sections with weights 1/4 image-text, 1 image-image, 0.1 text-text."""
    model, data = _build("medprobclip", monkeypatch)
    hard = ("hard", -6.0, 6.0, False, "diagonal")
    assert _heads(model) == {"cxr": hard, "text": hard}
    clamped = model.heads["cxr"].clamp_log_var(torch.tensor([7.0, -7.0, 3.0]))
    assert clamped.tolist() == [6.0, -6.0, 3.0]
    (term, vib) = model.objective.terms
    assert (term.image_keys, term.text_keys) == (("cxr", "cxr_view2"), ("text", "text_impression"))
    assert (term.lambda_image, term.lambda_text, vib.weight) == (1.0, 0.1, 1e-4)
    assert model.shared == {"cxr_view2": "cxr", "text_impression": "text"}
    assert data.inputs["cxr"].view == "first" and data.inputs["text"].sections == ["FINDINGS"]
    assert data.inputs["text_impression"].sections == ["IMPRESSION"]


def test_m3bind_distill_preset_distils_text_with_a_log_variance_term():
    own = yaml.safe_load((PRESETS / "m3bind_distill.yaml").read_text())
    assert own["model"]["log_var_weight"] == 0.1 and own["model"]["student"] == "towers/text_bert_base.yaml"
    assert own["data"]["modalities"] == ["text"]
