"""Tests of ddpm_lib.sampling: one step of Algorithm 2 against the algorithm written out, the sampler's
plumbing (seeds, x_T, callback, errors), and the sampler's output law with the exact ε of Gaussian and
Gaussian-mixture data (no training needed). float64 throughout.

Each test's docstring names the wrong implementation it catches.
"""
import math

import pytest
import torch
from helpers import hand_schedule

import ddpm_lib as dl

F64 = torch.float64
BETAS = torch.linspace(0.02, 0.2, 8, dtype=F64)       # T = 8, large β: every coefficient matters


def algorithm_2_step(xt, eps_pred, t_list, noise, var):
    """Algorithm 2 of Ho et al., one sample at a time:
    x_{t−1} = 1/√α_t (x_t − (1 − α_t)/√(1 − ᾱ_t) ε_θ) + σ_t z, z = 0 if t = 1,
    σ_t² = β_t or β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t."""
    beta, alpha, alpha_bar = hand_schedule(BETAS)
    out = torch.empty_like(xt)
    for i, t in enumerate(t_list):
        sigma_sq = beta[t] if var == "beta" else (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * beta[t]
        z = noise[i] if t > 1 else torch.zeros_like(noise[i])
        out[i] = (xt[i] - (1 - alpha[t]) / torch.sqrt(1 - alpha_bar[t]) * eps_pred[i]) / torch.sqrt(alpha[t]) \
            + torch.sqrt(sigma_sq) * z
    return out


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------------------------------ ddpm_step

@pytest.mark.parametrize("var", ["beta_tilde", "beta"])
def test_ddpm_step_matches_algorithm_2(var):
    """Per-sample t (including t = 1 and t = T) and an int t, against Algorithm 2 written out.
    Catches: σ_t used as σ_t² (no square root), ᾱ_t where ᾱ_{t−1} belongs in β̃_t, the √α_t
    division dropped, β_t/(1 − ᾱ_t) without the square root, the variance options swapped."""
    s = dl.schedule_from_betas(BETAS)
    xt, eps_pred, noise = randn(5, 2, 3, seed=0), randn(5, 2, 3, seed=1), randn(5, 2, 3, seed=2)
    t = torch.tensor([1, 2, 5, 8, 3])
    torch.testing.assert_close(dl.ddpm_step(s, xt, eps_pred, t, noise, var=var),
                               algorithm_2_step(xt, eps_pred, t.tolist(), noise, var), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dl.ddpm_step(s, xt, eps_pred, 4, noise, var=var),
                               algorithm_2_step(xt, eps_pred, [4] * 5, noise, var), rtol=1e-12, atol=1e-12)


def test_ddpm_step_default_variance_is_beta_tilde():
    """σ_t² = β̃_t unless asked (``reverse_variance``'s default). Catches: β_t as the default."""
    s = dl.schedule_from_betas(BETAS)
    xt, eps_pred, noise = randn(4, 3, seed=3), randn(4, 3, seed=4), randn(4, 3, seed=5)
    torch.testing.assert_close(dl.ddpm_step(s, xt, eps_pred, 6, noise),
                               algorithm_2_step(xt, eps_pred, [6] * 4, noise, "beta_tilde"), rtol=1e-12, atol=1e-12)


def test_ddpm_step_adds_no_noise_at_t1():
    """z = 0 if t = 1, for an int t and for the t = 1 rows of a per-sample t. Uses σ_t² = β_t, because
    β̃_1 = 0 would hide the bug. Catches: noise added at t = 1, the mask applied to the wrong rows."""
    s = dl.schedule_from_betas(BETAS)
    beta, _, _ = hand_schedule(BETAS)
    xt, eps_pred = randn(4, 3, seed=6), randn(4, 3, seed=7)
    noise_a, noise_b = randn(4, 3, seed=8), randn(4, 3, seed=9)
    assert beta[1] > 0
    out_a = dl.ddpm_step(s, xt, eps_pred, 1, noise_a, var="beta")
    torch.testing.assert_close(out_a, dl.ddpm_step(s, xt, eps_pred, 1, noise_b, var="beta"), rtol=0, atol=0)
    torch.testing.assert_close(out_a, algorithm_2_step(xt, eps_pred, [1] * 4, torch.zeros_like(xt), "beta"),
                               rtol=1e-12, atol=1e-12)
    t = torch.tensor([1, 3, 1, 2])
    diff = dl.ddpm_step(s, xt, eps_pred, t, noise_a, var="beta") - dl.ddpm_step(s, xt, eps_pred, t, noise_b, var="beta")
    assert torch.equal(diff[[0, 2]], torch.zeros(2, 3, dtype=F64))
    torch.testing.assert_close(diff[[1, 3]], torch.sqrt(beta[[3, 2]])[:, None] * (noise_a - noise_b)[[1, 3]],
                               rtol=1e-12, atol=1e-12)


def test_ddpm_step_errors():
    """ValueError for an unknown variance name, mismatched shapes, and t outside 1..T.
    Catches: a silent fallback variance, silent broadcasting of (B, 1) against (B, D)."""
    s = dl.schedule_from_betas(BETAS)
    xt = randn(4, 3, seed=10)
    with pytest.raises(ValueError, match="beta_tilde"):
        dl.ddpm_step(s, xt, xt, 3, xt, var="sigma")
    with pytest.raises(ValueError):
        dl.ddpm_step(s, xt, xt[:, :1], 3, xt)              # eps_pred would broadcast
    with pytest.raises(ValueError):
        dl.ddpm_step(s, xt, xt, 3, xt[:2])                  # noise of another batch
    for bad_t in (0, s.T + 1, torch.tensor([1, 2, 0, 3])):
        with pytest.raises(ValueError):
            dl.ddpm_step(s, xt, xt, bad_t, xt)


# ---------------------------------------------------------------------------------------- sample_ddpm

def toy_eps_model(xt, t):
    """A deterministic ε-model that depends on both x_t and t (so a wrong t would show)."""
    return 0.3 * xt + 0.05 * t.to(xt.dtype)[:, None]


def test_sample_ddpm_reproducible_with_seed():
    """The same generator seed gives the same samples; another seed gives others.
    Catches: draws from the global RNG instead of the generator."""
    s = dl.schedule_from_betas(BETAS)
    run = lambda seed: dl.sample_ddpm(toy_eps_model, s, (16, 2), generator=torch.Generator().manual_seed(seed),
                                      dtype=F64)
    a = run(0)
    torch.manual_seed(123)                                  # the global RNG must not matter
    assert torch.equal(a, run(0))
    assert not torch.allclose(a, run(1))
    assert a.shape == (16, 2) and a.dtype == F64
    with pytest.raises(ValueError):
        dl.sample_ddpm(toy_eps_model, s, (16, 2), var="betatilde")


@pytest.mark.parametrize("var", ["beta_tilde", "beta"])
def test_sample_ddpm_is_algorithm_2_from_x_T(var):
    """Starting from a given x_T, the sampler equals the loop t = T..1 of Algorithm 2 written out, with
    the noise of t = T..2 drawn in order from the same seed; the model sees t as a long (B,) tensor
    holding the paper's t; the callback is called T times with t = T..1 and the new x_{t−1}.
    Catches: x_T ignored, a loop over 0..T−1 (0-based t), noise at t = 1, a callback off by one."""
    s = dl.schedule_from_betas(BETAS)
    B, D = 6, 2
    x_T = randn(B, D, seed=20)
    seen_t, trajectory = [], []

    def model(xt, t):
        assert t.dtype == torch.long and t.shape == (B,)
        seen_t.append(int(t[0]))
        assert (t == t[0]).all()
        return toy_eps_model(xt, t)

    out = dl.sample_ddpm(model, s, (B, D), generator=torch.Generator().manual_seed(7), var=var, dtype=F64,
                         x_T=x_T, callback=lambda t, x: trajectory.append((t, x.clone())))
    g = torch.Generator().manual_seed(7)
    x, expected = x_T.clone(), []
    for t in range(s.T, 0, -1):
        noise = torch.randn(B, D, generator=g, dtype=F64) if t > 1 else torch.zeros(B, D, dtype=F64)
        x = algorithm_2_step(x, toy_eps_model(x, torch.full((B,), t)), [t] * B, noise, var)
        expected.append(x)
    assert seen_t == list(range(s.T, 0, -1))
    assert [t for t, _ in trajectory] == list(range(s.T, 0, -1))
    for (_, got), want in zip(trajectory, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, expected[-1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        dl.sample_ddpm(model, s, (B, D + 1), x_T=x_T)


# ------------------------------------------------- the sampler's law with the exact ε (oracle tests)

def chain_law(s, mu, sd, var):
    """Exact law N(m, v) of the sampler's x_0 for data N(mu, sd²) and the exact ε, computed here.
    ε* is affine in x_t, so x_{t−1} = A_t x_t + B_t + σ_t z; no noise at t = 1 (as the sampler)."""
    beta, alpha, alpha_bar = hand_schedule(s.beta[1:])
    m, v = 0.0, 1.0
    for t in range(s.T, 0, -1):
        b, a, ab = beta[t].item(), alpha[t].item(), alpha_bar[t].item()
        g = math.sqrt(1 - ab) / (ab * sd ** 2 + 1 - ab)
        A = (1 - b * g / math.sqrt(1 - ab)) / math.sqrt(a)
        B = b * g * math.sqrt(ab) * mu / (math.sqrt(1 - ab) * math.sqrt(a))
        sigma_sq = b if var == "beta" else (1 - alpha_bar[t - 1].item()) / (1 - ab) * b
        m, v = A * m + B, A * A * v + (sigma_sq if t > 1 else 0.0)
    return m, v


@pytest.mark.parametrize("var", ["beta_tilde", "beta"])
def test_sample_ddpm_recovers_gaussian_data(var):
    """20k samples with the exact ε of N(1.5, 0.5²), linear T = 1000: sample mean and std equal the
    data's within 5 standard errors plus the discretisation bias of the finite chain. The bias is
    computed exactly (chain_law): |Δm| ≈ 2e-5 and Δstd ≈ −0.0039 (β̃) / +0.0008 (β), against
    SE(mean) = 0.0035 and SE(std) = 0.0025; the test also checks the bias is that small.
    Catches: the √α_t division dropped (mean shrinks to ~0), no noise (std collapses), σ_t = σ_t²
    (std far too small), a sign error on ε (diverges). Too small to see here, and left to the unit
    tests above: noise at t = 1 and β ↔ β̃ swapped."""
    mu, sd, n = 1.5, 0.5, 20_000
    s = dl.make_schedule("linear", 1000)
    data = dl.GaussianMixture.gaussian(mu, sd)
    x = dl.sample_ddpm(data.eps_model(s), s, (n, 1), generator=torch.Generator().manual_seed(30), var=var,
                       dtype=F64)
    m, v = chain_law(s, mu, sd, var)
    bias_mean, bias_std = abs(m - mu), abs(math.sqrt(v) - sd)
    assert bias_mean < 1e-3 and bias_std < 5e-3            # T = 1000 is fine enough to recover the data
    se_mean, se_std = sd / math.sqrt(n), sd / math.sqrt(2 * (n - 1))
    assert abs(x.mean().item() - mu) < 5 * se_mean + bias_mean
    assert abs(x.std().item() - sd) < 5 * se_std + bias_std


MIX_MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.5]], dtype=F64)
MIX_STDS = torch.tensor([0.5, 0.6, 0.4], dtype=F64)
MIX_WEIGHTS = torch.tensor([0.2, 0.3, 0.5], dtype=F64)


