"""Grading machinery shared by the checks: random inputs, comparison with the reference, verdicts."""
from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass
from typing import Callable

import torch

from ..schedules import make_schedule

f64 = torch.float64
N_CASES = 5          # random batches per check


@dataclass(frozen=True)
class Mistake:
    """A common wrong answer: ``fn`` takes the answer's arguments and returns the wrong value of
    output ``part`` (0 for answers with one output); ``hint`` is what the student is told."""

    hint: str
    fn: Callable
    part: int = 0


def _generator(seed):
    """A generator seeded with ``seed``, or freshly at random (the default: new inputs every call)."""
    return torch.Generator().manual_seed(random.SystemRandom().randrange(2 ** 62) if seed is None else seed)


def _verdict(name: str, ok: bool, message: str) -> bool:
    print(f"{'✓' if ok else '✗'} {name}: {message}")
    return ok


def _tensor(value):
    """``value`` as a float64 tensor, or None when it is not a number or a tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(f64)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=f64)
    return None


def _shape_ok(shape, want, broadcast=False) -> bool:
    """Same shape; one number where one number is due; or (for ``broadcast`` outputs such as a variance
    shaped (B, 1, 1, 1)) any shape that broadcasts to the reference's."""
    if shape == want or (want == () and math.prod(shape) == 1):
        return True
    try:
        return broadcast and torch.broadcast_shapes(shape, want) == want
    except RuntimeError:
        return False


def _same(value, ref, tol, broadcast=False) -> bool:
    a, b = _tensor(value), _tensor(ref)
    if a is None or b is None or not _shape_ok(tuple(a.shape), tuple(b.shape), broadcast) \
            and not _shape_ok(tuple(b.shape), tuple(a.shape), broadcast):
        return False
    a, b = torch.broadcast_tensors(a.reshape(()) if b.ndim == 0 else a, b)
    return bool(torch.allclose(a, b, rtol=tol[0], atol=tol[1]))


