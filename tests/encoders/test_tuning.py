"""Fine-tuning controls: LoRA adapters, partial freezing, per-tower / layer-wise learning rates, shared towers for
extra views and sections, and the second-view / IMPRESSION inputs of MedProbCLIP."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from probmed.data.inputs import CXRInput, CXRSecondViewInput, ImpressionInput, TextInput
from probmed.data.readers import read_cxr_dicom
from probmed.data.studies import SkipCounter, StudyCollator, StudyDecoder
from probmed.encoders import ECGEncoder, ImageEncoder, LoRA, TextEncoder
from probmed.encoders.tower_input import run_tower
from probmed.losses import Objective, ProbabilisticInfoNCE, VIB
from probmed.tasks.binding import ProbMedModule
from probmed.optim import GroupRule, ParamGroups

from shardkit import dicom_bytes, study

TINY_BERT = {"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}


def _vit(**kw) -> ImageEncoder:
    return ImageEncoder(model_name="vit_tiny_patch16_224",
                        model_kwargs=dict(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2), **kw)


def _text_batch(b: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1, 50, (b, 7), generator=g), "attention_mask": torch.ones(b, 7, dtype=torch.long)}


def _module(encoders: dict, shared=None, param_groups=None) -> ProbMedModule:
    pairs = [k for k in ("cxr", "text") if k in encoders or (shared and k in shared)]
    objective = Objective([ProbabilisticInfoNCE(pairs, similarity="bhattacharyya"), VIB(pairs, weight=1e-3)])
    return ProbMedModule(encoders, objective, embed_dim=8, shared=shared, param_groups=param_groups)


def _train_step(module: ProbMedModule, batch: dict, lr: float = 0.1) -> dict[str, torch.Tensor]:
    """One AdamW step on the objective; returns the parameters before the step."""
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    module.train()
    out = module.objective(module.embed(batch), batch["group"])
    out.total.backward()
    opt.step()
    return before


def _batch(b: int = 4) -> dict:
    torch.manual_seed(1)
    return {"inputs": {"cxr": torch.randn(b, 1, 16, 16), "text": _text_batch(b)},
            "present": {"cxr": torch.ones(b, dtype=torch.bool), "text": torch.ones(b, dtype=torch.bool)},
            "group": torch.arange(b)}


# -- LoRA ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["text", "image"])
def test_lora_tower_equals_its_base_at_init_and_only_adapters_train(kind):
    torch.manual_seed(0)
    if kind == "text":
        base, x, targets = TextEncoder(config=TINY_BERT), _text_batch(), ["query", "value"]
    else:
        base, x, targets = _vit(), torch.randn(3, 1, 16, 16), ["qkv", "fc2"]
    base.eval()
    with torch.no_grad():
        reference = run_tower(base, x).clone()
    tower = LoRA(base, r=4, alpha=8, target_modules=targets)
    tower.eval()
    with torch.no_grad():
        torch.testing.assert_close(run_tower(tower, x), reference, rtol=0, atol=0)  # B = 0: exactly the base function
    assert tower.output_dim == base.output_dim
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert sum("lora_B" in n for n in trainable) == 2 * 2  # two targets in each of two blocks

    before = {n: p.detach().clone() for n, p in tower.named_parameters()}
    opt = torch.optim.SGD([p for p in tower.parameters() if p.requires_grad], lr=0.5)
    tower.train()
    run_tower(tower, x).square().sum().backward()
    opt.step()
    for n, p in tower.named_parameters():
        if n in trainable:
            assert p.grad is not None
        else:
            assert p.grad is None and torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in tower.named_parameters() if "lora_B" in n)
    tower.eval()
    with torch.no_grad():
        assert not torch.allclose(run_tower(tower, x), reference)  # the adapters now change the function


def test_lora_keeps_norm_trainable_when_asked_and_names_layers_when_targets_miss():
    tower = LoRA(_vit(), r=2, target_modules=["qkv"], trainable=["trunk.norm.*"])
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert {"tower.trunk.norm.weight", "tower.trunk.norm.bias"} <= trainable
    ecg = ECGEncoder(depth=None, layers=[1, 1], widths=[8, 16], expansion=1, stem_widths=[8, 8, 8])
    with pytest.raises(ValueError, match="match no layer of ECGEncoder"):
        LoRA(ecg, target_modules=["query"])


def test_lora_tower_from_a_lightning_style_config():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--tower", type=torch.nn.Module)
    cfg = parser.parse_object({"tower": {"class_path": "probmed.encoders.LoRA", "init_args": {
        "tower": {"class_path": "probmed.encoders.TextEncoder", "init_args": {"config": TINY_BERT}},
        "r": 2, "target_modules": ["query"]}}})
    tower = parser.instantiate_classes(cfg).tower
    assert isinstance(tower, LoRA) and isinstance(tower.tower, TextEncoder)
    assert sum(p.numel() for p in tower.parameters() if p.requires_grad) == 2 * (2 * 16 + 16 * 2)


# -- partial freezing in a training step ---------------------------------------------------------------------------
def test_frozen_tower_parameters_get_no_gradient_and_stay_unchanged():
    torch.manual_seed(0)
    module = _module({"cxr": _vit(freeze=True, unfreeze=["blocks.1.*"]), "text": TextEncoder(config=TINY_BERT, freeze=True)})
    before = _train_step(module, _batch())
    for n, p in module.named_parameters():
        frozen = n.startswith("encoders.text.") or (n.startswith("encoders.cxr.") and ".blocks.1." not in n)
        if frozen:
            assert not p.requires_grad and p.grad is None and torch.equal(p, before[n]), n
    moved = [n for n, p in module.named_parameters() if not torch.equal(p, before[n])]
    assert any(".blocks.1." in n for n in moved) and any(n.startswith("heads.text") for n in moved)


# -- parameter groups ------------------------------------------------------------------------------------------------
def test_param_groups_give_each_tower_and_layer_the_configured_learning_rate():
    torch.manual_seed(0)
    groups = ParamGroups([GroupRule("encoders.text.*", lr_scale=0.1, layer_decay=0.5),
                          GroupRule("encoders.cxr.*", lr_scale=2.0, weight_decay=0.0)])
    module = _module({"cxr": _vit(), "text": TextEncoder(config=TINY_BERT)}, param_groups=groups)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)  # configure_optimizers reads the step count
    module.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    config = module.configure_optimizers()
    lr_of = {}
    for g in config["optimizer"].param_groups:  # "initial_lr": the peak rate the warm-up/cosine schedule scales
        for p in g["params"]:
            lr_of[id(p)] = (g["initial_lr"], g["weight_decay"])
    # BERT with 2 layers: embeddings depth 0, encoder.layer.i depth i + 1; top depth 2 → factor 0.5 ** (2 - depth)
    for n, p in module.named_parameters():
        lr, wd = lr_of[id(p)]
        if n.startswith("encoders.text."):
            depth = 0 if ".embeddings." in n else int(n.split(".encoder.layer.")[1].split(".")[0]) + 1
            assert lr == pytest.approx(1e-3 * 0.1 * 0.5 ** (2 - depth)), n
            assert wd == 0.05
        elif n.startswith("encoders.cxr."):
            assert lr == pytest.approx(2e-3) and wd == 0.0, n
        else:  # heads and the loss's logit scales: the optimizer's own rate
            assert lr == pytest.approx(1e-3) and wd == 0.05, n
    assert len(lr_of) == sum(1 for _ in module.parameters())  # every parameter in exactly one group
    # the schedule runs from each group's own peak: at step 0 every group is at the same warm-up fraction of it
    sched = config["lr_scheduler"]["scheduler"]
    assert sorted(set(round(b, 12) for b in sched.base_lrs)) == sorted(
        set(round(x, 12) for x in (1e-3, 2e-3, 1e-4 * 0.25, 1e-4 * 0.5, 1e-4)))
    fractions = {round(g["lr"] / g["initial_lr"], 12) for g in config["optimizer"].param_groups}
    assert len(fractions) == 1


def test_param_groups_leave_frozen_parameters_out_and_reject_bad_rules():
    module = _module({"cxr": _vit(freeze=True), "text": TextEncoder(config=TINY_BERT)})
    groups = ParamGroups([GroupRule("encoders.cxr.*", lr_scale=0.5)])(module)
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert all(g["name"] != "encoders.cxr.*@0" for g in groups)
    with pytest.raises(ValueError, match="layer_decay"):
        ParamGroups([GroupRule("encoders.*", layer_decay=0.0)])


# -- shared towers (extra views / sections) ----------------------------------------------------------------------
def test_a_shared_key_is_embedded_by_the_tower_and_head_it_names():
    torch.manual_seed(0)
    module = _module({"cxr": _vit(), "text": TextEncoder(config=TINY_BERT)}, shared={"cxr_view2": "cxr"})
    module.eval()
    x = torch.randn(4, 1, 16, 16)
    present = torch.tensor([True, False, True, True])
    with torch.no_grad():
        second = module.embed_modality("cxr_view2", x, present)
        first = module.embed_modality("cxr", x, present)
    torch.testing.assert_close(second.mean, first.mean)
    assert set(module.encoders) == {"cxr", "text"} and set(module.heads) == {"cxr", "text"}
    with pytest.raises(ValueError, match="shared"):
        _module({"cxr": _vit(), "text": TextEncoder(config=TINY_BERT)}, shared={"cxr_view2": "ecg"})


# -- second view and IMPRESSION inputs ------------------------------------------------------------------------------
def test_second_view_and_impression_inputs_decode_their_own_part_of_a_study():
    inputs = {"cxr": CXRInput(size=16, view="first"), "cxr_view2": CXRSecondViewInput(size=16),
              "text": TextInput(max_length=16, sections=["FINDINGS"]), "text_impression": ImpressionInput(max_length=16)}
    two = study("s1", ecg=False, echo=False)
    lateral = np.tile(np.arange(32, dtype=np.uint16) * 100, (32, 1))
    two["cxr.1.dcm"] = dicom_bytes(lateral)
    one = study("s2", ecg=False, echo=False)
    decoder, collate = StudyDecoder(inputs), StudyCollator(inputs)
    skips = SkipCounter()
    studies = [decoder(s, np.random.default_rng(0), True, skips) for s in (two, one)]
    batch = collate(studies, skips.pop_all())
    assert batch["present"]["cxr_view2"].tolist() == [True, False] and batch["present"]["cxr"].tolist() == [True, True]
    expected = CXRInput(size=16).decode({"cxr.0.dcm": two["cxr.1.dcm"]}, {}, np.random.default_rng(0), False)
    torch.testing.assert_close(batch["inputs"]["cxr_view2"][0], expected)
    image, _ = read_cxr_dicom(two["cxr.1.dcm"])
    assert not torch.allclose(batch["inputs"]["cxr"][0], batch["inputs"]["cxr_view2"][0])
    assert image.shape == (32, 32)
    assert torch.all(batch["inputs"]["cxr_view2"][1] == 0)
    assert studies[0]["inputs"]["text"] == "FINDINGS: study s1 is unremarkable."
    assert studies[0]["inputs"]["text_impression"] == "IMPRESSION: Normal."
