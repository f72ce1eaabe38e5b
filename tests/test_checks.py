"""ddpm_lib.checks: every check passes a correct answer and fails plausible wrong ones, naming the mistake.

The wrong answers are written here by hand, the way a student might write them; the checks carry their
own list of known mistakes, and these tests make sure the two meet (and that an unknown mistake still
fails with a generic message). Seeds are fixed so that every run draws the same inputs.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import ddpm_lib as dl
from ddpm_lib import checks

SEEDS = (0, 1)


def verdict(capsys, check, answer, seed=0):
    ok = check(answer, seed=seed)
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0, f"a verdict is one line, got:\n{out}"
    return ok, out


def assert_passes(capsys, check, answer):
    for seed in SEEDS:
        ok, out = verdict(capsys, check, answer, seed)
        assert ok is True and out.startswith("✓ "), out


def assert_fails(capsys, check, answer, *phrases):
    ok, out = verdict(capsys, check, answer)
    assert ok is False and out.startswith("✗ "), out
    for phrase in phrases:
        assert phrase in out, f"expected {phrase!r} in the verdict: {out}"


# --------------------------------------------------------------------------- notebook 01
def power_iteration(P, start, tol=1e-12):
    pi, n = start, 0
    while True:
        n += 1
        nxt = pi @ P
        if (nxt - pi).abs().max() < tol:
            return nxt, n
        pi = nxt


def test_power_iteration(capsys):
    assert_passes(capsys, checks.check_power_iteration, power_iteration)

    def column_update(P, start, tol=1e-12):
        pi, n = start, 0
        while True:
            n += 1
            nxt = P @ pi
            if (nxt - pi).abs().max() < tol:
                return nxt, n
            pi = nxt
    assert_fails(capsys, checks.check_power_iteration, column_update, "P @ π", "π ← π @ P")

    def counts_moves_before_the_last(P, start, tol=1e-12):
        pi, n = start, 0
        while (pi @ P - pi).abs().max() >= tol:
            pi, n = pi @ P, n + 1
        return pi @ P, n
    assert_fails(capsys, checks.check_power_iteration, counts_moves_before_the_last,
                 "the number of products", "off by one")

    def sum_rule(P, start, tol=1e-12):
        pi, n = start, 0
        while True:
            n += 1
            nxt = pi @ P
            if (nxt - pi).abs().sum() < tol:
                return nxt, n
            pi = nxt
    assert_fails(capsys, checks.check_power_iteration, sum_rule, "a max, not a sum")


def within_tolerance_at_start(answer):
    """``answer`` with the case a student adds for a start already within 0.01 of 1 (t* = 0)."""
    return lambda beta, var0: 0 if abs(var0 - 1) <= 0.01 else answer(beta, var0)


def unit_variance_steps(beta, var0):
    return math.ceil(math.log(0.01 / abs(var0 - 1)) / math.log(1 - beta))


def test_steps_to_unit_variance(capsys):
    right = within_tolerance_at_start(unit_variance_steps)
    assert_passes(capsys, checks.check_steps_to_unit_variance, right)
    truncated = lambda beta, var0: int(math.log(0.01 / abs(var0 - 1)) / math.log(1 - beta))
    assert_fails(capsys, checks.check_steps_to_unit_variance, within_tolerance_at_start(truncated), "off by one",
                 "math.ceil")
    first_order = lambda beta, var0: math.ceil(-math.log(0.01 / abs(var0 - 1)) / beta)
    assert_fails(capsys, checks.check_steps_to_unit_variance, within_tolerance_at_start(first_order),
                 "log(1 − β) by −β")
    std_rate = lambda beta, var0: math.ceil(math.log(0.01 / abs(var0 - 1)) / math.log(math.sqrt(1 - beta)))
    assert_fails(capsys, checks.check_steps_to_unit_variance, within_tolerance_at_start(std_rate), "a² = 1 − β")


def test_steps_to_unit_variance_needs_the_start_within_tolerance(capsys):
    """The bound alone divides by zero at v_0 = 1 and turns negative for v_0 within 0.01 of 1; both fail with a
    message that names the case, and a guard only for v_0 == 1 exactly still fails on v_0 = 1.005.
    Catches: checks that draw only v_0 far from 1 (the answer passed, then crashed in the next line)."""
    assert_fails(capsys, checks.check_steps_to_unit_variance, unit_variance_steps, "raises ZeroDivisionError",
                 "t* = 0")
    only_exactly_one = lambda beta, var0: 0 if var0 == 1 else unit_variance_steps(beta, var0)
    assert_fails(capsys, checks.check_steps_to_unit_variance, only_exactly_one, "needs no step",
                 "your bound is negative")


def test_power_iteration_counts_depend_on_the_stopping_rule(capsys):
    """Stopping on the L2 norm of π_{k+1} − π_k, or on its signed max (no .abs()), changes the count: the chains are
    lazy, so the count moves with the size of the rule, and one starts where the largest move is a fall.
    Catches: fast-mixing chains on which the wrong rules stopped at the same product as max |·|."""
    def stop_on(rule):
        def answer(P, start, tol=1e-12):
            pi, n = start, 0
            while True:
                n += 1
                nxt = pi @ P
                if rule(nxt - pi) < tol:
                    return nxt, n
                pi = nxt
        return answer
    assert_fails(capsys, checks.check_power_iteration, stop_on(torch.linalg.vector_norm), "the number of products")
    assert_fails(capsys, checks.check_power_iteration, stop_on(torch.max), ".abs() before .max()")


def test_steps_to_unit_variance_tries_starts_just_outside_the_tolerance(capsys):
    """A guard |v_0 − 1| < 0.1 (for ≤ 0.01) returns t* = 0 for starts that still need steps. Catches: starts drawn
    either within 0.01 of 1 or more than 0.1 away, which let any guard up to 0.1 pass."""
    wide_guard = lambda beta, var0: 0 if abs(var0 - 1) < 0.1 else unit_variance_steps(beta, var0)
    assert_fails(capsys, checks.check_steps_to_unit_variance, wide_guard, "differs from the library's answer")


# --------------------------------------------------------------------------- notebook 02
def q_sample_with(values, shift=0, root=True):
    def answer(s, x0, t, eps):
        c = getattr(s, values)[t - shift].view(-1, 1, 1, 1).to(x0.dtype)
        return (c.sqrt() * x0 + (1 - c).sqrt() * eps) if root else (c * x0 + (1 - c) * eps)
    return answer


def test_q_sample(capsys):
    assert_passes(capsys, checks.check_q_sample, q_sample_with("alpha_bar"))
    assert_fails(capsys, checks.check_q_sample, q_sample_with("alpha"),
                 "α_t (s.alpha) where ᾱ_t (s.alpha_bar) is needed")
    assert_fails(capsys, checks.check_q_sample, q_sample_with("alpha_bar", root=False), "square roots are missing")
    assert_fails(capsys, checks.check_q_sample, q_sample_with("alpha_bar", shift=1), "off by one in t")
    minus_noise = lambda s, x0, t, eps: q_sample_with("alpha_bar")(s, x0, t, -eps)
    assert_fails(capsys, checks.check_q_sample, minus_noise, "the sign of the noise")

    def clean_at_one(s, x0, t, eps):          # an unknown mistake: a wrong special case at t = 1
        return torch.where((t == 1).view(-1, 1, 1, 1), x0, q_sample_with("alpha_bar")(s, x0, t, eps))
    assert_fails(capsys, checks.check_q_sample, clean_at_one, "differs from the library's answer only at t = 1")

    def noise_too_small(s, x0, t, eps):       # unknown, and caught by the moments as well as the reference
        c = s.alpha_bar[t].view(-1, 1, 1, 1)
        return c.sqrt() * x0 + 0.5 * (1 - c).sqrt() * eps
    assert_fails(capsys, checks.check_q_sample, noise_too_small, "variance of x_t")


def test_snr_crossing(capsys):
    right = lambda s: int(torch.nonzero(s.snr[1:] < 1)[0]) + 1
    assert_passes(capsys, checks.check_snr_crossing, right)
    index_into_slice = lambda s: int(torch.nonzero(s.alpha_bar[1:] < 0.5)[0])
    assert_fails(capsys, checks.check_snr_crossing, index_into_slice, "off by one in t")
    signal_std = lambda s: int(torch.nonzero(s.alpha_bar.sqrt() < 0.5)[0])
    assert_fails(capsys, checks.check_snr_crossing, signal_std, "no square root")


# --------------------------------------------------------------------------- notebook 03
def posterior(prev_shift=1, var="tilde"):
    def answer(s, x0, xt, t):
        at = lambda v, k: v[k].view(-1, 1, 1, 1)
        ab, ab_prev, beta, alpha = at(s.alpha_bar, t), at(s.alpha_bar, t - prev_shift), at(s.beta, t), at(s.alpha, t)
        mean = (ab_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - ab_prev) * xt) / (1 - ab)
        variance = {"tilde": (1 - ab_prev) / (1 - ab) * beta, "beta": beta,
                    "std": ((1 - ab_prev) / (1 - ab) * beta).sqrt(),
                    "full": ((1 - ab_prev) / (1 - ab) * beta).expand_as(x0)}[var]
        return mean, variance
    return answer


def test_q_posterior(capsys):
    assert_passes(capsys, checks.check_q_posterior, posterior())
    assert_passes(capsys, checks.check_q_posterior, posterior(var="full"))   # a variance of x0's shape is fine too
    assert_fails(capsys, checks.check_q_posterior, posterior(prev_shift=0), "the mean: off by one in t")
    ok, out = verdict(capsys, checks.check_q_posterior, posterior(var="beta"))
    assert not ok and "the variance: you returned β_t" in out and "the mean" not in out, out
    assert_fails(capsys, checks.check_q_posterior, posterior(var="std"), "standard deviation")


def test_x0_from_posterior_mean(capsys):
    def answer(s, mean, xt, t, subtract=True, root=True):
        ab, ab_prev = s.alpha_bar[t, None], s.alpha_bar[t - 1, None]
        a_t = (ab_prev.sqrt() if root else ab_prev) * s.beta[t, None] / (1 - ab)
        c_t = s.alpha[t, None].sqrt() * (1 - ab_prev) / (1 - ab)
        return (mean - c_t * xt) / a_t if subtract else mean / a_t
    assert_passes(capsys, checks.check_x0_from_posterior_mean, answer)
    check = checks.check_x0_from_posterior_mean
    assert_fails(capsys, check, lambda *a: answer(*a, subtract=False), "subtract the x_t part")
    assert_fails(capsys, check, lambda *a: answer(*a, root=False), "square root is missing")
    assert_fails(capsys, check, lambda s, m, xt, t: answer(s, m, -xt, t), "the sign of the x_t part")


# --------------------------------------------------------------------------- notebook 04
def test_gaussian_kl(capsys):
    per_coordinate = lambda m1, v1, m2, v2: 0.5 * (torch.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)
    assert_passes(capsys, checks.check_gaussian_kl, lambda *a: per_coordinate(*a).sum(1))
    assert_fails(capsys, checks.check_gaussian_kl, per_coordinate, "should have shape", "sum over the D coordinates")
    assert_fails(capsys, checks.check_gaussian_kl, lambda m1, v1, m2, v2: per_coordinate(m2, v2, m1, v1).sum(1),
                 "not symmetric")
    assert_fails(capsys, checks.check_gaussian_kl, lambda *a: 2 * per_coordinate(*a).sum(1), "factor ½ is missing")


def denoising(var="beta", root=True, swap=False):
    def answer(s, x0, xt, eps_pred, t):
        beta, alpha, ab, ab_prev = (v[:, None] for v in (s.beta[t], s.alpha[t], s.alpha_bar[t], s.alpha_bar[t - 1]))
        mean_q = ab_prev.sqrt() * beta / (1 - ab) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * xt
        var_q = ((1 - ab_prev) / (1 - ab) * beta).expand_as(x0)
        mean_p = (xt - beta / ((1 - ab).sqrt() if root else 1 - ab) * eps_pred) / alpha.sqrt()
        var_p = (beta if var == "beta" else s.beta_tilde[t][:, None]).expand_as(x0)
        q, p = (mean_q, var_q), (mean_p, var_p)
        return (dl.normal_kl(*p, *q) if swap else dl.normal_kl(*q, *p)).sum(1)
    return answer


def test_denoising_term(capsys):
    assert_passes(capsys, checks.check_denoising_term, denoising())
    assert_fails(capsys, checks.check_denoising_term, denoising(var="beta_tilde"), "σ_t² = β̃_t")
    assert_fails(capsys, checks.check_denoising_term, denoising(root=False), "square root is missing")
    assert_fails(capsys, checks.check_denoising_term, denoising(swap=True), "arguments are swapped")


def training_step(zero_grad=True, target="eps", reduce="mean", use_generator=True, t_low=1):
    def answer(model, opt, s, x0, generator):
        g = generator if use_generator else None
        t = torch.randint(t_low, s.T + t_low, (x0.shape[0],), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        ab = s.alpha_bar[t].float()[:, None]
        err = ((eps if target == "eps" else x0) - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)) ** 2
        loss = err.mean() if reduce == "mean" else err.sum()
        if zero_grad:
            opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return answer


def test_training_step(capsys):
    assert_passes(capsys, checks.check_training_step, training_step())
    assert_fails(capsys, checks.check_training_step, training_step(zero_grad=False),
                 "the weights after two steps", "opt.zero_grad()")
    assert_fails(capsys, checks.check_training_step, training_step(target="x0"), "the target is ε, not x_0")
    assert_fails(capsys, checks.check_training_step, training_step(reduce="sum"), "not the sum")
    assert_fails(capsys, checks.check_training_step, training_step(t_low=0), "off by one in t")
    assert_fails(capsys, checks.check_training_step, training_step(use_generator=False), "generator=generator")


def test_training_step_fixes_neither_the_batch_nor_the_dimension(capsys):
    """x0 is (B, 3) with B drawn from 40..90, so an answer with the toy data's D = 2 or a batch of 64 written in
    fails. Catches: a single (64, 2) batch, on which both hard-coded sizes passed."""
    def with_sizes(B=None, D=None):
        def answer(model, opt, s, x0, generator):
            n = x0.shape[0] if B is None else B
            t = torch.randint(1, s.T + 1, (n,), generator=generator)
            eps = torch.randn((n, x0.shape[1] if D is None else D), generator=generator)
            loss = ((eps - model(dl.q_sample(s, x0, t, eps), t)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()
        return answer
    assert_passes(capsys, checks.check_training_step, with_sizes())
    for wrong in (with_sizes(D=2), with_sizes(B=64)):
        with pytest.raises(ValueError, match="shapes must match"):
            checks.check_training_step(wrong, seed=0)


def test_training_step_does_not_blame_float32_for_a_wrong_term(capsys):
    """The check trains a float32 model on purpose: an answer that feeds the network t − 1 changes the weights by
    about 1e-4, and the verdict must not tell the student to keep float64. Catches: the rounding hint given for
    outputs whose reference is itself float32."""
    def network_sees_t_minus_1(model, opt, s, x0, generator):
        t = torch.randint(1, s.T + 1, (x0.shape[0],), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        loss = ((eps - model(dl.q_sample(s, x0, t, eps), t - 1)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    ok, out = verdict(capsys, checks.check_training_step, network_sees_t_minus_1)
    assert not ok and "float64" not in out and "differs from the library's answer" in out, out


# --------------------------------------------------------------------------- notebook 05
def embedding(layout="interleaved", divide_by="h"):
    def answer(t, dim):
        h = dim // 2
        omega = 10_000.0 ** (-torch.arange(h, dtype=torch.float64) / (h if divide_by == "h" else dim))
        args = t.double()[:, None] * omega
        sin, cos = torch.sin(args), torch.cos(args)
        if layout == "concatenated":
            return torch.cat([sin, cos], 1)
        pairs = (sin, cos) if layout == "interleaved" else (cos, sin)
        return torch.stack(pairs, -1).reshape(len(t), dim)
    return answer


def test_interleaved_embedding(capsys):
    assert_passes(capsys, checks.check_interleaved_embedding, embedding())
    assert_fails(capsys, checks.check_interleaved_embedding, embedding(layout="concatenated"), "the library's layout")
    assert_fails(capsys, checks.check_interleaved_embedding, embedding(layout="cos_first"), "sin and cos are swapped")
    assert_fails(capsys, checks.check_interleaved_embedding, embedding(divide_by="dim"), "you divided by dim")


def resblock(one_plus=True, skip=True, dropout=True, swap=False):
    def answer(block, x, temb):
        h = block.conv1(F.silu(block.norm1(x)))
        proj = block.time_proj(F.silu(temb))[:, :, None, None]
        if block.time_cond == "scale_shift":
            scale, shift = proj.chunk(2, dim=1)
            if swap:
                scale, shift = shift, scale
            h = block.norm2(h) * ((1 + scale) if one_plus else scale) + shift
        else:
            h = block.norm2(h + proj)
        h = F.silu(h)
        h = block.conv2(F.dropout(h, 0.25) if dropout == "functional" else block.dropout(h) if dropout else h)
        return h + block.skip(x) if skip else h
    return answer


def test_resblock_forward(capsys):
    assert_passes(capsys, checks.check_resblock_forward, resblock())
    assert_fails(capsys, checks.check_resblock_forward, resblock(one_plus=False), "(1 + scale)")
    assert_fails(capsys, checks.check_resblock_forward, resblock(skip=False), "residual path is missing")
    assert_fails(capsys, checks.check_resblock_forward, resblock(dropout=False), "dropout is missing")
    assert_fails(capsys, checks.check_resblock_forward, resblock(swap=True), "first half")


def test_resblock_dropout_is_off_in_eval_mode(capsys):
    """F.dropout(h, p) draws the same mask as block.dropout in training mode but keeps dropping after block.eval():
    one block is graded in eval mode. Catches: blocks graded in training mode only."""
    assert_fails(capsys, checks.check_resblock_forward, resblock(dropout="functional"), "drops in eval mode too")


# --------------------------------------------------------------------------- behaviour common to all checks
def test_an_unsolved_exercise_raises_its_own_error():
    def stub(*args):
        raise NotImplementedError("Exercise 2.1 (q_sample): write your solution here")
    with pytest.raises(NotImplementedError, match=r"Exercise 2\.1 \(q_sample\)"):
        checks.check_q_sample(stub)


def test_checks_leave_the_global_random_state_alone(capsys):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_training_step(training_step())
    checks.check_resblock_forward(resblock())
    checks.check_q_sample(q_sample_with("alpha_bar"))
    assert torch.equal(torch.rand(3), expected)


def test_without_a_seed_every_call_draws_new_inputs(capsys):
    seen = []
    def spy(s, x0, t, eps):
        seen.append(x0.flatten()[0].item())
        return q_sample_with("alpha_bar")(s, x0, t, eps)
    assert checks.check_q_sample(spy) and checks.check_q_sample(spy)
    first_call = seen[: checks.N_CASES]
    assert first_call != seen[len(seen) // 2: len(seen) // 2 + checks.N_CASES]


def test_a_non_tensor_answer_gets_a_plain_message(capsys):
    assert_fails(capsys, checks.check_q_sample, lambda s, x0, t, eps: None, "is a NoneType")


def test_every_batch_holds_t_equal_to_T(capsys):
    """An answer wrong only at t = T (a special case returning x_0 there) fails and is told so: every batch of
    timesteps holds t = T, not only when the random draw happens to hit it. Catches: inputs without the T edge."""
    def clean_at_T(s, x0, t, eps):
        return torch.where((t == s.T).view(-1, 1, 1, 1), x0, q_sample_with("alpha_bar")(s, x0, t, eps))
    assert_fails(capsys, checks.check_q_sample, clean_at_T, "differs from the library's answer only at t = T")


def test_two_numbers_where_one_is_due_get_a_shape_message(capsys):
    """A scalar answer returned as shape (2,) fails with a shape message (not a crash); shape (1,) is one number
    and passes. Catches: any shape accepted for a scalar, or only shape () accepted."""
    right = within_tolerance_at_start(unit_variance_steps)
    assert_fails(capsys, checks.check_steps_to_unit_variance, lambda b, v: torch.tensor([right(b, v)] * 2),
                 "t* has shape (2,) but should have shape ()")
    assert_passes(capsys, checks.check_steps_to_unit_variance, lambda b, v: torch.tensor([right(b, v)]))


def test_the_properties_run_when_the_answer_matches_the_reference(capsys):
    """check_cfg_combine compares on image batches (4-D) and checks w = 0 and w = 1 on (3, 2) inputs: an answer
    right on the images but off by 1 on 2-D inputs must fail with the property's message.
    Catches: properties consulted only to diagnose an answer that already differs from the reference."""
    def right_on_images_only(eu, ec, w):
        return eu + w * (ec - eu) + (1.0 if eu.ndim == 2 else 0.0)
    assert_fails(capsys, checks.check_cfg_combine, right_on_images_only,
                 "w = 0 must return ε_u and w = 1 must return ε_c")


def test_only_at_t_1_needs_every_other_t_right_to_a_tight_tolerance(capsys):
    """An answer 0.01 % too large at every t and off by 1 at t = 1 is wrong everywhere: the verdict must not say
    "only at t = 1". Catches: a loose tolerance in the per-t diagnosis that counts a 1e-4 (or 1e-3) error as right."""
    def off_everywhere(s, e, t, gr, sc):
        wrong_at_one = (t == 1).view(-1, 1, 1, 1).to(e.dtype)
        return guided_eps(s, e, t, gr, sc) * (1 + 1e-4) + wrong_at_one
    ok, out = verdict(capsys, checks.check_guided_eps, off_everywhere)
    assert not ok and "differs from the library's answer (largest error" in out, out


def test_an_answer_in_float32_is_told_to_keep_float64(capsys):
    """q_sample with ᾱ_t cast to float32 (result float64) and ema_update in float32 (result float32) are right up
    to rounding: the verdict names float32, not the formula. Catches: precision losses reported as math errors."""
    def alpha_bar_in_float32(s, x0, t, eps):
        ab = s.alpha_bar[t].float().view(-1, 1, 1, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    assert_fails(capsys, checks.check_q_sample, alpha_bar_in_float32, "keep every step in float64")
    assert_fails(capsys, checks.check_ema_update, lambda e, th, d: d * e.float() + (1 - d) * th.float(),
                 "your result is float32", "keep every step in float64")


def test_a_wrong_term_is_not_taken_for_rounding(capsys):
    """An answer off by 0.1 % everywhere, or by a small amount in some rows only, is a wrong formula: the verdict
    must not blame float32. Catches: a precision hint given on the size of the error alone."""
    ok, out = verdict(capsys, checks.check_q_sample, lambda s, x0, t, eps: q_sample_with("alpha_bar")(s, x0, t, eps)
                      * 1.001)
    assert not ok and "float32" not in out and "differs from the library's answer" in out, out
    no_noise_at_2 = lambda s, xt, e, t, z: ancestral_step(s, xt, e, t, z) - ((t == 2).view(-1, 1, 1, 1)
                                                                               * s.beta[t].sqrt().view(-1, 1, 1, 1) * z)
    ok, out = verdict(capsys, checks.check_ancestral_step, no_noise_at_2)
    assert not ok and "float32" not in out and "differs from the library's answer" in out, out


def test_an_infinite_answer_is_called_so(capsys):
    """1 − ᾱ_{t−1} under the root at t = 1 divides by zero: the verdict says inf or NaN and points at an index off
    by one, not "largest error 1.8e+308". Catches: inf clamped to the largest float in the message."""
    def prev_in_denominator(s, xt, e, t, z):
        ab_prev = s.alpha_bar[t - 1].view(-1, 1, 1, 1)
        return ancestral_step(s, xt, e, t, z) + s.beta[t].view(-1, 1, 1, 1) * e * (
            1 / (1 - s.alpha_bar[t]).sqrt().view(-1, 1, 1, 1) - 1 / (1 - ab_prev).sqrt()) / s.alpha[t].sqrt().view(-1, 1, 1, 1)
    assert_fails(capsys, checks.check_ancestral_step, prev_in_denominator, "gives inf or NaN", "off by one in t")


def test_a_broadcast_output_of_the_wrong_shape_names_the_short_shape(capsys):
    """q_posterior's variance may be (B, 1, 1, 1) as the exercise says; returned flat, the message offers that
    shape too. Catches: a message that asks for the full image shape only."""
    def flat_variance(s, x0, xt, t):
        mean, var = dl.q_posterior(s, x0, xt, t)
        return mean, var.flatten()
    assert_fails(capsys, checks.check_q_posterior, flat_variance, "has shape (6,)", "such as (6, 1, 1, 1)")


# --------------------------------------------------------------------------- notebook 06
def ema_update(ema, theta, decay):
    return decay * ema + (1 - decay) * theta


def test_check_ema_update_passes_the_rule_and_names_its_mistakes(capsys):
    assert_passes(capsys, checks.check_ema_update, ema_update)
    assert_passes(capsys, checks.check_ema_update, lambda ema, theta, d: torch.lerp(ema, theta, 1 - d))
    assert_fails(capsys, checks.check_ema_update, lambda ema, theta, d: d * theta + (1 - d) * ema, "swapped")
    assert_fails(capsys, checks.check_ema_update, lambda ema, theta, d: d * ema + theta, "factor (1 − d)")
    assert_fails(capsys, checks.check_ema_update, lambda ema, theta, d: theta, "plain weights")
    assert_fails(capsys, checks.check_ema_update, lambda ema, theta, d: d * ema + (1 - d) * theta + 1e-3,
                 "average of a constant is the constant")


def test_ema_update_that_overwrites_theta_is_told_so(capsys):
    """θ.mul_(1 − d).add_(θ_ema, alpha=d) returns the right average but writes it into the model's weights: the
    verdict names that. Catches: a message about the gap shrinking by dⁿ, which the formula already does."""
    assert_fails(capsys, checks.check_ema_update, lambda ema, theta, d: theta.mul_(1 - d).add_(ema, alpha=d),
                 "changed θ in place")


def test_an_answer_that_updates_its_inputs_in_place_is_graded_on_its_result(capsys):
    """ema.mul_(d).add_(θ, alpha=1 − d) is right (the library's EMA updates in place too), and so is an ancestral
    step that edits x_t in place: each call must get its own copy of the inputs. Catches: the reference run on
    inputs the answer has already changed."""
    assert_passes(capsys, checks.check_ema_update, lambda ema, theta, d: ema.mul_(d).add_(theta, alpha=1 - d))

    def in_place_step(s, xt, eps_pred, t, z):
        expected = ancestral_step(s, xt.clone(), eps_pred, t, z)
        xt.copy_(expected)
        return xt
    assert_passes(capsys, checks.check_ancestral_step, in_place_step)


def ancestral_step(s, xt, eps_pred, t, z, coef="alpha_bar", z_at_one=False, var="beta"):
    def at(v):
        return v[t].reshape(-1, *([1] * (xt.ndim - 1))).to(xt.dtype)
    mean = (xt - at(s.beta) / (1 - at(getattr(s, coef))).sqrt() * eps_pred) / at(s.alpha).sqrt()
    sigma = at(getattr(s, var)).sqrt()
    keep = torch.ones_like(sigma) if z_at_one else at((torch.arange(s.T + 1) > 1).to(xt.dtype))
    return mean + keep * sigma * z


def test_check_ancestral_step_passes_algorithm_2_and_names_its_mistakes(capsys):
    assert_passes(capsys, checks.check_ancestral_step, ancestral_step)
    assert_fails(capsys, checks.check_ancestral_step, lambda *a: ancestral_step(*a, coef="alpha"), "α_t where ᾱ_t")
    assert_fails(capsys, checks.check_ancestral_step, lambda *a: ancestral_step(*a, z_at_one=True), "no noise at t = 1")
    assert_fails(capsys, checks.check_ancestral_step, lambda *a: ancestral_step(*a, var="beta_tilde"), "β̃_t")
    plus_eps = lambda s, xt, e, t, z: ancestral_step(s, xt, -e, t, z)
    assert_fails(capsys, checks.check_ancestral_step, plus_eps, "subtracts the predicted noise")
    assert_fails(capsys, checks.check_ancestral_step, lambda s, xt, e, t, z: ancestral_step(s, xt, e, t, z) * 1.001,
                 "differs from the library's answer")
    no_noise_at_2 = lambda s, xt, e, t, z: ancestral_step(s, xt, e, t, z) - ((t == 2).view(-1, 1, 1, 1)
                                                                               * s.beta[t].sqrt().view(-1, 1, 1, 1) * z)
    for seed in range(8):      # every batch holds t = 2, so a mask of t > 2 is caught every time
        ok, out = verdict(capsys, checks.check_ancestral_step, no_noise_at_2, seed)
        assert not ok, out


# --------------------------------------------------------------------------- notebook 07
def ddim_sigma(s, t, t_prev, eta, first_root=True, ratio=True):
    a, ap = s.alpha_bar[t], s.alpha_bar[t_prev]
    first = ((1 - ap) / (1 - a)).sqrt() if first_root else (1 - ap) / (1 - a)
    second = (1 - a / ap) if ratio else (1 - s.alpha[t])
    return eta * first * second.sqrt()


def test_check_ddim_sigma_passes_eq_16_and_names_its_mistakes(capsys):
    assert_passes(capsys, checks.check_ddim_sigma, ddim_sigma)
    assert_fails(capsys, checks.check_ddim_sigma, lambda *a: ddim_sigma(*a, first_root=False), "ratio of variances")
    assert_fails(capsys, checks.check_ddim_sigma, lambda *a: ddim_sigma(*a, ratio=False), "1 − ᾱ_t/ᾱ_{t'}")
    assert_fails(capsys, checks.check_ddim_sigma, lambda s, t, tp, eta: ddim_sigma(s, t, tp, eta) * 1.01,
                 "σ² must equal β̃_t")


def ddim_update(s, xt, eps, t, t_prev, eta, noise, keep_sigma=False):
    a, ap = dl.gather(s.alpha_bar, t, xt), dl.gather(s.alpha_bar, t_prev, xt)      # (B, 1, 1, 1) for a tensor t
    sigma = eta * ((1 - ap) / (1 - a)).sqrt() * (1 - a / ap).sqrt()
    x0 = (xt - (1 - a).sqrt() * eps) / a.sqrt()
    direction = (1 - ap - (0 if keep_sigma else sigma ** 2)).clamp(min=0).sqrt() * eps
    return ap.sqrt() * x0 + direction + sigma * noise


def test_check_ddim_update_passes_eq_12_and_names_its_mistakes(capsys):
    assert_passes(capsys, checks.check_ddim_update, ddim_update)
    assert_fails(capsys, checks.check_ddim_update, lambda *a: ddim_update(*a, keep_sigma=True), "σ² must come off")
    assert_fails(capsys, checks.check_ddim_update, lambda s, xt, e, t, tp, eta, z: ddim_update(s, xt, e, t, tp, eta, z)
                 + 0.1 * eta * z, "differs from the library's answer")
    assert_fails(capsys, checks.check_ddim_update, lambda s, xt, e, t, tp, eta, z: ddim_update(s, xt, e, t, tp, eta, z)
                 + 1e-3 * z, "must not depend on the noise")


def test_check_ddim_update_asks_for_one_step_per_sample(capsys):
    """7.2's instructions allow t and t_prev as long tensors (B,). An answer that works only for ints (float() of a
    gathered ᾱ) crashed on the first batch after a ✓; one that gives every sample the first sample's step is wrong."""
    def ints_only(s, xt, eps, t, t_prev, eta, noise):
        return ddim_update(s, xt, eps, int(t), int(t_prev), eta, noise)

    def first_step_for_all(s, xt, eps, t, t_prev, eta, noise):
        t, t_prev = (v if isinstance(v, int) else int(v.flatten()[0]) for v in (t, t_prev))
        return ddim_update(s, xt, eps, t, t_prev, eta, noise)

    assert_fails(capsys, checks.check_ddim_update, ints_only, "one step per sample")
    assert_fails(capsys, checks.check_ddim_update, first_step_for_all, "its own step t[b] → t_prev[b]")


