"""Pairwise Gaussian similarities against references computed another way (integrals, torch.distributions,
full-covariance textbook formulas, naive broadcasts) in float64."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probmed.losses import similarity as S



@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _rand(n, d, seed, iso=False, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g)
    lv = torch.randn(n, 1 if iso else d, generator=g) * scale
    return mu, lv


def test_log_bc_matches_full_covariance_formula():
    """Bhattacharyya distance D_B = 1/8 dT S^-1 d + 1/2 ln(det S / sqrt(det S1 det S2)), S = (S1 + S2) / 2."""
    mu_a, lv_a = _rand(5, 7, 0)
    mu_b, lv_b = _rand(6, 7, 1)
    got = S.log_bhattacharyya(mu_a, lv_a, mu_b, lv_b)
    ref = torch.empty(5, 6)
    for i in range(5):
        for j in range(6):
            s1, s2 = torch.diag(lv_a[i].exp()), torch.diag(lv_b[j].exp())
            sig = 0.5 * (s1 + s2)
            d = (mu_a[i] - mu_b[j])[:, None]
            db = 0.125 * (d.T @ torch.linalg.solve(sig, d)).squeeze() + 0.5 * (
                torch.logdet(sig) - 0.5 * (torch.logdet(s1) + torch.logdet(s2))
            )
            ref[i, j] = -db
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_hellinger_matches_direct_integral_2d():
    """BC = integral of sqrt(p q) on a 2-D grid; the paper's PS = 1 - sqrt(1 - BC) (``hellinger_joint``)."""
    mu_a = torch.tensor([[0.0, 0.3], [1.0, -0.5]])
    lv_a = torch.tensor([[0.0, -0.5], [0.4, 0.1]])
    mu_b = torch.tensor([[0.5, 0.0], [-0.7, 0.9], [1.0, -0.5]])
    lv_b = torch.tensor([[-0.3, 0.2], [0.5, -0.2], [0.4, 0.1]])
    got = S.hellinger_similarity(mu_a, lv_a, mu_b, lv_b, exponent=1.0)
    torch.testing.assert_close(got, S.pairwise_similarity("hellinger_joint", mu_a, lv_a, mu_b, lv_b))
    xs = np.linspace(-9, 9, 1201)
    gx, gy = np.meshgrid(xs, xs, indexing="ij")
    dx = xs[1] - xs[0]

    def pdf(mu, lv):
        v = np.exp(lv)
        return np.exp(-0.5 * ((gx - mu[0]) ** 2 / v[0] + (gy - mu[1]) ** 2 / v[1])) / (2 * np.pi * np.sqrt(v[0] * v[1]))

    ref = np.empty((2, 3))
    for i in range(2):
        for j in range(3):
            bc = np.sqrt(pdf(mu_a[i].numpy(), lv_a[i].numpy()) * pdf(mu_b[j].numpy(), lv_b[j].numpy())).sum() * dx * dx
            ref[i, j] = bc
    # compare H^2 = (1 - PS)^2 with 1 - BC (the square root amplifies grid error where BC ~ 1)
    np.testing.assert_allclose((1.0 - got.numpy()) ** 2, 1.0 - ref, atol=1e-9)
    mask = ref < 0.999
    np.testing.assert_allclose(got.numpy()[mask], 1.0 - np.sqrt(1.0 - ref[mask]), atol=1e-8)
    assert got[1, 2].item() == pytest.approx(1.0)  # identical Gaussians


def test_per_dimension_hellinger_reduces_to_the_papers_ps():
    """``hellinger`` (PS on BC^(1/D)) is the paper's PS for D = 1, and for D copies of one 1-D pair it is that
    pair's PS whatever D, while the joint form falls towards 0 as D grows (BC^D)."""
    g = torch.Generator().manual_seed(3)
    mu_a, lv_a, mu_b, lv_b = (torch.randn(4, 1, generator=g), torch.randn(4, 1, generator=g),
                              torch.randn(5, 1, generator=g), torch.randn(5, 1, generator=g))
    ps_1d = S.pairwise_similarity("hellinger_joint", mu_a, lv_a, mu_b, lv_b)
    torch.testing.assert_close(S.pairwise_similarity("hellinger", mu_a, lv_a, mu_b, lv_b), ps_1d)
    for d in (8, 512):
        rep = [t.expand(-1, d) for t in (mu_a, lv_a, mu_b, lv_b)]
        torch.testing.assert_close(S.pairwise_similarity("hellinger", *rep), ps_1d, rtol=1e-9, atol=1e-9)
        bc_1d = 1.0 - (1.0 - ps_1d) ** 2
        torch.testing.assert_close(S.pairwise_similarity("hellinger_joint", *rep), 1.0 - torch.sqrt(1.0 - bc_1d ** d))


