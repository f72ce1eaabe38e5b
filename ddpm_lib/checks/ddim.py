"""Checks for the exercises of notebook 07 (DDIM)."""
from __future__ import annotations

import math

import torch

from ..ddim import ddim_step
from ..indexing import gather
from ..schedules import make_schedule
from .grading import Mistake, N_CASES, _generator, _grade, _images, _keeps_dtype, f64


def _pairs(g, s):
    """(t, t') pairs with 0 <= t' < t: neighbours, long jumps, and a last step to t' = 0."""
    T = s.T
    t = int(torch.randint(2, T + 1, (1,), generator=g))
    jump = int(torch.randint(1, t, (1,), generator=g))
    return [(t, t - 1), (t, t - jump), (T, 0), (T, T - 1), (2, 1)]


def _sigma(s, t, t_prev, eta, inner=True, outer=True, ratio="ab"):
    a, ap = float(s.alpha_bar[t]), float(s.alpha_bar[t_prev])
    first = math.sqrt((1 - ap) / (1 - a)) if outer else (1 - ap) / (1 - a)
    second = 1 - a / ap if ratio == "ab" else 1 - float(s.alpha[t])
    return eta * first * (math.sqrt(second) if inner else second)


def check_ddim_sigma(fn, seed=None) -> bool:
    """Exercise 7.1: ``fn(s, t, t_prev, eta)`` → σ_{t→t'}(η) = η·√((1 − ᾱ_{t'})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t'})
    (DDIM eq. 16 with DDIM's α_t = our ᾱ_t), for ints 0 <= t' < t <= T and η in [0, 1]."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s = make_schedule("cosine", 200) if k % 2 else make_schedule("linear", 1000)
        eta = (1.0, 0.5, 0.3, 1.0, 0.0)[k]
        cases += [(s, t, tp, eta) for t, tp in _pairs(g, s)]
    mistakes = [
        Mistake("the first factor is a ratio of variances under a square root: √((1 − ᾱ_{t'})/(1 − ᾱ_t))",
                lambda *a: _sigma(*a, outer=False)),
        Mistake("the second factor needs its square root too: √(1 − ᾱ_t/ᾱ_{t'})", lambda *a: _sigma(*a, inner=False)),
        Mistake("1 − α_t is right only for neighbouring steps; for a jump t → t' use 1 − ᾱ_t/ᾱ_{t'}",
                lambda *a: _sigma(*a, ratio="alpha")),
        Mistake("that is σ², the variance of the step's noise; return σ itself, the factor that multiplies the "
                "noise", lambda *a: _sigma(*a) ** 2),
    ]

    def ddpm_limit(fn):        # η = 1 and t' = t − 1: σ² is DDPM's posterior variance β̃_t
        s = make_schedule("linear", 1000)
        for t in (2, 500, 1000):
            if abs(float(fn(s, t, t - 1, 1.0)) ** 2 - float(s.beta_tilde[t])) > 1e-9:
                return f"with η = 1 and t' = t − 1, σ² must equal β̃_t (DDPM); at t = {t} it does not"

    return _grade("ddim_sigma", fn, cases, _sigma, mistakes, ("σ",), [ddpm_limit],
                  f"matches eq. 16 on {len(cases)} (t, t', η) triples, jumps and t' = 0 included, and σ² = β̃_t "
                  "for η = 1 and t' = t − 1", tol=((1e-9, 1e-12),))


def check_ddim_update(fn, seed=None) -> bool:
    """Exercise 7.2: ``fn(s, xt, eps_pred, t, t_prev, eta, noise)`` → x_{t'} of DDIM eq. 12:
    √ᾱ_{t'}·x̂_0 + √(1 − ᾱ_{t'} − σ²)·ε_θ + σ·noise with x̂_0 = (x_t − √(1 − ᾱ_t)·ε_θ)/√ᾱ_t and σ of eq. 16.
    xt, eps_pred, noise: (B, C, H, W); t, t_prev: ints, or long tensors (B,), with 0 <= t_prev < t."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s = make_schedule("cosine", 200) if k % 2 else make_schedule("linear", 1000)
        eta = (0.0, 1.0, 0.5, 0.0, 1.0)[k]
        x = _images(g, 3)
        for t, tp in _pairs(g, s)[:3]:
            cases.append((s, x, torch.randn(x.shape, generator=g, dtype=f64), t, tp, eta,
                          torch.randn(x.shape, generator=g, dtype=f64)))

    def variant(xt_coef="direction", sigma_sq=True):
        def step(s, xt, eps, t, tp, eta, noise):
            a, ap = float(s.alpha_bar[t]), float(s.alpha_bar[tp])
            sigma = _sigma(s, t, tp, eta)
            x0 = (xt - math.sqrt(1 - a) * eps) / math.sqrt(a)
            direction = math.sqrt(max(1 - ap - (sigma ** 2 if sigma_sq else 0.0), 0.0)) * eps
            if xt_coef == "alpha":
                x0 = (xt - math.sqrt(1 - float(s.alpha[t])) * eps) / math.sqrt(float(s.alpha[t]))
            return math.sqrt(ap) * x0 + direction + sigma * noise
        return step

    mistakes = [
        Mistake("the direction term is √(1 − ᾱ_{t'} − σ²)·ε: σ² must come off, or the variance grows with η",
                variant(sigma_sq=False)),
        Mistake("x̂_0 uses ᾱ_t (all steps so far), not α_t: x̂_0 = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t", variant("alpha")),
    ]

    def deterministic(fn):     # η = 0 ignores the noise argument
        s, x = make_schedule("linear", 1000), torch.randn(2, 1, 4, 4, generator=g, dtype=f64)
        e = torch.randn(x.shape, generator=g, dtype=f64)
        a = fn(s, x, e, 600, 550, 0.0, torch.randn(x.shape, generator=g, dtype=f64))
        b = fn(s, x, e, 600, 550, 0.0, torch.randn(x.shape, generator=g, dtype=f64))
        if not torch.equal(torch.as_tensor(a), torch.as_tensor(b)):
            return "with η = 0 the step must not depend on the noise (σ = 0)"

    def batched(fn):           # t, t_prev as long tensors (B,): sample b takes its own step t[b] → t_prev[b]
        s, x = make_schedule("linear", 1000), torch.randn(3, 1, 4, 4, generator=g, dtype=f64)
        e, z = torch.randn(x.shape, generator=g, dtype=f64), torch.randn(x.shape, generator=g, dtype=f64)
        t, tp = torch.tensor([1000, 600, 2]), torch.tensor([999, 350, 0])
        try:
            out = torch.as_tensor(fn(s, x, e, t, tp, 0.5, z))
        except Exception as err:
            return (f"t and t_prev may be long tensors of shape (B,), one step per sample; that failed with "
                    f"{type(err).__name__}: {err}")
        one_by_one = torch.cat([torch.as_tensor(fn(s, x[b:b + 1], e[b:b + 1], int(t[b]), int(tp[b]), 0.5, z[b:b + 1]))
                                for b in range(len(t))])           # the answer's own steps, taken with int t
        if out.shape != x.shape or not torch.allclose(out, one_by_one, rtol=1e-6, atol=1e-9):
            return ("with tensors t, t_prev of shape (B,), sample b must take its own step t[b] → t_prev[b], "
                    "as the call with the ints t[b], t_prev[b] does")

    return _grade("ddim_update", fn, cases, lambda s, xt, e, t, tp, eta, z: ddim_step(s, xt, e, t, tp, eta, z),
                  mistakes, ("x_{t'}",), [deterministic, batched],
                  f"matches dl.ddim_step on {len(cases)} steps (η = 0, ½, 1; neighbours, jumps and t' = 0), "
                  "on a batch whose samples take different steps, and float32 stays float32",
                  requirements=[lambda fn: _keeps_dtype(fn, cases[0])])