@pytest.mark.parametrize("var", ["beta_tilde", "beta"])
def test_sample_ddpm_recovers_mixture_weights_and_means(var):
    """20k samples with the exact ε of a 2-D mixture with weights (0.2, 0.3, 0.5), cosine T = 200;
    samples are assigned to components by the exact class posterior at t = 0. Weights agree within 5
    binomial SE √(w(1−w)/n) (≈ 0.003); component means within 5 SE + 0.01 and stds within 5 SE + 0.015,
    where 0.01 / 0.015 bound the discretisation bias of T = 200 measured with 200k samples
    (largest mean shift 0.009 ± 0.0025, stds 0.589 for 0.6 with β̃).
    Catches (each checked by breaking the library): weights lost in the oracle (equal weights 1/3),
    the noised variance ᾱ_t s² + 1 − ᾱ_t taken as s² + 1 − ᾱ_t, σ_t used as σ_t², the model given t − 1."""
    n = 20_000
    s = dl.make_schedule("cosine", 200)
    data = dl.GaussianMixture(MIX_MEANS, MIX_STDS, MIX_WEIGHTS)
    x = dl.sample_ddpm(data.eps_model(s), s, (n, 2), generator=torch.Generator().manual_seed(31), var=var,
                       dtype=F64)
    posterior = data.class_posterior(s, x, 0)
    ambiguous = (posterior.max(1).values < 0.99).double().mean().item()
    assert ambiguous < 0.002              # well separated: almost every sample belongs clearly to one mode
    y = posterior.argmax(1)
    weights = torch.bincount(y, minlength=3).to(F64) / n
    se_w = torch.sqrt(MIX_WEIGHTS * (1 - MIX_WEIGHTS) / n)
    assert ((weights - MIX_WEIGHTS).abs() < 5 * se_w).all(), (weights, se_w)
    for k in range(3):
        xk = x[y == k]
        se_mean = MIX_STDS[k] / math.sqrt(len(xk))
        assert ((xk.mean(0) - MIX_MEANS[k]).abs() < 5 * se_mean + 0.01).all(), (k, xk.mean(0))
        se_std = MIX_STDS[k] / math.sqrt(2 * (len(xk) - 1))
        assert ((xk.std(0) - MIX_STDS[k]).abs() < 5 * se_std + 0.015).all(), (k, xk.std(0))


