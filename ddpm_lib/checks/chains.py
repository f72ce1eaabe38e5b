"""Checks for the exercises of notebook 01 (Markov chains)."""
from __future__ import annotations

import math

import torch

from ..markov import gaussian_chain_moments, stationary_by_power_iteration
from .grading import Mistake, _generator, _grade, _verdict, f64


def _power(P, start, tol, update=lambda pi, P: pi @ P, stop=lambda d: d.abs().max(), shift=0, uniform=False):
    pi = torch.full_like(start, 1.0 / len(start)) if uniform else start
    for n in range(1, 100_000):
        nxt = update(pi, P)
        if stop(nxt - pi) < tol:
            return nxt, n + shift
        pi = nxt
    raise RuntimeError("no convergence")


def check_power_iteration(fn, seed=None) -> bool:
    """Exercise 1.1: ``fn(P, start, tol)`` → (π, number of products π ← π P until max |π_{k+1} − π_k| < tol)."""
    g = _generator(seed)
    cases = []
    for S in (3, 4, 5, 6, 7):        # lazy chains (staying put with probability 0.8) converge slowly enough that
        P = torch.rand(S, S, generator=g, dtype=f64) + 0.05          # another stopping rule changes the count
        P = 0.8 * torch.eye(S, dtype=f64) + 0.2 * P / P.sum(1, keepdim=True)
        start = torch.rand(S, generator=g, dtype=f64)
        cases.append((P, start / start.sum(), 1e-12 if S % 2 else 1e-10))
    pi = torch.rand(7, generator=g, dtype=f64) + 0.1      # P = 0.9 I + 0.1·1π scales π_k − π by 0.9 per product;
    pi, one = pi / pi.sum(), torch.eye(7, dtype=f64)[int(pi.argmin())]     # from (π + e_j)/2, the largest move
    cases.append((0.9 * torch.eye(7, dtype=f64) + 0.1 * pi.expand(7, 7), (pi + one) / 2, 1e-12))   # is a fall, at j
    count = ("the count is off by one: count every product π ← π P, including the last one, "
             "which moved π by less than tol")
    mistakes = [
        Mistake("you iterated P @ π; distributions are row vectors here, so the update is π ← π @ P (1.4)",
                lambda P, st, tol: _power(P, st, tol, update=lambda pi, P: P @ pi)[0]),
        Mistake(count, lambda P, st, tol: _power(P, st, tol, shift=-1)[1], part=1),
        Mistake(count, lambda P, st, tol: _power(P, st, tol, shift=1)[1], part=1),
        Mistake("stop when the largest entry of |π_{k+1} − π_k| is below tol (a max, not a sum)",
                lambda P, st, tol: _power(P, st, tol, stop=lambda d: d.abs().sum())[1], part=1),
        Mistake("stop on the largest |π_{k+1} − π_k|: .abs() before .max() (the differences sum to 0, so the signed "
                "max misses entries that fall)",
                lambda P, st, tol: _power(P, st, tol, stop=lambda d: d.max())[1], part=1),
        Mistake("start from the given `start`, not from the uniform distribution",
                lambda P, st, tol: _power(P, st, tol, uniform=True)[1], part=1),
    ]

    def stationary(fn):
        pi, _ = fn(*cases[0])
        if (pi @ cases[0][0] - pi).abs().max() > 1e-9 or abs(float(pi.sum()) - 1) > 1e-9:
            return "the vector returned is not stationary: π P ≠ π or Σ π ≠ 1"

    return _grade("power_iteration", fn, cases, stationary_by_power_iteration, mistakes,
                  ("π", "the number of products"), [stationary],
                  "π and the number of products match the library on 6 random chains, and π P = π",
                  tol=((0, 1e-9), (0, 0)))


def _unit_variance_step(beta, var0):
    """First t with |v_t − 1| ≤ 0.01, by running the variance recursion v_t = a² v_{t−1} + b² of the library."""
    steps = math.ceil(math.log(0.01 / max(abs(var0 - 1), 0.01)) / math.log(1 - beta)) + 3   # enough to reach it
    _, var = gaussian_chain_moments(math.sqrt(1 - beta), math.sqrt(beta), 0.0, var0, steps)
    return int(torch.nonzero((var - 1).abs() <= 0.01)[0])


def check_steps_to_unit_variance(fn, seed=None) -> bool:
    """Exercise 1.2: ``fn(beta, var0)`` → the smallest t ≥ 0 with |v_t − 1| ≤ 0.01 for the chain (1.14); a start
    within 0.01 of 1 needs t = 0."""
    g = _generator(seed)
    for beta, var0 in ((0.02, 1.0), (0.02, 1.005)):      # a start already within 0.01 of 1
        try:
            fn(beta, var0)
        except (ArithmeticError, ValueError) as err:
            return _verdict("steps_to_unit_variance", False, f"raises {type(err).__name__} for β = {beta}, v_0 = "
                            f"{var0}: a chain that starts within 0.01 of 1 needs no step, so t* = 0 there")
    cases = [(0.001, 0.0), (0.02, 25.0), (0.1, 0.0), (0.3, 25.0), (0.05, 1.005), (0.1, 0.995),
             (0.02, 1.015), (0.1, 0.985)]                                   # and just outside 0.01 of 1
    while len(cases) < 10:
        u, v = torch.rand(2, generator=g, dtype=f64).tolist()
        beta, var0 = 10 ** (-3 + 2.7 * u), 30 * v                     # β from 0.001 to 0.5, v_0 from 0 to 30
        if abs(var0 - 1) > 0.1:
            cases.append((beta, var0))
    bound = lambda beta, var0: math.log(0.01 / abs(var0 - 1)) / math.log(1 - beta)
    near = lambda wrong: lambda beta, var0: 0 if abs(var0 - 1) <= 0.01 else wrong(beta, var0)   # t* = 0 handled
    mistakes = [
        Mistake("a start within 0.01 of 1 needs no step: t* = 0 there (your bound is negative)",
                lambda beta, var0: math.ceil(bound(beta, var0))),
    ] + [Mistake(m.hint, near(m.fn)) for m in [
        Mistake("off by one: int() rounds down, but t must be the first whole step at or past the bound: "
                "use math.ceil",
                lambda beta, var0: math.floor(bound(beta, var0))),
        Mistake("t counts whole steps: round the bound up with math.ceil",
                lambda beta, var0: bound(beta, var0)),
        Mistake("you replaced log(1 − β) by −β, which is only accurate for small β: use math.log(1 - beta)",
                lambda beta, var0: math.ceil(math.log(0.01 / abs(var0 - 1)) / -beta)),
        Mistake("the gap v_t − 1 shrinks by a² = 1 − β per step (1.14), not by a = √(1 − β)",
                lambda beta, var0: math.ceil(math.log(0.01 / abs(var0 - 1)) / math.log(math.sqrt(1 - beta)))),
        Mistake("the gap to the fixed point is |v_0 − 1|, not |v_0|",
                lambda beta, var0: math.ceil(math.log(0.01 / abs(var0)) / math.log(1 - beta))),
    ]]
    return _grade("steps_to_unit_variance", fn, cases, _unit_variance_step, mistakes, ("t*",), (),
                  "matches the variance recursion on 10 (β, v_0) pairs, β from 0.001 to 0.5, starts near 1 "
                  "included", tol=((0, 0),))


