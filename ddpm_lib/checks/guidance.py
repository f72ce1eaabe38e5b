"""Checks for the exercises of notebook 08 (classifier guidance and classifier-free guidance)."""
from __future__ import annotations

import torch

from ..guidance import exact_mixture_grad_fn
from ..indexing import gather
from ..oracle import GaussianMixture
from ..sampling import sample_ddpm
from ..schedules import make_schedule
from .grading import (Mistake, N_CASES, _generator, _grade, _images, _keeps_dtype, _one_step_per_sample, _tensor,
                      _timesteps, f64)


def _guided_eps(s, eps_pred, t, grad, scale, root=True, sign=-1.0, coef="alpha_bar", shift=0):
    one_minus = 1 - gather(getattr(s, coef), t - shift, eps_pred)
    return eps_pred + sign * (one_minus.sqrt() if root else one_minus) * scale * grad


def check_guided_eps(fn, seed=None) -> bool:
    """Exercise 8.1: ``fn(s, eps_pred, t, grad, scale)`` → ε̂ = ε_θ − √(1 − ᾱ_t)·s·∇_{x_t} log p_φ(y | x_t)
    (Dhariwal & Nichol 2021, eq. 14 / Algorithm 2). eps_pred, grad: (B, C, H, W); t: long (B,) or an int; scale: float."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        s = make_schedule("cosine", 200) if k % 2 else make_schedule("linear", 1000)
        x = _images(g, 5)
        cases.append((s, x, _timesteps(g, s, 5), torch.randn(x.shape, generator=g, dtype=f64), (1.0, 2.5, 0.3, 7.0, 1.0)[k]))
    mistakes = [
        Mistake("the sign: guidance moves ε̂ *against* the gradient, ε̂ = ε_θ − √(1 − ᾱ_t)·s·∇ log p, because "
                "ε = −√(1 − ᾱ_t)·∇ log q(x_t)", lambda *a: _guided_eps(*a, sign=1.0)),
        Mistake("the factor is √(1 − ᾱ_t), the noise's standard deviation, not 1 − ᾱ_t",
                lambda *a: _guided_eps(*a, root=False)),
        Mistake("looks like α_t where ᾱ_t belongs: √(1 − ᾱ_t)", lambda *a: _guided_eps(*a, coef="alpha")),
        Mistake("off by one in t: the factor is √(1 − ᾱ_t), s.alpha_bar[t] (index = the paper's t), and you used "
                "ᾱ_{t−1}", lambda *a: _guided_eps(*a, shift=1)),
        Mistake("the guidance scale s is missing", lambda s, e, t, gr, sc: _guided_eps(s, e, t, gr, 1.0)),
    ]
    return _grade("guided_eps", fn, cases, _guided_eps, mistakes, ("ε̂",), (),
                  f"matches ε_θ − √(1 − ᾱ_t)·s·∇ log p_φ on {N_CASES} random batches, for an int t too, and float32 "
                  "stays float32", timesteps=lambda s, e, t, gr, sc: (t, s.T),
                  requirements=[lambda fn: _one_step_per_sample(fn, cases[0], 2),
                                lambda fn: _keeps_dtype(fn, cases[0])])


def check_cfg_combine(fn, seed=None) -> bool:
    """Exercise 8.2: ``fn(eps_uncond, eps_cond, w)`` → ε̃ = ε_u + w·(ε_c − ε_u), the classifier-free-guidance
    prediction in the course's convention (w = 0 unconditional, w = 1 conditional)."""
    g = _generator(seed)
    cases = []
    for k in range(N_CASES):
        x = _images(g, 4)
        cases.append((x, torch.randn(x.shape, generator=g, dtype=f64), (0.0, 1.0, 3.0, 0.5, 7.5)[k]))
    reference = lambda eu, ec, w: eu + w * (ec - eu)
    mistakes = [
        Mistake("that is Ho & Salimans' convention (1 + w)·ε_c − w·ε_u, whose w is our w − 1; here w = 1 must "
                "return ε_c", lambda eu, ec, w: (1 + w) * ec - w * eu),
        Mistake("the two predictions are swapped: start from the unconditional ε_u and move towards ε_c",
                lambda eu, ec, w: ec + w * (eu - ec)),
        Mistake("w weighs the difference ε_c − ε_u, not ε_c alone", lambda eu, ec, w: eu + w * ec),
    ]

    def ends(fn):
        eu, ec = torch.randn(3, 2, generator=g, dtype=f64), torch.randn(3, 2, generator=g, dtype=f64)
        if not torch.allclose(torch.as_tensor(fn(eu, ec, 0.0)), eu) or not torch.allclose(torch.as_tensor(fn(eu, ec, 1.0)), ec):
            return "w = 0 must return ε_u and w = 1 must return ε_c"

    return _grade("cfg_combine", fn, cases, reference, mistakes, ("ε̃",), [ends],
                  f"matches ε_u + w·(ε_c − ε_u) on {N_CASES} cases; w = 0 and w = 1 give ε_u and ε_c")