# --------------------------------------------------------------------------- notebook 08
def guided_eps(s, eps_pred, t, grad, scale, sign=-1, root=True):
    one_minus = (1 - s.alpha_bar[t]).view(-1, *([1] * (eps_pred.ndim - 1))).to(eps_pred.dtype)
    return eps_pred + sign * (one_minus.sqrt() if root else one_minus) * scale * grad


def test_check_guided_eps_passes_algorithm_2_and_names_its_mistakes(capsys):
    assert_passes(capsys, checks.check_guided_eps, guided_eps)
    assert_fails(capsys, checks.check_guided_eps, lambda *a: guided_eps(*a, sign=1), "the sign")
    assert_fails(capsys, checks.check_guided_eps, lambda *a: guided_eps(*a, root=False), "not 1 − ᾱ_t")
    assert_fails(capsys, checks.check_guided_eps, lambda s, e, t, gr, sc: guided_eps(s, e, t - 1, gr, sc),
                 "off by one in t")
    assert_fails(capsys, checks.check_guided_eps, lambda s, e, t, gr, sc: guided_eps(s, e, t, gr, 1.0), "scale s is missing")


def in_float64(answer):
    """The answer computed with the schedule's float64 values left uncast: float32 inputs give float64."""
    return lambda s, x, *rest: answer(s, x.double(), *(r.double() if torch.is_tensor(r) and r.is_floating_point()
                                                       else r for r in rest))