def test_a_given_x_T_keeps_its_device_when_no_generator_is_passed():
    """x_T on another device than the CPU (here the meta device, which computes shapes only) and no generator:
    both samplers run where x_T lives. Catches: the device defaulting to the CPU, which would copy a GPU x_T
    to the CPU and feed it to a GPU model."""
    s = dl.make_schedule("linear", 50)
    x_T = torch.empty(3, 2, device="meta")
    for draw in (lambda: dl.sample_ddpm(lambda x, t: torch.zeros_like(x), s, (3, 2), x_T=x_T),
                 lambda: dl.sample_ddim(lambda x, t: torch.zeros_like(x), s, (3, 2), steps=5, x_T=x_T)):
        assert draw().device.type == "meta"


def test_sample_ddpm_builds_no_autograd_graph():
    """sample_ddpm runs under no_grad (as sample_ddim does): a network with parameters gives a plain tensor."""
    s = dl.make_schedule("linear", 50)
    m = dl.ToyEpsModel()
    for draw in (lambda: dl.sample_ddpm(m, s, (4, 2), generator=torch.Generator().manual_seed(0)),
                 lambda: dl.sample_ddim(m, s, (4, 2), steps=5, generator=torch.Generator().manual_seed(0))):
        x = draw()
        assert not x.requires_grad and x.grad_fn is None


