"""Exercise 9.3's check, checks.check_reverse_step_mixture: it passes eq. (9.4), names the usual slips in deriving it,
and its two oracles (Bayes' rule on a grid, the Gaussian conditional for one component) are right on their own."""
import math

import torch

import ddpm_lib as dl
from ddpm_lib import checks
from ddpm_lib.checks import ddgan as nb09

from test_checks import assert_fails, assert_passes

f64 = torch.float64


def reverse_step_mixture(s, xt, t, means, var, weights, prior="noised", sqrt_alpha=True, post_var="precisions",
                         normalise=True, log_space=True):
    """q(x_{t−1} | x_t) = Σ_k π_k N(μ_k, S) written as a student might, with the Kalman-gain form of μ_k (the check's
    reference uses the precision form), and the slips switched on one at a time."""
    ab_prev = {"noised": s.alpha_bar[t - 1], "clean": torch.ones((), dtype=f64), "to_t": s.alpha_bar[t]}[prior]
    alpha, beta = s.alpha[t], s.beta[t]
    c = alpha.sqrt() if sqrt_alpha else alpha
    a, V = ab_prev.sqrt() * means, ab_prev * var + 1 - ab_prev
    S = {"precisions": 1 / (c ** 2 / beta + 1 / V), "sum": beta / alpha + V, "likelihood": beta / alpha}[post_var]
    x = xt[..., None]
    mu = a + c * V / (c ** 2 * V + beta) * (x - c * a) if post_var == "precisions" else S * (c * x / beta + a / V)
    log_w = weights.log() - 0.5 * (x - c * a) ** 2 / (c ** 2 * V + beta)
    if not normalise:
        return log_w.exp(), mu, S
    if not log_space:                                       # exp first: 0/0 where every evidence underflows
        w = log_w.exp()
        return w / w.sum(-1, keepdim=True), mu, S
    return torch.softmax(log_w, -1), mu, S


def test_check_reverse_step_mixture_passes_eq_9_4_and_names_its_mistakes(capsys):
    check = checks.check_reverse_step_mixture
    assert_passes(capsys, check, reverse_step_mixture)
    assert_fails(capsys, check, lambda *a: reverse_step_mixture(*a, prior="clean"),
                 "noised to t − 1", "not the clean mixture", "not m_k and σ²")
    assert_fails(capsys, check, lambda *a: reverse_step_mixture(*a, prior="to_t"), "off by one in t", "s.alpha_bar[t - 1]")
    assert_fails(capsys, check, lambda *a: reverse_step_mixture(*a, normalise=False), "must sum to 1")
    assert_fails(capsys, check, lambda *a: reverse_step_mixture(*a, post_var="sum"), "precisions add, not variances")
    assert_fails(capsys, check, lambda *a: reverse_step_mixture(*a, post_var="likelihood"), "S must include the prior")
    assert_fails(capsys, check, lambda *a: reverse_step_mixture(*a, sqrt_alpha=False), "with √α_t, not α_t",
                 "not α_t²/β_t")


def test_a_variance_per_sample_is_refused_with_the_shapes_explained(capsys):
    """S_t does not depend on x_t: the check asks for one number and says why. Catches: a (B, 1) variance passed or
    refused with a bare shape message."""
    def per_sample(s, xt, *rest):
        w, mu, S = reverse_step_mixture(s, xt, *rest)
        return w, mu, S.expand(*xt.shape, 1)
    assert_fails(capsys, checks.check_reverse_step_mixture, per_sample, "should have shape ()", "S_t is one number")


def test_an_unknown_slip_fails_with_the_grid_as_a_clue(capsys):
    def variance_a_little_off(*a):
        w, mu, S = reverse_step_mixture(*a)
        return w, mu, 1.01 * S
    assert_fails(capsys, checks.check_reverse_step_mixture, variance_a_little_off, "the variance: differs",
                 "Bayes' rule computed on a grid")


