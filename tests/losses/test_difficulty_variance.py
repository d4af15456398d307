"""DifficultyVariance: hand-computed value, its minimiser, gradient only to the log-variances, clear errors.
(Exactness across world sizes: the term is in tests/_ddp_loss_worker.py's set.)"""
import math

import pytest
import torch

from probmed.embedding import GaussianEmbedding
from probmed.losses import DifficultyVariance, Objective

DT = torch.float64


def _emb(mean, log_var, present):
    return GaussianEmbedding(torch.tensor(mean, dtype=DT, requires_grad=True),
                             torch.tensor(log_var, dtype=DT, requires_grad=True), torch.tensor(present))


def _batch():
    cxr = _emb([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], [[-1.0, -3.0], [0.0, 0.0], [-2.0, -2.0]], [True, True, True])
    text = _emb([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], [[0.0, 0.0]] * 3, [True, True, False])
    return {"cxr": cxr, "text": text}


def test_value_against_a_loop_by_hand():
    embs, scale, centre = _batch(), 3.0, -2.0
    term = DifficultyVariance(["cxr"], partners={"cxr": ["text"]}, weight=1.0, scale=scale, centre=centre)
    out = Objective([term]).double()(embs, torch.tensor([0, 1, 2]))
    cm, tm = embs["cxr"].mean.detach(), embs["text"].mean.detach()
    rows = []
    for i in range(2):  # cxr row 2's text is absent: no positive, left out
        logits = [scale * float(cm[i] @ tm[j] / (cm[i].norm() * tm[j].norm())) for j in range(2)]
        d = (math.log(sum(math.exp(x) for x in logits)) - logits[i]) / math.log(2)
        u = float(embs["cxr"].log_var[i].detach().mean()) - centre
        rows.append(d * math.exp(-u) + u)
    assert out.total.item() == pytest.approx(sum(rows) / 2, rel=1e-12)


def test_gradient_reaches_only_the_log_variances_and_its_minimum_is_c_plus_log_d():
    embs = _batch()
    term = DifficultyVariance(["cxr"], partners={"cxr": ["text"]}, scale=3.0, centre=-2.0)
    out = Objective([term]).double()(embs, torch.tensor([0, 1, 2]))
    g_mean, g_lv = torch.autograd.grad(out.total, [embs["cxr"].mean, embs["cxr"].log_var], allow_unused=True)
    assert g_mean is None or (g_mean == 0).all()
    assert (g_lv[2] == 0).all() and (g_lv[:2] != 0).all()
    # at u = c + log d the derivative d·(-exp(-u)) + 1 of each row vanishes, whatever the split over dimensions
    lv = embs["cxr"].log_var.detach().clone()
    for i, d in enumerate(_difficulties(embs, 3.0)):
        lv[i] = -2.0 + math.log(d) + torch.tensor([0.7, -0.7], dtype=DT)
    at_min = {"cxr": GaussianEmbedding(embs["cxr"].mean.detach(), lv.requires_grad_(), embs["cxr"].present),
              "text": embs["text"]}
    (g,) = torch.autograd.grad(Objective([term]).double()(at_min, torch.tensor([0, 1, 2])).total, [lv])
    assert g.abs().max().item() < 1e-12


def _difficulties(embs, scale):
    cm = torch.nn.functional.normalize(embs["cxr"].mean.detach(), dim=-1)[:2]
    tm = torch.nn.functional.normalize(embs["text"].mean.detach(), dim=-1)[:2]
    logits = scale * cm @ tm.t()
    return ((torch.logsumexp(logits, 1) - logits.diag()) / math.log(2)).tolist()


def test_errors_are_clear():
    with pytest.raises(ValueError, match="no partner"):
        DifficultyVariance(["cxr"])
    with pytest.raises(ValueError, match="scale"):
        DifficultyVariance(["cxr", "text"], scale=0.0)
