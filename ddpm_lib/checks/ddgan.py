"""Checks for the exercises of notebook 09 (Denoising Diffusion GANs)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ddgan import d_loss, ddgan_schedule, g_loss, posterior_sample
from ..oracle import GaussianMixture
from ..schedules import make_schedule
from .grading import Mistake, N_CASES, _generator, _grade, _images, _one_step_per_sample, _same, _timesteps, f64


def _step(s, x0_pred, xt, t, noise, var="beta_tilde", no_noise_at_1=False):
    a, ab, ab_prev, b = s.alpha[t], s.alpha_bar[t], s.alpha_bar[t - 1], s.beta[t]
    mean = ab_prev.sqrt() * b / (1 - ab) * x0_pred + a.sqrt() * (1 - ab_prev) / (1 - ab) * xt
    if no_noise_at_1 and t == 1:
        return mean
    return mean + ((1 - ab_prev) / (1 - ab) * b if var == "beta_tilde" else b).sqrt() * noise


def check_ddgan_step(fn, seed=None) -> bool:
    """Exercise 9.1: ``fn(s, x0_pred, xt, t, noise)`` → x_{t−1} = μ̃_t(x_t, x_0′) + √β̃_t·noise, a draw from
    q(x_{t−1} | x_t, x_0′) (DDPM eqs. 6–7); t an int in 1..T, or a long tensor (B,); at t = 1, β̃_1 = 0 and the
    draw is x_0′."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s = ddgan_schedule(4) if k % 2 == 0 else make_schedule("cosine", 50)
        x = _images(g, 3)
        for t in (1, 2, s.T):
            cases.append((s, torch.randn(x.shape, generator=g, dtype=f64), torch.randn(x.shape, generator=g, dtype=f64),
                          t, torch.randn(x.shape, generator=g, dtype=f64)))
    mistakes = [
        Mistake("the variance of the posterior is β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t, not β_t",
                lambda *a: _step(*a, var="beta")),
        Mistake("the variance of the posterior is β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t, not β_t (β̃_1 = 0 is what "
                "makes the last draw noise-free, so no special case for t = 1 is needed)",
                lambda *a: _step(*a, var="beta", no_noise_at_1=True)),
    ]

    def last_step(fn):          # at t = 1 the posterior is a point mass at x_0′
        s, x0p = ddgan_schedule(4), torch.randn(2, 3, generator=g, dtype=f64)
        out = fn(s, x0p, torch.randn(2, 3, generator=g, dtype=f64), 1, torch.randn(2, 3, generator=g, dtype=f64))
        if not torch.allclose(torch.as_tensor(out, dtype=f64), x0p, atol=1e-10):
            return "at t = 1 the draw must be x_0′ itself (ᾱ_0 = 1 makes μ̃_1 = x_0′ and β̃_1 = 0)"

    s = make_schedule("cosine", 50)                             # t as a tensor (B,): one step per sample
    x0_pred, xt, noise = torch.randn(3, *_images(g, 4).shape, generator=g, dtype=f64)
    batch = (s, x0_pred, xt, _timesteps(g, s, 4), noise)
    return _grade("ddgan_step", fn, cases, posterior_sample, mistakes, ("x_{t-1}",),
                  [last_step],
                  f"matches dl.posterior_sample on {len(cases)} draws (t = 1, 2 and T; T = 4 and T = 50), and on "
                  "a batch whose samples take different steps",
                  requirements=[lambda fn: _one_step_per_sample(fn, batch, 3)])


