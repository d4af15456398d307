"""Quality augmentation: clear errors for modalities without corruptions, the ranking loss as documented, and a
short training that makes the variance of degraded ECGs exceed that of clean ones on records it never saw."""
import pytest
import torch

from probmed.encoders import ECGEncoder, HeadOptions
from probmed.evaluation.corruptions import corrupt
from probmed.losses import VIB, Objective
from probmed.tasks.binding import ProbMedModule
from probmed.training.quality_augmentation import QualityAugmentation


def _module(aug: QualityAugmentation, row_level: str = "objective") -> ProbMedModule:
    torch.manual_seed(0)
    ecg = ECGEncoder(depth=None, layers=[1, 1], widths=[8, 16], expansion=1, stem_widths=[8, 8, 8])
    return ProbMedModule({"ecg": ecg}, Objective([VIB(["ecg"], weight=1e-4)]), embed_dim=8,
                         head=HeadOptions(row_level=row_level), quality_augmentation=aug)


def _records(n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 10, 500)
    rate = 1 + torch.rand(n, 1, 1, generator=g)
    signal = torch.sin(2 * torch.pi * rate * t) * (0.5 + torch.rand(n, 12, 1, generator=g))
    return {"signal": signal.float(), "lead_mask": torch.ones(n, 12, dtype=torch.bool)}


def test_a_modality_without_corruptions_is_a_clear_error_naming_those_with():
    with pytest.raises(ValueError, match=r"no corruptions for 'retina'.*'ecg'.*like"):
        QualityAugmentation(modalities=["retina"])
    assert QualityAugmentation(modalities=["retina"], like={"retina": "cxr"}).kinds_of("retina") == \
        ["blur", "contrast", "exposure", "noise", "rotation"]
    assert QualityAugmentation(modalities=["cxr"], kinds={"cxr": ["noise", "blur"]}).kinds_of("cxr") == ["blur", "noise"]
    with pytest.raises(ValueError, match=r"kinds.cxr: \['speckle'\]; cxr has"):
        QualityAugmentation(modalities=["cxr"], kinds={"cxr": ["speckle"]})
    with pytest.raises(ValueError, match="fraction"):
        QualityAugmentation(fraction=0.0)


def test_the_copies_share_the_batch_forward_and_the_loss_is_the_severity_scaled_hinge():
    aug = QualityAugmentation(modalities=["ecg"], fraction=0.5, max_severity=2.0, margin=3.0, weight=2.0)
    module = _module(aug).train()
    batch = {"inputs": {"ecg": _records(8, 1)}, "present": {"ecg": torch.ones(8, dtype=torch.bool)}}
    torch.manual_seed(5)
    emb, copies = aug.embed(module, batch, ["ecg"])
    loss, logs = aug.loss(emb, copies)
    torch.manual_seed(5)  # the same draws, by hand: 4 rows, a kind, a severity, a seed
    rows = torch.arange(8)[torch.randperm(8)[:4]]
    kind = aug.kinds_of("ecg")[int(torch.randint(3, ()))]
    severity = float(torch.rand(())) * 2.0
    seed = int(torch.randint(2**31 - 1, ()))
    degraded = corrupt("ecg", kind, {k: v[rows] for k, v in batch["inputs"]["ecg"].items()}, severity, seed)
    # one forward of the 8 rows and their 4 copies (the tower's batch-norm sees them together)
    both = {k: torch.cat([batch["inputs"]["ecg"][k], degraded[k]]) for k in degraded}
    ref = module.embed_modality("ecg", both, torch.ones(12, dtype=torch.bool))
    torch.testing.assert_close(emb["ecg"].log_var, ref.log_var[:8])
    torch.testing.assert_close(copies["ecg"][0].log_var, ref.log_var[8:])
    gap = ref.log_var[8:].mean(-1) - ref.log_var[:8][rows].mean(-1)
    torch.testing.assert_close(loss, 2.0 * torch.relu(3.0 * severity / 2.0 - gap).mean())
    assert set(logs) == {"quality/ecg", "quality_gap/ecg"}