@pytest.mark.parametrize("check, answer", [
    (checks.check_q_sample, q_sample_with("alpha_bar")), (checks.check_ancestral_step, ancestral_step),
    (checks.check_ddim_update, ddim_update), (checks.check_guided_eps, guided_eps)], ids=["2.1", "6.2", "7.2", "8.1"])
def test_answers_that_turn_float32_into_float64_are_told_to_cast(check, answer, capsys):
    """Their docstrings promise the inputs' dtype, as the library keeps it; an answer that multiplies by the
    schedule's float64 values uncast returns float64 for float32 images (slow on a GPU, wrong under autocast).
    Catches: grading on float64 inputs only, where the mistake cannot show."""
    assert_passes(capsys, check, answer)
    assert_fails(capsys, check, in_float64(answer), "given float32 inputs the result is torch.float64")


def test_check_guided_eps_takes_an_int_t_as_its_docstring_allows(capsys):
    """8.1's t may be a long tensor (B,) or an int: an answer that indexes a batch axis of s.alpha_bar[t] fails on
    an int t. Catches: grading on tensors t alone, which passed it."""
    def tensor_t_only(s, eps_pred, t, grad, scale):
        return eps_pred - (1 - s.alpha_bar[t])[:, None, None, None].sqrt().to(eps_pred.dtype) * scale * grad
    assert_fails(capsys, checks.check_guided_eps, tensor_t_only, "t may be an int or a long tensor")