def check_gan_losses(fn, seed=None) -> bool:
    """Exercise 9.2: ``fn(real_logits, fake_logits)`` → ``(loss_d, loss_g)``: the discriminator's
    E softplus(−D_real) + E softplus(D_fake) and the non-saturating generator loss E softplus(−D_fake)."""
    g = _generator(seed)
    cases = [(3 * torch.randn(int(n), generator=g, dtype=f64), 3 * torch.randn(int(n), generator=g, dtype=f64))
             for n in torch.randint(2, 40, (N_CASES,), generator=g)]
    reference = lambda r, f: (d_loss(r, f), g_loss(f))
    mistakes = [
        Mistake("the generator's loss is the *non-saturating* E softplus(−D(fake)) = −E log σ(D(fake)), not "
                "−E softplus(D(fake)) (that one saturates when D wins)", lambda r, f: -F.softplus(f).mean(), 1),
        Mistake("the discriminator pushes real logits up: E softplus(−D(real)), with a minus inside",
                lambda r, f: F.softplus(r).mean() + F.softplus(f).mean(), 0),
        Mistake("both signs are flipped: D's loss is E softplus(−D(real)) + E softplus(D(fake)), low when real "
                "logits are high and fake ones low", lambda r, f: F.softplus(r).mean() + F.softplus(-f).mean(), 0),
        Mistake("the losses are means over the batch, not sums",
                lambda r, f: F.softplus(-r).sum() + F.softplus(f).sum(), 0),
        Mistake("D's loss here is the sum of the two terms, E softplus(−D(real)) + E softplus(D(fake)), not their "
                "average (some codes halve it; the check follows the course's d_loss)",
                lambda r, f: 0.5 * (F.softplus(-r).mean() + F.softplus(f).mean()), 0),
        Mistake("the losses are means over the batch, not sums", lambda r, f: F.softplus(-f).sum(), 1),
    ]
    def confident_discriminator(fn):                 # logits of a D that is sure: e^800 overflows float64
        real, fake = torch.tensor([800.0, -800.0, 3.0], dtype=f64), torch.tensor([-800.0, 800.0], dtype=f64)
        losses = [torch.as_tensor(v, dtype=f64) for v in fn(real, fake)]
        if not all(torch.isfinite(v).all() for v in losses):
            return ("for logits of ±800 (a confident D) a loss is inf or NaN: log(1 + eˣ) overflows and log σ(x) "
                    "reaches log 0; F.softplus(x) (or torch.logaddexp(0, x)) gives the same values and stays finite")
        want = reference(real, fake)
        if not all(_same(v, w, (1e-9, 1e-9)) for v, w in zip(losses, want)):
            return "for logits of ±800 (a confident D) the losses differ from softplus's: keep every term"

    return _grade("gan_losses", fn, cases, reference, mistakes, ("loss_d", "loss_g"), [confident_discriminator],
                  f"match the non-saturating losses on {N_CASES} batches of logits, and stay finite for logits of ±800")


# --------------------------------------------------------------------------- Exercise 9.3
def _reverse_mixture(s, xt, t, means, var, weights, prior="noised", lik="sqrt", post_var="precisions",
                     normalise="softmax"):
    """The reference of Exercise 9.3 and its wrong variants: q(x_{t−1} | x_t) = Σ_k π_k N(x_{t−1}; μ_k, S), eq. (9.4),
    for 1-D data Σ_k w_k N(m_k, σ²), by Bayes (eq. 9.1) with the data noised to t − 1 (DDPM eq. 4):
        q(x_{t−1}) = Σ_k w_k N(a_k, V),   a_k = √ᾱ_{t−1} m_k,   V = ᾱ_{t−1} σ² + 1 − ᾱ_{t−1}
        S = 1 / (α_t/β_t + 1/V),   μ_k = S·(√α_t x_t / β_t + a_k / V),   π_k ∝ w_k N(x_t; √α_t a_k, α_t V + β_t).
    xt: 0-d or (B,); returns π (…, K), μ (…, K) and S (0-d)."""
    ab_prev = {"noised": s.alpha_bar[t - 1], "clean": torch.ones((), dtype=f64), "to_t": s.alpha_bar[t]}[prior]
    alpha, beta = s.alpha[t], s.beta[t]
    c = alpha.sqrt() if lik == "sqrt" else alpha                 # x_t = c·x_{t−1} + √β_t·ε
    a_k, V = ab_prev.sqrt() * means, ab_prev * var + 1 - ab_prev
    S = {"precisions": 1 / (c ** 2 / beta + 1 / V), "sum": beta / alpha + V, "likelihood": beta / alpha}[post_var]
    x = torch.as_tensor(xt, dtype=f64)[..., None]
    mu = S * (c * x / beta + a_k / V)
    evidence_var = c ** 2 * V + beta
    log_w = torch.log(weights) - 0.5 * (x - c * a_k) ** 2 / evidence_var
    if normalise == "softmax":
        w = torch.softmax(log_w, -1)
    elif normalise == "none":                                    # w_k N(x_t; …) with its constant, not divided by the sum
        w = torch.exp(log_w) / torch.sqrt(2 * math.pi * evidence_var)
    else:                                                        # the same without the constant
        w = torch.exp(log_w)
    return w, mu, S


