"""The LightningModule's embedding of partially present batches (no data files needed)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from probmed.losses import Objective, ProbabilisticInfoNCE, VIB
from probmed.tasks.binding import ProbMedModule


class Recorder(nn.Module):
    """A linear tower that records the batch sizes it saw (to prove placeholders never reach it)."""

    output_dim = 3

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        return self.linear(x)


def _module():
    objective = Objective([ProbabilisticInfoNCE(["a", "b"], similarity="bhattacharyya"), VIB(["a", "b"], weight=1e-3)])
    return ProbMedModule({"a": Recorder(), "b": Recorder()}, objective, embed_dim=5)


def test_missing_rows_never_reach_the_tower_and_get_no_gradient():
    module = _module()
    x = torch.randn(6, 4)
    present = torch.tensor([True, False, True, True, False, True])
    emb = module.embed_modality("a", x, present)
    assert module.encoders["a"].seen == [4]
    assert emb.mean.shape == (6, 5) and emb.log_var.shape == (6, 5)
    assert torch.all(emb.mean[~present] == 0) and torch.all(emb.log_var[~present] == 0)
    alone = module.embed_modality("a", x[present], torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(emb.mean[present], alone.mean)


def test_a_modality_absent_from_the_whole_batch_keeps_every_parameter_in_the_graph():
    module = _module()
    batch = {"inputs": {"a": torch.randn(4, 4), "b": torch.randn(4, 4)},
             "present": {"a": torch.ones(4, dtype=torch.bool), "b": torch.zeros(4, dtype=torch.bool)},
             "group": torch.arange(4)}
    out = module.objective(module.embed(batch), batch["group"])
    out.total.backward()
    grads = {n: p.grad for n, p in module.named_parameters() if n.startswith("encoders.b")}
    assert grads and all(g is not None and torch.all(g == 0) for g in grads.values())  # in the graph, exactly zero


def test_config_naming_a_modality_without_encoder_fails_clearly():
    objective = Objective([ProbabilisticInfoNCE(["a", "c"])])
    try:
        ProbMedModule({"a": Recorder()}, objective)
    except ValueError as exc:
        assert "['c']" in str(exc) and "no tower in model.encoders" in str(exc)
    else:
        raise AssertionError("expected a ValueError")


def test_head_outputs_of_different_dtypes_are_kept():
    """Under CUDA bf16 autocast the L2-normalised mean comes out in float32 and the log-variance in bfloat16
    (found on an H100); embedding must keep each in its own dtype."""
    module = _module()
    head = module.heads["a"]

    class MixedDtypeHead(nn.Module):
        def parts(self, features):  # what embed_modality calls: mean, log-variance, quality part (none)
            mean, log_var = head(features)
            return mean.float(), log_var.bfloat16(), None

    module.heads["a"] = MixedDtypeHead()
    present = torch.tensor([True, False, True, True])
    emb = module.embed_modality("a", torch.randn(4, 4), present)
    assert emb.mean.dtype == torch.float32 and emb.log_var.dtype == torch.bfloat16
    assert torch.all(emb.mean[1] == 0) and torch.all(emb.log_var[1] == 0)
    out = module.objective({"a": emb, "b": module.embed_modality("b", torch.randn(4, 4), torch.ones(4, dtype=torch.bool))},
                           torch.arange(4))
    out.total.backward()
    assert torch.isfinite(out.total)


class NormedRecorder(Recorder):
    """A tower with batch norm: a training forward of a single row raises in torch."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x):
        return super().forward(self.norm(x))


def test_a_single_present_row_in_a_batchnorm_tower_trains_and_keeps_only_that_row():
    objective = Objective([ProbabilisticInfoNCE(["a", "b"], similarity="bhattacharyya")])
    module = ProbMedModule({"a": NormedRecorder(), "b": Recorder()}, objective, embed_dim=5).train()
    x = torch.randn(5, 4)
    present = torch.tensor([False, False, True, False, False])
    emb = module.embed_modality("a", x, present)  # BatchNorm1d alone would raise on one row
    assert module.encoders["a"].seen == [5]  # the placeholders joined that one forward
    assert torch.all(emb.mean[~present] == 0) and torch.any(emb.mean[present] != 0)
    emb.mean[present].sum().backward()
    assert module.encoders["a"].linear.weight.grad.abs().sum() > 0
    # towers without batch norm still see only the present row; evaluation (running statistics) too
    module.embed_modality("b", x, present)
    assert module.encoders["b"].seen == [1]
    module.eval().embed_modality("a", x, present)
    assert module.encoders["a"].seen == [5, 1]


