"""Exercise 8.3's check, checks.check_windowed: guidance switched on only for t_lo ≤ t ≤ t_hi.

The wrong answers are written by hand, as a student might write them; the check must name each of its known
mistakes, and its two independent properties (a batch worked out by hand, and the samplers of ddpm_lib run end
to end) must catch what the random batches cannot.
"""
import torch

import ddpm_lib as dl
from ddpm_lib import checks
from ddpm_lib.checks.guidance import HAND_ROWS, HAND_T, _hand_mask, _sampler_oracle
from test_checks import SEEDS, assert_fails, verdict

def windowed(grad_fn, t_lo, t_hi, lo=lambda t, a: t >= a, hi=lambda t, b: t <= b, first_only=False, keep=True):
    """A student's answer; the keyword arguments turn it into the usual wrong ones."""
    def cond_fn(xt, t):
        inside = lo(t, t_lo) & hi(t, t_hi)
        if first_only:                                   # a Python `if` on the batch: decided by t[0] alone
            return grad_fn(xt, t) if bool(inside[0]) == keep else torch.zeros_like(xt)
        inside = inside if keep else ~inside
        return grad_fn(xt, t) * inside.view(-1, *[1] * (xt.ndim - 1))
    return cond_fn


def test_check_windowed_passes_a_mask_and_a_where_that_skips_empty_batches(capsys):
    def skipping(grad_fn, t_lo, t_hi):
        def cond_fn(xt, t):
            inside = (t_lo <= t) & (t <= t_hi)
            if not inside.any():
                return torch.zeros_like(xt)
            grad = grad_fn(xt, t)
            return torch.where(inside.view(-1, *[1] * (grad.ndim - 1)), grad, 0.0)
        return cond_fn

    for answer in (windowed, skipping):
        for seed in SEEDS:
            ok, out = verdict(capsys, checks.check_windowed, answer, seed)
            assert ok is True and out.startswith("✓ "), out


def test_check_windowed_names_its_mistakes(capsys):
    assert_fails(capsys, checks.check_windowed, lambda g, a, b: windowed(g, a, b, lo=lambda t, a: t > a), "t = t_lo is left out")
    assert_fails(capsys, checks.check_windowed, lambda g, a, b: windowed(g, a, b, hi=lambda t, b: t < b), "t = t_hi is left out")
    assert_fails(capsys, checks.check_windowed, lambda g, a, b: windowed(g, a, b, first_only=True), "first sample's t[0]")
    assert_fails(capsys, checks.check_windowed, lambda g, a, b: windowed(g, a, b, keep=False), "the window is inverted")


def test_an_unknown_mistake_fails_with_the_hand_made_batch_as_a_clue(capsys):
    """The window ignored altogether matches no named mistake: the verdict says where it differs and adds the
    hand-made batch, whose rows show the gradient kept outside [4, 7]."""
    out = assert_fails(capsys, checks.check_windowed, lambda g, a, b: g, "wrong at 0 samples inside the window",
                       "outside it (where it must be exactly 0)", f"t = {HAND_T}")
    assert "got [3.0, 4.0, 5.0, 7.0, 8.0, 1.0, 10.0, 6.0]" in out


def test_nan_outside_the_window_is_counted_as_wrong(capsys):
    """An answer that leaves uninitialised (here NaN) entries outside the window: the count must include them."""
    def leaves_nan(grad_fn, t_lo, t_hi):
        def cond_fn(xt, t):
            out = torch.full_like(xt, float("nan"))
            inside = (t >= t_lo) & (t <= t_hi)
            out[inside] = grad_fn(xt, t)[inside]
            return out
        return cond_fn
    out = assert_fails(capsys, checks.check_windowed, leaves_nan, "wrong at 0 samples inside", "outside it")
    assert "and at 0 outside" not in out


def test_a_gradient_changed_inside_the_window_is_told_so(capsys):
    """Twice the gradient in the window, 0 outside: the verdict counts the wrong samples inside and none outside."""
    doubled = lambda g, a, b: windowed(lambda xt, t: 2 * g(xt, t), a, b)
    out = assert_fails(capsys, checks.check_windowed, doubled, "grad_fn's value, unchanged", "and at 0 outside it")
    assert "wrong at 0 samples inside" not in out


def test_the_sampler_oracle_catches_an_answer_right_on_every_random_batch():
    """A fast path for a batch whose samples share one t (the samplers' case, never the random batches') with the
    upper end left open: right on mixed batches, so only the end-to-end property can see it."""
    def fast_path(grad_fn, t_lo, t_hi):
        mixed = windowed(grad_fn, t_lo, t_hi)

        def cond_fn(xt, t):
            if bool((t == t[0]).all()):
                return grad_fn(xt, t) if t_lo <= int(t[0]) < t_hi else torch.zeros_like(xt)
            return mixed(xt, t)
        return cond_fn

    assert _hand_mask(fast_path) is None                      # the hand-made batch mixes its steps too
    assert "fully guided samples draw for draw" in _sampler_oracle(fast_path)


def test_the_check_fails_the_fast_path_answer_through_its_oracle(capsys):
    def fast_path(grad_fn, t_lo, t_hi):
        mixed = windowed(grad_fn, t_lo, t_hi)
        return lambda xt, t: (grad_fn(xt, t) if t_lo <= int(t[0]) < t_hi else torch.zeros_like(xt)) \
            if bool((t == t[0]).all()) else mixed(xt, t)

    assert_fails(capsys, checks.check_windowed, fast_path, "window [1, T]")


def test_the_sampler_oracle_catches_a_skip_that_returns_the_gradient(capsys):
    """A botched shortcut: with no sample in the window it returns grad_fn's value instead of 0. Every random batch
    and the hand-made one hold a step in the window, so only the sampler run through an empty window sees it."""
    def botched_skip(grad_fn, t_lo, t_hi):
        def cond_fn(xt, t):
            inside = (t >= t_lo) & (t <= t_hi)
            return grad_fn(xt, t) if not inside.any() else windowed(grad_fn, t_lo, t_hi)(xt, t)
        return cond_fn

    assert _hand_mask(botched_skip) is None
    assert "unguided samples" in _sampler_oracle(botched_skip)
    assert_fails(capsys, checks.check_windowed, botched_skip, "no step reaches")


def test_the_oracles_themselves_are_right():
    """The hand-made rows are the rule t_lo ≤ t ≤ t_hi applied by a plain loop; the reference passes both properties;
    and the fully guided and unguided draws of the sampler oracle differ, so each of its comparisons can fail."""
    assert HAND_ROWS == [t if 4 <= t <= 7 else 0 for t in HAND_T]
    assert _hand_mask(windowed) is None and _sampler_oracle(windowed) is None
    mix, s = dl.GaussianMixture(means=[-1.5, 1.5], stds=[0.4, 0.4], weights=[0.7, 0.3]), dl.make_schedule("linear", 60)
    draw = lambda cond_fn: dl.sample_ddpm(mix.eps_model(s), s, (64, 1), generator=torch.Generator().manual_seed(8),
                                          dtype=torch.float64, cond_fn=cond_fn)
    guided, plain = draw(dl.exact_mixture_grad_fn(mix, s, 1, 2.0)), draw(None)
    assert (guided - plain).abs().max() > 0.1
    assert (guided > 0).double().mean() > (plain > 0).double().mean() + 0.3      # guidance towards component 1 (+1.5)
