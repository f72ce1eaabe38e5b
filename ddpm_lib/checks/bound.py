"""Checks for the exercises of notebook 04 (the ELBO and L_simple)."""
from __future__ import annotations

import copy
import math

import torch

from ..elbo import denoising_term, normal_kl
from ..forward import q_sample
from ..indexing import gather
from ..schedules import make_schedule
from ..toy_model import ToyEpsModel
from .grading import (Mistake, N_CASES, _generator, _grade, _one_step_per_sample, _same, _tensor, _timesteps, _verdict,
                      f64)


def _kl(m1, v1, m2, v2, half=0.5, minus=1.0, power=1):
    v1, v2 = v1 ** power, v2 ** power
    return (half * (torch.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - minus)).sum(1)


def check_gaussian_kl(fn, seed=None) -> bool:
    """Exercise 4.1: ``fn(mean1, var1, mean2, var2)``, each (B, D) → KL(N(mean1, var1) ‖ N(mean2, var2)) per row."""
    g = _generator(seed)
    cases = []
    for _ in range(N_CASES):
        B, D = 6, int(torch.randint(1, 6, (1,), generator=g))
        m1, m2 = torch.randn(B, D, generator=g, dtype=f64), torch.randn(B, D, generator=g, dtype=f64)
        v1, v2 = torch.rand(2, B, D, generator=g, dtype=f64) + 0.1
        cases.append((m1, v1, m2, v2))
    mistakes = [
        Mistake("a factor ½ is missing", lambda *a: _kl(*a, half=1.0)),
        Mistake("the −1 is missing (KL(p ‖ p) must be 0)", lambda *a: _kl(*a, minus=0.0)),
        Mistake("the log term is log(var2 / var1): the second Gaussian's variance goes on top",
                lambda m1, v1, m2, v2: _kl(m1, v1, m2, v2) - torch.log(v2 / v1).sum(1)),
        Mistake("you computed KL(N(mean2, var2) ‖ N(mean1, var1)); the KL is not symmetric",
                lambda m1, v1, m2, v2: _kl(m2, v2, m1, v1)),
        Mistake("the arguments are variances, and you squared them as if they were standard deviations",
                lambda *a: _kl(*a, power=2)),
    ]
    n = 20_000

    def monte_carlo(fn):        # KL = E_{x ~ p}[log p(x) − log q(x)], estimated with its standard error
        m1, v1, m2, v2 = (c[:1] for c in cases[0])
        x = m1 + v1.sqrt() * torch.randn(n, m1.shape[1], generator=g, dtype=f64)
        log_ratio = (-0.5 * (torch.log(v1) + (x - m1) ** 2 / v1) + 0.5 * (torch.log(v2) + (x - m2) ** 2 / v2)).sum(1)
        got, est, se = float(fn(m1, v1, m2, v2)[0]), float(log_ratio.mean()), float(log_ratio.std()) / math.sqrt(n)
        if abs(got - est) > 5 * se:
            return (f"a Monte-Carlo estimate of the KL from {n:,} samples is {est:.4f} ± {se:.4f}, "
                    f"but your function gives {got:.4f}")
        if not _same(fn(m1, v1, m1, v1), torch.zeros(1, dtype=f64), (0, 1e-12)):
            return "KL(p ‖ p) should be 0"

    return _grade("gaussian_kl", fn, cases, lambda *a: normal_kl(*a).sum(1), mistakes, ("the KL",), [monte_carlo],
                  f"matches dl.normal_kl summed over D on {N_CASES} random batches, agrees with a Monte-Carlo estimate "
                  "and is 0 for equal Gaussians", shape_note=" (one KL per row: sum over the D coordinates)")


def _denoise(s, x0, xt, eps_pred, t, var="beta", prev=1, sqrt_mu=True, divide="alpha", swap=False):
    at = lambda name, k=0: gather(getattr(s, name), t - k, x0)
    beta, alpha, ab_t, ab_prev = at("beta"), at("alpha"), at("alpha_bar"), at("alpha_bar", prev)
    mean_q = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab_t) * xt
    var_q = (1 - ab_prev) / (1 - ab_t) * beta
    mean_p = (xt - beta / ((1 - ab_t).sqrt() if sqrt_mu else 1 - ab_t) * eps_pred) / at(divide).sqrt()
    var_p = at(var)
    q, p = (mean_q, var_q.expand_as(x0)), (mean_p, var_p.expand_as(x0))
    return _kl(*p, *q) if swap else _kl(*q, *p)