def test_sample_ddim_builds_no_autograd_graph():
    s = dl.make_schedule("linear", 50)
    x = dl.sample_ddim(dl.ToyEpsModel(), s, (4, 2), steps=5, generator=torch.Generator().manual_seed(0))
    assert not x.requires_grad


def test_a_given_x_T_takes_the_asked_dtype():
    """SA4/SA5: x_T in float64 with dtype float32 (the default) is cast, and the caller's x_T is not the result."""
    s = dl.make_schedule("linear", 50)
    zero = lambda x, t: torch.zeros_like(x)
    for draw in (lambda x_T: dl.sample_ddpm(zero, s, (3, 2), x_T=x_T),
                 lambda x_T: dl.sample_ddim(zero, s, (3, 2), steps=5, x_T=x_T)):
        x_T = torch.randn(3, 2, dtype=torch.float64)
        assert draw(x_T).dtype == torch.float32


def test_a_model_on_a_device_samples_there_without_a_generator():
    """A network loaded onto another device (here the meta device) and no generator: x_T is drawn, or a given
    CPU x_T moved, where the network's parameters are. Catches: x_T drawn on the CPU and fed to a GPU model
    ("Expected all tensors to be on the same device"), as a notebook that loads its model with device=device did."""
    s = dl.make_schedule("linear", 50)
    model = dl.ToyEpsModel().to("meta")
    for x_T in (None, torch.randn(3, 2)):
        assert dl.sample_ddpm(model, s, (3, 2), x_T=x_T).device.type == "meta"
        assert dl.sample_ddim(model, s, (3, 2), steps=5, x_T=x_T).device.type == "meta"



