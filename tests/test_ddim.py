"""Tests of ddpm_lib.ddim: the respaced step grids, one DDIM step against eq. 12 written out, η = 1 against
DDPM's Algorithm 2, the sampler's plumbing, its output law with the exact ε of Gaussian and Gaussian-mixture
data (no training needed), inversion, and slerp. float64 throughout.

DDIM's α_t is our ᾱ_t (alpha_bar). Each test's docstring names the wrong implementation it catches.
"""
import math

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib import ddim

F64 = torch.float64
BETAS = torch.linspace(0.02, 0.2, 8, dtype=F64)       # T = 8, large β: every coefficient matters


def hand_alpha_bar(betas):
    """ᾱ_0 = 1, ᾱ_t = ∏_{s≤t} (1 − β_s) as Python floats, computed here, not by the library."""
    alpha_bar = [1.0]
    for b in betas.tolist():
        alpha_bar.append(alpha_bar[-1] * (1.0 - b))
    return alpha_bar


def hand_sigma(alpha_bar, t, t_prev, eta):
    """Eq. 16: σ = η·√((1 − ᾱ_{t'})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t'})."""
    a, ap = alpha_bar[t], alpha_bar[t_prev]
    return eta * math.sqrt((1 - ap) / (1 - a)) * math.sqrt(1 - a / ap)


def ddim_by_hand(betas, xt, eps_pred, t_list, t_prev_list, eta, noise, clip=None):
    """Eq. 12 one sample at a time: x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t (clipped, then ε recomputed, if asked),
    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ²) ε + σ z."""
    alpha_bar = hand_alpha_bar(betas)
    out = torch.empty_like(xt)
    for i, (t, tp) in enumerate(zip(t_list, t_prev_list)):
        a, ap = alpha_bar[t], alpha_bar[tp]
        eps = eps_pred[i]
        x0_pred = (xt[i] - math.sqrt(1 - a) * eps) / math.sqrt(a)
        if clip is not None:
            x0_pred = x0_pred.clamp(-clip, clip)
            eps = (xt[i] - math.sqrt(a) * x0_pred) / math.sqrt(1 - a)
        sigma = hand_sigma(alpha_bar, t, tp, eta)
        out[i] = math.sqrt(ap) * x0_pred + math.sqrt(1 - ap - sigma ** 2) * eps + sigma * noise[i]
    return out


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def toy_eps_model(xt, t):
    """A deterministic ε-model that depends on both x_t and t (so a wrong t would show)."""
    return 0.3 * xt + 0.05 * t.to(xt.dtype)[:, None]


# ------------------------------------------------------------------------------------------ step_grid

@pytest.mark.parametrize("kind", ["uniform", "quadratic"])
def test_step_grid_properties_for_every_length(kind):
    """T = 50 and every steps in 1..50 (and T = 1): strictly decreasing, starts at T, ends at 1, exactly
    `steps` long, integers. Catches: rounding a linspace (duplicates, short grids), 0-based grids ending
    at 0 or starting at T − 1, the quadratic grid overshooting T when collisions are pushed up."""
    for T in (1, 50):
        for steps in range(1, T + 1):
            g = ddim.step_grid(T, steps, kind)
            assert len(g) == steps and all(type(v) is int for v in g), (T, steps, g)
            assert g[0] == T and (g[-1] == 1 or steps == 1), (T, steps, g)
            assert all(a > b for a, b in zip(g, g[1:])), (T, steps, g)
        assert ddim.step_grid(T, 1, kind) == [T]
        assert ddim.step_grid(T, T, kind) == list(range(T, 0, -1))


def test_step_grid_at_T1000_is_the_papers_respacing():
    """App. D.2 with index = the paper's t: τ_i = 1 + ⌊c·i⌋ (uniform) and 1 + ⌊c·i²⌋ (quadratic), c chosen
    so the last is T; written out by hand for 10 steps. Spot checks of the properties at other lengths;
    the quadratic grid is denser near t = 1. Catches: c = T/steps (grid misses T), the quadratic grid
    reversed (dense near T), a grid in 0-based t."""
    assert ddim.step_grid(1000, 10, "uniform") == [1000, 889, 778, 667, 556, 445, 334, 223, 112, 1]
    assert ddim.step_grid(1000, 10, "quadratic") == [1000, 790, 605, 445, 309, 198, 112, 50, 13, 1]
    for steps in (2, 7, 20, 50, 100, 333, 999, 1000):
        for kind in ("uniform", "quadratic"):
            g = ddim.step_grid(1000, steps, kind)
            assert len(g) == steps and g[0] == 1000 and g[-1] == 1
            assert all(a > b for a, b in zip(g, g[1:]))
    for steps in (10, 50, 100):
        uni, quad = ddim.step_grid(1000, steps, "uniform"), ddim.step_grid(1000, steps, "quadratic")
        # quadratic: τ_i ≤ T/4 for i/(S−1) ≤ 1/2, i.e. half the grid; uniform: about a quarter
        assert sum(v <= 250 for v in quad) >= steps // 2 > sum(v <= 250 for v in uni)
        assert quad[-2] - quad[-1] < quad[0] - quad[1]          # small gaps near t = 1, large near T
        gaps = [a - b for a, b in zip(uni, uni[1:])]
        assert max(gaps) - min(gaps) <= 1                       # uniform: every gap ⌊c⌋ or ⌈c⌉