# ----------------------------------------------------------------------------- Exercise 8.3: guidance in a window of t
def _in_window(t, t_lo, t_hi, lo_open=False, hi_open=False):
    """The rows of a batch t (B,) whose step lies in the window: t_lo ≤ t ≤ t_hi (an end left open on request)."""
    return ((t > t_lo) if lo_open else (t >= t_lo)) & ((t < t_hi) if hi_open else (t <= t_hi))


def _windowed(grad_fn, t_lo, t_hi, lo_open=False, hi_open=False, by_first=False, invert=False):
    """The reference: f(x_t, t) = grad_fn(x_t, t) where t_lo ≤ t ≤ t_hi, 0 elsewhere, one row per sample."""
    def cond_fn(xt, t):
        inside = _in_window(t, t_lo, t_hi, lo_open, hi_open)
        inside = inside[:1].expand_as(inside) if by_first else inside
        inside = ~inside if invert else inside
        grad = grad_fn(xt, t)
        return torch.where(inside.view(-1, *[1] * (grad.ndim - 1)), grad, torch.zeros_like(grad))
    return cond_fn


def _applied(windowed):
    """``windowed(grad_fn, t_lo, t_hi)`` called at once on a batch: the form ``_grade`` compares."""
    return lambda grad_fn, t_lo, t_hi, xt, t: windowed(grad_fn, t_lo, t_hi)(xt, t)


def _random_grad_fn(g, shape):
    """A guidance function of x_t and t both, nowhere zero in practice: a·x_t + b·cos(ω·t), per sample."""
    a, b = torch.randn(shape[1:], generator=g, dtype=f64), torch.randn(shape[1:], generator=g, dtype=f64)
    omega = float(torch.rand((), generator=g, dtype=f64)) + 0.1
    return lambda xt, t: a * xt + b * torch.cos(omega * t.to(f64)).view(-1, *[1] * (xt.ndim - 1))


def _window_batch(g, T, t_lo, t_hi, B, first_inside):
    """B timesteps in 1..T holding both ends of the window and their outer neighbours, the rest at random; the
    first one inside the window or not, as asked (so that a mask taken from t[0] alone is wrong either way)."""
    edges = [v for v in (t_lo - 1, t_lo, t_hi, t_hi + 1) if 1 <= v <= T]
    rest = torch.randint(1, T + 1, (B - len(edges) - 1,), generator=g).tolist()
    pool = [v for v in range(1, T + 1) if (t_lo <= v <= t_hi) == first_inside]
    first = pool[int(torch.randint(len(pool), (), generator=g))]
    return torch.tensor([first] + edges + rest)


HAND_T = [3, 4, 5, 7, 8, 1, 10, 6]           # the hand-made case: window [4, 7], gradient row b = t[b]
HAND_ROWS = [0, 4, 5, 7, 0, 0, 0, 6]          # worked out by hand: t where 4 ≤ t ≤ 7, else 0


def _hand_mask(windowed):
    """Property: a wrapped gradient whose row b holds t[b] (three entries), window [4, 7], a batch that mixes steps
    inside and outside it: the rows must be HAND_ROWS exactly, worked out by hand rather than by the reference."""
    t = torch.tensor(HAND_T)
    rows_are_t = lambda xt, t: t.to(f64)[:, None].expand(len(t), 3).clone()
    out = windowed(rows_are_t, 4, 7)(torch.zeros(len(t), 3, dtype=f64), t)
    want = torch.tensor(HAND_ROWS, dtype=f64)[:, None].expand(len(t), 3)
    if not isinstance(out, torch.Tensor) or out.shape != want.shape or not torch.equal(out.to(f64), want):
        got = out.to(f64)[:, 0].tolist() if isinstance(out, torch.Tensor) and out.ndim == 2 else out
        return (f"with a wrapped gradient whose row b is t[b], the window [4, 7] and t = {HAND_T}, the rows must be "
                f"{HAND_ROWS} (the gradient where 4 ≤ t ≤ 7, exactly 0 elsewhere), got {got}")


