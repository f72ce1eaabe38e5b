"""The forward process: q_step / q_sample against hand formulas, and q_sample against the iterated chain."""
import math

import pytest
import torch
from scipy import stats

import ddpm_lib as dl

N_MC = 20_000  # one-dimensional Monte-Carlo samples per test


def chain_moments(beta: list[float], x0: float, t: int) -> tuple[float, float]:
    """Mean and variance of x_t for the chain x_k = √(1 − β_k)·x_{k−1} + √β_k·ε started at x0 (no ᾱ used)."""
    m, v = x0, 0.0
    for k in range(1, t + 1):
        m, v = math.sqrt(1 - beta[k]) * m, (1 - beta[k]) * v + beta[k]
    return m, v


# ---------------------------------------------------------------- exact algebra with given noise
def test_q_sample_hand_formula_per_sample_t(gen):
    s = dl.make_schedule("linear", T=1000)
    x0 = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 10, 500, 1000])
    xt = dl.q_sample(s, x0, t, eps)
    assert xt.shape == x0.shape and xt.dtype == torch.float64
    for i, ti in enumerate(t.tolist()):
        ab = s.alpha_bar[ti].item()
        expected = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i]
        torch.testing.assert_close(xt[i], expected, rtol=1e-13, atol=1e-14)
    # an int t means the same step for the whole batch
    torch.testing.assert_close(dl.q_sample(s, x0, 500, eps), dl.q_sample(s, x0, torch.full((4,), 500), eps))


def test_q_sample_at_t1_is_one_forward_step(gen):
    s = dl.make_schedule("cosine", T=1000)
    x0 = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    b1 = s.beta[1].item()
    torch.testing.assert_close(dl.q_sample(s, x0, 1, eps), math.sqrt(1 - b1) * x0 + math.sqrt(b1) * eps,
                               rtol=1e-14, atol=1e-15)


def test_q_sample_keeps_float32_inputs_float32(gen):
    s = dl.make_schedule("linear", T=1000)
    x0 = torch.randn(3, 5, generator=gen)
    xt = dl.q_sample(s, x0, torch.tensor([3, 30, 300]), torch.zeros_like(x0))
    assert xt.dtype == torch.float32
    expected = torch.sqrt(s.alpha_bar[[3, 30, 300]]).reshape(3, 1) * x0.double()
    torch.testing.assert_close(xt.double(), expected, rtol=1e-6, atol=1e-7)


def test_q_step_hand_formula(gen):
    s = dl.make_schedule("linear", T=100)
    x_prev = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 37, 100])
    xt = dl.q_step(s, x_prev, t, eps)
    for i, ti in enumerate(t.tolist()):
        b = s.beta[ti].item()
        torch.testing.assert_close(xt[i], math.sqrt(1 - b) * x_prev[i] + math.sqrt(b) * eps[i],
                                   rtol=1e-13, atol=1e-14)


def test_two_steps_compose_into_q_sample(gen):
    """x_2 = √α_2(√α_1 x_0 + √β_1 ε_1) + √β_2 ε_2 = √ᾱ_2 x_0 + √(1 − ᾱ_2)·ε with
    ε = (√(α_2 β_1) ε_1 + √β_2 ε_2) / √(1 − ᾱ_2), because α_2 β_1 + β_2 = 1 − α_1 α_2."""
    s = dl.make_schedule("linear", T=50)
    x0, e1, e2 = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    x0, e1, e2 = x0[None], e1[None], e2[None]
    b1, b2 = s.beta[1].item(), s.beta[2].item()
    x2 = dl.q_step(s, dl.q_step(s, x0, 1, e1), 2, e2)
    eps = (math.sqrt((1 - b2) * b1) * e1 + math.sqrt(b2) * e2) / math.sqrt(1 - (1 - b1) * (1 - b2))
    torch.testing.assert_close(x2, dl.q_sample(s, x0, 2, eps), rtol=1e-13, atol=1e-14)