def test_a_cpu_generator_drives_a_model_on_another_device():
    """A network on another device (here the meta device, standing in for a GPU) and a CPU generator, as on
    Colab with ``torch.Generator().manual_seed(0)``: every sampler computes where the network is and draws its
    numbers on the CPU, then moves them. Catches: x_T and the noise put on the generator's device and fed to
    the network elsewhere ("Expected all tensors to be on the same device"), as sample_ddpm and sample_ddim
    did while sample_ddgan already drew this way."""
    s = dl.make_schedule("linear", 50)
    model = dl.ToyEpsModel().to("meta")
    g = torch.Generator().manual_seed(0)
    assert dl.sample_ddpm(model, s, (3, 2), generator=g).device.type == "meta"
    assert dl.sample_ddim(model, s, (3, 2), steps=5, eta=1.0, generator=g).device.type == "meta"
    G = dl.ToyGenerator().to("meta")
    assert dl.sample_ddgan(G, dl.ddgan_schedule(), (3, 2), generator=g).device.type == "meta"


def test_a_given_x_T_decides_the_device_before_the_generator():
    """A plain function as ε_θ (no parameters to place it), x_T on the meta device and a CPU generator: the
    samplers compute where x_T is and only draw on the CPU. Catches: x_T moved to the generator's device."""
    s = dl.make_schedule("linear", 50)
    x_T = torch.empty(3, 2, device="meta")
    zero = lambda x, t: torch.zeros_like(x)
    g = torch.Generator().manual_seed(0)
    assert dl.sample_ddpm(zero, s, (3, 2), x_T=x_T, generator=g).device.type == "meta"
    assert dl.sample_ddim(zero, s, (3, 2), steps=5, eta=1.0, x_T=x_T, generator=g).device.type == "meta"


def test_standard_normal_draws_where_the_generator_lives():
    """The numbers come from the generator's stream whatever the target device: the same as a plain CPU draw
    from the same seed, moved. Catches: a draw on the target device (another stream) or an unseeded draw."""
    ref = torch.randn(4, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = dl.sampling.standard_normal((4, 3), torch.Generator().manual_seed(7), "cpu", torch.float64)
    assert torch.equal(got, ref)
    moved = dl.sampling.standard_normal((4, 3), torch.Generator().manual_seed(7), "meta", torch.float64)
    assert moved.device.type == "meta" and moved.shape == (4, 3)


def test_standard_normal_asks_the_generators_device_for_the_draw(monkeypatch):
    """With a CPU generator and another target device (meta, standing in for a GPU), torch.randn is called
    on the CPU with that generator and only the result is moved: the draws are then the CPU stream's, the
    same on any machine. Recorded by wrapping torch.randn. Catches: the draw made on the target device
    (a GPU's stream: other numbers, or an error for a CPU generator on a real GPU), which meta's empty
    tensors cannot show by their values."""
    calls = []
    real_randn = torch.randn

    def spy(*args, **kwargs):
        calls.append((torch.device(kwargs.get("device") or "cpu"), kwargs.get("generator")))
        return real_randn(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", spy)
    g = torch.Generator().manual_seed(3)
    out = dl.sampling.standard_normal((4, 3), g, "meta", F64)
    assert out.device.type == "meta" and out.shape == (4, 3)
    assert calls == [(torch.device("cpu"), g)]


def test_a_shape_that_is_not_a_tuple_of_ints_is_named():
    """``sample_ddpm(model, s, 8)`` or a float side. Catches: TypeError "'int' object is not iterable" from inside
    torch.randn, or a float silently accepted by some torch versions."""
    s = dl.make_schedule("cosine", T=5)
    eps_model = dl.ring_of_gaussians().eps_model(s)
    generator = dl.ToyGenerator(dim=2, z_dim=2)
    for shape in (8, (8, 2.0), (True, 2)):
        with pytest.raises(ValueError, match=r"shape must be a tuple of ints with the batch first"):
            dl.sample_ddpm(eps_model, s, shape)
        with pytest.raises(ValueError, match=r"shape must be a tuple of ints with the batch first"):
            dl.sample_ddgan(generator, dl.ddgan_schedule(4), shape)
    assert dl.sample_ddim(eps_model, s, [4, 2], steps=2).shape == (4, 2)