def test_check_cfg_combine_passes_the_rule_and_names_its_mistakes(capsys):
    assert_passes(capsys, checks.check_cfg_combine, lambda eu, ec, w: (1 - w) * eu + w * ec)
    assert_fails(capsys, checks.check_cfg_combine, lambda eu, ec, w: (1 + w) * ec - w * eu, "Ho & Salimans")
    assert_fails(capsys, checks.check_cfg_combine, lambda eu, ec, w: ec + w * (eu - ec), "swapped")
    assert_fails(capsys, checks.check_cfg_combine, lambda eu, ec, w: eu + w * (ec - eu) + 0.01, "w = 0 must return")


# --------------------------------------------------------------------------- notebook 09
def ddgan_step(s, x0_pred, xt, t, noise, var="beta_tilde", scale=1.0):
    a, ab, ab_prev, b = (dl.gather(v, i, xt) for v, i in ((s.alpha, t), (s.alpha_bar, t), (s.alpha_bar, t - 1), (s.beta, t)))
    mean = ab_prev.sqrt() * b / (1 - ab) * x0_pred + a.sqrt() * (1 - ab_prev) / (1 - ab) * xt
    var_t = (1 - ab_prev) / (1 - ab) * b if var == "beta_tilde" else b
    return mean + scale * var_t.sqrt() * noise


