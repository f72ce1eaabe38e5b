"""Tests of ddpm_lib.oracle: the exact ε, score, density and class posterior of noised Gaussian-mixture
data, and the exact law of the reverse chain for Gaussian data (gaussian_model_marginal). float64.

Each test's docstring names the wrong implementation it catches.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import ddpm_lib as dl

F64 = torch.float64


@pytest.fixture(scope="module")
def sched():
    return dl.make_schedule("linear", 1000)


def alpha_bar_of(s):
    """ᾱ_t = Π_{k ≤ t}(1 − β_k), index = t, computed here from β alone."""
    return torch.cat([torch.ones(1, dtype=F64), torch.cumprod(1 - s.beta[1:], 0)])


MIX = dict(means=torch.tensor([[-2.0, 0.5], [1.5, 1.0], [0.0, -2.5]], dtype=F64),
           stds=torch.tensor([0.3, 0.7, 0.5], dtype=F64),
           weights=torch.tensor([0.2, 0.5, 0.3], dtype=F64))
T_MIXED = torch.tensor([0, 1, 10, 150, 400, 700, 1000, 250])


def scipy_log_joint(s, x, t):
    """log w_k + log N(x; √ᾱ_t μ_k, (ᾱ_t s_k² + 1 − ᾱ_t) I), (B, K), with scipy densities."""
    ab = alpha_bar_of(s)[t].numpy()
    out = np.empty((x.shape[0], 3))
    for i in range(x.shape[0]):
        for k in range(3):
            var = ab[i] * MIX["stds"][k].item() ** 2 + 1 - ab[i]
            out[i, k] = math.log(MIX["weights"][k].item()) + stats.multivariate_normal.logpdf(
                x[i].numpy(), math.sqrt(ab[i]) * MIX["means"][k].numpy(), var * np.eye(2))
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------- closed forms

def test_eps_single_gaussian_formula(sched):
    """For data N(μ, s² I): E[ε | x_t] = √(1−ᾱ_t)(x_t − √ᾱ_t μ)/(ᾱ_t s² + 1 − ᾱ_t), per-sample t and int t.
    Catches: s² where ᾱ_t s² belongs, a missing √(1−ᾱ_t), the sign of the score, ᾱ_{t−1} for ᾱ_t,
    and s stored through float32 (found: GaussianMixture.gaussian rounded s to float32, error 3e-8)."""
    mu, sd = torch.tensor([0.7, -1.2], dtype=F64), 0.4
    data = dl.GaussianMixture.gaussian(mu, sd)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(8, 2, generator=g, dtype=F64)
    t = T_MIXED.clone()
    t[0] = 2                                        # ε at t = 0 is undefined (0/0 form); use t ≥ 1 here
    ab = alpha_bar_of(sched)[t][:, None]
    expected = torch.sqrt(1 - ab) * (x - torch.sqrt(ab) * mu) / (ab * sd ** 2 + 1 - ab)
    torch.testing.assert_close(data.eps(sched, x, t), expected, rtol=1e-10, atol=1e-12)
    ab5 = alpha_bar_of(sched)[5]
    torch.testing.assert_close(data.eps_model(sched)(x, torch.full((8,), 5)),
                               torch.sqrt(1 - ab5) * (x - torch.sqrt(ab5) * mu) / (ab5 * sd ** 2 + 1 - ab5),
                               rtol=1e-10, atol=1e-12)
    assert data.K == 1 and data.D == 2
    assert data.stds.item() == sd                   # kept in float64, not rounded through float32


def test_log_prob_at_t0_is_the_data_density(sched):
    """At t = 0, log q(x_0) is the data density: Σ_k w_k N(x; μ_k, s_k²) by scipy (1-D mixture), and at
    t > 0 the noised mixture (2-D, scipy). Catches: ᾱ_t s_k² + 1 − ᾱ_t wrong, a missing weight, a
    density in the wrong dimension count (log 2π once instead of D times)."""
    data1 = dl.GaussianMixture([-1.0, 2.0], [0.3, 0.8], [0.4, 0.6])
    x = torch.linspace(-3, 4, 50, dtype=F64)[:, None]
    grid = x[:, 0].numpy()
    expected = np.log(0.4 * stats.norm.pdf(grid, -1.0, 0.3) + 0.6 * stats.norm.pdf(grid, 2.0, 0.8))
    torch.testing.assert_close(data1.log_prob(sched, x, 0), torch.from_numpy(expected), rtol=1e-10, atol=1e-12)
    data2 = dl.GaussianMixture(**MIX)
    x2 = 1.5 * torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    expected2 = torch.logsumexp(scipy_log_joint(sched, x2, T_MIXED), dim=1)
    torch.testing.assert_close(data2.log_prob(sched, x2, T_MIXED), expected2, rtol=1e-10, atol=1e-12)
    # Far in the tail the density underflows (e^−125000) but its log is finite: log N(50; 0, 0.1²) by hand.
    far = dl.GaussianMixture([0.0], [0.1], [1.0]).log_prob(sched, torch.tensor([[50.0]], dtype=F64), 0)
    assert far.item() == pytest.approx(-0.5 * math.log(2 * math.pi * 0.01) - 2500 / 0.02, rel=1e-14)


def test_class_posterior_is_bayes(sched):
    """p(k | x_t) = w_k N_k(x_t) / Σ_j w_j N_j(x_t) by hand (scipy densities); rows sum to one.
    Catches: softmax over the batch axis, weights left out, noised variances not used."""
    data = dl.GaussianMixture(**MIX)
    x = 1.5 * torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    post = data.class_posterior(sched, x, T_MIXED)
    joint = scipy_log_joint(sched, x, T_MIXED).exp()
    torch.testing.assert_close(post, joint / joint.sum(1, keepdim=True), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(post.sum(1), torch.ones(8, dtype=F64), rtol=0, atol=1e-12)


def test_log_class_posterior_is_bayes_in_log_space_even_where_p_underflows(sched):
    """log p(k | x_t) = log w_k N_k(x_t) − logsumexp_j log w_j N_j(x_t), from scipy's log densities, also for a
    point 1,000 units out where the far components' p(k | x_t) is 0 in float64. Catches: the log of the
    softmax (−inf there, and a NaN gradient for exact guidance), a log-softmax over the batch axis."""
    data = dl.GaussianMixture(**MIX)
    x = 1.5 * torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    x[0] = torch.tensor([1000.0, 0.0], dtype=F64)
    log_post = data.log_class_posterior(sched, x, T_MIXED)
    log_joint = scipy_log_joint(sched, x, T_MIXED)
    torch.testing.assert_close(log_post, log_joint - torch.logsumexp(log_joint, 1, keepdim=True), rtol=1e-9, atol=1e-9)
    assert torch.isfinite(log_post).all() and (data.class_posterior(sched, x, T_MIXED)[0] == 0).any()


def test_score_is_gradient_of_log_prob(sched):
    """score = ∇_x log q(x_t), checked with autograd of log_prob, t = 0..T mixed.
    Catches: responsibilities not normalised, (x − mean) with the wrong sign, a missing 1/v_k."""
    data = dl.GaussianMixture(**MIX)
    x = (1.5 * torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=F64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(data.log_prob(sched, x, T_MIXED).sum(), x)
    torch.testing.assert_close(data.score(sched, x.detach(), T_MIXED), grad, rtol=1e-9, atol=1e-12)
    # ε = −√(1 − ᾱ_t) · score (Tweedie), for t ≥ 1
    t = T_MIXED[1:]
    ab = alpha_bar_of(sched)[t][:, None]
    torch.testing.assert_close(data.eps(sched, x.detach()[1:], t), -torch.sqrt(1 - ab) * grad[1:],
                               rtol=1e-9, atol=1e-12)


def test_oracle_rejects_bad_t_and_bad_mixtures(sched):
    """t ∈ 0..T (0 allowed: the data); weights must match the means; stds > 0; weights normalised.
    Catches: t = T + 1 silently wrapping, weights not normalised (posterior and sampling skewed)."""
    data = dl.GaussianMixture(**MIX)
    x = torch.zeros(2, 2, dtype=F64)
    for bad in (-1, sched.T + 1, torch.tensor([3, sched.T + 1])):
        with pytest.raises(ValueError):
            data.log_prob(sched, x, bad)
    with pytest.raises(ValueError):
        dl.GaussianMixture(MIX["means"], MIX["stds"], torch.ones(2))
    with pytest.raises(ValueError):
        dl.GaussianMixture(MIX["means"], torch.tensor([0.3, 0.0, 0.5]), MIX["weights"])
    unnormalised = dl.GaussianMixture(MIX["means"], 0.5, torch.tensor([1.0, 2.0, 1.0]))
    torch.testing.assert_close(unnormalised.weights, torch.tensor([0.25, 0.5, 0.25], dtype=F64))
    torch.testing.assert_close(unnormalised.stds, torch.full((3,), 0.5, dtype=F64))


def test_mixture_sample_moments():
    """sample: x (n, D) float64 and labels (n,); label frequencies within 5 binomial SE of the weights,
    per-component means within 5 SE. Catches: uniform labels, stds applied as variances, means mixed up."""
    data = dl.GaussianMixture(**MIX)
    n = 40_000
    x, y = data.sample(n, torch.Generator().manual_seed(4))
    assert x.shape == (n, 2) and x.dtype == F64 and y.shape == (n,)
    freq = torch.bincount(y, minlength=3).to(F64) / n
    w = MIX["weights"]
    assert ((freq - w).abs() < 5 * torch.sqrt(w * (1 - w) / n)).all(), freq
    for k in range(3):
        xk = x[y == k]
        assert ((xk.mean(0) - MIX["means"][k]).abs() < 5 * MIX["stds"][k] / math.sqrt(len(xk))).all()
        assert ((xk.std(0) - MIX["stds"][k]).abs() < 5 * MIX["stds"][k] / math.sqrt(2 * len(xk))).all()


# ---------------------------------------------- ε* is the regression of ε on x_t (Monte Carlo, in bins)

@pytest.mark.parametrize("t", [60, 250])
def test_eps_is_conditional_mean_of_noise(sched, t):
    """ε*(x_t) = E[ε | x_t]: draw x_0 from a bimodal 1-D mixture, ε ~ N(0, 1), x_t = √ᾱ x_0 + √(1−ᾱ) ε;
    in 40 quantile bins of x_t the mean of ε − ε*(x_t) is 0 within 5 SE (tower property: no binning
    bias). A moment-matched single Gaussian's ε fails the same check (the test has power).
    Catches: any oracle that is not the exact posterior mean, e.g. one Gaussian for the mixture,
    the mixture responsibilities computed at t = 0 instead of at t, the wrong noised variance."""
    data = dl.GaussianMixture([-1.0, 2.0], [0.3, 0.8], [0.4, 0.6])
    n, bins = 400_000, 40
    g = torch.Generator().manual_seed(100 + t)
    x0, _ = data.sample(n, g)
    eps = torch.randn(n, 1, generator=g, dtype=F64)
    ab = alpha_bar_of(sched)[t]
    xt = torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * eps
    order = torch.argsort(xt[:, 0])

    def max_abs_z(eps_pred):
        r = (eps - eps_pred)[order, 0].reshape(bins, -1)      # equal-count bins along x_t
        z = r.mean(1) / (r.std(1) / math.sqrt(r.shape[1]))
        return z.abs().max().item()

    assert max_abs_z(data.eps(sched, xt, t)) < 5
    mean = (data.weights * data.means[:, 0]).sum()
    var = (data.weights * (data.stds ** 2 + data.means[:, 0] ** 2)).sum() - mean ** 2
    matched = dl.GaussianMixture.gaussian(mean.item(), var.sqrt().item())
    assert max_abs_z(matched.eps(sched, xt, t)) > 10


# --------------------------------------------------------------------- gaussian_model_marginal

@pytest.mark.parametrize("var", ["beta", "beta_tilde"])
def test_gaussian_model_marginal_matches_simulated_chain(var):
    """The law N(m, v) of the reverse chain's x_0 (exact ε of N(0.5, 0.3²), cosine T = 20) against
    20k runs of sample_ddpm (which adds no noise at t = 1, hence last_step_noise=False): mean and
    variance within 5 SE. With T = 20 the chain's law differs from the data's by far more than the
    tolerance, so a function that returned the data law would fail. last_step_noise=True adds σ_1².
    Catches: A_t or B_t wrong, the variance recursion missing A_t², σ_t² from the wrong variance."""
    mu, sd, n = 0.5, 0.3, 20_000
    s = dl.make_schedule("cosine", 20)
    data = dl.GaussianMixture.gaussian(mu, sd)
    m, v = dl.gaussian_model_marginal(s, mu, sd, var=var, last_step_noise=False)
    x = dl.sample_ddpm(data.eps_model(s), s, (n, 1), generator=torch.Generator().manual_seed(5), var=var,
                       dtype=F64)[:, 0]
    se_m, se_v = math.sqrt(v / n), v * math.sqrt(2 / (n - 1))
    assert abs(x.mean().item() - m) < 5 * se_m
    assert abs(x.var().item() - v) < 5 * se_v
    assert abs(v - sd ** 2) > 10 * se_v                     # the finite chain is visibly not the data
    m1, v1 = dl.gaussian_model_marginal(s, mu, sd, var=var, last_step_noise=True)
    sigma_sq_1 = s.beta[1].item() if var == "beta" else 0.0  # β̃_1 = 0
    assert m1 == m and v1 == pytest.approx(v + sigma_sq_1, rel=1e-12)


def test_gaussian_model_marginal_refuses_an_unknown_variance():
    with pytest.raises(ValueError, match="unknown reverse variance 'sigma'"):
        dl.gaussian_model_marginal(dl.make_schedule("cosine", 20), 0.5, 0.3, var="sigma")


@pytest.mark.parametrize("var", ["beta", "beta_tilde"])
@pytest.mark.parametrize("last_step_noise", [False, True])
def test_gaussian_model_marginal_exact_for_three_large_steps(var, last_step_noise):
    """T = 3 with β = (0.1, 0.3, 0.5), data N(0.5, 0.3²): the reverse chain from x_3 ~ N(0, 1) propagated here by
    hand in the posterior-mean form μ_θ(x_t) = c_0·E[x_0 | x_t] + c_1·x_t (eq. 7's coefficients, Tweedie's
    E[x_0 | x_t] = μ + s²√ᾱ_t (x_t − √ᾱ_t μ)/(ᾱ_t s² + 1 − ᾱ_t)), not the ε form the library uses; agreement to
    1e-12. With three large steps x_3's law still shows in x_0 (weight ≈ 0.1), so the start matters.
    Catches: the chain started from a point mass (v_T = 0), A_t or B_t wrong, σ_1² added or not at t = 1."""
    mu, sd = 0.5, 0.3
    betas = [0.1, 0.3, 0.5]
    s = dl.schedule_from_betas(torch.tensor(betas, dtype=F64))
    ab = [1.0]
    for b in betas:
        ab.append(ab[-1] * (1 - b))
    m, v, weight_of_x_T = 0.0, 1.0, 1.0
    for t in (3, 2, 1):
        b, a, abt, abp = betas[t - 1], 1 - betas[t - 1], ab[t], ab[t - 1]
        k = sd ** 2 * math.sqrt(abt) / (abt * sd ** 2 + 1 - abt)            # E[x_0 | x_t] = mu + k (x_t − √ᾱ_t mu)
        c0, c1 = math.sqrt(abp) * b / (1 - abt), math.sqrt(a) * (1 - abp) / (1 - abt)
        slope, shift = c0 * k + c1, c0 * (mu - k * math.sqrt(abt) * mu)
        sigma_sq = b if var == "beta" else (1 - abp) / (1 - abt) * b
        m, v = slope * m + shift, slope ** 2 * v + (sigma_sq if (t > 1 or last_step_noise) else 0.0)
        weight_of_x_T *= slope                                              # ∂x_0/∂x_3 along the chain
    got_m, got_v = dl.gaussian_model_marginal(s, mu, sd, var=var, last_step_noise=last_step_noise)
    assert got_m == pytest.approx(m, rel=1e-12, abs=1e-14)
    assert got_v == pytest.approx(v, rel=1e-12)
    assert weight_of_x_T > 0.05


def test_a_mixture_without_components_or_weight_is_refused():
    """Catches: ``ring_of_gaussians(0)`` or all-zero weights accepted, to give NaN weights (0/0) and NaN samples."""
    with pytest.raises(ValueError, match="at least one component"):
        dl.ring_of_gaussians(0)
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        dl.GaussianMixture(torch.zeros(2, 1), torch.ones(2), torch.zeros(2))
    mix = dl.GaussianMixture(torch.zeros(2, 1), torch.ones(2), torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(mix.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
