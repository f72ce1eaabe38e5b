"""checks.check_gaussian_flow (notebook 07, Exercise 7.3): the exact probability-flow ODE of N(0, v) data.

The check passes eq. (7.6), names the mistakes a student makes, and its two properties do their job: the
Runge–Kutta oracle catches an answer that is right on the check's random steps (ints) but wrong on a batch
of steps (tensors), and the oracles themselves agree with the closed form, the library's exact ε and a
Monte-Carlo estimate. Seeds are fixed so that every run draws the same inputs.
"""
import math

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib import checks
from ddpm_lib.checks.ddim import _agrees_with_rk4, _keeps_marginal, _rk4_gain
from test_checks import assert_fails, assert_passes

f64 = torch.float64
def variance(s, t, x, v):
    """V_t = ᾱ_t·v + 1 − ᾱ_t, shaped like dl.gather's output."""
    alpha_bar_t = dl.gather(s.alpha_bar, t, x)
    return alpha_bar_t * v + 1 - alpha_bar_t


def gaussian_flow(s, x, t, t_prev, v, swap=False, root=True):
    """A student's answer, eq. (7.6), with switches for two of the mistakes."""
    if swap:
        t, t_prev = t_prev, t
    ratio = variance(s, t_prev, x, v) / variance(s, t, x, v)
    return (ratio.sqrt() if root else ratio) * x


def one_euler_step(s, x, t, t_prev, v):
    """What a student who writes one DDIM step (7.4) with the exact ε = ρ·x̄/(v + ρ²) returns."""
    alpha_bar_t, alpha_bar_prev = dl.gather(s.alpha_bar, t, x), dl.gather(s.alpha_bar, t_prev, x)
    rho, rho_prev = ((1 - alpha_bar_t) / alpha_bar_t).sqrt(), ((1 - alpha_bar_prev) / alpha_bar_prev).sqrt()
    x_bar = x / alpha_bar_t.sqrt()
    return alpha_bar_prev.sqrt() * (x_bar + (rho_prev - rho) * rho * x_bar / (v + rho ** 2))


def test_check_gaussian_flow_passes_eq_7_6_and_names_its_mistakes(capsys):
    check = checks.check_gaussian_flow
    assert_passes(capsys, check, gaussian_flow)
    assert_fails(capsys, check, lambda *a: gaussian_flow(*a, root=False), "ratio of standard deviations")
    assert_fails(capsys, check, lambda s, x, t, tp, v: (dl.gather(s.alpha_bar, tp, x) / dl.gather(s.alpha_bar, t, x))
                 .sqrt() * x, "not ᾱ_t")
    assert_fails(capsys, check, one_euler_step, "one DDIM step (7.4)")
    assert_fails(capsys, check, lambda *a: gaussian_flow(*a, swap=True), "t and t' are swapped")


def test_check_gaussian_flow_asks_for_float64_and_gives_a_clue_for_an_unknown_mistake(capsys):
    check = checks.check_gaussian_flow
    assert_fails(capsys, check, lambda *a: gaussian_flow(*a).float(), "float32")
    assert_fails(capsys, check, lambda s, x, t, tp, v: x, "differs from the library's answer",
                 "variance is 0.99")               # v forgotten (V_t = 1): the identity, caught by the marginal
    assert_fails(capsys, check, lambda *a: 1.01 * gaussian_flow(*a), "must be N(0, V_{t'})")


def test_the_runge_kutta_property_catches_an_answer_right_only_for_int_steps(capsys):
    """The check's random steps are ints; an answer that gives every sample the first sample's step, or that
    cannot take tensors at all, matches them and is caught only by the batch that the Runge–Kutta oracle grades."""
    def first_step_for_all(s, x, t, t_prev, v):
        t, t_prev = (u if isinstance(u, int) else int(u.flatten()[0]) for u in (t, t_prev))
        return gaussian_flow(s, x, t, t_prev, v)

    def ints_only(s, x, t, t_prev, v):
        return gaussian_flow(s, x, int(t), int(t_prev), v)

    assert_fails(capsys, checks.check_gaussian_flow, first_step_for_all, "Runge–Kutta", "its own step t[b]")
    assert_fails(capsys, checks.check_gaussian_flow, ints_only, "one step per sample")
    assert _agrees_with_rk4(gaussian_flow) is None and _keeps_marginal(gaussian_flow) is None
    assert _keeps_marginal(first_step_for_all) is None     # the marginal (ints) cannot tell; the oracle can
    assert "Runge–Kutta" in _agrees_with_rk4(lambda *a: gaussian_flow(*a, root=False))
    assert "variance" in _keeps_marginal(lambda *a: gaussian_flow(*a, swap=True))