def check_denoising_term(fn, seed=None) -> bool:
    """Exercise 4.2: ``fn(s, x0, xt, eps_pred, t)`` → L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))
    with σ_t² = β_t, summed over D: (B,). x0, xt, eps_pred (B, D); t ≥ 2, a long tensor (B,) or an int."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s = make_schedule("cosine", 100) if k % 2 else make_schedule("linear", 1000)
        x0 = torch.randn(7, int(torch.randint(1, 5, (1,), generator=g)), generator=g, dtype=f64)
        t = _timesteps(g, s, 7, low=2)
        xt = q_sample(s, x0, t, torch.randn(x0.shape, generator=g, dtype=f64))
        cases.append((s, x0, xt, torch.randn(x0.shape, generator=g, dtype=f64), t))
    variant = lambda **kw: (lambda *a: _denoise(*a, **kw))
    mistakes = [
        Mistake("you used σ_t² = β̃_t for p_θ; this exercise fixes σ_t² = β_t", variant(var="beta_tilde")),
        Mistake("off by one in t: ᾱ_{t−1} is s.alpha_bar[t - 1] (index = the paper's t), and you used ᾱ_t",
                variant(prev=0)),
        Mistake("a square root is missing in μ_θ = (x_t − β_t / √(1 − ᾱ_t)·ε_θ) / √α_t",
                variant(sqrt_mu=False)),
        Mistake("μ_θ divides by √α_t (s.alpha), not √ᾱ_t (s.alpha_bar)", variant(divide="alpha_bar")),
        Mistake("the KL's arguments are swapped: L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))",
                variant(swap=True)),
    ]

    def closed_forms(fn):
        s, t = make_schedule("linear", 1000), torch.randint(2, 1001, (5,), generator=g)
        x0, eps, other = (torch.randn(5, 3, generator=g, dtype=f64) for _ in range(3))
        ab, beta, alpha = (getattr(s, name)[t][:, None] for name in ("alpha_bar", "beta", "alpha"))
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        r = (s.beta_tilde[t] / s.beta[t])                            # with the true ε only the variances differ
        if not _same(fn(s, x0, xt, eps, t), 1.5 * (r - 1 - torch.log(r)), (1e-6, 1e-10)):
            return ("with ε_θ equal to the true ε the term should reduce to "
                    "½·D·(β̃_t/β_t − 1 − log(β̃_t/β_t))")
        lam = (beta ** 2 / (2 * beta * alpha * (1 - ab)))[:, 0]       # eq. 12 with σ_t² = β_t
        change = lam * ((eps - other) ** 2).sum(1)
        if not _same(fn(s, x0, xt, other, t) - fn(s, x0, xt, eps, t), change, (1e-6, 1e-9)):
            return ("the term should grow by λ_t·‖ε − ε_θ‖² with "
                    "λ_t = β_t² / (2σ_t² α_t (1 − ᾱ_t)) (eq. 12)")

    return _grade("denoising_term", fn, cases, lambda *a: denoising_term(*a, var="beta"), mistakes, ("L_{t−1}",),
                  [closed_forms], f"matches dl.denoising_term on {N_CASES} random batches (t = 2…T), and equals "
                  "λ_t·‖ε − ε_θ‖² plus the variance mismatch (eq. 12)",
                  shape_note=" (one value per row: sum over D)",
                  timesteps=lambda s, x0, xt, e, t: (t, s.T), requirements=[lambda fn: _one_step_per_sample(fn, cases[0], 4)])


def _step(model, opt, s, x0, generator, draw="t_first", target="eps", reduce="mean", zero_grad=True, step=True,
          coef="alpha_bar"):
    """One step of Algorithm 1, and its common wrong versions."""
    B = x0.shape[0]
    if draw == "eps_first":
        eps = torch.randn(x0.shape, generator=generator)
    low, high = {"from_0": (0, s.T), "below_T": (1, s.T)}.get(draw, (1, s.T + 1))
    t = torch.randint(low, high, (B,), generator=generator)
    if draw != "eps_first":
        eps = torch.randn(x0.shape, generator=generator)
    c = getattr(s, coef)[t].to(x0.dtype)[:, None]
    eps_pred = model(c.sqrt() * x0 + (1 - c).sqrt() * eps, t)
    err = ((x0 if target == "x0" else eps) - eps_pred) ** 2
    loss = {"mean": err.mean, "sum": err.sum, "row_sum": lambda: err.sum(1).mean()}[reduce]()
    if zero_grad:
        opt.zero_grad()
    loss.backward()
    if step:
        opt.step()
    return loss.item()


def check_training_step(fn, seed=None) -> bool:
    """Exercise 4.3: ``fn(model, opt, s, x0, generator)`` takes one step of Algorithm 1 and returns the loss.

    The check calls it twice in a row on a small ``ToyEpsModel`` with SGD (float32, like training; 3-D points,
    40 to 90 of them, so that no size is fixed) and replays the same draws: first t ~ U{1..T} with
    torch.randint, then ε with torch.randn, both from ``generator``; L_simple is the mean squared error on ε
    (dl.l_simple).
    """
    g = _generator(seed)
    with torch.random.fork_rng(devices=[]):             # the model's initialisation leaves the caller's RNG alone
        torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=g)))
        model0 = ToyEpsModel(dim=3, hidden=32, layers=2)
    B = int(torch.randint(40, 91, (1,), generator=g))
    case = (make_schedule("linear", 100), torch.randn(B, 3, generator=g),
            int(torch.randint(0, 2 ** 31, (1,), generator=g)))           # s, x0 and the seed of `generator`

    def run(step_fn):
        def runner(s, x0, gen_seed, global_seed=0):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(global_seed)           # differs between the two probe runs below
                model = copy.deepcopy(model0)
                opt = torch.optim.SGD(model.parameters(), lr=0.05)
                gen = torch.Generator().manual_seed(gen_seed)
                losses = [_tensor(step_fn(model, opt, s, x0, gen)) for _ in range(2)]
            if any(v is None or v.numel() != 1 for v in losses):
                return "no number", None
            weights = torch.cat([p.detach().flatten() for p in model.parameters()])
            return torch.stack([v.reshape(()) for v in losses]).float(), weights      # float32, as computed
        return runner

    first, again = run(fn)(*case, global_seed=1), run(fn)(*case, global_seed=2)
    if first[1] is None:
        return _verdict("training_step", False, "return the loss as a number (loss.item())")
    if not (_same(first[0], again[0], (0, 0)) and _same(first[1], again[1], (0, 0))):
        return _verdict("training_step", False, "two runs with identically seeded generators differ: draw t and ε "
                        "with generator=generator (torch.randint(…, generator=generator), "
                        "torch.randn(…, generator=generator))")
    variant = lambda part, **kw: (lambda *a: run(lambda *b: _step(*b, **kw))(*a)[part])
    t_hint = "off by one in t: draw t from 1..T with torch.randint(1, s.T + 1, …) (index = the paper's t)"
    mistakes = [Mistake(hint, variant(part, **kw), part) for hint, kw in [
        (t_hint, dict(draw="from_0")), (t_hint, dict(draw="below_T")),
        ("draw t first, then ε, both from `generator` (the check replays that order)", dict(draw="eps_first")),
        ("the network predicts the noise: the target is ε, not x_0", dict(target="x0")),
        ("L_simple is the mean of the squared error over all elements (dl.l_simple), not the sum", dict(reduce="sum")),
        ("(4.21)'s ‖ε − ε_θ‖² sums over the D coordinates, so this is D × dl.l_simple: take the mean over every "
         "element, as dl.l_simple does", dict(reduce="row_sum")),
        ("looks like you used α_t where ᾱ_t is needed in x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε",
         dict(coef="alpha")),
    ] for part in (0, 1)] + [
        Mistake("gradients pile up across steps: call opt.zero_grad() before loss.backward()",
                variant(1, zero_grad=False), 1),
        Mistake("the weights did not change: call opt.step() after loss.backward()", variant(1, step=False), 1),
    ]
    return _grade("training_step", run(fn), [case], run(_step), mistakes,
                  ("the returned losses", "the weights after two steps"), (),
                  "two steps give the losses and weights of Algorithm 1 with L_simple on the same draws",
                  tol=((1e-4, 1e-6),))


