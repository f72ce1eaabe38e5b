"""The forward posterior q(x_{t−1} | x_t, x_0) against Bayes' rule on a grid and its precision form,
and the ε ↔ x_0 ↔ μ̃ conversions against their hand formulas."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid

import ddpm_lib as dl


def bayes_on_grid(x0: float, xt: float, alpha_bar_prev: float, beta_t: float) -> tuple[float, float]:
    """Mean and variance of q(x_{t−1} | x_t, x_0) ∝ q(x_t | x_{t−1}) · q(x_{t−1} | x_0), normalised numerically.

    q(x_t | x_{t−1}) = N(√(1 − β_t)·x_{t−1}, β_t) and q(x_{t−1} | x_0) = N(√ᾱ_{t−1}·x_0, 1 − ᾱ_{t−1}).
    The posterior mean lies between the prior's centre and the likelihood's centre, and its
    standard deviation is below both widths, so the grid spans both centres ± 12 of the narrower width.
    """
    alpha_t = 1 - beta_t
    prior_mean, prior_var = math.sqrt(alpha_bar_prev) * x0, 1 - alpha_bar_prev
    lik_centre, lik_width = xt / math.sqrt(alpha_t), math.sqrt(beta_t / alpha_t)   # as a function of x_{t−1}
    w = min(math.sqrt(prior_var), lik_width)
    lo, hi = min(prior_mean, lik_centre) - 12 * w, max(prior_mean, lik_centre) + 12 * w
    x = np.linspace(lo, hi, int((hi - lo) / (w / 40)) + 1)
    log_p = -(xt - math.sqrt(alpha_t) * x) ** 2 / (2 * beta_t) - (x - prior_mean) ** 2 / (2 * prior_var)
    p = np.exp(log_p - log_p.max())
    p /= trapezoid(p, x)
    mean = trapezoid(x * p, x)
    return mean, trapezoid((x - mean) ** 2 * p, x)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("t", [2, 3, 10, 500, 999, 1000])
def test_q_posterior_is_bayes_rule_on_a_grid(name, t):
    s = dl.make_schedule(name, T=1000)
    ab_prev, ab_t, b_t = s.alpha_bar[t - 1].item(), s.alpha_bar[t].item(), s.beta[t].item()
    x0 = torch.tensor([0.7, -1.3, 0.0], dtype=torch.float64)
    eps = torch.tensor([0.8, -0.4, 2.1], dtype=torch.float64)
    xt = math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * eps          # typical points x_t ~ q(x_t | x_0)
    mean, var = dl.q_posterior(s, x0, xt, t)
    assert mean.shape == (3,) and var.shape == (1,)
    for i in range(3):
        grid_mean, grid_var = bayes_on_grid(x0[i].item(), xt[i].item(), ab_prev, b_t)
        assert mean[i].item() == pytest.approx(grid_mean, rel=1e-8, abs=1e-10)
        assert var.item() == pytest.approx(grid_var, rel=1e-8)


@pytest.mark.parametrize("name", ["linear", "quadratic", "sigmoid", "cosine"])
def test_q_posterior_at_t1_is_a_point_mass_at_x0(name, gen):
    """β̃_1 = 0: given x_0, x_0 itself is known, whatever x_1 is."""
    s = dl.make_schedule(name, T=1000)
    x0 = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64)
    xt = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64)
    mean, var = dl.q_posterior(s, x0, xt, 1)
    assert torch.equal(mean, x0), f"μ̃_1 must be x_0 exactly, max error {(mean - x0).abs().max():.3g}"
    assert torch.equal(var, torch.zeros(1, 1, 1, 1, dtype=torch.float64))
    # per-sample t: only the rows with t = 1 collapse onto x_0
    mean, var = dl.q_posterior(s, x0, xt, torch.tensor([1, 2, 1, 900]))
    assert torch.equal(mean[[0, 2]], x0[[0, 2]]) and not torch.isclose(mean[1], x0[1]).all()
    assert var.shape == (4, 1, 1, 1) and var[0] == 0 and var[2] == 0 and (var[[1, 3]] > 0).all()


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_posterior_precision_form_for_every_t(name, gen):
    """1/β̃_t = α_t/β_t + 1/(1 − ᾱ_{t−1}) and μ̃_t = β̃_t·(√α_t x_t/β_t + √ᾱ_{t−1} x_0/(1 − ᾱ_{t−1})), t = 2..T."""
    T = 1000
    s = dl.make_schedule(name, T=T)
    t = torch.arange(2, T + 1)
    x0 = torch.randn(T - 1, 2, generator=gen, dtype=torch.float64)
    xt = torch.randn(T - 1, 2, generator=gen, dtype=torch.float64)
    mean, var = dl.q_posterior(s, x0, xt, t)
    assert var.shape == (T - 1, 1)

    beta, alpha_bar = s.beta.numpy(), s.alpha_bar.numpy()
    b, a, ab_prev = beta[2:], 1 - beta[2:], alpha_bar[1:-1]
    precision = a / b + 1 / (1 - ab_prev)
    np.testing.assert_allclose(1 / var[:, 0].numpy(), precision, rtol=1e-9)
    expected_mean = (np.sqrt(a) / b)[:, None] * xt.numpy() + (np.sqrt(ab_prev) / (1 - ab_prev))[:, None] * x0.numpy()
    expected_mean /= precision[:, None]
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-9, atol=1e-12)


def test_q_posterior_shapes_for_images(gen):
    s = dl.make_schedule("linear", T=1000)
    x0 = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    mean, var = dl.q_posterior(s, x0, x0.clone(), torch.tensor([5, 50]))
    assert mean.shape == (2, 3, 4, 4) and var.shape == (2, 1, 1, 1)
    np.testing.assert_allclose(var.flatten().numpy(), s.beta_tilde[[5, 50]].numpy(), rtol=1e-15)


# ---------------------------------------------------------------- ε ↔ x_0 ↔ μ̃
T_VALUES = torch.tensor([1, 2, 10, 300, 999, 1000])


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_predict_x0_and_eps_hand_formulas_and_round_trip(name, gen):
    s = dl.make_schedule(name, T=1000)
    x0 = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    xt = dl.q_sample(s, x0, T_VALUES, eps)
    x0_pred = dl.predict_x0_from_eps(s, xt, T_VALUES, eps)
    eps_pred = dl.predict_eps_from_x0(s, xt, T_VALUES, x0)
    for i, ti in enumerate(T_VALUES.tolist()):
        ab = s.alpha_bar[ti].item()
        torch.testing.assert_close(x0_pred[i], (xt[i] - math.sqrt(1 - ab) * eps[i]) / math.sqrt(ab),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(eps_pred[i], (xt[i] - math.sqrt(ab) * x0[i]) / math.sqrt(1 - ab),
                                   rtol=1e-12, atol=1e-12)
    # the two invert eq. 4 and each other
    torch.testing.assert_close(x0_pred, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_pred, eps, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dl.predict_eps_from_x0(s, xt, T_VALUES, x0_pred), eps, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_mu_from_eps_is_the_posterior_mean_at_the_predicted_x0(name, gen):
    T = 1000
    s = dl.make_schedule(name, T=T)
    t = torch.arange(1, T + 1)
    xt = torch.randn(T, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(T, 2, generator=gen, dtype=torch.float64)
    mu = dl.mu_from_eps(s, xt, t, eps)
    mean, _ = dl.q_posterior(s, dl.predict_x0_from_eps(s, xt, t, eps), xt, t)
    torch.testing.assert_close(mu, mean, rtol=1e-8, atol=1e-9)
    # and eq. 11 by hand at a few steps
    for ti in (1, 2, 500, T):
        b, ab = s.beta[ti].item(), s.alpha_bar[ti].item()
        expected = (xt[ti - 1] - b / math.sqrt(1 - ab) * eps[ti - 1]) / math.sqrt(1 - b)
        torch.testing.assert_close(mu[ti - 1], expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("t, phrase", [(0, r"1\.\.T = 1\.\.50"), (51, r"1\.\.T = 1\.\.50"), (-2, r"1\.\.T"),
                                       (torch.tensor([1.0, 2.0]), "integer timesteps"),
                                       (torch.tensor([1, 2, 3]), "t has 3 timesteps but the batch has 2")])
def test_bad_t(t, phrase):
    s = dl.make_schedule("cosine", T=50)
    x = torch.zeros(2, 4, dtype=torch.float64)
    for fn in (dl.q_posterior, dl.predict_x0_from_eps, dl.predict_eps_from_x0, dl.mu_from_eps):
        args = (s, x, x, t) if fn is dl.q_posterior else (s, x, t, x)
        with pytest.raises(ValueError, match=phrase):
            fn(*args)


def test_shape_mismatch():
    s = dl.make_schedule("cosine", T=50)
    a, b = torch.zeros(2, 4), torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"shapes must match: x0 \(2, 4\), xt \(2, 5\)"):
        dl.q_posterior(s, a, b, 3)
    with pytest.raises(ValueError, match=r"shapes must match: xt \(2, 4\), eps \(2, 5\)"):
        dl.predict_x0_from_eps(s, a, 3, b)
    with pytest.raises(ValueError, match=r"shapes must match: xt \(2, 4\), x0 \(2, 5\)"):
        dl.predict_eps_from_x0(s, a, 3, b)
    with pytest.raises(ValueError, match=r"shapes must match: xt \(2, 4\), eps \(2, 5\)"):
        dl.mu_from_eps(s, a, 3, b)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("seed", range(20))
def test_float32_inversions_of_eq_4_keep_float32_precision_at_t_1(name, seed):
    """predict_eps_from_x0, predict_x0_from_eps and mu_from_eps on float32 tensors agree with the same formulas
    written in float64 by hand to 1e-6 of the size of their terms (x_t − c·o can cancel), t = 1 included, for 20
    seeded draws. Catches: 1 − ᾱ_t formed in float32, where ᾱ_1 ≈ 0.9999 leaves four digits (1e-4 relative)."""
    s = dl.make_schedule(name, 1000)
    t = torch.tensor([1, 2, 3, 500, 1000])
    ab, b, a = (torch.tensor([float(v[k]) for k in t], dtype=torch.float64).view(-1, 1)
                for v in (s.alpha_bar, s.beta, s.alpha))
    g = torch.Generator().manual_seed(seed)
    xt, other = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    X, O = xt.double(), other.double()
    cases = [(dl.predict_eps_from_x0(s, xt, t, other), (X - ab.sqrt() * O) / (1 - ab).sqrt(),
              (X.abs() + ab.sqrt() * O.abs()) / (1 - ab).sqrt()),
             (dl.predict_x0_from_eps(s, xt, t, other), (X - (1 - ab).sqrt() * O) / ab.sqrt(),
              (X.abs() + (1 - ab).sqrt() * O.abs()) / ab.sqrt()),
             (dl.mu_from_eps(s, xt, t, other), (X - b / (1 - ab).sqrt() * O) / a.sqrt(),
              (X.abs() + b / (1 - ab).sqrt() * O.abs()) / a.sqrt())]
    for got, exact, terms in cases:
        assert got.dtype == torch.float32
        assert ((got.double() - exact).abs() / terms).max() < 1e-6
