"""Tests of ddpm_lib/ddgan.py: Denoising Diffusion GANs (Xiao et al. 2022) on 2-D data.

Math is checked in float64 against closed forms written out here (not read back from the code),
Monte-Carlo moments use tolerances of a few standard errors, and every test names the bug it catches.
"""
import copy
import math

import pytest
import torch
from torch import nn

import ddpm_lib as dl
from helpers import assert_d_and_g_steps_lower_their_losses
from ddpm_lib.ddgan import (ToyDiscriminator, ToyGenerator, d_loss, ddgan_schedule, g_loss, posterior_sample,
                            q_sample_pairs, r1_penalty, sample_ddgan, train_ddgan_toy)


def closed_form_alpha_bar(T, beta_min, beta_max):
    """ᾱ(τ) = exp(−β_min τ − ½(β_max − β_min) τ²) at τ = t/T, t = 0..T (the continuous VP SDE)."""
    return [math.exp(-beta_min * (t / T) - 0.5 * (beta_max - beta_min) * (t / T) ** 2) for t in range(T + 1)]


# ---------------------------------------------------------------- schedule

@pytest.mark.parametrize("T,beta_min,beta_max", [(4, 0.1, 20.0), (2, 0.1, 20.0), (8, 0.5, 10.0)])
def test_schedule_matches_vp_closed_form(T, beta_min, beta_max):
    """Catches: wrong τ (t/T vs (t−1)/T), a missing ½, an off-by-one index, β outside (0, 1)."""
    s = ddgan_schedule(T, beta_min, beta_max)
    assert s.T == T and len(s.beta) == len(s.alpha_bar) == len(s.beta_tilde) == T + 1
    expected = torch.tensor(closed_form_alpha_bar(T, beta_min, beta_max), dtype=torch.float64)
    torch.testing.assert_close(s.alpha_bar, expected, rtol=1e-12, atol=0)
    assert ((s.beta[1:] > 0) & (s.beta[1:] < 1)).all()
    assert s.beta[0] == 0 and s.alpha_bar[0] == 1


def test_default_schedule_ends_near_pure_noise():
    """Catches: β_max/β_min swapped or τ not reaching 1 (ᾱ_T would stay far from 0 for T = 4)."""
    s = ddgan_schedule()
    assert s.T == 4
    assert s.alpha_bar[4] < 1e-4                        # exp(−10.05) ≈ 4.3e-5
    assert (s.beta[1:].diff() > 0).all()                 # the VP SDE's β grows with t


def test_schedule_rejects_bad_arguments():
    """Catches: silently accepting T = 0 or β_min ≥ β_max."""
    for kwargs in ({"T": 0}, {"beta_min": 2.0, "beta_max": 1.0}):
        with pytest.raises(ValueError):
            ddgan_schedule(**kwargs)


# ---------------------------------------------------------------- real pairs

@pytest.mark.parametrize("t", [2, 3, 4])
def test_pairs_have_one_step_and_marginal_moments(gen, t):
    """x_{t−1} ~ N(√ᾱ_{t−1} x0, 1 − ᾱ_{t−1}) and x_t | x_{t−1} ~ N(√α_t x_{t−1}, β_t) for a fixed x0.

    Catches: x_{t−1} drawn with ᾱ_t, x_t drawn from x_0 instead of x_{t−1} (slope 0), the same noise
    for both draws, std and variance confused.
    """
    s, n = ddgan_schedule(4), 200_000
    x0 = torch.tensor([[1.5, -0.7]], dtype=torch.float64).expand(n, 2)
    x_prev, xt = q_sample_pairs(s, x0, t, gen)
    ab = closed_form_alpha_bar(4, 0.1, 20.0)
    alpha_t = ab[t] / ab[t - 1]
    beta_t = 1 - alpha_t
    # marginals
    for x, a in ((x_prev, ab[t - 1]), (xt, ab[t])):
        se_mean = math.sqrt((1 - a) / n)
        assert (x.mean(0) - math.sqrt(a) * x0[0]).abs().max() < 5 * se_mean
        assert (x.var(0) - (1 - a)).abs().max() < 5 * (1 - a) * math.sqrt(2 / (n - 1))
    # one step: regress x_t on x_{t−1}, coordinate by coordinate
    for d in range(2):
        u, v = x_prev[:, d], xt[:, d]
        uc = u - u.mean()
        slope = (uc * (v - v.mean())).sum() / (uc ** 2).sum()
        resid = v - v.mean() - slope * uc
        se_slope = math.sqrt(beta_t / (uc ** 2).sum().item())
        assert abs(slope.item() - math.sqrt(alpha_t)) < 5 * se_slope
        assert abs(resid.var().item() - beta_t) < 5 * beta_t * math.sqrt(2 / (n - 2))
        # E[x_t | x_{t−1}] has intercept 0: x_t − √α_t x_{t−1} has mean 0
        assert abs((v - math.sqrt(alpha_t) * u).mean().item()) < 5 * math.sqrt(beta_t / n)