def test_channels_last_towers_embed_as_the_default_layout_and_keep_it_through_a_checkpoint(tmp_path):
    """``channels_last=True`` only changes the layout of the towers' 2-D convolution weights: the embeddings and
    gradients equal those of the default layout (up to float rounding), and a state dict saved from one layout
    loads into the other."""
    import yaml

    from probmed.encoders import EchoEncoder, ImageEncoder
    from probmed.losses import Objective, ProbabilisticInfoNCE

    demo_towers = Path(__file__).parents[2] / "configs" / "presets" / "towers" / "demo"
    towers = yaml.safe_load((demo_towers / "echo.yaml").read_text())["init_args"]
    cxr = yaml.safe_load((demo_towers / "cxr.yaml").read_text())["init_args"]

    def build(channels_last: bool) -> ProbMedModule:
        torch.manual_seed(0)
        objective = Objective([ProbabilisticInfoNCE(["cxr", "echo"], similarity="hellinger")])
        return ProbMedModule({"cxr": ImageEncoder(**cxr), "echo": EchoEncoder(**{**towers, "num_frames": 4})},
                             objective, embed_dim=8, channels_last=channels_last)

    plain, nhwc = build(False), build(True)
    convs = [p for p in nhwc.encoders.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)  # (a 1-input-channel kernel is contiguous either way)
    g = torch.Generator().manual_seed(1)
    batch = {"inputs": {"cxr": torch.randn(3, 1, 32, 32, generator=g),
                        "echo": {"frames": torch.randn(3, 4, 1, 24, 24, generator=g),
                                 "frame_mask": torch.ones(3, 4, dtype=torch.bool)}},
             "present": {"cxr": torch.ones(3, dtype=torch.bool), "echo": torch.ones(3, dtype=torch.bool)},
             "group": torch.arange(3)}
    losses = []
    for module in (plain, nhwc):
        emb = module.embed(batch)
        out = module.objective(emb, batch["group"])
        out.total.backward()
        losses.append((emb, out.total))
    for k in ("cxr", "echo"):
        torch.testing.assert_close(losses[1][0][k].mean, losses[0][0][k].mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses[1][1], losses[0][1], rtol=1e-4, atol=1e-5)
    for (n, p), q in zip(plain.named_parameters(), nhwc.parameters()):
        scale = float(p.grad.abs().max())  # float rounding differs with the layout: compare at the tensor's scale
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-3 * scale, msg=lambda m, n=n: f"{n}: {m}")
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    nhwc.load_state_dict(torch.load(tmp_path / "plain.pt", weights_only=True))
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in nhwc.encoders.parameters() if p.dim() == 4)
    torch.testing.assert_close(dict(nhwc.state_dict()), dict(plain.state_dict()))


class Wider(Recorder):
    """A tower of another architecture (different parameter shapes)."""

    output_dim = 3

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 3)


def test_init_from_starts_a_tower_and_head_as_a_copy_that_then_trains_apart():
    objective = Objective([ProbabilisticInfoNCE(["a", "b"]), ProbabilisticInfoNCE(["a", "c"])])
    torch.manual_seed(0)
    module = ProbMedModule({"a": Recorder(), "b": Recorder(), "c": Recorder()}, objective, embed_dim=5,
                           init_from={"b": "a", "c": "a"})
    for part in (module.encoders, module.heads):
        for name, value in part["a"].state_dict().items():
            assert torch.equal(part["b"].state_dict()[name], value)
            assert torch.equal(part["c"].state_dict()[name], value)
            assert part["b"].state_dict()[name].data_ptr() != value.data_ptr()  # copies, not shared storage
    x = torch.randn(4, 4)
    torch.testing.assert_close(module.embed_modality("a", x, torch.ones(4, dtype=torch.bool)).mean,
                               module.embed_modality("b", x, torch.ones(4, dtype=torch.bool)).mean)
    with torch.no_grad():
        module.encoders["b"].linear.weight.add_(1.0)
    assert not torch.equal(module.encoders["a"].linear.weight, module.encoders["b"].linear.weight)
    # without init_from the same seed gives different weights
    torch.manual_seed(0)
    plain = ProbMedModule({"a": Recorder(), "b": Recorder(), "c": Recorder()}, objective, embed_dim=5)
    assert not torch.equal(plain.encoders["a"].linear.weight, plain.encoders["b"].linear.weight)


def test_init_from_refuses_unknown_chained_and_mismatched_towers():
    objective = Objective([ProbabilisticInfoNCE(["a", "b"])])
    cases = [({"a": Recorder(), "b": Recorder()}, {"b": "z"}, "two distinct encoders"),
             ({"a": Recorder(), "b": Recorder()}, {"b": "b"}, "two distinct encoders"),
             ({"a": Recorder(), "b": Recorder(), "c": Recorder()}, {"b": "a", "c": "b"}, "give the origin"),
             ({"a": Recorder(), "b": Wider()}, {"b": "a"}, "differ in architecture")]
    for encoders, init_from, message in cases:
        try:
            ProbMedModule(encoders, objective, embed_dim=5, init_from=init_from)
        except ValueError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"init_from {init_from} was accepted")