def test_check_ddgan_step_passes_the_posterior_draw_and_names_its_mistakes(capsys):
    assert_passes(capsys, checks.check_ddgan_step, ddgan_step)
    assert_fails(capsys, checks.check_ddgan_step, lambda *a: ddgan_step(*a, var="beta"), "not β_t")
    beta_but_clean_at_1 = lambda s, x0, xt, t, z: ddgan_step(s, x0, xt, t, z, var="beta", scale=float(t > 1))
    assert_fails(capsys, checks.check_ddgan_step, beta_but_clean_at_1, "not β_t", "no special case for t = 1")
    assert_fails(capsys, checks.check_ddgan_step, lambda s, x0, xt, t, z: ddgan_step(s, x0, xt, t, z) + 1e-3 * xt,
                 "must be x_0′ itself")


def test_check_ddgan_step_asks_for_one_step_per_sample(capsys):
    """9.1's t may be a long tensor (B,): s.alpha[t] without reshaping is right for an int t only, and an `if t == 1`
    special case cannot take a tensor. Catches: grading on int t alone, which passed both."""
    def ints_only(s, x0_pred, xt, t, noise):
        a, ab, ab_prev, b = s.alpha[t], s.alpha_bar[t], s.alpha_bar[t - 1], s.beta[t]
        mean = ab_prev.sqrt() * b / (1 - ab) * x0_pred + a.sqrt() * (1 - ab_prev) / (1 - ab) * xt
        return mean + ((1 - ab_prev) / (1 - ab) * b).sqrt() * noise
    special_case = lambda s, x0, xt, t, z: x0 if t == 1 else ddgan_step(s, x0, xt, t, z)
    assert_fails(capsys, checks.check_ddgan_step, ints_only, "one step per sample")
    assert_fails(capsys, checks.check_ddgan_step, special_case, "one step per sample", "ambiguous")