def _grid_reverse_density(s, xt, t, means, var, weights, sds=15.0, per_sd=14.0):
    """q(x_{t−1} | x_t) of eq. (9.1) for each x_t in ``xt`` (B,), by Bayes on a grid, with no algebra: the likelihood
    N(x_t; √α_t x, β_t) times q(x_{t−1} = x) (``GaussianMixture.log_prob``, the data noised to t − 1), normalised by the
    trapezoid rule. The grid covers the likelihood's window, x_t/√α_t ± 15 of its sds √(β_t/α_t), and every component
    of q(x_{t−1}) ± 15 of its sds; its spacing is a fourteenth of the smaller sd (the posterior's is at least that over √2).
    Returns the grid and the density, both (B, G)."""
    mix = GaussianMixture(means, math.sqrt(var), weights)
    ab_prev, alpha, beta = s.alpha_bar[t - 1], s.alpha[t], s.beta[t]
    sd_lik, sd_prior = float((beta / alpha).sqrt()), math.sqrt(float(ab_prev * var + 1 - ab_prev))
    centre, a_k = xt / alpha.sqrt(), ab_prev.sqrt() * means
    lo = torch.clamp(centre - sds * sd_lik, max=float(a_k.min()) - sds * sd_prior)
    hi = torch.clamp(centre + sds * sd_lik, min=float(a_k.max()) + sds * sd_prior)
    G = int(float((hi - lo).max()) * per_sd / min(sd_lik, sd_prior)) + 1
    x = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, G, dtype=f64)
    log_post = (-0.5 * (xt[:, None] - alpha.sqrt() * x) ** 2 / beta
                + mix.log_prob(s, x.reshape(-1, 1), t - 1).reshape(x.shape))
    p = torch.exp(log_post - log_post.amax(1, keepdim=True))
    return x, p / torch.trapezoid(p, x, dim=1)[:, None]


def _mixture_density(x, w, mu, S):
    """Σ_k π_k N(x; μ_k, S) at x (B, G) for weights and means (B, K) and one variance S."""
    S = torch.as_tensor(S, dtype=f64)
    return (w[:, None, :] * torch.exp(-0.5 * (x[..., None] - mu[:, None, :]) ** 2 / S)).sum(-1) / torch.sqrt(2 * math.pi * S)


def _gaussian_conditional(s, xt, t, mean, var):
    """For data N(m, σ²): (x_{t−1}, x_t) is jointly Gaussian, with V_{t−1} = ᾱ_{t−1}σ² + 1 − ᾱ_{t−1},
    V_t = α_t V_{t−1} + β_t and Cov(x_{t−1}, x_t) = √α_t V_{t−1}; conditioning gives the mean
    √ᾱ_{t−1} m + Cov/V_t·(x_t − √ᾱ_t m) and the variance V_{t−1} − Cov²/V_t."""
    ab_prev, alpha, beta = s.alpha_bar[t - 1], s.alpha[t], s.beta[t]
    V_prev = ab_prev * var + 1 - ab_prev
    V_t, cov = alpha * V_prev + beta, alpha.sqrt() * V_prev
    return ab_prev.sqrt() * mean + cov / V_t * (xt - s.alpha_bar[t].sqrt() * mean), V_prev - cov ** 2 / V_t


