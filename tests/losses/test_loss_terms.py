"""Loss terms and the Objective on one process, against independent references (open_clip, torch.distributions,
hand computations, straightforward re-implementations with torch.nn.functional)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _ddp_loss_worker import make_terms  # the same term set the DDP exactness test runs
from probmed.embedding import GaussianEmbedding
from probmed.losses import (
    VIB,
    EdgeModalityContrastive,
    MedProbCLIP,
    Objective,
    PCMEpp,
    ProbabilisticInfoNCE,
    SigLIP,
    SyntheticSampling,
)
from probmed.losses.base import LossContext
from probmed.losses.regularizers import standard_normal_noise
from probmed.losses.similarity import (
    csd,
    hellinger_from_log_bc,
    log_bhattacharyya_naive,
    medprob_distance_naive,
)

DT = torch.float64


def _emb(b, d, seed, present=None, iso=False, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, d, generator=g, dtype=DT)
    lv = torch.randn(b, 1 if iso else d, generator=g, dtype=DT) * 0.5
    pres = torch.ones(b, dtype=torch.bool) if present is None else torch.as_tensor(present, dtype=torch.bool)
    return GaussianEmbedding(mu.requires_grad_(requires_grad), lv.requires_grad_(requires_grad), pres)


def test_cosine_infonce_equals_open_clip_cliploss():
    import open_clip.loss as open_clip_loss
    b, d = 9, 16
    img, txt = _emb(b, d, 0), _emb(b, d, 1)
    term = ProbabilisticInfoNCE(["cxr", "text"], similarity="cosine", init_logit_scale=1 / 0.07)
    obj = Objective([term]).double()
    out = obj({"cxr": img, "text": txt}, torch.arange(b))
    params = [img.mean, txt.mean, term.logit_scale.log_scale]
    grads = torch.autograd.grad(out.total, params)

    t = term.logit_scale.log_scale.detach().clone().requires_grad_()
    x, y = img.mean.detach().clone().requires_grad_(), txt.mean.detach().clone().requires_grad_()
    ref = open_clip_loss.ClipLoss()(F.normalize(x, dim=-1), F.normalize(y, dim=-1), t.exp())
    ref_grads = torch.autograd.grad(ref, [x, y, t])
    torch.testing.assert_close(out.total, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.parts["infonce/cxr-text"], ref.detach())
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_siglip_equals_open_clip_sigliploss():
    import open_clip.loss as open_clip_loss
    b, d = 7, 12
    img, txt = _emb(b, d, 2), _emb(b, d, 3)
    term = SigLIP(["cxr", "text"])
    obj = Objective([term]).double()
    out = obj({"cxr": img, "text": txt}, torch.arange(b))
    grads = torch.autograd.grad(out.total, [img.mean, txt.mean, term.logit_scale.log_scale, term.bias])
    x, y = img.mean.detach().clone().requires_grad_(), txt.mean.detach().clone().requires_grad_()
    t = term.logit_scale.log_scale.detach().clone().requires_grad_()  # log 10 (as stored in float32)
    bias = term.bias.detach().clone().requires_grad_()
    assert t.item() == pytest.approx(math.log(10.0)) and bias.item() == -10.0
    ref = open_clip_loss.SigLipLoss()(F.normalize(x, dim=-1), F.normalize(y, dim=-1), t.exp(), bias)
    ref_grads = torch.autograd.grad(ref, [x, y, t, bias])
    torch.testing.assert_close(out.total, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("iso", [False, True])
def test_vib_matches_torch_distributions(iso):
    e = _emb(6, 5, 4, present=[1, 0, 1, 1, 0, 1], iso=iso)
    f = _emb(6, 5, 5, present=[1, 1, 1, 1, 1, 0])
    out = Objective([VIB(["cxr", "ecg"], weight=1.0)])({"cxr": e, "ecg": f}, torch.arange(6))
    ref = 0.0
    for emb in (e, f):
        p = torch.distributions.Normal(emb.mean, (0.5 * emb.log_var).exp().expand_as(emb.mean))
        q = torch.distributions.Normal(torch.zeros_like(emb.mean), torch.ones_like(emb.mean))
        kl = torch.distributions.kl_divergence(p, q).sum(-1)
        ref = ref + kl[emb.present].mean()
    torch.testing.assert_close(out.total, ref)


def test_vib_dim_mean_is_pcmepp_kl():
    """``dim_reduction: mean`` is PCME++'s ``-0.5 * (1 + log_var - mu^2 - exp(log_var)).mean()`` per modality
    (naver-ai/pcmepp ClosedFormSampledDistanceLoss.kl_divergence), written out here on the present rows."""
    e = _emb(6, 5, 4, present=[1, 0, 1, 1, 0, 1])
    out = Objective([VIB(["cxr"], weight=1.0, dim_reduction="mean")])({"cxr": e}, torch.arange(6))
    mu, lv = e.mean[e.present], e.log_var[e.present]
    ref = -0.5 * (1 + lv - mu.pow(2) - lv.exp()).mean()
    torch.testing.assert_close(out.total, ref)
    with pytest.raises(ValueError, match="dim_reduction"):
        VIB(["cxr"], dim_reduction="max")


def _batch(b=8, d=6, seed=0):
    pres = {
        "cxr": [1, 1, 0, 1, 1, 1, 0, 1],
        "cxr_view2": [1, 0, 1, 1, 0, 1, 1, 1],
        "ecg": [1, 0, 1, 1, 1, 0, 1, 1],
        "echo": [0, 1, 1, 1, 1, 1, 1, 0],
        "text": [1, 1, 1, 0, 1, 1, 1, 1],
        "text_impression": [1, 1, 0, 1, 1, 1, 1, 1],
    }
    return {k: _emb(b, d, seed + n, present=p[:b], iso=(k == "echo")) for n, (k, p) in enumerate(pres.items())}


def test_missing_rows_never_affect_loss():
    """Changing the values of absent rows (even to NaN) changes nothing; their gradient is exactly zero."""
    torch.manual_seed(0)
    group = torch.tensor([0, 1, 2, 2, 3, 4, 5, 5])
    embs = _batch()
    obj = Objective(make_terms()).double()
    out = obj(embs, group)
    leaves = [t for e in embs.values() for t in (e.mean, e.log_var)]
    grads = torch.autograd.grad(out.total, leaves, allow_unused=True)
    for (k, e), gm, gl in zip(embs.items(), grads[0::2], grads[1::2]):
        absent = ~e.present
        assert gm is not None and torch.isfinite(gm).all()
        assert (gm[absent] == 0).all() and (gl[absent] == 0).all(), k

    changed = {}
    for k, e in embs.items():
        mu, lv = e.mean.detach().clone(), e.log_var.detach().clone()
        mu[~e.present] = torch.randn_like(mu[~e.present]) * 100
        lv[~e.present] = float("nan")
        changed[k] = GaussianEmbedding(mu, lv, e.present)
    obj2 = Objective(make_terms()).double()
    obj2.load_state_dict(obj.state_dict())
    out2 = obj2(changed, group)
    torch.testing.assert_close(out2.total, out.total.detach(), rtol=1e-12, atol=1e-12)
    for k in out.parts:
        torch.testing.assert_close(out2.parts[k], out.parts[k], rtol=1e-12, atol=1e-12)


def test_multi_positive_soft_targets_hand_computed():
    """3 text rows, 3 cxr rows; groups [7, 7, 9]; cxr row 1 absent. Fixed scale 1, cosine of 2-D means."""
    text = GaussianEmbedding(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=DT), torch.zeros(3, 2, dtype=DT),
                             torch.tensor([True, True, True]))
    cxr = GaussianEmbedding(torch.tensor([[1.0, 0.0], [5.0, 5.0], [-1.0, 0.0]], dtype=DT), torch.zeros(3, 2, dtype=DT),
                            torch.tensor([True, False, True]))
    term = ProbabilisticInfoNCE(["text", "cxr"], similarity="cosine", init_logit_scale=1.0, learn_logit_scale=False)
    out = Objective([term]).double()({"text": text, "cxr": cxr}, torch.tensor([7, 7, 9]))
    r = 1 / math.sqrt(2)
    # cosines text_i . cxr_j for present cxr columns j in {0, 2}
    c = {(0, 0): 1.0, (0, 2): -1.0, (1, 0): 0.0, (1, 2): 0.0, (2, 0): r, (2, 2): -r}
    lse = lambda i: math.log(math.exp(c[(i, 0)]) + math.exp(c[(i, 2)]))  # noqa: E731
    # text -> cxr: row 0 and row 1 (group 7) have the single present positive cxr 0; row 2 -> cxr 2
    t2c = ((lse(0) - c[(0, 0)]) + (lse(1) - c[(1, 0)]) + (lse(2) - c[(2, 2)])) / 3
    # cxr -> text: cxr 0 (group 7) has positives text 0 and text 1 (soft 1/2 each); cxr 2 -> text 2
    col = lambda j: math.log(sum(math.exp(c[(i, j)]) for i in range(3)))  # noqa: E731
    c2t = ((col(0) - 0.5 * (c[(0, 0)] + c[(1, 0)])) + (col(2) - c[(2, 2)])) / 2
    assert out.total.item() == pytest.approx(0.5 * (t2c + c2t), rel=1e-12)


def test_edge_modality_loss_is_clip_on_paired_subset():
    import open_clip.loss as open_clip_loss
    cxr = _emb(8, 6, 10, present=[1, 1, 0, 1, 1, 0, 1, 1])
    ecg = _emb(8, 6, 11, present=[1, 0, 1, 1, 1, 1, 0, 1])
    out = Objective([EdgeModalityContrastive(["cxr", "ecg"])]).double()({"cxr": cxr, "ecg": ecg}, torch.arange(8))
    both = cxr.present & ecg.present
    ref = open_clip_loss.ClipLoss()(F.normalize(cxr.mean[both], dim=-1), F.normalize(ecg.mean[both], dim=-1),
                                    torch.tensor(1 / 0.07, dtype=DT))
    torch.testing.assert_close(out.total, ref)


def _sym_ce(logits):
    lab = torch.arange(logits.shape[0])
    return 0.5 * (F.cross_entropy(logits, lab) + F.cross_entropy(logits.t(), lab))


@pytest.mark.parametrize("similarity", ["hellinger", "hellinger_joint", "bhattacharyya", "csd", "medprob"])
def test_probabilistic_infonce_matches_naive(similarity):
    a, b = _emb(6, 5, 12), _emb(6, 5, 13)
    term = ProbabilisticInfoNCE(["cxr", "text"], similarity=similarity, init_logit_scale=3.0)
    out = Objective([term]).double()({"cxr": a, "text": b}, torch.arange(6))
    lbc = log_bhattacharyya_naive(a.mean, a.log_var, b.mean, b.log_var)
    sim = {
        "hellinger": 1.0 - torch.sqrt(1.0 - torch.exp(lbc / a.mean.shape[1])),  # per-dimension BC^(1/D)
        "hellinger_joint": 1.0 - torch.sqrt(1.0 - torch.exp(lbc)),
        "bhattacharyya": lbc,
        "csd": -((a.mean[:, None] - b.mean[None]) ** 2).sum(-1) - a.log_var.exp().sum(-1)[:, None]
        - b.log_var.exp().sum(-1)[None],
        "medprob": -medprob_distance_naive(a.mean, a.log_var, b.mean, b.log_var),
    }[similarity]
    torch.testing.assert_close(out.total, _sym_ce(3.0 * sim))


def _pcmepp_reference(mu1, lv1, mu2, lv2, a, b, alpha):
    """PCME++ as in naver-ai/pcmepp's ClosedFormSampledDistanceLoss (matched = identity), re-derived here."""
    logits = -a * (((mu1[:, None] - mu2[None]) ** 2).sum(-1) + (lv1.exp()[:, None] + lv2.exp()[None]).sum(-1)) + b
    eye = torch.eye(len(mu1), dtype=logits.dtype)
    loss = 2 * F.binary_cross_entropy_with_logits(logits, eye)

    def pseudo(lg):
        gt = lg.diagonal()
        return F.binary_cross_entropy_with_logits(lg, (lg >= gt[:, None]).to(lg.dtype))

    return loss + alpha * (pseudo(logits) + pseudo(logits.t()))