def test_the_runge_kutta_property_blames_batching_only_when_int_steps_are_right():
    """A sign error keeps the variance (the marginal property cannot see it) and is as wrong with int steps as
    with tensors: the oracle must say so, not send the student to look for a batching bug."""
    flipped = lambda *a: -gaussian_flow(*a)
    message = _agrees_with_rk4(flipped)
    assert "Runge–Kutta" in message and "called with the ints" in message and "its own step" not in message
    assert _keeps_marginal(flipped) is None


@pytest.mark.parametrize("schedule, T", [("linear", 1000), ("cosine", 200)])
@pytest.mark.parametrize("v", [0.01, 0.1, 1.0, 4.0])
def test_the_runge_kutta_oracle_solves_the_ode_without_the_closed_form(schedule, T, v):
    """_rk4_gain integrates dx̄/dρ = ρx̄/(v + ρ²) numerically; the solution of (7.5) found by separating variables,
    √((v + ρ_{t'}²)/(v + ρ_t²)), must agree with it. The cosine schedule's ρ_T ≈ 4,000 is harder than the
    check's (linear, ρ_T ≈ 157), hence the looser bound there."""
    s = dl.make_schedule(schedule, T)
    rho = ((1 - s.alpha_bar) / s.alpha_bar).sqrt()
    for t, t_prev in ((T, 0), (T, T - 1), (T // 2, T // 3), (2, 1), (1, 0)):
        closed = math.sqrt((v + float(rho[t_prev]) ** 2) / (v + float(rho[t]) ** 2))
        assert _rk4_gain(float(rho[t]), float(rho[t_prev]), v) == pytest.approx(closed,
                                                                              rel=1e-9 if schedule == "linear" else 1e-6)


@pytest.mark.parametrize("v", [0.1, 2.0])
def test_the_odes_right_hand_side_is_the_exact_eps_of_gaussian_data(v):
    """(7.5) replaces ε_θ in (7.4) by ρ·x̄/(v + ρ²): that must be the library's exact ε of N(0, v) data."""
    s = dl.make_schedule("linear", 1000)
    x = torch.randn(5, 1, generator=torch.Generator().manual_seed(0), dtype=f64)
    for t in (1, 300, 1000):
        alpha_bar_t = s.alpha_bar[t]
        rho, x_bar = ((1 - alpha_bar_t) / alpha_bar_t).sqrt(), x / alpha_bar_t.sqrt()
        eps = dl.GaussianMixture.gaussian(0.0, math.sqrt(v)).eps(s, x, t)
        torch.testing.assert_close(eps, rho * x_bar / (v + rho ** 2), rtol=1e-12, atol=1e-14)


def test_ddim_with_the_exact_eps_converges_to_the_flow_at_first_order():
    """An oracle of its own: η = 0 DDIM with the exact ε on 500 and 1,000 steps approaches the closed form from
    T to 0, its error halving as the steps double (Euler, first order)."""
    s, v = dl.make_schedule("linear", 1000), 0.1
    eps_model = dl.GaussianMixture.gaussian(0.0, math.sqrt(v)).eps_model(s)
    x_T = torch.randn(4, 1, generator=torch.Generator().manual_seed(0), dtype=f64)
    exact = gaussian_flow(s, x_T, s.T, 0, v)
    error = {S: float((dl.sample_ddim(eps_model, s, x_T.shape, steps=S, eta=0.0, dtype=f64, x_T=x_T) - exact).norm()
                      / exact.norm()) for S in (500, 1000)}
    assert error[1000] < 1e-2 and 1.8 < error[500] / error[1000] < 2.2, error


def test_the_flow_carries_the_noised_data_to_the_next_marginal_by_monte_carlo():
    """Noise N(0, v) data to x_t with q_sample, map it with (7.6) to t': its variance must be V_{t'}, within
    five standard errors (2·V²/n for a variance), which the property _keeps_marginal assumes exactly."""
    s, v, n = dl.make_schedule("linear", 1000), 0.1, 200_000
    g = torch.Generator().manual_seed(0)
    x0 = math.sqrt(v) * torch.randn(n, 1, generator=g, dtype=f64)
    for t, t_prev in ((1000, 0), (600, 350), (50, 10)):
        xt = dl.q_sample(s, x0, torch.full((n,), t), torch.randn(n, 1, generator=g, dtype=f64))
        x_prev = gaussian_flow(s, xt, t, t_prev, v)
        want = float(variance(s, t_prev, x_prev, v))
        assert abs(x_prev.var().item() - want) < 5 * want * math.sqrt(2 / n), (t, t_prev)
        assert abs(x_prev.mean().item()) < 5 * math.sqrt(want / n)