@pytest.mark.parametrize("row_level", ["objective", "quality"])
def test_training_on_the_ranking_alone_raises_the_variance_of_degraded_records_it_never_saw(row_level):
    aug = QualityAugmentation(modalities=["ecg"], fraction=0.5, max_severity=3.0, margin=1.0,
                              kinds={"ecg": ["noise", "baseline_wander", "lead_dropout"]})
    module = _module(aug, row_level).train()
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    for step in range(60):
        torch.manual_seed(step)
        batch = {"inputs": {"ecg": _records(16, 100 + step)}, "present": {"ecg": torch.ones(16, dtype=torch.bool)}}
        loss, _ = aug.loss(*aug.embed(module, batch, ["ecg"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    fresh = _records(32, 7)
    present = torch.ones(32, dtype=torch.bool)
    with torch.no_grad():
        clean = module.embed_modality("ecg", fresh, present).log_var.mean(-1)
        for kind in aug.kinds_of("ecg"):
            noisy = module.embed_modality("ecg", corrupt("ecg", kind, fresh, 3.0, seed=1), present).log_var.mean(-1)
            assert (noisy > clean).float().mean() > 0.8, kind


@pytest.mark.parametrize("ranking_only", [False, True])
def test_ranking_only_leaves_the_objective_the_level_of_the_variance_not_its_row_to_row_differences(ranking_only):
    """With ``ranking_only`` the objective (here the VIB, whose KL depends on the variance) sees the same variances
    and loss, and its gradient reaches every present row's log-variance equally (the mean of the rows' gradients:
    the level); the ranking still trains the row-to-row differences."""
    aug = QualityAugmentation(modalities=["ecg"], fraction=0.5, ranking_only=ranking_only)
    module = _module(aug).train()
    present = torch.ones(8, dtype=torch.bool)
    present[6:] = False
    batch = {"inputs": {"ecg": _records(8, 1)}, "present": {"ecg": present}, "group": torch.arange(8)}
    torch.manual_seed(3)
    emb, copies = aug.embed(module, batch, ["ecg"])
    seen = aug.for_objective(emb)
    torch.testing.assert_close(seen["ecg"].log_var, emb["ecg"].log_var)
    out = module.objective(seen, batch["group"])
    reference = module.objective(emb, batch["group"])
    torch.testing.assert_close(out.total, reference.total)
    grad = torch.autograd.grad(out.total, emb["ecg"].log_var, retain_graph=True)[0]  # [8, D]
    full = torch.autograd.grad(reference.total, emb["ecg"].log_var, retain_graph=True)[0]
    if ranking_only:
        torch.testing.assert_close(grad[:6], full[:6].mean(0, keepdim=True).expand(6, -1))
        assert grad[6:].abs().max() == 0  # absent rows carry nothing
    else:
        torch.testing.assert_close(grad, full)
        assert (full[:6] - full[:6].mean(0)).abs().max() > 0  # the VIB's gradient differs from row to row
    rank_grad = torch.autograd.grad(aug.loss(emb, copies)[0], emb["ecg"].log_var)[0]
    assert (rank_grad[:6] - rank_grad[:6].mean(0)).abs().max() > 0


def test_a_quality_heads_part_is_trained_by_the_ranking_alone_and_seen_by_the_objective():
    """With ``head.row_level: quality`` the objective gets the same variances and loss, but none of its gradient
    reaches the quality part (its layer gets exactly zero) while the rest of the head still learns from it; the
    ranking's gradient reaches the quality part."""
    aug = QualityAugmentation(modalities=["ecg"], fraction=0.5)
    module = _module(aug, "quality").train()
    head = module.heads["ecg"]
    batch = {"inputs": {"ecg": _records(8, 1)}, "present": {"ecg": torch.ones(8, dtype=torch.bool)},
             "group": torch.arange(8)}
    torch.manual_seed(3)
    emb, copies = aug.embed(module, batch, ["ecg"])
    assert emb["ecg"].quality.shape == (8, 1) and copies["ecg"][0].quality.shape == (4, 1)
    seen = aug.for_objective(emb)
    assert torch.equal(seen["ecg"].log_var, emb["ecg"].log_var)  # the same values, bit for bit
    out = module.objective(seen, batch["group"])
    torch.testing.assert_close(out.total, module.objective(emb, batch["group"]).total)
    objective_grads = torch.autograd.grad(out.total, [head.quality.weight, head.level, head.log_var.weight],
                                          retain_graph=True, allow_unused=True)
    assert objective_grads[0].abs().max() == 0
    assert objective_grads[1].abs() > 0 and objective_grads[2].abs().max() > 0
    loss, logs = aug.loss(emb, copies)
    ranking_grad = torch.autograd.grad(loss, head.quality.weight, retain_graph=True)[0]
    assert ranking_grad.abs().max() > 0
    # the loss is the hinge plus the anchor (weight 1) of the originals' quality parts, computed here by hand
    copy, rows, severity = copies["ecg"]
    gap = copy.quality.squeeze(-1) - emb["ecg"].quality[rows].squeeze(-1)  # = the rows' log mean variances'
    torch.testing.assert_close(gap, copy.log_var.exp().mean(-1).log() - emb["ecg"].log_var[rows].exp().mean(-1).log())
    hinge = torch.relu(aug.margin * severity / aug.max_severity - gap).mean()
    torch.testing.assert_close(loss, hinge + emb["ecg"].quality.square().mean())
    assert set(logs) == {"quality/ecg", "quality_gap/ecg", "quality_anchor/ecg"}
    with pytest.raises(ValueError, match="anchor must be"):
        QualityAugmentation(anchor=-1.0)
