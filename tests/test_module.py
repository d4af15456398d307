"""The LightningModule's embedding of partially present batches (no data files needed)."""
from __future__ import annotations

import torch
from torch import nn

from probmed.losses import Objective, ProbabilisticInfoNCE, VIB
from probmed.module import ProbMedModule


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
        assert "['c']" in str(exc) and "no encoder" in str(exc)
    else:
        raise AssertionError("expected a ValueError")


def test_head_outputs_of_different_dtypes_are_kept():
    """Under CUDA bf16 autocast the L2-normalised mean comes out in float32 and the log-variance in bfloat16
    (found on an H100); embedding must keep each in its own dtype."""
    module = _module()
    head = module.heads["a"]

    class MixedDtypeHead(nn.Module):
        def forward(self, features):
            mean, log_var = head(features)
            return mean.float(), log_var.bfloat16()

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