def check_reverse_step_mixture(fn, seed=None) -> bool:
    """Exercise 9.3: ``fn(s, xt, t, means, var, weights)`` → ``(pi, mu, S)`` of q(x_{t−1} | x_t), eq. (9.4),
    for 1-D data Σ_k w_k N(m_k, σ²): x_t a 0-d tensor or a batch (B,), t an int in 1..T, means and weights (K,)
    (weights summing to 1), var = σ² a number. Returns π (K,) or (B, K), μ_k of the same shape, and the shared S."""
    g = _generator(seed)
    schedules = [ddgan_schedule(4), make_schedule("linear", 1000), make_schedule("cosine", 1000), ddgan_schedule(16)]
    cases = []
    for k in range(N_CASES):
        s, K = schedules[k % len(schedules)], int(torch.randint(2, 5, (), generator=g))
        means = 1.5 * torch.randn(K, generator=g, dtype=f64)
        var = 0.01 + 0.3 * float(torch.rand((), generator=g, dtype=f64))
        weights = torch.rand(K, generator=g, dtype=f64) + 0.2
        weights = weights / weights.sum()
        for t in (1, 2, int(torch.randint(3, s.T + 1, (), generator=g))):
            B = 5 if t > 1 else 1                       # t = 1 is asked with a 0-d x_t
            y = torch.multinomial(weights, B, replacement=True, generator=g)
            x0 = means[y] + math.sqrt(var) * torch.randn(B, generator=g, dtype=f64)
            xt = s.alpha_bar[t].sqrt() * x0 + (1 - s.alpha_bar[t]).sqrt() * torch.randn(B, generator=g, dtype=f64)
            cases.append((s, xt if B > 1 else xt[0], t, means, var, weights))
    variant = lambda part, **kw: lambda *a: _reverse_mixture(*a, **kw)[part]
    noised = "the prior is the data noised to t − 1, q(x_{t−1}) = Σ_k w_k N(√ᾱ_{t−1} m_k, V) with V = ᾱ_{t−1}σ² + 1 − ᾱ_{t−1}"
    mistakes = [
        Mistake(f"{noised}, not the clean mixture", variant(0, prior="clean")),
        Mistake("μ_k uses the noised prior's mean √ᾱ_{t−1} m_k and variance V = ᾱ_{t−1}σ² + 1 − ᾱ_{t−1}, not m_k and σ²",
                variant(1, prior="clean"), 1),
        Mistake("S = 1/(α_t/β_t + 1/V) with the noised prior's V = ᾱ_{t−1}σ² + 1 − ᾱ_{t−1}, not σ²",
                variant(2, prior="clean"), 2),
        Mistake("off by one in t: the prior is the data noised to t − 1, with ᾱ_{t−1} = s.alpha_bar[t - 1] (index = the "
                "paper's t), and you used ᾱ_t", variant(0, prior="to_t")),
        *(Mistake("off by one in t: ᾱ_{t−1} is s.alpha_bar[t - 1], not ᾱ_t", variant(part, prior="to_t"), part)
          for part in (1, 2)),
        *(Mistake("the weights must sum to 1 for every x_t: divide w_k N(x_t; √α_t a_k, α_t V + β_t) by their sum over k "
                  "(torch.softmax of the log weights does it)", variant(0, normalise=kind)) for kind in ("none", "no_constant")),
        Mistake("precisions add, not variances: S = 1/(α_t/β_t + 1/V)", variant(2, post_var="sum"), 2),
        Mistake("precisions add, not variances: μ_k = S·(√α_t x_t/β_t + a_k/V) with S = 1/(α_t/β_t + 1/V)",
                variant(1, post_var="sum"), 1),
        Mistake("S must include the prior: 1/S = α_t/β_t + 1/V; β_t/α_t is the likelihood's variance alone",
                variant(2, post_var="likelihood"), 2),
        Mistake("S must include the prior: μ_k = S·(√α_t x_t/β_t + a_k/V) with 1/S = α_t/β_t + 1/V",
                variant(1, post_var="likelihood"), 1),
        Mistake("one forward step is x_t = √α_t x_{t−1} + √β_t ε: component k's evidence is N(x_t; √α_t a_k, α_t V + β_t), "
                "with √α_t, not α_t", variant(0, lik="alpha")),
        Mistake("μ_k = S·(√α_t x_t/β_t + a_k/V), with √α_t, not α_t", variant(1, lik="alpha"), 1),
        Mistake("the likelihood's precision in x_{t−1} is (√α_t)²/β_t = α_t/β_t, not α_t²/β_t", variant(2, lik="alpha"), 2),
    ]

    def bayes_on_a_grid(fn):            # three unequal components; x_t = 6 lies far outside the data at T = 1000, t = 1
        means, var, weights = torch.tensor([-1.0, 0.2, 1.3], dtype=f64), 0.01, torch.tensor([0.5, 0.3, 0.2], dtype=f64)
        for s, t, xt in ((ddgan_schedule(4), 2, [-0.5, 0.3, 2.0]), (make_schedule("linear", 1000), 1, [0.05, 1.0, 6.0])):
            xt = torch.tensor(xt, dtype=f64)
            w, mu, S = (torch.as_tensor(v, dtype=f64) for v in fn(s, xt.clone(), t, means.clone(), var, weights.clone()))
            if not all(bool(torch.isfinite(v).all()) for v in (w, mu, S)):
                return (f"at x_t = {xt.tolist()} (T = {s.T}, t = {t}) a result is inf or NaN: far from every component all "
                        "the evidences N(x_t; …) underflow to 0 and their ratio is 0/0; work with log weights and "
                        "torch.softmax (or subtract the largest log weight before exp)")
            x, p = _grid_reverse_density(s, xt, t, means, var, weights)
            err = float(((_mixture_density(x, w.expand(len(xt), -1), mu.expand(len(xt), -1), S) - p).abs().amax(1)
                         / p.amax(1)).max())
            if not err < 1e-9:              # the grid itself is good to about 1e-13 of the peak
                return (f"the mixture it returns differs from Bayes' rule computed on a grid (the normalised product "
                        f"q(x_t | x_{{t−1}})·q(x_{{t−1}}), T = {s.T}, t = {t}, x_t = {xt.tolist()}) by {err:.2g} of the peak")

    def one_component(fn):              # K = 1: the jointly Gaussian conditional of (x_{t−1}, x_t)
        s = make_schedule("sigmoid", 1000)
        for t in (1, int(torch.randint(2, 1001, (), generator=g))):
            xt = torch.randn(4, generator=g, dtype=f64)
            w, mu, S = (torch.as_tensor(v, dtype=f64) for v in fn(s, xt.clone(), t, torch.tensor([0.7], dtype=f64), 0.09,
                                                                  torch.ones(1, dtype=f64)))
            mean, cond_var = _gaussian_conditional(s, xt, t, 0.7, 0.09)
            if not (_same(w.reshape(-1), torch.ones(4, dtype=f64), (1e-9, 1e-12))
                    and _same(mu.reshape(-1), mean, (1e-9, 1e-12)) and _same(S, cond_var, (1e-9, 1e-14))):
                return ("for one component the reverse step must be the conditional of the jointly Gaussian (x_{t−1}, x_t): "
                        "mean √ᾱ_{t−1}m + Cov/V_t·(x_t − √ᾱ_t m), variance V_{t−1} − Cov²/V_t, Cov = √α_t V_{t−1}, "
                        f"V_t = α_t V_{{t−1}} + β_t (t = {t}), with weight 1")

    return _grade("reverse_step_mixture", fn, cases, _reverse_mixture, mistakes, ("the weights", "the means", "the variance"),
                  [bayes_on_a_grid, one_component],
                  f"weights, means and variance match eq. (9.4) on {len(cases)} cases (K = 2–4, t = 1, 2 and random; "
                  "T = 4, 16, 1000), Bayes' rule on a grid, and the Gaussian conditional for one component",
                  shape_note=" (S_t is one number, the same for every x_t and component; the weights and means are (K,) "
                             "for a 0-d x_t and (B, K) for a batch)")