# --------------------------------------------------------------------------- Exercise 7.3: the exact flow of N(0, v) data
def _variance_at(s, t, x, v):
    """V_t = ᾱ_t·v + 1 − ᾱ_t, the variance of x_t for N(0, v) data, shaped to broadcast against x."""
    alpha_bar_t = gather(s.alpha_bar, t, x)
    return alpha_bar_t * v + 1 - alpha_bar_t


def _gaussian_flow(s, x, t, t_prev, v):
    """The reference, eq. (7.6): x_{t'} = √(V_{t'}/V_t)·x_t."""
    return (_variance_at(s, t_prev, x, v) / _variance_at(s, t, x, v)).sqrt() * x


def _rk4_gain(rho_from: float, rho_to: float, v: float, n: int = 4000) -> float:
    """x̄(ρ_to)/x̄(ρ_from) along dx̄/dρ = ρ·x̄/(v + ρ²), eq. (7.5), by n classical Runge–Kutta steps (the ODE is
    linear, so one solution from x̄ = 1 gives the factor for every start). The nodes are spaced quadratically,
    finest at ρ_to, where the right-hand side varies on the scale √v. It uses no closed form: against
    √((v + ρ_to²)/(v + ρ_from²)) it agrees to 3e-10 (relative) for v ≥ 0.01 on the linear schedule, T = 1000."""
    f = lambda rho, y: rho * y / (v + rho * rho)
    nodes = [rho_to + (rho_from - rho_to) * (1 - k / n) ** 2 for k in range(n + 1)]
    y = 1.0
    for a, b in zip(nodes, nodes[1:]):
        h = b - a
        k1 = f(a, y)
        k2 = f(a + h / 2, y + h / 2 * k1)
        k3 = f(a + h / 2, y + h / 2 * k2)
        k4 = f(b, y + h * k3)
        y += h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def _keeps_marginal(fn):
    """A property: if x_t ~ N(0, V_t), the flow's x_{t'} has variance V_{t'} (it transports the marginals of
    N(0, v) data); read exactly from the answer's factor on x_t = 1."""
    s = make_schedule("linear", 1000)
    for v in (0.1, 2.5):
        for t, t_prev in ((1000, 0), (600, 350), (2, 1)):
            one = torch.ones(1, 1, dtype=f64)
            gain = float(torch.as_tensor(fn(s, one, t, t_prev, v)).reshape(-1)[0])
            got, want = gain ** 2 * float(_variance_at(s, t, one, v)), float(_variance_at(s, t_prev, one, v))
            if not math.isclose(got, want, rel_tol=1e-9):
                return (f"if x_t ~ N(0, V_t), x_{{t'}} must be N(0, V_{{t'}}) (V_t = ᾱ_t·v + 1 − ᾱ_t); for v = {v}, "
                        f"t = {t} → t' = {t_prev} the answer's variance is {got:.10g} instead of {want:.10g} "
                        f"(relative error {abs(got / want - 1):.2g})")