def _sampler_oracle(windowed):
    """Property, end to end: on a 1-D two-component mixture with the exact ε and the exact classifier, the ancestral
    sampler guided through the window [1, T] must give dl's fully guided draws exactly, and through a window that no
    step reaches, [T + 1, 2T], its unguided draws, from the same generator seed."""
    mix, s = GaussianMixture(means=[-1.5, 1.5], stds=[0.4, 0.4], weights=[0.7, 0.3]), make_schedule("linear", 60)
    grad_fn = exact_mixture_grad_fn(mix, s, 1, 2.0)
    draw = lambda cond_fn: sample_ddpm(mix.eps_model(s), s, (64, 1), generator=torch.Generator().manual_seed(8),
                                       dtype=f64, cond_fn=cond_fn)
    if not torch.equal(draw(windowed(grad_fn, 1, s.T)), draw(grad_fn)):
        return ("guided through the window [1, T] the sampler must give the fully guided samples draw for draw, "
                "as every step t = T, …, 1 lies in it (each step's batch has one t for all samples)")
    if not torch.equal(draw(windowed(grad_fn, s.T + 1, 2 * s.T)), draw(None)):
        return "through a window that no step reaches ([T + 1, 2T]) the sampler must give the unguided samples"


def _where_in_window(outs, refs, cases):
    """How a wrong windowed gradient differs: at how many samples inside the window (where it must be grad_fn's
    value) and outside it (where it must be 0), over all cases."""
    inside = outside = 0
    for out, ref, (_, t_lo, t_hi, _, t) in zip(outs, refs, cases):
        a, b = _tensor(out[0]), _tensor(ref[0])
        close = torch.isclose(torch.broadcast_to(a, b.shape), b, rtol=1e-9, atol=1e-11)   # _grade's tolerance; NaN: not close
        wrong = ~close.reshape(len(t), -1).all(1)
        in_window = (t >= t_lo) & (t <= t_hi)
        inside, outside = inside + int((wrong & in_window).sum()), outside + int((wrong & ~in_window).sum())
    return (f"wrong at {inside} samples inside the window (where it must be grad_fn's value, unchanged) and at "
            f"{outside} outside it (where it must be exactly 0)")


def check_windowed(fn, seed=None) -> bool:
    """Exercise 8.3: ``fn(grad_fn, t_lo, t_hi)`` → a guidance function f(x_t, t) with grad_fn's signature that
    returns grad_fn(x_t, t) for the samples whose t lies in t_lo ≤ t ≤ t_hi and exactly 0 for the others
    (x_t: (B, …); t: long (B,), one step per sample), to guide (Dhariwal & Nichol 2021, Algorithms 1–2) only part
    of the chain."""
    g = _generator(seed)
    cases = []
    for k, (T, shape) in enumerate(((1000, (9, 2)), (1000, (6, 6)), (200, (7, 1)), (1000, (8, 2, 3, 3)), (50, (9, 3)))):
        t_lo = int(torch.randint(2, T // 2, (), generator=g))
        t_hi = t_lo if k == 2 else int(torch.randint(t_lo + 1, T, (), generator=g))     # case 2: a one-step window
        xt = torch.randn(shape, generator=g, dtype=f64)
        cases.append((_random_grad_fn(g, shape), t_lo, t_hi, xt, _window_batch(g, T, t_lo, t_hi, shape[0], k % 2 == 0)))
    mistakes = [
        Mistake("the step t = t_lo is left out: the window holds both of its ends, t_lo ≤ t ≤ t_hi (write t >= t_lo)",
                lambda *a: _windowed(*a[:3], lo_open=True)(*a[3:])),
        Mistake("the step t = t_hi is left out (as range(t_lo, t_hi) would): the window holds both of its ends, "
                "t_lo ≤ t ≤ t_hi (write t <= t_hi)", lambda *a: _windowed(*a[:3], hi_open=True)(*a[3:])),
        Mistake("the whole batch follows its first sample's t[0]: each sample b is at its own step t[b], so build the "
                "mask from all of t, shaped (B, 1, …) to broadcast over each sample's entries",
                lambda *a: _windowed(*a[:3], by_first=True)(*a[3:])),
        Mistake("the window is inverted: keep the gradient inside t_lo ≤ t ≤ t_hi and return 0 outside it",
                lambda *a: _windowed(*a[:3], invert=True)(*a[3:])),
    ]
    return _grade("windowed", _applied(fn), cases, _applied(_windowed), mistakes, ("the windowed gradient",),
                  [lambda _: _hand_mask(fn), lambda _: _sampler_oracle(fn)],
                  f"keeps the gradient exactly where t_lo ≤ t ≤ t_hi and gives 0 elsewhere on {N_CASES} random batches "
                  f"and on t = {HAND_T} by hand; the window [1, T] reproduces the fully guided sampler and an empty "
                  "one the unguided sampler, draw for draw", where=_where_in_window)
