"""Checks for the exercises of notebook 09 (Denoising Diffusion GANs)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ddgan import d_loss, ddgan_schedule, g_loss, posterior_sample
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
