"""Schedules against independent re-computations of their definitions (the table in ``betas_for``'s docstring).

The reference code below is written again from the definitions with plain Python / numpy and
never calls ddpm_lib, so a wrong library schedule cannot agree with it by construction.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import ddpm_lib as dl

NAMES = ("linear", "quadratic", "sigmoid", "cosine")


# ---------------------------------------------------------------- independent reference code
def ref_betas(name: str, T: int) -> list[float]:
    """β_1..β_T (Python list, position t - 1) written out from those definitions with a loop per step."""
    def evenly(lo, hi, t):                       # the t-th of T evenly spaced points from lo to hi
        return lo + (hi - lo) * (t - 1) / (T - 1) if T > 1 else lo

    betas = []
    for t in range(1, T + 1):
        if name == "linear":
            scale = 1000 / T
            betas.append(evenly(scale * 1e-4, scale * 0.02, t))
        elif name == "quadratic":
            betas.append(evenly(math.sqrt(1e-4), math.sqrt(0.02), t) ** 2)
        elif name == "sigmoid":
            betas.append(1e-4 + (0.02 - 1e-4) / (1 + math.exp(-evenly(-6.0, 6.0, t))))
        elif name == "cosine":
            def f(u):                            # Nichol & Dhariwal's ᾱ(t) up to the constant f(0)
                return math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2
            betas.append(min(1 - f(t) / f(t - 1), 0.999))
        else:
            raise KeyError(name)
    return betas


def ref_schedule(betas: list[float]) -> dict[str, list[float]]:
    """Pad index 0 and build α, ᾱ, β̃ with explicit loops (index = the paper's t)."""
    beta = [0.0] + list(betas)
    alpha = [1.0 - b for b in beta]
    alpha_bar = [1.0]
    for t in range(1, len(beta)):
        alpha_bar.append(alpha_bar[-1] * alpha[t])
    beta_tilde = [0.0] + [(1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * beta[t] for t in range(1, len(beta))]
    return {"beta": beta, "alpha": alpha, "alpha_bar": alpha_bar, "beta_tilde": beta_tilde}


# ---------------------------------------------------------------- definitions
@pytest.mark.parametrize("T", [1000, 50])
@pytest.mark.parametrize("name", NAMES)
def test_schedule_matches_its_definition(name, T):
    s = dl.make_schedule(name, T=T)
    ref = ref_schedule(ref_betas(name, T))
    assert s.name == name and s.T == T
    for key in ("beta", "alpha", "alpha_bar", "beta_tilde"):
        got = getattr(s, key)
        assert got.dtype == torch.float64, f"{key} must stay float64"
        assert got.shape == (T + 1,), f"{key} must have length T + 1 (index = the paper's t)"
        np.testing.assert_allclose(got.numpy(), ref[key], rtol=1e-10, atol=0, err_msg=key)


@pytest.mark.parametrize("name, T", [(n, T) for n in NAMES for T in (1000, 50, 1)
                                     if (n, T) != ("linear", 1)])   # linear needs T >= 21 (tested below)
def test_clean_data_pad_and_monotone_alpha_bar(name, T):
    s = dl.make_schedule(name, T=T)
    assert s.beta[0] == 0 and s.alpha[0] == 1 and s.alpha_bar[0] == 1 and s.beta_tilde[0] == 0
    assert s.beta_tilde[1] == 0, "β̃_1 = (1 − ᾱ_0)/(1 − ᾱ_1)·β_1 = 0 exactly"
    assert ((s.beta[1:] > 0) & (s.beta[1:] < 1)).all()
    assert (s.alpha_bar[1:] < s.alpha_bar[:-1]).all(), "ᾱ_t must decrease strictly in t"
    assert torch.equal(s.alpha, 1 - s.beta)


@pytest.mark.parametrize("T", [1000, 100, 10])
def test_cosine_clips_beta_at_0999_only_at_T(T):
    s = dl.make_schedule("cosine", T=T)
    assert s.beta.max() <= 0.999
    assert s.beta[T] == 0.999, "the last cosine step 1 − ᾱ(T)/ᾱ(T−1) = 1 must be clipped to 0.999"
    assert (s.beta[1:T] < 0.999).all()
    # Before the clip, ᾱ_t is Nichol & Dhariwal's f(t)/f(0) itself (no cumulative product needed).
    f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
    np.testing.assert_allclose(s.alpha_bar[:T].numpy(), [f[t] / f[0] for t in range(T)], rtol=1e-10)
    assert s.alpha_bar[T] == pytest.approx(0.001 * f[T - 1] / f[0], rel=1e-10)


@pytest.mark.parametrize("T", [50, 250, 1000, 4000])
def test_linear_scales_both_ends_by_1000_over_T(T):
    s = dl.make_schedule("linear", T=T)
    assert s.beta[1].item() == pytest.approx(1e-4 * 1000 / T, rel=1e-12)
    assert s.beta[T].item() == pytest.approx(0.02 * 1000 / T, rel=1e-12)
    # the point of the scaling: the total noise Σβ_t = T·(β_1 + β_T)/2 = 10.05 for every T
    assert s.beta.sum().item() == pytest.approx(10.05, rel=1e-12)


def test_linear_too_few_steps_is_a_clear_error():
    with pytest.raises(ValueError, match=r"T >= 21"):
        dl.make_schedule("linear", T=20)


def test_golden_values():
    # linear, T = 1000: ᾱ_1000 = ∏ (1 − β_t) in exact rational arithmetic (DDPM's ᾱ_T ≈ 4.04e-5)
    lo, hi = Fraction(1, 10_000), Fraction(2, 100)
    exact = Fraction(1)
    for t in range(1, 1001):
        exact *= 1 - (lo + (hi - lo) * (t - 1) / 999)
    s = dl.make_schedule("linear", T=1000)
    assert s.alpha_bar[1000].item() == pytest.approx(float(exact), rel=1e-12)
    assert s.alpha_bar[1000].item() == pytest.approx(4.0358e-5, rel=1e-4)
    assert s.alpha_bar[1].item() == pytest.approx(0.9999, rel=1e-15)
    # sigmoid: β_1 = 1e-4 + 0.0199·σ(−6);  quadratic: β_1 = (√1e-4)² = 1e-4 and β_T = 0.02
    assert dl.make_schedule("sigmoid").beta[1].item() == pytest.approx(1e-4 + 0.0199 / (1 + math.exp(6)), rel=1e-13)
    q = dl.make_schedule("quadratic", T=1000)
    assert (q.beta[1].item(), q.beta[1000].item()) == (pytest.approx(1e-4, rel=1e-13), pytest.approx(0.02, rel=1e-13))
    # cosine, T = 1000, halfway: ᾱ_500 = cos²(0.508/1.008·π/2) / cos²(0.008/1.008·π/2)
    expected = math.cos(0.508 / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert dl.make_schedule("cosine").alpha_bar[500].item() == pytest.approx(expected, rel=1e-12)


def test_default_is_linear_with_1000_steps():
    s = dl.make_schedule()
    assert (s.name, s.T) == ("linear", 1000)
    assert s.beta[1].item() == pytest.approx(1e-4, rel=1e-12)


# ---------------------------------------------------------------- bridge to 0-based code
def diffusers_alphas_cumprod(beta_schedule: str, T: int = 1000) -> np.ndarray:
    """``DDPMScheduler(beta_schedule=...).alphas_cumprod`` as diffusers computes it, 0-based, in float64."""
    if beta_schedule == "linear":
        betas = np.linspace(1e-4, 0.02, T)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(1e-4 ** 0.5, 0.02 ** 0.5, T) ** 2
    elif beta_schedule == "sigmoid":
        x = np.linspace(-6, 6, T)
        betas = 1 / (1 + np.exp(-x)) * (0.02 - 1e-4) + 1e-4
    elif beta_schedule == "squaredcos_cap_v2":       # betas_for_alpha_bar with max_beta = 0.999
        def alpha_bar_fn(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - alpha_bar_fn((i + 1) / T) / alpha_bar_fn(i / T), 0.999) for i in range(T)])
    else:
        raise KeyError(beta_schedule)
    alphas = 1.0 - betas
    return np.cumprod(alphas, axis=0)


@pytest.mark.parametrize("name, beta_schedule", [("linear", "linear"), ("quadratic", "scaled_linear"),
                                                 ("sigmoid", "sigmoid"), ("cosine", "squaredcos_cap_v2")])
def test_bridge_to_zero_based_alphas_cumprod(name, beta_schedule):
    s = dl.make_schedule(name, T=1000)
    alphas_cumprod = diffusers_alphas_cumprod(beta_schedule)
    np.testing.assert_allclose(s.alpha_bar[1:].numpy(), alphas_cumprod, rtol=1e-12, atol=0)
    # paper step t lives at 0-based position t - 1
    for t in (1, 2, 500, 1000):
        assert s.alpha_bar[t].item() == pytest.approx(alphas_cumprod[t - 1], rel=1e-12)


# ---------------------------------------------------------------- schedule_from_betas and errors
def test_schedule_from_betas_by_hand():
    s = dl.schedule_from_betas([0.1, 0.2, 0.5])
    assert s.T == 3 and s.name == "custom"
    np.testing.assert_allclose(s.beta.numpy(), [0, 0.1, 0.2, 0.5], rtol=1e-15)
    np.testing.assert_allclose(s.alpha.numpy(), [1, 0.9, 0.8, 0.5], rtol=1e-15)
    np.testing.assert_allclose(s.alpha_bar.numpy(), [1, 0.9, 0.72, 0.36], rtol=1e-15)
    # β̃_2 = (1 − 0.9)/(1 − 0.72)·0.2 = 1/14,  β̃_3 = (1 − 0.72)/(1 − 0.36)·0.5 = 7/32
    np.testing.assert_allclose(s.beta_tilde.numpy(), [0, 0, 1 / 14, 7 / 32], rtol=1e-13)


def test_snr():
    s = dl.make_schedule("linear", T=100)
    assert s.snr[0] == math.inf
    ab = s.alpha_bar[1:].numpy()
    np.testing.assert_allclose(s.snr[1:].numpy(), ab / (1 - ab), rtol=1e-13)


@pytest.mark.parametrize("betas, phrase", [
    ([0.1, 1.0], "strictly between 0 and 1"),
    ([0.1, 1.5], "strictly between 0 and 1"),
    ([0.0, 0.1], "strictly between 0 and 1"),
    ([-0.1], "strictly between 0 and 1"),
    ([float("nan")], "strictly between 0 and 1"),
    ([[0.1, 0.2]], "1-D"),
    ([], "non-empty"),
])
def test_schedule_from_betas_rejects_bad_betas(betas, phrase):
    with pytest.raises(ValueError, match=phrase):
        dl.schedule_from_betas(torch.tensor(betas, dtype=torch.float64))


@pytest.mark.parametrize("T", [0, -3])
def test_too_few_steps(T):
    with pytest.raises(ValueError, match=r"T must be at least 1"):
        dl.make_schedule("cosine", T=T)


@pytest.mark.parametrize("T", [10.5, 100.0, "100", True])
def test_non_integer_T(T):
    with pytest.raises(ValueError, match=r"T must be a whole number"):
        dl.make_schedule("cosine", T=T)


def test_unknown_schedule_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown schedule 'lineer'.*linear, quadratic, sigmoid, cosine"):
        dl.make_schedule("lineer", T=1000)