def test_pairs_at_t1_start_from_x0_and_accept_tensor_t(gen):
    """At t = 1, x_{t−1} is x_0 itself (ᾱ_0 = 1). Catches: noise added to x_0, t tensors mishandled."""
    s = ddgan_schedule(4)
    x0 = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 2, 3, 4] * 16)
    x_prev, xt = q_sample_pairs(s, x0, t, gen)
    assert torch.equal(x_prev[t == 1], x0[t == 1])
    assert not torch.allclose(x_prev[t > 1], x0[t > 1])
    assert x_prev.shape == xt.shape == x0.shape
    with pytest.raises(ValueError):
        q_sample_pairs(s, x0, 0, gen)


# ---------------------------------------------------------------- posterior draw

def test_posterior_sample_moments(gen):
    """Mean μ̃_t and variance β̃_t written out here from the closed-form ᾱ (DDPM eqs. 6–7).

    Catches: the x0 and xt coefficients swapped, √β̃ vs β̃, β_t used in place of β̃_t.
    """
    s, n, t = ddgan_schedule(4), 200_000, 2
    x0_pred = torch.tensor([[0.8, -1.2]], dtype=torch.float64).expand(n, 2)
    xt = torch.tensor([[-0.3, 0.9]], dtype=torch.float64).expand(n, 2)
    noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    x_prev = posterior_sample(s, x0_pred, xt, t, noise)
    ab = closed_form_alpha_bar(4, 0.1, 20.0)
    beta_t, alpha_t = 1 - ab[t] / ab[t - 1], ab[t] / ab[t - 1]
    mean = (math.sqrt(ab[t - 1]) * beta_t * x0_pred[0] + math.sqrt(alpha_t) * (1 - ab[t - 1]) * xt[0]) / (1 - ab[t])
    var = (1 - ab[t - 1]) / (1 - ab[t]) * beta_t
    assert (x_prev.mean(0) - mean).abs().max() < 5 * math.sqrt(var / n)
    assert (x_prev.var(0) - var).abs().max() < 5 * var * math.sqrt(2 / (n - 1))