def test_pcmepp_matches_reference():
    a, b = _emb(7, 4, 14), _emb(7, 4, 15)
    # make some pseudo-positives appear: pull two text means towards cxr 0
    with torch.no_grad():
        b.mean[3] = a.mean[0] + 0.01
        a.log_var.mul_(0.1)
    term = PCMEpp(["cxr", "text"])
    out = Objective([term]).double()({"cxr": a, "text": b}, torch.arange(7))
    ref = _pcmepp_reference(a.mean, a.log_var, b.mean, b.log_var, 5.0, 5.0, 0.1)
    torch.testing.assert_close(out.total, ref)
    torch.testing.assert_close(-term.similarity(a, b), csd(a.mean, a.log_var, b.mean, b.log_var))


def test_medprobclip_multiview_multisection_matches_reference():
    keys = ["cxr", "cxr_view2", "text", "text_impression"]
    embs = {k: _emb(5, 4, 20 + n) for n, k in enumerate(keys)}
    term = MedProbCLIP(["cxr", "cxr_view2"], ["text", "text_impression"], init_scale=0.7, init_shift=0.3)
    out = Objective([term]).double()(embs, torch.arange(5))

    def pair(x, y):
        e, f = embs[x], embs[y]
        return _sym_ce(-0.7 * medprob_distance_naive(e.mean, e.log_var, f.mean, f.log_var) + 0.3)

    ref = 0.25 * (pair("cxr", "text") + pair("cxr", "text_impression") + pair("cxr_view2", "text")
                  + pair("cxr_view2", "text_impression")) + 1.0 * pair("cxr", "cxr_view2") \
        + 0.1 * pair("text", "text_impression")
    torch.testing.assert_close(out.total, ref)