def _fresh(args):
    """A copy of ``args`` whose tensors are cloned: an answer that updates its inputs in place (as
    ``x.mul_(d)`` does) must not change what the reference and the mistakes are run on."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _try(fn, args):
    try:
        return fn(*_fresh(args))
    except Exception:          # a wrong variant that cannot run on these inputs simply does not match
        return None


def _grade(name, fn, cases, reference, mistakes=(), labels=("the result",), properties=(), passed="",
           tol=((1e-9, 1e-11),), broadcast=(), shape_note="", timesteps=None, requirements=(), where=None) -> bool:
    """Run ``fn`` on every case, compare with ``reference``, diagnose, print the verdict. ``requirements`` are
    checked like ``properties`` but only for right values (they never explain a wrong one). ``where(outs, refs,
    cases)`` replaces the generic account of a wrong answer that matches no mistake (``_where``) where a check
    can say more (which samples differ)."""
    n = len(labels)
    tol = tol * n if len(tol) == 1 else tol
    split = lambda v: (v,) if n == 1 else (tuple(v) if isinstance(v, (tuple, list)) and len(v) == n else None)
    outs = [split(fn(*_fresh(args))) for args in cases]          # exceptions propagate to the student
    refs = [split(reference(*_fresh(args))) for args in cases]
    if any(o is None for o in outs):
        return _verdict(name, False, f"return {n} values: {', '.join(labels)}")
    for o, r in zip(outs, refs):
        for k in range(n):
            if _tensor(o[k]) is None:
                kind = type(o[k]).__name__
                return _verdict(name, False, f"{labels[k]} is a {kind}; return a tensor or a number")
            shape, want = tuple(_tensor(o[k]).shape), tuple(_tensor(r[k]).shape)
            if not _shape_ok(shape, want, k in broadcast):
                if k in broadcast and len(want) > 1:     # one value per sample, shaped to broadcast, comes first
                    should = f"{want[:1] + (1,) * (len(want) - 1)} (or the data's {want})"
                else:
                    should = f"{want}"
                return _verdict(name, False, f"{labels[k]} has shape {shape} but should have shape {should}"
                                             f"{shape_note}")
    wrong = [k for k in range(n) if not all(_same(o[k], r[k], tol[k], k in broadcast) for o, r in zip(outs, refs))]
    if not wrong:                        # values within tolerance, but a float64 result came back in float32
        low = {str(o[k].dtype).removeprefix("torch.") for o, r in zip(outs, refs) for k in range(n)
               if isinstance(o[k], torch.Tensor) and isinstance(r[k], torch.Tensor) and r[k].dtype == f64
               and o[k].dtype in (torch.float32, torch.float16, torch.bfloat16)}
        if low:
            return _verdict(name, False, f"your result is {', '.join(sorted(low))} for float64 inputs: keep every "
                                         f"step in float64 and return the inputs' dtype")
    if not wrong:
        for prop in (*properties, *requirements):
            message = prop(fn)
            if message:
                return _verdict(name, False, message)
        return _verdict(name, True, passed)
    hints = []
    for k in wrong:
        hint = next((m.hint for m in mistakes if m.part == k and all(
            _same(o[k], _try(m.fn, args), tol[k], k in broadcast) for o, args in zip(outs, cases))), None)
        if hint is None:                 # no known mistake: where the values differ, and a simpler test that fails
            hint = _precision(outs, refs, k)
            if hint is None:
                clue = next(filter(None, (prop(fn) for prop in properties)), None)
                account = where(outs, refs, cases) if where else _where(outs, refs, cases, k, timesteps)
                hint = account + (f". A simpler test fails too: {clue}" if clue else "")
        hints.append(hint if n == 1 else f"{labels[k]}: {hint}")
    return _verdict(name, False, "; ".join(hints))


def _precision(outs, refs, k):
    """A hint when output ``k`` is off by what float32 arithmetic gives rather than by a wrong formula: a float32
    result within 1e-2 (relative to the reference's scale) of it, or a float64 one whose entries nearly all
    differ, each by a relative error of float32's size (median below 1e-5). A wrong term differs by more, or
    only in some rows (one case of t)."""
    if any(isinstance(r[k], torch.Tensor) and r[k].dtype in (torch.float32, torch.float16, torch.bfloat16)
           for r in refs):          # the reference itself is in low precision (the training step's float32 model)
        return None
    rel, low, errors = 0.0, set(), []
    for o, r in zip(outs, refs):
        a, b = _tensor(o[k]), _tensor(r[k])
        a, b = torch.broadcast_tensors(a.reshape(()) if b.ndim == 0 else a, b)
        if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
            return None
        rel = max(rel, float((a - b).abs().max()) / max(1.0, float(b.abs().max())))
        case = ((a - b).abs() / b.abs().clamp(min=1e-300)).flatten()
        if bool((case > 1e-13).any()):          # a case computed exactly (d = 0, d = ½ in float32) says nothing
            errors.append(case)
        if isinstance(o[k], torch.Tensor) and o[k].dtype in (torch.float32, torch.float16, torch.bfloat16):
            low.add(str(o[k].dtype).removeprefix("torch."))
    errors = torch.cat(errors) if errors else torch.zeros(1, dtype=f64)
    rounding = float((errors > 1e-13).double().mean()) >= 0.9 and float(errors.median()) < 1e-5
    if rel < 1e-2 and (low or rounding):
        got = f"your result is {', '.join(sorted(low))}; " if low else ""
        return (f"close to the library's answer but not equal (largest relative error {rel:.2g}): {got}the check "
                "passes float64 tensors (and a float64 schedule, where there is one), so keep every step in float64 "
                "(.float(), torch.tensor(a Python float) and .to(torch.float32) drop to float32, whose rounding "
                "gives errors of this size)")


def _where(outs, refs, cases, k, timesteps):
    """Generic message: the largest error, and whether only t = 1 (or only t = T) is wrong."""
    err, bad_t = 0.0, set()
    for o, r, args in zip(outs, refs, cases):
        a, b = _tensor(o[k]), _tensor(r[k])
        a, b = torch.broadcast_tensors(a.reshape(()) if b.ndim == 0 else a, b)
        diff = torch.where(a == b, 0.0, (a - b).abs()).nan_to_num(nan=float("inf"), posinf=float("inf"))
        err = max(err, float(diff.max()))
        if timesteps is not None and diff.ndim >= 1:
            t, T = timesteps(*args)
            size = b.abs().reshape(b.shape[0], -1).amax(1)
            rows = diff.reshape(diff.shape[0], -1).amax(1) > 1e-5 * (1 + size)
            bad_t |= {"1" if int(v) == 1 else ("T" if int(v) == T else "other") for v in t[rows]}
    where = {frozenset({"1"}): " only at t = 1", frozenset({"T"}): " only at t = T"}.get(frozenset(bad_t), "")
    if err == float("inf"):
        return (f"gives inf or NaN{where} where the library's answer is finite: look for a division by zero "
                "or the log or square root of a negative number, e.g. from an index off by one in t, or from a "
                "schedule value that is 0 at t = 1 (β̃_1 = 0) where another one belongs")
    return (f"differs from the library's answer{where} (largest error {err:.3g}); "
            "compare it with the equation term by term")


def _one_step_per_sample(fn, args, t_pos):
    """A property: with t (argument ``t_pos`` of ``args``) a long tensor (B,), row b of the answer equals the answer
    called on row b of every tensor argument with the int t[b]; an exercise whose t may be an int or a tensor (B,)
    must handle both."""
    t = args[t_pos]
    row = lambda b: [int(t[b]) if k == t_pos else a[b:b + 1] if isinstance(a, torch.Tensor) else a
                     for k, a in enumerate(args)]
    try:
        out = _tensor(fn(*_fresh(args)))
        one_by_one = torch.cat([_tensor(fn(*_fresh(row(b)))) for b in range(len(t))])
    except Exception as err:
        return (f"t may be an int or a long tensor of shape (B,), one step per sample; the answer failed on one of "
                f"them with {type(err).__name__}: {err}")
    if out.shape != one_by_one.shape or not torch.allclose(out, one_by_one, rtol=1e-6, atol=1e-9):
        return ("with a tensor t of shape (B,), sample b must take its own step t[b], as the call with the int t[b] "
                "does")


def _keeps_dtype(fn, args, dtype=torch.float32):
    """A property: with the floating tensors of ``args`` in float32 (a schedule stays float64, as the library
    keeps it), the answer returns float32, the inputs' dtype, as the library's function does."""
    low = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    out = fn(*low)
    if isinstance(out, torch.Tensor) and out.dtype != dtype:
        return (f"given float32 inputs the result is {out.dtype}: a schedule's tensors are float64, so cast what "
                "you take from them to the inputs' dtype (e.g. s.alpha_bar[t].to(xt.dtype), or dl.gather)")


# --------------------------------------------------------------------------- random inputs
def _schedules():
    return [make_schedule("linear", 1000), make_schedule("cosine", 1000)]


def _timesteps(g, s, B, low=1):
    t = torch.randint(low, s.T + 1, (B,), generator=g)
    t[0], t[1], t[-1] = low, low + 1, s.T               # both ends of the chain, and the step after the first
    return t


def _images(g, B):
    C, H, W = (int(v) for v in torch.randint(1, 5, (3,), generator=g))
    return torch.randn(B, C, H + 1, W + 1, generator=g, dtype=f64)