@pytest.mark.parametrize("fused", [False, True])
def test_identical_gaussians_give_exactly_one_in_float32(fused):
    """D = 512, float32, unnormalised means and spread log-variances: log BC of a Gaussian with itself is exactly
    0 and both Hellinger similarities exactly 1 (per-sample sums of about +-600 no longer cancel in the sum)."""
    # without a C compiler fused=True falls back to the eager kernel (one warning): the result must be the same
    g = torch.Generator().manual_seed(0)
    mu = (torch.randn(64, 512, generator=g) * 3.0).float()
    lv = (torch.randn(64, 512, generator=g) * 1.5 - 2.0).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        log_bc = S.log_bhattacharyya(mu, lv, mu, lv, fused=fused)
    assert log_bc.dtype == torch.float32
    assert torch.equal(log_bc.diagonal(), torch.zeros(64))
    assert (log_bc <= 0).all()
    for exponent in (1.0, 1.0 / 512):
        assert torch.equal(S.hellinger_from_log_bc(log_bc, exponent).diagonal(), torch.ones(64))
    # isotropic matmul form: ||mu_i - mu_j||^2 = |mu_i|^2 + |mu_j|^2 - 2 mu_i.mu_j keeps a round-off of a few ulps
    # of |mu|^2 (as any matmul distance); with unit means (the heads' default) that is ~1e-7
    unit = F.normalize(mu, dim=-1)
    iso = S.log_bhattacharyya(unit, lv[:, :1], unit, lv[:, :1])
    assert iso.diagonal().abs().max() < 1e-5


def test_per_dimension_hellinger_does_not_saturate_at_d512():
    """The probe behind the choice (float64, B 256, D 512): with unnormalised means or log-variances near -4 the
    joint PS is within 1e-6 of 0 for over 99 % of pairs (every negative) and its gradient is < 2 % of the
    per-dimension PS's; the per-dimension PS keeps every value in (1e-6, 1) and a gradient of the size of
    log BC's / D (it is a smooth function of log BC / D)."""
    g = torch.Generator().manual_seed(1)
    b, d = 256, 512
    cases = {
        "unnormalised means": (torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 0.5 - 2.0),
        "log-variance near -4": (F.normalize(torch.randn(b, d, generator=g), dim=-1),
                                 torch.randn(b, d, generator=g) * 0.5 - 4.0),
    }
    for name, (mu, lv) in cases.items():
        mu2 = mu + 0.3 * torch.randn(b, d, generator=g) * mu.std()
        lv2 = lv + 0.3 * torch.randn(b, d, generator=g)
        leaves = [t.clone().requires_grad_() for t in (mu, lv, mu2, lv2)]
        joint = S.pairwise_similarity("hellinger_joint", *leaves)
        assert (joint < 1e-6).float().mean() > 0.99, name  # every negative pair; the positives barely above
        grad_joint = torch.autograd.grad(joint.sum(), leaves[0])[0]
        per_dim = S.pairwise_similarity("hellinger", *leaves)
        assert ((per_dim > 1e-6) & (per_dim < 1)).all(), name
        grad_pd = torch.autograd.grad(per_dim.sum(), leaves[0])[0]
        assert grad_joint.norm() < 0.02 * grad_pd.norm(), name
        grad_bc = torch.autograd.grad(S.log_bhattacharyya(*leaves).sum() / d, leaves[0])[0]
        ratio = grad_pd.norm() / grad_bc.norm()
        assert 0.05 < ratio < 20, (name, float(ratio))


def test_hellinger_gradient_finite_at_identical_gaussians():
    mu = torch.randn(3, 4, requires_grad=True)
    lv = torch.zeros(3, 4, requires_grad=True)
    ps = S.hellinger_similarity(mu, lv, mu, lv)
    ps.sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(lv.grad).all()
    torch.testing.assert_close(ps.diagonal(), torch.ones(3))