def test_synthetic_sampling_matches_loop_reference():
    e = _emb(6, 3, 30, present=[1, 1, 0, 1, 1, 1])
    term = SyntheticSampling("cxr", num_samples=4, seed=123, temperature=2.0)
    obj = Objective([term]).double()
    out = obj({"cxr": e}, torch.arange(6))
    ctx = LossContext({}, {}, torch.arange(6), torch.arange(6), 0, 1, step=0)
    eps = standard_normal_noise(ctx, (4, 3), DT, torch.device("cpu"), 123)
    present = e.present.nonzero().flatten().tolist()
    losses = []
    for i in present:
        for k in range(4):
            z = e.mean[i] + (0.5 * e.log_var[i]).exp() * eps[i, k]
            ll = torch.stack([torch.distributions.Normal(e.mean[j], (0.5 * e.log_var[j]).exp()).log_prob(z).sum()
                              for j in present]) / 2.0
            losses.append(F.cross_entropy(ll[None], torch.tensor([present.index(i)])))
    ref = torch.stack(losses).mean()
    torch.testing.assert_close(out.parts["synthetic/cxr"], ref.detach())
    torch.testing.assert_close(out.total, 0.1 * ref)  # default weight 0.1
    # same seed and step -> same value; next step -> new noise
    obj2 = Objective([SyntheticSampling("cxr", num_samples=4, seed=123, temperature=2.0)]).double()
    torch.testing.assert_close(obj2({"cxr": e}, torch.arange(6)).total, out.total)
    assert obj2({"cxr": e}, torch.arange(6)).total.item() != pytest.approx(out.total.item(), rel=1e-9)