def test_check_gan_losses_passes_the_non_saturating_losses_and_names_its_mistakes(capsys):
    sp = F.softplus
    assert_passes(capsys, checks.check_gan_losses, lambda r, f: (sp(-r).mean() + sp(f).mean(), sp(-f).mean()))
    assert_fails(capsys, checks.check_gan_losses, lambda r, f: (sp(-r).mean() + sp(f).mean(), -sp(f).mean()),
                 "non-saturating")
    assert_fails(capsys, checks.check_gan_losses, lambda r, f: (sp(r).mean() + sp(f).mean(), sp(-f).mean()),
                 "minus inside")
    assert_fails(capsys, checks.check_gan_losses, lambda r, f: (sp(-r).sum() + sp(f).sum(), sp(-f).mean()), "not sums")
    assert_fails(capsys, checks.check_gan_losses, lambda r, f: (sp(r).mean() + sp(-f).mean(), sp(-f).mean()),
                 "both signs are flipped")


def test_check_gan_losses_asks_for_losses_that_stay_finite_for_a_confident_discriminator(capsys):
    """log(1 + eˣ) and −log σ(x) are softplus on paper but overflow to inf for logits of a few hundred, which a
    discriminator that wins reaches; softplus and logaddexp stay finite. Catches: logits of about ±3 only, on
    which the unstable forms passed."""
    assert_passes(capsys, checks.check_gan_losses,
                  lambda r, f: (torch.logaddexp(torch.zeros_like(r), -r).mean()
                                + torch.logaddexp(torch.zeros_like(f), f).mean(),
                                torch.logaddexp(torch.zeros_like(f), -f).mean()))
    naive = lambda x: torch.log(1 + torch.exp(x))
    assert_fails(capsys, checks.check_gan_losses, lambda r, f: (naive(-r).mean() + naive(f).mean(), naive(-f).mean()),
                 "inf or NaN", "F.softplus")
    log_sigmoid = lambda r, f: (-torch.log(torch.sigmoid(r)).mean() - torch.log(1 - torch.sigmoid(f)).mean(),
                                -torch.log(torch.sigmoid(f)).mean())
    assert_fails(capsys, checks.check_gan_losses, log_sigmoid, "inf or NaN")