@pytest.mark.parametrize("iso_a,iso_b", [(True, True), (True, False), (False, True)])
def test_isotropic_path_equals_diagonal_with_repeated_variances(iso_a, iso_b):
    d = 9
    mu_a, lv_a = _rand(4, d, 2, iso=iso_a)
    mu_b, lv_b = _rand(5, d, 3, iso=iso_b)
    for t in (mu_a, lv_a, mu_b, lv_b):
        t.requires_grad_()
    rep = lambda lv: lv.expand(-1, d) if lv.shape[1] == 1 else lv  # noqa: E731
    g = torch.randn(4, 5)
    for fn in (S.log_bhattacharyya, S.medprob_distance, S.csd, S.hellinger_similarity):
        out_iso = fn(mu_a, lv_a, mu_b, lv_b)
        grads_iso = torch.autograd.grad((out_iso * g).sum(), (mu_a, lv_a, mu_b, lv_b))
        out_diag = fn(mu_a, rep(lv_a), mu_b, rep(lv_b))
        grads_diag = torch.autograd.grad((out_diag * g).sum(), (mu_a, lv_a, mu_b, lv_b))
        torch.testing.assert_close(out_iso, out_diag, rtol=1e-10, atol=1e-10)
        for x, y in zip(grads_iso, grads_diag):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)


def test_log_bc_naive_and_self_overlap():
    mu_a, lv_a = _rand(6, 5, 4)
    mu_b, lv_b = _rand(7, 5, 5)
    torch.testing.assert_close(S.log_bhattacharyya(mu_a, lv_a, mu_b, lv_b), S.log_bhattacharyya_naive(mu_a, lv_a, mu_b, lv_b))
    torch.testing.assert_close(S.log_bhattacharyya(mu_a, lv_a, mu_a, lv_a).diagonal(), torch.zeros(6), atol=1e-12, rtol=0)


def test_csd_is_expected_squared_distance_of_samples():
    """CSD = E ||z1 - z2||^2, z1 ~ p, z2 ~ q: exact broadcast and a Monte Carlo estimate."""
    mu_a, lv_a = _rand(3, 4, 6)
    mu_b, lv_b = _rand(2, 4, 7)
    got = S.csd(mu_a, lv_a, mu_b, lv_b)
    exact = ((mu_a[:, None] - mu_b[None]) ** 2).sum(-1) + lv_a.exp().sum(-1)[:, None] + lv_b.exp().sum(-1)[None]
    torch.testing.assert_close(got, exact)
    g = torch.Generator().manual_seed(0)
    k = 200_000
    za = mu_a[:, None] + (0.5 * lv_a).exp()[:, None] * torch.randn(3, k, 4, generator=g)
    zb = mu_b[:, None] + (0.5 * lv_b).exp()[:, None] * torch.randn(2, k, 4, generator=g)
    mc = ((za[:, None] - zb[None]) ** 2).sum(-1).mean(-1)
    torch.testing.assert_close(got, mc, rtol=2e-2, atol=0)


def test_medprob_distance_matches_paper_formula():
    mu_a, lv_a = _rand(4, 6, 8)
    mu_b, lv_b = _rand(3, 6, 9)
    ref = torch.empty(4, 3)
    for i in range(4):
        for j in range(3):
            s = lv_a[i].exp() + lv_b[j].exp()
            ref[i, j] = 0.5 * ((mu_a[i] - mu_b[j]) ** 2 / s + s.log()).sum()
    torch.testing.assert_close(S.medprob_distance(mu_a, lv_a, mu_b, lv_b), ref)


def test_cosine():
    mu_a, _ = _rand(4, 6, 10)
    mu_b, _ = _rand(5, 6, 11)
    ref = F.cosine_similarity(mu_a[:, None], mu_b[None], dim=-1)
    torch.testing.assert_close(S.cosine(mu_a, mu_b), ref)


@pytest.mark.parametrize("iso", [False, True])
def test_gaussian_log_likelihood_matches_torch_distributions(iso):
    z, _ = _rand(7, 5, 12)
    mu, lv = _rand(4, 5, 13, iso=iso)
    dist = torch.distributions.Normal(mu[None], (0.5 * lv).exp()[None].expand(1, 4, 5))
    ref = dist.log_prob(z[:, None, :]).sum(-1)
    torch.testing.assert_close(S.gaussian_log_likelihood(z, mu, lv), ref)