# ------------------------------------------------------------------------------------------ ddim_step

@pytest.mark.parametrize("eta", [0.0, 0.4, 1.0])
def test_ddim_step_matches_eq_12(eta):
    """Per-sample t and t' (strides 1, 3, 7, steps to 0, t = T) and int t, t', against eq. 12 written out.
    Catches: ᾱ_{t'} read at t' + 1 or t' − 1, σ² used where σ belongs, σ = η√β̃_t for a strided step,
    √(1 − ᾱ_{t'}) without − σ², the √ᾱ_t division dropped."""
    s = dl.schedule_from_betas(BETAS)
    xt, eps_pred, noise = randn(6, 2, 3, seed=0), randn(6, 2, 3, seed=1), randn(6, 2, 3, seed=2)
    t, t_prev = torch.tensor([8, 8, 5, 3, 1, 7]), torch.tensor([7, 1, 0, 2, 0, 4])
    torch.testing.assert_close(ddim.ddim_step(s, xt, eps_pred, t, t_prev, eta, noise),
                               ddim_by_hand(BETAS, xt, eps_pred, t.tolist(), t_prev.tolist(), eta, noise),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ddim.ddim_step(s, xt, eps_pred, 6, 2, eta, noise),
                               ddim_by_hand(BETAS, xt, eps_pred, [6] * 6, [2] * 6, eta, noise),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [0.25, 0.5, 1.0])