def test_float32_answer_off_by_a_wrong_term_is_not_rounding(capsys):
    """G5: a float32 answer 3 % off is a wrong formula, not float32 rounding."""
    ok, out = verdict(capsys, checks.check_ema_update, lambda e, th, d: (ema_update(e, th, d) * 1.03).float())
    assert not ok and "float64" not in out, out


def test_rounding_sized_error_in_one_row_only_is_a_wrong_term(capsys):
    """G7: a float64 answer off by 1e-4 (relative) only at t = 1 is not rounding."""
    def off_at_one(s, x0, t, eps):
        x = q_sample_with("alpha_bar")(s, x0, t, eps)
        return x * (1 + 1e-4 * (t == 1).to(x.dtype).view(-1, 1, 1, 1))
    ok, out = verdict(capsys, checks.check_q_sample, off_at_one)
    assert not ok and "float64" not in out and "differs from the library's answer" in out, out


def test_a_nan_answer_is_called_so(capsys):
    """G14 (float64) and G10 (float32): NaN only at t = 1 is reported as inf or NaN."""
    def nan_at_one(s, x0, t, eps):
        x = q_sample_with("alpha_bar")(s, x0, t, eps)
        return torch.where((t == 1).view(-1, 1, 1, 1), torch.nan, x)
    assert_fails(capsys, checks.check_q_sample, nan_at_one, "gives inf or NaN only at t = 1")
    assert_fails(capsys, checks.check_q_sample, lambda *a: nan_at_one(*a).float(), "gives inf or NaN only at t = 1")