def test_objective_interface_parts_extras_and_modalities():
    embs = _batch()
    obj = Objective(make_terms()).double()
    out = obj(embs, torch.tensor([0, 1, 2, 2, 3, 4, 5, 5]))
    assert obj.modalities == {"cxr", "cxr_view2", "ecg", "echo", "text", "text_impression"}
    assert set(out.parts) == {t.name for t in obj.terms}
    weighted = sum(t.weight * out.parts[t.name] for t in obj.terms)
    torch.testing.assert_close(out.total.detach(), weighted)
    assert out.total.requires_grad and all(not v.requires_grad for v in out.parts.values())
    assert "logit_scale/infonce/text-cxr" in out.extras and out.extras["logit_scale/infonce/text-cxr"].ndim == 0
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.extras.values())
    with pytest.raises(KeyError):
        obj({"cxr": embs["cxr"]}, torch.arange(8))


def test_score_uses_the_pair_term_and_falls_back_to_first():
    embs = _batch()
    obj = Objective(make_terms()).double()
    q, g = embs["text"].detach(), embs["ecg"].detach()
    s = obj.score(q, g, "ecg", "text", chunk=3)
    assert not s.requires_grad and s.shape == (8, 8)
    lbc = log_bhattacharyya_naive(q.mean, q.log_var, g.mean, g.log_var)
    torch.testing.assert_close(s, lbc)  # infonce/text-ecg uses log BC
    assert obj.scoring_term("ecg", "echo").name == "infonce/text-cxr"  # never trained together: first term
    s2 = obj.score(embs["ecg"].detach(), embs["echo"].detach(), "ecg", "echo")
    e, f = embs["ecg"], embs["echo"]
    per_dim = log_bhattacharyya_naive(e.mean, e.log_var, f.mean, f.log_var) / e.mean.shape[1]
    torch.testing.assert_close(s2, hellinger_from_log_bc(per_dim).detach())


def test_objective_from_yaml_with_jsonargparse():
    import jsonargparse
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--objective", type=Objective)
    cfg = parser.parse_string(
        """
objective:
  class_path: probmed.losses.Objective
  init_args:
    terms:
      - class_path: probmed.losses.ProbabilisticInfoNCE
        init_args: {modalities: [text, cxr], weight: 1.0, similarity: hellinger}
      - class_path: probmed.losses.SyntheticSampling
        init_args: {modality: cxr, weight: 0.1, num_samples: 4}
      - class_path: probmed.losses.MedProbCLIP
        init_args: {image_keys: [cxr, cxr_view2], text_keys: [text, text_impression], lambda_text: 0.2}
      - class_path: probmed.losses.EdgeModalityContrastive
        init_args: {modalities: [cxr, ecg]}
      - class_path: probmed.losses.VIB
        init_args: {modalities: [cxr, ecg, echo, text], weight: 1.0e-4}
"""
    )
    obj = parser.instantiate_classes(cfg).objective
    assert isinstance(obj, Objective)
    assert [t.name for t in obj.terms] == ["infonce/text-cxr", "synthetic/cxr", "medprobclip/cxr-text",
                                          "emcl/cxr-ecg", "vib"]
    assert obj.terms[2].lambda_text == 0.2 and obj.terms[4].weight == 1e-4