def test_q_sample_chain_path_replays_q_step(gen):
    s = dl.make_schedule("cosine", T=20)
    x0 = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    path = dl.q_sample_chain(s, x0, 7, generator=torch.Generator().manual_seed(3), return_path=True)
    assert path.shape == (8, 5, 2) and torch.equal(path[0], x0)
    replay, x = torch.Generator().manual_seed(3), x0
    for k in range(1, 8):                                # fresh noise at every step, path[k] is x_k
        b = s.beta[k].item()
        x = math.sqrt(1 - b) * x + math.sqrt(b) * torch.randn(x.shape, generator=replay, dtype=x.dtype)
        torch.testing.assert_close(path[k], x, rtol=1e-13, atol=1e-14)
    last = dl.q_sample_chain(s, x0, 7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(last, path[7], rtol=0, atol=0)


# ---------------------------------------------------------------- the closed form has the chain's law
@pytest.mark.parametrize("name, T, t", [("linear", 1000, 1), ("linear", 1000, 10), ("linear", 1000, 250),
                                        ("linear", 1000, 1000), ("cosine", 100, 3), ("cosine", 100, 50),
                                        ("cosine", 100, 100)])
def test_q_sample_has_the_law_of_the_iterated_chain(name, T, t, gen):
    s = dl.make_schedule(name, T=T)
    x0_value = 2.0
    x0 = torch.full((N_MC,), x0_value, dtype=torch.float64)
    chain = dl.q_sample_chain(s, x0, t, generator=gen).numpy()
    closed = dl.q_sample(s, x0, t, torch.randn(N_MC, generator=gen, dtype=torch.float64)).numpy()

    mean, var = chain_moments(s.beta.tolist(), x0_value, t)
    se_mean, se_var = math.sqrt(var / N_MC), var * math.sqrt(2 / (N_MC - 1))
    for name_, x in (("chain", chain), ("q_sample", closed)):
        assert abs(x.mean() - mean) < 5 * se_mean, f"{name_}: mean {x.mean():.5f} vs {mean:.5f}"
        assert abs(x.var(ddof=1) - var) < 5 * se_var, f"{name_}: var {x.var(ddof=1):.6f} vs {var:.6f}"
    assert stats.ks_2samp(chain, closed).pvalue > 1e-3


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("t, phrase", [
    (0, r"t must lie in 1\.\.T = 1\.\.100"),
    (101, r"t must lie in 1\.\.T = 1\.\.100"),
    (-1, r"t must lie in 1\.\.T"),
    (torch.tensor([5, 0, 7]), r"t must lie in 1\.\.T"),
    (torch.tensor([5, 101, 7]), r"t must lie in 1\.\.T"),
    (torch.tensor([5.0, 6.0, 7.0]), r"integer timesteps"),
    (5.0, r"must be an int or a torch tensor"),
    (torch.tensor([5, 6]), r"t has 2 timesteps but the batch has 3 samples"),
])
def test_bad_t_is_a_clear_error(t, phrase):
    s = dl.make_schedule("linear", T=100)
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=phrase):
        dl.q_sample(s, x, t, x)
    with pytest.raises(ValueError, match=phrase):
        dl.q_step(s, x, t, x)


@pytest.mark.parametrize("t", [0, 101])
def test_chain_rejects_bad_t(t):
    s = dl.make_schedule("linear", T=100)
    with pytest.raises(ValueError, match=r"t must lie in 1\.\.T"):
        dl.q_sample_chain(s, torch.zeros(3), t)


def test_shape_mismatch_names_the_tensors():
    s = dl.make_schedule("linear", T=100)
    with pytest.raises(ValueError, match=r"shapes must match: x0 \(3, 2\), eps \(3, 1\)"):
        dl.q_sample(s, torch.zeros(3, 2), 5, torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"shapes must match: x_prev \(3, 2\), eps \(2, 2\)"):
        dl.q_step(s, torch.zeros(3, 2), 5, torch.zeros(2, 2))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_float32_inputs_get_coefficients_rounded_once(name):
    """With float32 x_0 and ε, x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε has its coefficients formed in float64 and rounded
    once: √(1 − ᾱ_1) ≈ 0.01 is right to float32's 6e-8. Catches: 1 − ᾱ_t formed from a float32 ᾱ_t ≈ 0.9999,
    which keeps four digits (a relative error of 1e-4 at t = 1)."""
    s = dl.make_schedule(name, 1000)
    t = torch.tensor([1, 2, 3, 500, 1000])
    got = dl.q_sample(s, torch.zeros(5, 1), t, torch.ones(5, 1)).double().flatten()       # the ε coefficient
    exact = torch.tensor([math.sqrt(1 - float(s.alpha_bar[k])) for k in t], dtype=torch.float64)
    assert ((got - exact).abs() / exact).max() < 1e-7
    got = dl.q_sample(s, torch.ones(5, 1), t, torch.zeros(5, 1)).double().flatten()       # the x_0 coefficient
    exact = torch.tensor([math.sqrt(float(s.alpha_bar[k])) for k in t], dtype=torch.float64)
    assert ((got - exact).abs() / exact).max() < 1e-7