def test_a_full_shape_output_of_the_wrong_shape_offers_no_broadcast(capsys):
    """G15: only broadcast outputs are offered a shorter shape."""
    ok, out = verdict(capsys, checks.check_q_sample, lambda *a: q_sample_with("alpha_bar")(*a).flatten(1))
    assert not ok and "has shape" in out and "broadcasts" not in out, out


def test_every_bound_batch_holds_the_step_after_the_first(capsys):
    """G20: with low = 2 every batch holds t = 3 too."""
    g = torch.Generator().manual_seed(0)
    s = dl.make_schedule("linear", 1000)
    for _ in range(5):
        t = checks.grading._timesteps(g, s, 7, low=2)
        assert t[0] == 2 and (t == 3).any() and (t == 1000).any(), t


def test_denoising_wrong_only_at_t_3_fails_every_seed(capsys):
    """G20 behaviourally: the bound's batches start at t = 2, so t = 3 is the step after the first."""
    wrong_at_3 = lambda s, x0, xt, e, t: denoising()(s, x0, xt, e, t) * (1 + 0.1 * (t == 3).to(x0.dtype))
    for seed in range(6):
        ok, out = verdict(capsys, checks.check_denoising_term, wrong_at_3, seed)
        assert not ok, out



def test_a_bound_written_as_log_of_the_gap_raises_value_error_and_is_told_t0(capsys):
    """C3: log(|v_0 − 1| / 0.01) at v_0 = 1 is log(0), a ValueError (not ZeroDivisionError)."""
    flipped = lambda beta, var0: math.ceil(math.log(abs(var0 - 1) / 0.01) / -math.log(1 - beta))
    assert_fails(capsys, checks.check_steps_to_unit_variance, flipped, "raises ValueError", "t* = 0")


def test_an_answer_that_refuses_a_negative_bound_is_told_t0(capsys):
    """C2: guarded for v_0 == 1 only, raising on the negative bound at v_0 = 1.005."""
    def refuses(beta, var0):
        if var0 == 1:
            return 0
        t = unit_variance_steps(beta, var0)
        if t < 0:
            raise ValueError("negative number of steps")
        return t
    assert_fails(capsys, checks.check_steps_to_unit_variance, refuses, "raises ValueError", "v_0 = 1.005")


def test_starts_near_1_are_checked_on_both_sides(capsys):
    """C6b/C6c: a guard for starts just above 1 only, or just below 1 only, fails."""
    above = lambda b, v: 0 if 1 <= v <= 1.01 else unit_variance_steps(b, v)
    below = lambda b, v: 0 if 0.99 <= v <= 1 else unit_variance_steps(b, v)
    for answer in (above, below):
        ok, out = verdict(capsys, checks.check_steps_to_unit_variance, answer)
        assert not ok, out


def test_steps_to_unit_variance_is_tried_on_the_pairs_its_verdict_claims(capsys):
    """The verdict says "10 (β, v_0) pairs … starts near 1 included": the answer is called on at least 10 distinct
    pairs, among them v_0 = 1, 1.005 and 0.995. Catches: a shorter case list behind the same message."""
    seen = set()
    right = within_tolerance_at_start(unit_variance_steps)

    def recording(beta, var0):
        seen.add((beta, var0))
        return right(beta, var0)
    ok, out = verdict(capsys, checks.check_steps_to_unit_variance, recording, seed=0)    # one call of the check
    assert ok, out
    assert len(seen) >= 10 and {1.0, 1.005, 0.995} <= {v for _, v in seen}