def _agrees_with_rk4(fn, g=None):
    """A property with an independent oracle: on a batch whose samples take different steps t[b] → t_prev[b]
    (long tensors (B,)), sample b matches a Runge–Kutta solution of dx̄/dρ = ρ·x̄/(v + ρ²) from ρ_t to ρ_{t'}."""
    s = make_schedule("linear", 1000)
    rho = ((1 - s.alpha_bar) / s.alpha_bar).sqrt()                  # ρ_t = √((1 − ᾱ_t)/ᾱ_t), index = t
    t, t_prev = torch.tensor([1000, 700, 300, 2]), torch.tensor([0, 350, 299, 1])
    x = torch.randn(4, 1, 2, 2, generator=_generator(0) if g is None else g, dtype=f64)
    for v in (0.1, 3.0):
        try:
            out = torch.as_tensor(fn(s, x.clone(), t, t_prev, v))
            one_by_one = torch.cat([torch.as_tensor(fn(s, x[b:b + 1].clone(), int(t[b]), int(t_prev[b]), v))
                                    for b in range(len(t))])
        except Exception as err:
            return (f"t and t_prev may be long tensors of shape (B,), one step per sample; that failed with "
                    f"{type(err).__name__}: {err}")
        if out.shape != x.shape:
            return f"with tensors t, t_prev of shape (B,) the result has shape {tuple(out.shape)}, not x's {tuple(x.shape)}"
        for b in range(len(t)):
            tb, pb = int(t[b]), int(t_prev[b])
            gain = _rk4_gain(float(rho[tb]), float(rho[pb]), v)    # x̄_{t'} = gain·x̄_t, x̄ = x/√ᾱ
            want = math.sqrt(float(s.alpha_bar[pb]) / float(s.alpha_bar[tb])) * gain * x[b]
            if not torch.allclose(out[b].to(f64), want, rtol=1e-8, atol=1e-12):
                alone = torch.allclose(one_by_one[b].to(f64), want, rtol=1e-8, atol=1e-12)   # right with int t?
                return (f"sample {b} (t = {tb} → t' = {pb}, v = {v}) disagrees with a Runge–Kutta solution of "
                        f"dx̄/dρ = ρx̄/(v + ρ²) by up to {float((out[b] - want).abs().max()):.3g}"
                        + (": with tensors t, t_prev of shape (B,), sample b must take its own step t[b] → t_prev[b], "
                           "as the call with the ints t[b], t_prev[b] does" if alone else
                           ", called with the ints t[b], t_prev[b] too"))