def test_the_grid_oracle_catches_weights_that_underflow_far_from_the_data(capsys):
    """exp before normalising agrees with the reference on x_t drawn from q(x_t), but at x_t = 6 with T = 1000 every
    evidence underflows and the weights are 0/0. Only the grid property (x_t in the tail) can see it."""
    naive = lambda *a: reverse_step_mixture(*a, log_space=False)
    s, means, weights = dl.make_schedule("linear", 1000), torch.tensor([-1.0, 1.0], dtype=f64), torch.ones(2, dtype=f64) / 2
    near = torch.tensor([0.9, -1.1], dtype=f64)
    for got, want in zip(naive(s, near, 1, means, 0.01, weights), reverse_step_mixture(s, near, 1, means, 0.01, weights)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert_fails(capsys, checks.check_reverse_step_mixture, naive, "inf or NaN", "torch.softmax")


def test_the_one_component_oracle_catches_an_answer_wrong_only_for_one_component(capsys):
    """The random cases have two to four components; an answer that returns the prior itself when K = 1 ('nothing to
    choose between') passes them and is caught by the Gaussian conditional alone."""
    def prior_when_alone(s, xt, t, means, var, weights):
        if len(means) == 1:
            ab = s.alpha_bar[t - 1]
            return torch.ones(*xt.shape, 1, dtype=f64), (ab.sqrt() * means).expand(*xt.shape, 1), ab * var + 1 - ab
        return reverse_step_mixture(s, xt, t, means, var, weights)
    assert_fails(capsys, checks.check_reverse_step_mixture, prior_when_alone, "jointly Gaussian")


def test_bayes_on_a_grid_is_the_gaussian_conditional_for_one_component():
    """The two oracles agree with each other where both apply (one component), at both ends of the chain and in
    between: neither uses eq. (9.4)."""
    s = dl.make_schedule("cosine", 1000)
    for t in (1, 7, 500, 1000):
        xt = torch.tensor([-1.5, 0.2, 2.5], dtype=f64)
        x, p = nb09._grid_reverse_density(s, xt, t, torch.tensor([0.7], dtype=f64), 0.09, torch.ones(1, dtype=f64))
        mean, var = nb09._gaussian_conditional(s, xt, t, 0.7, 0.09)
        gauss = torch.exp(-0.5 * (x - mean[:, None]) ** 2 / var) / torch.sqrt(2 * math.pi * var)
        assert float(((p - gauss).abs().amax(1) / gauss.amax(1)).max()) < 1e-10, t


def test_bayes_on_a_grid_agrees_with_monte_carlo_pairs():
    """The grid oracle against simulation: pairs (x_{t−1}, x_t) from the forward process with x_t in a narrow bin;
    the mean and variance of x_{t−1} there match the grid density's within five standard errors."""
    s, t = dl.ddgan_schedule(4), 2
    mix = dl.GaussianMixture(torch.tensor([[-1.0], [1.0]], dtype=f64), 0.1, torch.tensor([0.6, 0.4], dtype=f64))
    g = torch.Generator().manual_seed(0)
    x0, _ = mix.sample(2_000_000, g)
    x_prev, xt = dl.q_sample_pairs(s, x0, t, g)
    centre, half = 0.1, 0.01
    inside = (xt[:, 0] - centre).abs() < half
    sample = x_prev[inside, 0]
    x, p = nb09._grid_reverse_density(s, torch.tensor([centre], dtype=f64), t, mix.means[:, 0], 0.01, mix.weights)
    mean = torch.trapezoid(p * x, x, dim=1)[0]
    var = torch.trapezoid(p * (x - mean) ** 2, x, dim=1)[0]
    n = len(sample)
    assert n > 5_000
    assert abs(float(sample.mean() - mean)) < 5 * math.sqrt(float(var) / n)
    assert abs(float(sample.var() / var) - 1) < 5 * math.sqrt(2 / n) + 0.01       # + the bin's own width