def test_posterior_sample_adds_no_noise_at_t1(gen):
    """β̃_1 = 0: the draw at t = 1 is x_0′ exactly, whatever the noise. Catches: noise at the last step."""
    s = ddgan_schedule(4)
    x0_pred = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    xt = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    noise = 10 * torch.randn(16, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(posterior_sample(s, x0_pred, xt, 1, noise), x0_pred, rtol=0, atol=1e-12)
    assert not torch.allclose(posterior_sample(s, x0_pred, xt, 2, noise), posterior_sample(s, x0_pred, xt, 2, 0 * noise))


# ---------------------------------------------------------------- R1 and losses

class _Bias(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, x_prev, xt, t):
        return self.b.expand(x_prev.shape[0])


def test_r1_zero_for_discriminators_blind_to_x_prev(gen):
    """Catches: a gradient taken w.r.t. x_t (or the parameters) instead of x_{t−1}."""
    x_prev = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    xt = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    assert r1_penalty(_Bias(), x_prev, xt, 1).item() == 0.0
    assert r1_penalty(lambda a, b, t: torch.zeros(a.shape[0]), x_prev, xt, 1).item() == 0.0
    w = torch.tensor([2.0, -1.0], dtype=torch.float64, requires_grad=True)
    assert r1_penalty(lambda a, b, t: (b * w).sum(1) ** 2, x_prev, xt, 1).item() == 0.0
    D = ToyDiscriminator().double()
    assert r1_penalty(D, x_prev, xt, torch.full((32,), 2)).item() > 0


def test_r1_equals_hand_computed_gradient_norms(gen):
    """Linear D = a·x_{t−1} + c·x_t: R1 = ‖a‖²; D = Σ x_{t−1}²: R1 = E‖2x_{t−1}‖².

    Also differentiable in D's parameters: ∂R1/∂a = 2a. Catches: a missing square, a sum over the
    batch instead of a mean, create_graph=False (no gradient would reach a).
    """
    x_prev = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    xt = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    a = torch.tensor([1.5, -2.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.7, 0.4], dtype=torch.float64)
    r1 = r1_penalty(lambda u, v, t: u @ a + v @ c, x_prev, xt, 3)
    assert abs(r1.item() - (1.5 ** 2 + 2.0 ** 2)) < 1e-12
    (grad_a,) = torch.autograd.grad(r1, a)
    torch.testing.assert_close(grad_a, 2 * a.detach())
    r1_sq = r1_penalty(lambda u, v, t: (u ** 2).sum(1), x_prev, xt, 3)
    assert abs(r1_sq.item() - (4 * (x_prev ** 2).sum(1)).mean().item()) < 1e-12


def test_gan_losses_closed_form():
    """softplus(−r) + softplus(f) and softplus(−f), as −log σ. Catches: saturating loss, sign flips."""
    real, fake = torch.tensor([2.0, -1.0], dtype=torch.float64), torch.tensor([0.5, -3.0], dtype=torch.float64)
    sig = torch.sigmoid
    expected_d = -torch.log(sig(real)).mean() - torch.log(1 - sig(fake)).mean()
    torch.testing.assert_close(d_loss(real, fake), expected_d)
    torch.testing.assert_close(g_loss(fake), -torch.log(sig(fake)).mean())


# ---------------------------------------------------------------- networks and optimisation

def test_networks_shapes_and_conditioning(gen):
    """G depends on z and on t, D on t. Catches: z or t not wired in (the output would not change)."""
    torch.manual_seed(0)
    G, D = ToyGenerator(z_dim=4), ToyDiscriminator()
    xt = torch.randn(8, 2, generator=gen)
    z1, z2 = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    out = G(xt, z1, 2)
    assert out.shape == (8, 2)
    assert not torch.allclose(out, G(xt, z2, 2))
    assert not torch.allclose(out, G(xt, z1, 3))
    logit = D(out, xt, 2)
    assert logit.shape == (8,) and not torch.allclose(logit, D(out, xt, 4))


def test_toy_trainer_d_step_descends_d_loss_plus_half_gamma_r1():
    """The gradient of train_ddgan_toy's first D update equals ∇_D[d_loss + (γ/2)·R1] on the step's draws,
    replayed by hand from the same seed (idx, t, the pair's noise, then z and the posterior noise), in
    float64. Adam's first step is about lr·sign(g), so only the gradient shows the R1 weight. Catches: γ
    for γ/2, R1 left out, R1 on the fake pairs, D updated on a G-step batch."""
    torch.manual_seed(3)
    s, G, D = ddgan_schedule(4), ToyGenerator(hidden=16).double(), ToyDiscriminator(hidden=16).double()
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    first = {}
    for name, p in D.named_parameters():                          # D's first gradient: its own update's
        p.register_hook(lambda grad, name=name: first.setdefault(name, grad.clone()))
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    train_ddgan_toy(G, D, s, data, steps=1, batch=16, r1_gamma=0.3, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    idx, t = torch.randint(0, 64, (16,), generator=g), torch.randint(1, 5, (16,), generator=g)
    x_prev, xt = q_sample_pairs(s, data[idx], t, g)
    z = torch.randn(16, G0.z_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        x_fake = posterior_sample(s, G0(xt, z, t), xt, t, torch.randn(xt.shape, generator=g, dtype=torch.float64))
    objective = d_loss(D0(x_prev, xt, t), D0(x_fake, xt, t)) + 0.5 * 0.3 * r1_penalty(D0, x_prev, xt, t)
    expected = torch.autograd.grad(objective, list(D0.parameters()))
    assert len(first) == len(expected)
    for (name, _), grad in zip(D0.named_parameters(), expected):
        torch.testing.assert_close(first[name], grad, rtol=1e-10, atol=1e-12)


def test_d_and_g_steps_lower_their_losses(gen):
    """Adam steps on a fixed batch lower d_loss (D) and g_loss (G, with D frozen).

    Catches: gradients of the wrong sign, losses detached from the networks, posterior draw detached from G.
    """
    torch.manual_seed(1)
    s, G, D = ddgan_schedule(4), ToyGenerator(hidden=32), ToyDiscriminator(hidden=32)
    x0, _ = dl.ring_of_gaussians(k=4).sample(128, gen)
    t = torch.randint(1, 5, (128,), generator=gen)
    x_prev, xt = q_sample_pairs(s, x0.float(), t, gen)
    z, noise = torch.randn(128, G.z_dim, generator=gen), torch.randn(128, 2, generator=gen)

    assert_d_and_g_steps_lower_their_losses(G, D, s, x_prev, xt, t, z, noise, steps=20)


# ---------------------------------------------------------------- sampling

class _Counting(nn.Module):
    """Wraps G, recording the t of every call."""

    def __init__(self, G):
        super().__init__()
        self.G, self.z_dim, self.calls = G, G.z_dim, []

    def forward(self, xt, z, t):
        self.calls.append(int(t[0]) if torch.is_tensor(t) else t)
        return self.G(xt, z, t)


def test_sample_ddgan_calls_g_exactly_T_times(gen):
    """Catches: an extra or missing step, a loop in the wrong order (t must run T..1)."""
    for T in (1, 4, 6):
        G = _Counting(ToyGenerator(z_dim=3))
        x = sample_ddgan(G, ddgan_schedule(T), (10, 2), generator=gen)
        assert x.shape == (10, 2) and torch.isfinite(x).all()
        assert G.calls == list(range(T, 0, -1))


class _ConstantX0(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value, self.z_dim = nn.Parameter(torch.tensor(value)), 2

    def forward(self, xt, z, t):
        return self.value.expand_as(xt)


def test_sample_ddgan_returns_x0_pred_of_last_step(gen):
    """With G ≡ x_0′ the sampler ends exactly at x_0′. Catches: noise added at t = 1."""
    x = sample_ddgan(_ConstantX0([0.25, -1.75]), ddgan_schedule(4), (100, 2), generator=gen)
    torch.testing.assert_close(x, torch.tensor([0.25, -1.75]).expand(100, 2), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- end to end

def test_toy_training_covers_every_mode(gen):
    """A CPU run (T = 4, 1500 steps, ~20 s) on 4 Gaussians (radius 2, σ = 0.15) covers every mode.

    Measure: 4000 samples of the EMA generator; each is assigned to the component of largest posterior
    class_posterior(x, t = 0) and counts when it lies within 3σ of that mean (a 2-D Gaussian puts
    98.9 % there). Required: at least 70 % of all samples count, and every mode holds at least half
    its fair share (≥ 12.5 % of all samples). Catches: mode collapse, a generator that ignores z, a
    sampler that does not denoise (samples spread as N(0, I) would fail the 70 %), broken training.
    """
    torch.manual_seed(0)
    K, std = 4, 0.15
    mix = dl.ring_of_gaussians(k=K, std=std)
    x0_data, _ = mix.sample(5000, gen)
    s = ddgan_schedule(4)
    G, D = ToyGenerator(hidden=64), ToyDiscriminator(hidden=64)
    G_ema, history = train_ddgan_toy(G, D, s, x0_data, steps=1500, batch=256, lr_g=1e-3, lr_d=1e-3,
                                     r1_gamma=0.05, ema_decay=0.999, generator=gen)
    assert set(history) >= {"d_loss", "g_loss"} and len(history["d_loss"]) == len(history["g_loss"]) == 1500
    assert not any(p.requires_grad for p in G_ema.parameters())
    x = sample_ddgan(G_ema, s, (4000, 2), generator=gen).double()
    k = mix.class_posterior(s, x, 0).argmax(1)
    near = (x - mix.means[k]).norm(dim=1) < 3 * std
    share = torch.bincount(k[near], minlength=K).double() / len(x)
    print(f"within 3σ: {near.double().mean():.3f}; per-mode share: {share.numpy().round(3)}")
    assert near.double().mean() > 0.70
    assert (share >= 0.5 / K).all(), share


class _ConstantImage(nn.Module):
    """G ≡ a fixed image x_0′ (C, H, W), whatever x_t, z and t; records the shapes it is called with."""

    def __init__(self, image):
        super().__init__()
        self.image, self.z_dim, self.shapes = nn.Parameter(image), 5, []

    def forward(self, xt, z, t):
        self.shapes.append((tuple(xt.shape), tuple(z.shape), tuple(t.shape)))
        return self.image.expand_as(xt)


def test_sample_ddgan_on_images_ends_at_x0_pred_and_is_reproducible(gen):
    """Images (B, C, H, W): every call gets x_t of the full shape, z (B, z_dim) and t (B,); with G ≡ x_0′
    the chain ends exactly at x_0′; the same seed gives the same draw. Catches: a sampler written for
    (B, D) points only, noise at t = 1, draws that ignore the generator passed in."""
    image = torch.linspace(-1, 1, 2 * 4 * 4).reshape(2, 4, 4)
    G = _ConstantImage(image)
    x = sample_ddgan(G, ddgan_schedule(3), (6, 2, 4, 4), generator=gen)
    torch.testing.assert_close(x, image.expand(6, 2, 4, 4), rtol=0, atol=1e-6)
    assert G.shapes == [((6, 2, 4, 4), (6, 5), (6,))] * 3
    toy = ToyGenerator(z_dim=3)
    a = sample_ddgan(toy, ddgan_schedule(4), (7, 2), generator=torch.Generator().manual_seed(1))
    b = sample_ddgan(toy, ddgan_schedule(4), (7, 2), generator=torch.Generator().manual_seed(1))
    c = sample_ddgan(toy, ddgan_schedule(4), (7, 2), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_the_toy_ddgan_names_data_it_cannot_train_on():
    """Catches: torch's "mat1 and mat2 shapes cannot be multiplied" for 3-D points given to 2-D networks, integer
    points reaching torch.randn ("normal_kernel_cpu not implemented for 'Long'"), and "random_ expects 'from' to be
    less than 'to'" for no data."""
    s = ddgan_schedule(4)
    G, D = ToyGenerator(dim=2), ToyDiscriminator(dim=2)
    x3, t = torch.randn(8, 3), torch.full((8,), 2)
    with pytest.raises(ValueError, match=r"expected xt \(B, 2\) and z \(B, \d+\) for this generator \(dim=2\)"):
        G(x3, torch.randn(8, G.z_dim), t)
    with pytest.raises(ValueError, match=r"expected pairs of points \(B, 2\) for this discriminator, got \(8, 3\)"):
        D(x3, x3, t)
    with pytest.raises(ValueError, match=r"^x0 is a torch.int64 tensor"):
        dl.q_sample_pairs(s, torch.ones(8, 2, dtype=torch.long), t)
    for data, words in ((torch.randn(0, 2), r"x0_data must be \(N, D\) points with N >= 1"),
                        (torch.randn(16), r"got shape \(16,\)"),
                        (torch.full((16, 2), float("inf")), "NaN or infinite")):
        with pytest.raises(ValueError, match=words):
            train_ddgan_toy(G, D, s, data, steps=1)
    with pytest.raises(ValueError, match="^batch must be at least 1, got 0$"):
        train_ddgan_toy(G, D, s, torch.randn(16, 2), steps=1, batch=0)