def test_ddim_sigma_is_eta_sqrt_beta_tilde(eta):
    """σ, read off the step as (x(z_a) − x(z_b)) / (z_a − z_b), equals η·√β̃_t for t' = t − 1 at every t, with
    β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t computed by hand; for a strided grid it equals η·√β̃ of the respaced
    chain whose β's are 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}} (built by schedule_from_betas, not by ddim).
    Catches: σ without η, σ = η²·√β̃, one of the two square-root factors of eq. 16 dropped (σ = η·√β_t at
    t' = t − 1), σ = η·√β̃_t used on a strided step."""
    s = dl.schedule_from_betas(BETAS)
    alpha_bar = hand_alpha_bar(BETAS)
    xt, eps_pred = randn(4, 3, seed=3), randn(4, 3, seed=4)
    z_a, z_b = randn(4, 3, seed=5), randn(4, 3, seed=6)
    step = lambda t, t_prev, z: ddim.ddim_step(s, xt, eps_pred, t, t_prev, eta, z)
    for t in range(1, s.T + 1):
        beta_tilde = (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * BETAS[t - 1].item()
        diff = step(t, t - 1, z_a) - step(t, t - 1, z_b)
        torch.testing.assert_close(diff, eta * math.sqrt(beta_tilde) * (z_a - z_b), rtol=1e-10, atol=1e-14)
    grid = [8, 5, 2, 0]                                           # respaced chain τ = (2, 5, 8)
    respaced = dl.schedule_from_betas(torch.tensor([1 - alpha_bar[2], 1 - alpha_bar[5] / alpha_bar[2],
                                                    1 - alpha_bar[8] / alpha_bar[5]], dtype=F64))
    for i, (t, t_prev) in enumerate(zip(grid, grid[1:])):
        diff = step(t, t_prev, z_a) - step(t, t_prev, z_b)
        sigma = eta * torch.sqrt(respaced.beta_tilde[3 - i]).item()
        torch.testing.assert_close(diff, sigma * (z_a - z_b), rtol=1e-10, atol=1e-14)


def test_ddim_eta_1_is_ddpm_step():
    """η = 1 and t' = t − 1 reproduce dl.ddpm_step (σ² = β̃) draw for draw with the same noise, for per-sample
    t including 1 and T, and for every int t. At t = 1 neither adds noise (β̃_1 = 0 and 1 − ᾱ_0 = 0): two
    different noises give the same result, which is x̂_0 itself. Catches: ᾱ_{t'} off by one, σ² = β_t
    instead of β̃_t, noise leaking in at t = 1."""
    s = dl.schedule_from_betas(BETAS)
    xt, eps_pred, noise = randn(5, 2, 3, seed=7), randn(5, 2, 3, seed=8), randn(5, 2, 3, seed=9)
    t = torch.tensor([1, 2, 5, 8, 3])
    torch.testing.assert_close(ddim.ddim_step(s, xt, eps_pred, t, t - 1, 1.0, noise),
                               dl.ddpm_step(s, xt, eps_pred, t, noise), rtol=1e-12, atol=1e-12)
    for ti in range(1, s.T + 1):
        torch.testing.assert_close(ddim.ddim_step(s, xt, eps_pred, ti, ti - 1, 1.0, noise),
                                   dl.ddpm_step(s, xt, eps_pred, ti, noise), rtol=1e-12, atol=1e-12)
    other = randn(5, 2, 3, seed=10)
    at_1 = ddim.ddim_step(s, xt, eps_pred, 1, 0, 1.0, noise)
    assert torch.equal(at_1, ddim.ddim_step(s, xt, eps_pred, 1, 0, 1.0, other))
    assert torch.equal(dl.ddpm_step(s, xt, eps_pred, 1, noise), dl.ddpm_step(s, xt, eps_pred, 1, other))
    alpha_bar_1 = 1 - BETAS[0].item()
    torch.testing.assert_close(at_1, (xt - math.sqrt(1 - alpha_bar_1) * eps_pred) / math.sqrt(alpha_bar_1),
                               rtol=1e-13, atol=1e-13)


def test_ddim_step_to_zero_returns_x0_pred():
    """t' = 0 returns exactly x̂_0 = dl.predict_x0_from_eps(...) for η = 0, and for any η (σ = 0 there since
    1 − ᾱ_0 = 0), whatever the noise; checked by hand too. Catches: ᾱ_0 taken as ᾱ_1 (a 0-based pad),
    noise added in the last step, a direction term left over."""
    s = dl.schedule_from_betas(BETAS)
    xt, eps_pred, noise = randn(4, 3, seed=11), randn(4, 3, seed=12), randn(4, 3, seed=13)
    for t in (1, 4, 8):
        x0_pred = dl.predict_x0_from_eps(s, xt, t, eps_pred)
        assert torch.equal(ddim.ddim_step(s, xt, eps_pred, t, 0, 0.0, noise), x0_pred)
        a = hand_alpha_bar(BETAS)[t]
        torch.testing.assert_close(x0_pred, (xt - math.sqrt(1 - a) * eps_pred) / math.sqrt(a), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(ddim.ddim_step(s, xt, eps_pred, t, 0, 0.7, noise), x0_pred, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("eta, clip", [(0.0, 1.0), (0.6, 1.0), (0.6, 0.5), (0.0, 2.0)])
def test_ddim_step_clips_x0_and_recomputes_eps(eta, clip):
    """clip_x0 = c clamps x̂_0 to [−c, c] and recomputes ε from the clipped x̂_0 (eq. 12 by hand with that
    ε); at t' = 0 the result is the clamped x̂_0. The inputs make x̂_0 leave [−1, 1] in most entries.
    Catches: clipping x̂_0 but keeping the model's ε (the direction term disagrees), clipping x_{t'},
    clipping to [−1, 1] whatever c is."""
    s = dl.schedule_from_betas(BETAS)
    xt, eps_pred, noise = 2.5 * randn(5, 4, seed=14), randn(5, 4, seed=15), randn(5, 4, seed=16)
    t, t_prev = torch.tensor([8, 6, 3, 2, 5]), torch.tensor([5, 1, 2, 0, 4])
    x0_pred = dl.predict_x0_from_eps(s, xt, t, eps_pred)
    assert (x0_pred.abs() > 1).double().mean() > 0.5
    assert (x0_pred.abs() > clip).any()
    torch.testing.assert_close(ddim.ddim_step(s, xt, eps_pred, t, t_prev, eta, noise, clip_x0=clip),
                               ddim_by_hand(BETAS, xt, eps_pred, t.tolist(), t_prev.tolist(), eta, noise, clip=clip),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ddim.ddim_step(s, xt, eps_pred, t, 0, eta, noise, clip_x0=clip),
                               x0_pred.clamp(-clip, clip), rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------------------- sample_ddim

@pytest.mark.parametrize("grid, expected_grid", [("uniform", [8, 4, 1]), ("quadratic", [8, 2, 1])])
def test_sample_ddim_follows_the_grid_from_x_T(grid, expected_grid):
    """From a given x_T with η = 0.5: the sampler equals eq. 12 written out along the grid (8, 4, 1 uniform;
    8, 2, 1 quadratic, by hand: 1 + ⌊7·i/2⌋ and 1 + ⌊7·i²/4⌋), then one step to 0, with the noise of the
    steps to t' > 0 drawn in order from the same seed; the model sees a long (B,) tensor of the paper's t;
    the callback sees (t, x_{t'}, x̂_0 predicted at t) after each step, and the last x is the last x̂_0.
    Catches: x_T ignored, the final step to 0 missing, the model given t' or a 0-based t, a noise draw at
    the step to 0 (the generator ends one draw ahead), a callback off by one or passing x as x̂_0."""
    s = dl.schedule_from_betas(BETAS)
    B, D, eta = 6, 2, 0.5
    x_T = randn(B, D, seed=20)
    seen_t, trajectory = [], []

    def model(xt, t):
        assert t.dtype == torch.long and t.shape == (B,) and (t == t[0]).all()
        seen_t.append(int(t[0]))
        return toy_eps_model(xt, t)

    gen = torch.Generator().manual_seed(7)
    out = ddim.sample_ddim(model, s, (B, D), steps=3, eta=eta, generator=gen,
                           grid=grid, dtype=F64, x_T=x_T,
                           callback=lambda t, x, x0: trajectory.append((t, x.clone(), x0.clone())))
    g = torch.Generator().manual_seed(7)
    ts = expected_grid + [0]
    alpha_bar = hand_alpha_bar(BETAS)
    x, expected, expected_x0 = x_T.clone(), [], []
    for t, t_prev in zip(ts, ts[1:]):
        noise = torch.randn(B, D, generator=g, dtype=F64) if t_prev > 0 else torch.zeros(B, D, dtype=F64)
        eps_pred = toy_eps_model(x, torch.full((B,), t))
        expected_x0.append((x - math.sqrt(1 - alpha_bar[t]) * eps_pred) / math.sqrt(alpha_bar[t]))
        x = ddim_by_hand(BETAS, x, eps_pred, [t] * B, [t_prev] * B, eta, noise)
        expected.append(x)
    assert seen_t == expected_grid and [t for t, _, _ in trajectory] == expected_grid
    for (_, got, got_x0), want, want_x0 in zip(trajectory, expected, expected_x0):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_x0, want_x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, expected[-1], rtol=1e-12, atol=1e-12)
    assert torch.equal(trajectory[-1][1], trajectory[-1][2])
    assert torch.equal(torch.randn(3, generator=gen), torch.randn(3, generator=g))   # no draw more, none less


def test_sample_ddim_one_step_jumps_from_T_to_x0_pred():
    """steps = 1: one call of the model at t = T and x̂_0 returned. Catches: a grid that ends at T but still
    visits 1, the final step skipped."""
    s = dl.schedule_from_betas(BETAS)
    x_T = randn(5, 2, seed=21)
    out = ddim.sample_ddim(toy_eps_model, s, (5, 2), steps=1, x_T=x_T, dtype=F64)
    eps_pred = toy_eps_model(x_T, torch.full((5,), 8))
    torch.testing.assert_close(out, dl.predict_x0_from_eps(s, x_T, 8, eps_pred), rtol=1e-13, atol=1e-13)


def test_sample_ddim_eta_0_is_deterministic_and_eta_1_full_grid_is_ddpm():
    """η = 0: the same x_T with generators of different seeds gives identical samples, and the generator is
    left untouched (the docstring promises draws only where σ > 0).
    η = 1, steps = T: dl.sample_ddpm with the same seed, draw for draw (x_T, then the noises of t = T..2).
    Also the default dtype is float32. Catches: noise scaled by a non-zero σ at η = 0 (η ignored), noise drawn
    at η = 0, the global RNG instead of the generator, a different draw order than DDPM, a missing final step."""
    s = dl.schedule_from_betas(BETAS)
    x_T = randn(16, 2, seed=22)
    run = lambda seed, eta, **kw: ddim.sample_ddim(toy_eps_model, s, (16, 2), steps=s.T, eta=eta, dtype=F64,
                                                   generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(run(0, 0.0, x_T=x_T), run(1, 0.0, x_T=x_T))
    unused = torch.Generator().manual_seed(2)
    ddim.sample_ddim(toy_eps_model, s, (16, 2), steps=5, eta=0.0, generator=unused, x_T=x_T, dtype=F64)
    assert torch.equal(torch.randn(4, generator=unused), torch.randn(4, generator=torch.Generator().manual_seed(2)))
    assert not torch.allclose(run(0, 1.0, x_T=x_T), run(1, 1.0, x_T=x_T))
    torch.manual_seed(123)                                   # the global RNG must not matter
    a = run(0, 1.0)
    assert torch.equal(a, run(0, 1.0))
    g_ddpm, g_ddim = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    ddpm = dl.sample_ddpm(toy_eps_model, s, (16, 2), generator=g_ddpm, dtype=F64)
    torch.testing.assert_close(a, ddpm, rtol=1e-12, atol=1e-12)
    ddim.sample_ddim(toy_eps_model, s, (16, 2), steps=s.T, eta=1.0, dtype=F64, generator=g_ddim)
    assert torch.equal(g_ddpm.get_state(), g_ddim.get_state())       # neither draws a noise it would not use at t = 1
    assert ddim.sample_ddim(toy_eps_model, s, (4, 2), steps=3).dtype == torch.float32


# ------------------------------------------------- the sampler's law with the exact ε (oracle tests)

def ddim_chain_law(betas, steps, eta, mu, sd):
    """Exact law N(m, v) of the DDIM sampler's x_0 for data N(mu, sd²), the exact ε and x_T ~ N(0, 1),
    computed here. ε*(x_t, t) = √(1−ᾱ_t)(x_t − √ᾱ_t μ)/v_t with v_t = ᾱ_t sd² + 1 − ᾱ_t is affine, so each
    step is x_{t'} = A x_t + B + σ z and m ← A m + B, v ← A² v + σ². The uniform grid τ_i = 1 + ⌊c·i⌋,
    c = (T − 1)/(steps − 1), is written here (its values are pinned by the step_grid tests)."""
    alpha_bar = hand_alpha_bar(betas)
    T = len(betas)
    ts = [1 + (T - 1) * i // (steps - 1) for i in range(steps)][::-1] + [0]
    m, v = 0.0, 1.0
    for t, tp in zip(ts, ts[1:]):
        a, ap = alpha_bar[t], alpha_bar[tp]
        g = math.sqrt(1 - a) / (a * sd ** 2 + 1 - a)
        sigma = hand_sigma(alpha_bar, t, tp, eta)
        c_eps = math.sqrt(1 - ap - sigma ** 2)
        A = math.sqrt(ap) * (1 - math.sqrt(1 - a) * g) / math.sqrt(a) + c_eps * g
        B = (math.sqrt(ap) * math.sqrt(1 - a) - c_eps * math.sqrt(a)) * g * mu
        m, v = A * m + B, A * A * v + sigma ** 2
    return m, v


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sample_ddim_recovers_gaussian_data(eta):
    """20k samples, exact ε of N(1.5, 0.5²), linear T = 1000, 100 uniform steps: the sample mean and std
    agree with the exact law of the DDIM chain (computed independently, ddim_chain_law) within 5 standard
    errors, and with the data's within 5 SE plus the chain's discretisation bias, which is exact and
    itself asserted small: std −0.0141 (η = 0) / −0.0319 (η = 1; −0.0039 at 1000 steps, as DDPM's),
    mean −0.0046 (η = 0: x_T ~ N(0, 1) instead of q(x_T), whose mean is √ᾱ_T·1.5) / −2e-5 (η = 1, the
    noise forgets x_T), against SE(mean) = 0.0035, SE(std) = 0.0025. The bias falls like 1/steps
    (std −0.028 / −0.057 at 50 steps).
    Catches (each checked by breaking the library): η ignored in σ (the η = 0 run is stochastic), σ² used
    where σ belongs, √(1 − ᾱ_{t'}) without − σ² in the direction term, the model given t' instead of t,
    ε's sign flipped in x̂_0. Too small to see here, and left to the unit tests above: σ = η√β̃_t instead of
    the strided σ, a missing final step (x_1 and x_0 differ by ~0.01·ε at T = 1000)."""
    mu, sd, n, steps = 1.5, 0.5, 20_000, 100
    s = dl.make_schedule("linear", 1000)
    data = dl.GaussianMixture.gaussian(mu, sd)
    x = ddim.sample_ddim(data.eps_model(s), s, (n, 1), steps=steps, eta=eta, dtype=F64,
                         generator=torch.Generator().manual_seed(30))
    m, v = ddim_chain_law(s.beta[1:], steps, eta, mu, sd)
    bias_mean, bias_std = abs(m - mu), abs(math.sqrt(v) - sd)
    assert bias_mean < 0.006 and bias_std < 0.035              # 100 steps: the chain is close to the data
    se_mean, se_std = sd / math.sqrt(n), sd / math.sqrt(2 * (n - 1))
    assert abs(x.mean().item() - m) < 5 * se_mean and abs(x.std().item() - math.sqrt(v)) < 5 * se_std
    assert abs(x.mean().item() - mu) < 5 * se_mean + bias_mean
    assert abs(x.std().item() - sd) < 5 * se_std + bias_std


MIX_MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.5]], dtype=F64)
MIX_STDS = torch.tensor([0.5, 0.6, 0.4], dtype=F64)
MIX_WEIGHTS = torch.tensor([0.2, 0.3, 0.5], dtype=F64)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sample_ddim_recovers_mixture_weights_and_means(eta):
    """20k samples, exact ε of a 2-D mixture with weights (0.2, 0.3, 0.5), cosine T = 1000, 100 uniform
    steps; samples are assigned to components by the exact class posterior at t = 0. Weights agree within
    5 binomial SE (≈ 0.0035 for 0.5) + 0.01, component means within 5 SE + 0.03, stds within 5 SE + 0.03.
    The added terms bound the discretisation bias of 100 steps, measured with 200k samples (SE of a weight
    0.0011, of a mean ≤ 0.003): weights off by ≤ 0.0049, means by ≤ 0.018 (η = 0) / 0.016 (η = 1), stds
    by ≤ 0.006 (η = 0) / 0.019 (η = 1), all shrinking towards the component centres.
    Catches (each checked by breaking the library): the model given t' or t − 1 instead of t, η ignored in σ,
    σ² used where σ belongs, the direction √(1 − ᾱ_{t'} − σ²) written √(1 − ᾱ_{t'}). Left to the unit tests:
    a missing final step, σ with one factor of eq. 16 dropped."""
    n = 20_000
    s = dl.make_schedule("cosine", 1000)
    data = dl.GaussianMixture(MIX_MEANS, MIX_STDS, MIX_WEIGHTS)
    x = ddim.sample_ddim(data.eps_model(s), s, (n, 2), steps=100, eta=eta, dtype=F64,
                         generator=torch.Generator().manual_seed(31))
    posterior = data.class_posterior(s, x, 0)
    assert (posterior.max(1).values < 0.99).double().mean().item() < 0.002   # modes well separated
    y = posterior.argmax(1)
    weights = torch.bincount(y, minlength=3).to(F64) / n
    se_w = torch.sqrt(MIX_WEIGHTS * (1 - MIX_WEIGHTS) / n)
    assert ((weights - MIX_WEIGHTS).abs() < 5 * se_w + 0.01).all(), (weights, se_w)
    for k in range(3):
        xk = x[y == k]
        se_mean = MIX_STDS[k] / math.sqrt(len(xk))
        assert ((xk.mean(0) - MIX_MEANS[k]).abs() < 5 * se_mean + 0.03).all(), (k, xk.mean(0))
        se_std = MIX_STDS[k] / math.sqrt(2 * (len(xk) - 1))
        assert ((xk.std(0) - MIX_STDS[k]).abs() < 5 * se_std + 0.03).all(), (k, xk.std(0))


# ---------------------------------------------------------------------------------------- ddim_invert

def test_ddim_invert_then_sample_reconstructs_gaussian_data():
    """Exact ε of N(1.5, 0.5²), linear T = 1000, x_0 on a grid of ±3 sd. The deterministic ODE maps x_0 to
    x_T* = √ᾱ_T·μ + √(ᾱ_T sd² + 1 − ᾱ_T)·(x_0 − μ)/sd (the monotone map between two Gaussians, written
    here); inversion approaches x_T* and inversion-then-sampling reconstructs x_0, both with an error that
    falls like 1/steps (measured max |error|: reconstruction 0.71, 0.081, 0.0082 and latent 0.81, 0.087,
    0.0095 at 10, 100, 1000 steps). Asserted: < 0.1 at 100 steps, < 0.01 at 1000, and 100 steps at least
    5× better than 10.
    Catches (each checked by breaking the library): x̂_0 computed with ᾱ of the next t, the grid run
    downwards, a stochastic q_sample(x_0, T) returned as the latent. Not here but in the next test: ε
    labelled with the current t instead of the next (its error is as small as the standard one's)."""
    mu, sd = 1.5, 0.5
    s = dl.make_schedule("linear", 1000)
    model = dl.GaussianMixture.gaussian(mu, sd).eps_model(s)
    x0 = mu + sd * torch.linspace(-3, 3, 61, dtype=F64)[:, None]
    alpha_bar_T = hand_alpha_bar(s.beta[1:])[-1]
    x_T_exact = math.sqrt(alpha_bar_T) * mu + math.sqrt(alpha_bar_T * sd ** 2 + 1 - alpha_bar_T) * (x0 - mu) / sd
    rec_err, latent_err = {}, {}
    for steps in (10, 100, 1000):
        x_T = ddim.ddim_invert(model, s, x0, steps=steps)
        rec = ddim.sample_ddim(model, s, x0.shape, steps=steps, eta=0.0, x_T=x_T, dtype=F64)
        rec_err[steps] = (rec - x0).abs().max().item()
        latent_err[steps] = (x_T - x_T_exact).abs().max().item()
    assert rec_err[100] < 0.1 and latent_err[100] < 0.1, (rec_err, latent_err)
    assert rec_err[1000] < 0.01 and latent_err[1000] < 0.012, (rec_err, latent_err)
    assert rec_err[10] > 5 * rec_err[100] and latent_err[10] > 5 * latent_err[100], (rec_err, latent_err)


@pytest.mark.parametrize("grid", ["uniform", "quadratic"])
def test_ddim_invert_is_exact_when_eps_ignores_x(grid):
    """If ε_θ does not depend on x, evaluating it at the current point is no approximation, so inversion then
    sampling returns x_0 to rounding, for any step count; the callback sees the grid read upwards and the
    last x is the returned x_T. Catches: the ε label t instead of t_n (the two passes use different ε),
    ᾱ indexed off by one, the grid not reversed."""
    s = dl.schedule_from_betas(BETAS)
    model = lambda xt, t: torch.sin(t.to(xt.dtype))[:, None].expand_as(xt) + 0.5
    x0 = randn(5, 3, seed=40)
    seen = []
    x_T = ddim.ddim_invert(model, s, x0, steps=4, grid=grid, callback=lambda t, x, x0p: seen.append((t, x)))
    assert [t for t, _ in seen] == ddim.step_grid(s.T, 4, grid)[::-1] and torch.equal(seen[-1][1], x_T)
    assert not torch.allclose(x_T, x0)
    rec = ddim.sample_ddim(model, s, x0.shape, steps=4, grid=grid, eta=0.0, x_T=x_T, dtype=F64)
    torch.testing.assert_close(rec, x0, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------- slerp

def angle(a, b):
    """Angle between the rows of a and b, computed here with acos of the cosine."""
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return torch.acos(cos.clamp(-1, 1))


def test_slerp_endpoints_norm_and_linear_angle():
    """Per sample: α = 0 gives z_0, α = 1 gives z_1; for equal norms every point keeps the norm; the angle to
    z_0 is α·θ and to z_1 is (1 − α)·θ, each sample with its own θ. A batch-1 pair with N values of α gives
    N points. Catches: linear interpolation (the norm dips to cos(θ/2)·|z|), one θ for the whole batch,
    the two weights swapped (endpoints reversed), α applied as 1 − α."""
    z0 = randn(3, 2, 4, seed=50)
    z1 = randn(3, 2, 4, seed=51)
    z1 = z1 / z1.flatten(1).norm(dim=1)[:, None, None] * z0.flatten(1).norm(dim=1)[:, None, None]   # equal norms
    torch.testing.assert_close(ddim.slerp(z0, z1, 0.0), z0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ddim.slerp(z0, z1, 1.0), z1, rtol=1e-12, atol=1e-12)
    theta = angle(z0.flatten(1), z1.flatten(1))
    assert theta.max() - theta.min() > 0.1                       # the three pairs have different angles
    for alpha in (0.1, 0.3, 0.5, 0.85):
        z = ddim.slerp(z0, z1, alpha).flatten(1)
        torch.testing.assert_close(z.norm(dim=1), z0.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
        torch.testing.assert_close(angle(z, z0.flatten(1)), alpha * theta, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(angle(z, z1.flatten(1)), (1 - alpha) * theta, rtol=1e-9, atol=1e-9)
    alphas = torch.linspace(0, 1, 7, dtype=F64)
    path = ddim.slerp(z0[:1], z1[:1], alphas)
    assert path.shape == (7, 2, 4)
    torch.testing.assert_close(angle(path.flatten(1), z0[:1].flatten(1)), alphas * theta[0], rtol=1e-9, atol=1e-9)


def test_slerp_parallel_falls_back_to_lerp_and_rejects_opposite():
    """Parallel inputs (θ = 0) give the straight line (1 − α)·z_0 + α·z_1 (no 0/0 NaN); opposite inputs have no
    unique arc and raise ValueError. Catches: sin θ division without the fallback (NaN)."""
    z0 = randn(2, 5, seed=52)
    out = ddim.slerp(z0, 2 * z0, 0.25)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, 1.25 * z0, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="opposite"):
        ddim.slerp(z0, -z0, 0.5)
    # At θ = 1e-4 the arc is used, not the line: the midpoint of two unit latents keeps norm 1 to
    # round-off, where the line's midpoint has norm cos(θ/2) = 1 − 1.25e-9.
    e0, e1 = torch.zeros(1, 3, dtype=F64), torch.zeros(1, 3, dtype=F64)
    e0[0, 0], e1[0, 0], e1[0, 1] = 1.0, math.cos(1e-4), math.sin(1e-4)
    assert abs(ddim.slerp(e0, e1, 0.5).norm().item() - 1) < 1e-13


# --------------------------------------------------------------------------------------------- errors

def test_bad_input_raises_readable_errors():
    """ValueError with a message that names the problem: steps < 1 or > T, eta < 0 or > 1, an unknown grid,
    t' ≥ t, t' < 0, t outside 1..T, mismatched shapes, a t' batch of another size, x_T of another shape.
    Catches: silent clamping of steps or t', broadcasting a (B, 1) ε against (B, D), a KeyError or
    IndexError instead of a message."""
    s = dl.schedule_from_betas(BETAS)
    x = randn(4, 3, seed=60)
    for bad in (0, s.T + 1):
        with pytest.raises(ValueError, match="steps must"):
            ddim.sample_ddim(toy_eps_model, s, (4, 3), steps=bad)
        with pytest.raises(ValueError, match="steps must"):
            ddim.ddim_invert(toy_eps_model, s, x, steps=bad)
        with pytest.raises(ValueError, match="steps must"):
            ddim.step_grid(s.T, bad)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="eta must"):
            ddim.sample_ddim(toy_eps_model, s, (4, 3), steps=3, eta=bad)
        with pytest.raises(ValueError, match="eta must"):
            ddim.ddim_step(s, x, x, 5, 3, bad, x)
    for call in (lambda: ddim.sample_ddim(toy_eps_model, s, (4, 3), steps=3, grid="linear"),
                 lambda: ddim.ddim_invert(toy_eps_model, s, x, steps=3, grid="cosine"),
                 lambda: ddim.step_grid(s.T, 3, "log")):
        with pytest.raises(ValueError, match="unknown step grid"):
            call()
    for t, t_prev in ((5, 5), (5, 6), (5, -1), (torch.tensor([5, 5, 3, 2]), torch.tensor([4, 1, 3, 0]))):
        with pytest.raises(ValueError, match="t_prev must lie in 0..t"):
            ddim.ddim_step(s, x, x, t, t_prev, 0.0, x)
    for t in (0, s.T + 1):
        with pytest.raises(ValueError, match="t must lie in 1..T"):
            ddim.ddim_step(s, x, x, t, 0, 0.0, x)
    with pytest.raises(ValueError, match="shapes must match"):
        ddim.ddim_step(s, x, x[:, :1], 5, 3, 0.0, x)
    with pytest.raises(ValueError, match="shapes must match"):
        ddim.ddim_step(s, x, x, 5, 3, 0.0, x[:2])
    with pytest.raises(ValueError, match="t_prev has 3 timesteps"):
        ddim.ddim_step(s, x, x, 5, torch.tensor([1, 2, 3]), 0.0, x)
    with pytest.raises(ValueError, match="x_T has shape"):
        ddim.sample_ddim(toy_eps_model, s, (4, 3), steps=3, x_T=x[:, :2])
    with pytest.raises(ValueError, match="clip_x0"):
        ddim.ddim_step(s, x, x, 5, 3, 0.0, x, clip_x0=-1.0)


def test_ddim_step_float32_sigma_has_float32_precision():
    """float32 x_t with x_t = ε = 0 and noise = 1 returns σ itself; with η = 1 and t' = t − 1 that is √β̃_t, computed
    here in float64 from β alone (ᾱ by hand). The coefficients must be formed in float64 and rounded once:
    relative error below 1e-6. Catches: the coefficients gathered in x_t's dtype, where 1 − ᾱ_t/ᾱ_{t'} of two
    float32 ᾱ ≈ 0.9997 keeps three or four digits (relative error ~1e-4 at small t)."""
    s = dl.make_schedule("linear", 1000)
    alpha_bar = hand_alpha_bar(s.beta[1:])
    t = torch.tensor([2, 3, 10, 500, 1000])
    zeros = torch.zeros(5, 1, dtype=torch.float32)
    got = ddim.ddim_step(s, zeros, zeros, t, t - 1, 1.0, torch.ones_like(zeros))
    assert got.dtype == torch.float32
    exact = torch.tensor([math.sqrt((1 - alpha_bar[k - 1]) / (1 - alpha_bar[k]) * s.beta[k].item())
                          for k in t.tolist()], dtype=F64)
    assert ((got.double().flatten() - exact).abs() / exact).max() < 1e-6


def test_ddim_step_is_finite_when_one_minus_alpha_bar_prev_minus_sigma_sq_rounds_below_zero():
    """A schedule whose ᾱ_T (≈ 1e-36) is far below float64's resolution: from t = T to t' = 2 with η = 1,
    1 − ᾱ_{t'} − σ² is ≈ 1e-33 exactly but rounds to −1.1e-16 here, so √ of it would be NaN. The step must
    stay finite and equal eq. 12 with the exact coefficient
    √(1 − ᾱ_{t'} − σ²) = (1 − ᾱ_{t'})·√(ᾱ_t/(ᾱ_{t'}(1 − ᾱ_t))) ≈ 3e-17 (for η = 1, written out here), to the 1e-7
    that the rounding allows. Catches: the clamp at 0 dropped."""
    betas = torch.tensor([0.02] + [0.999] * 12, dtype=F64)
    s = dl.schedule_from_betas(betas)
    alpha_bar = hand_alpha_bar(betas)
    t, tp = 13, 2
    a, ap = alpha_bar[t], alpha_bar[tp]
    sig = hand_sigma(alpha_bar, t, tp, 1.0)
    assert 1 - ap - sig ** 2 < 0                                   # the rounding this test is about
    xt, eps_pred, noise = randn(3, 4, seed=30), randn(3, 4, seed=31), randn(3, 4, seed=32)
    got = ddim.ddim_step(s, xt, eps_pred, t, tp, 1.0, noise)
    assert torch.isfinite(got).all()
    x0_pred = (xt - math.sqrt(1 - a) * eps_pred) / math.sqrt(a)
    coef_eps = (1 - ap) * math.sqrt(a / (ap * (1 - a)))
    expected = math.sqrt(ap) * x0_pred + coef_eps * eps_pred + sig * noise
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-7)


def test_ddim_invert_names_integer_data_as_x0():
    """Catches: the message naming "xt" (the loop's variable) for the x0 the caller gave, or the network called on
    integer data first."""
    s = dl.make_schedule("cosine", T=20)
    calls = []
    with pytest.raises(ValueError, match=r"^x0 is a torch.int64 tensor"):
        dl.ddim_invert(lambda x, t: calls.append(t) or torch.zeros_like(x), s, torch.ones(3, 2, dtype=torch.long), steps=4)
    assert calls == []


def test_sample_ddim_passes_clip_x0_to_every_step():
    """With data far outside [−1, 1] (N(3, 0.5²), exact ε), ``sample_ddim(clip_x0=1.0)`` hands every step a
    predicted x̂_0 inside [−1, 1] (seen by the callback) and returns samples inside it (the last step returns
    x̂_0 itself), while the unclipped sampler returns the data's mean. Catches: clip_x0 accepted by
    sample_ddim but not passed on to ddim_step."""
    s = dl.make_schedule("linear", T=100)
    data = dl.GaussianMixture(means=[3.0], stds=[0.5], weights=[1.0])
    seen = []
    clipped = dl.sample_ddim(data.eps_model(s), s, (500, 1), steps=20, generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64, clip_x0=1.0, callback=lambda t, xt, x0: seen.append(x0.abs().max()))
    free = dl.sample_ddim(data.eps_model(s), s, (500, 1), steps=20, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)
    assert len(seen) == 20 and max(seen) <= 1.0 and clipped.abs().max() <= 1.0
    assert free.mean().item() == pytest.approx(3.0, abs=0.1)