def check_gaussian_flow(fn, seed=None) -> bool:
    """Exercise 7.3: ``fn(s, x, t, t_prev, v)`` → x_{t'} = √(V_{t'}/V_t)·x_t, eq. (7.6), with V_t = ᾱ_t·v + 1 − ᾱ_t:
    the exact probability-flow ODE (DDIM eq. 14, Song et al. 2021) of N(0, v) data from t down to t'.
    x: (B, ...) float; t, t_prev: ints, or long tensors (B,), with 0 <= t_prev < t <= T; v > 0 a float."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s = make_schedule("cosine", 200) if k % 2 else make_schedule("linear", 1000)
        v = math.exp(float(torch.empty(()).uniform_(math.log(0.02), math.log(4.0), generator=g)))   # log-uniform
        x = _images(g, 3)
        cases += [(s, x, t, t_prev, v) for t, t_prev in _pairs(g, s)]

    def one_ddim_step(s, x, t, t_prev, v):     # eq. (7.4) once, with the exact ε = √(1 − ᾱ_t)·x_t/V_t
        eps = (1 - gather(s.alpha_bar, t, x)).sqrt() * x / _variance_at(s, t, x, v)
        return ddim_step(s, x, eps, t, t_prev, 0.0, torch.zeros_like(x))

    mistakes = [
        Mistake("that is the ratio of variances V_{t'}/V_t; the flow scales x_t by the ratio of standard deviations, "
                "√(V_{t'}/V_t)", lambda s, x, t, tp, v: _variance_at(s, tp, x, v) / _variance_at(s, t, x, v) * x),
        Mistake("V_t is the variance of x_t, ᾱ_t·v + 1 − ᾱ_t (the data's share plus the noise's), not ᾱ_t: "
                "√(ᾱ_{t'}/ᾱ_t)·x_t keeps x̄ = x/√ᾱ fixed, as if ε were 0",
                lambda s, x, t, tp, v: (gather(s.alpha_bar, tp, x) / gather(s.alpha_bar, t, x)).sqrt() * x),
        Mistake("that is one DDIM step (7.4) from t to t', an Euler step of (7.5), exact only as the step shrinks; "
                "solve the ODE instead (separate the variables: dx̄/x̄ = ρ dρ/(v + ρ²))", one_ddim_step),
        Mistake("t and t' are swapped: √(V_t/V_{t'})·x maps x_{t'} up to x_t; going down from t to t' multiplies x_t "
                "by √(V_{t'}/V_t)", lambda s, x, t, tp, v: _gaussian_flow(s, x, tp, t, v)),
    ]
    return _grade("gaussian_flow", fn, cases, _gaussian_flow, mistakes, ("x_{t'}",),
                  [_keeps_marginal, lambda fn: _agrees_with_rk4(fn, g)],
                  f"matches eq. (7.6) on {len(cases)} steps (neighbours, jumps, T → 0; v from 0.02 to 4), maps N(0, V_t) "
                  "to N(0, V_{t'}), and agrees with a Runge–Kutta solution of the ODE on a batch whose samples take "
                  "different steps", requirements=[lambda fn: _keeps_dtype(fn, cases[0])])
