"""Exercise 6.3's check: check_linear_denoiser_loss passes eq. (6.5), names its mistakes, and its Monte-Carlo oracle
(the best affine predictor of ε built from Σ, without eigenvalues) is itself right. Seeds are fixed."""
import math

import torch

import ddpm_lib as dl
from ddpm_lib import checks
from ddpm_lib.checks.training import _affine_denoiser_mc
from test_checks import SEEDS, assert_fails, verdict

def linear_loss(s, t, eigvals, signal="alpha_bar", explained=False, reduce="mean"):
    """Eq. (6.5) written out per t, the way a student might (a loop over t, the residual as 1 − explained part)."""
    t = torch.as_tensor(t)
    out = []
    for t_ in t.reshape(-1).tolist():
        ab = s.alpha_bar[t_]
        a = {"alpha_bar": ab, "sqrt": ab.sqrt(), "none": 1.0}[signal]
        explained_part = (1 - ab) / (a * eigvals + 1 - ab)
        per_direction = explained_part if explained else 1 - explained_part
        out.append(per_direction.mean() if reduce == "mean" else per_direction.sum())
    return torch.stack(out).reshape(t.shape)


def test_check_linear_denoiser_loss_passes_eq_6_5_and_names_its_mistakes(capsys):
    for seed in SEEDS:
        ok, out = verdict(capsys, checks.check_linear_denoiser_loss, linear_loss, seed)
        assert ok is True and out.startswith("✓ "), out
    assert_fails(capsys, checks.check_linear_denoiser_loss, lambda *a: linear_loss(*a, explained=True), "explained part", "1 − ℓ_lin")
    assert_fails(capsys, checks.check_linear_denoiser_loss, lambda *a: linear_loss(*a, signal="none"), "ᾱ_t·λ_i, not λ_i")
    assert_fails(capsys, checks.check_linear_denoiser_loss, lambda *a: linear_loss(*a, signal="sqrt"), "not √ᾱ_t·λ_i")
    assert_fails(capsys, checks.check_linear_denoiser_loss, lambda *a: linear_loss(*a, reduce="sum"), "mean over the D directions")


def test_check_linear_denoiser_loss_wants_one_value_per_t_in_float64(capsys):
    """A tensor t (B,) gives (B,); an answer that keeps a trailing axis, or computes in float32, is told so.
    Catches: cases with int t only, or shapes accepted that broadcast."""
    assert_fails(capsys, checks.check_linear_denoiser_loss, lambda *a: linear_loss(*a)[..., None], "should have shape (6,)")
    assert_fails(capsys, checks.check_linear_denoiser_loss, lambda *a: linear_loss(*a).float(), "keep every step in float64")


def test_the_oracle_runs_after_a_match_and_catches_an_answer_wrong_elsewhere(capsys):
    """The graded cases have D ≥ 7, the oracle D = 4: an answer right on the cases and 10 % off for small D matches the
    reference and must still fail, with the oracle's message. Catches: a property that is only used as a clue."""
    def right_for_large_d_only(s, t, eigvals):
        return linear_loss(s, t, eigvals) * (1.0 if len(eigvals) > 4 else 1.1)
    assert_fails(capsys, checks.check_linear_denoiser_loss, right_for_large_d_only, "Monte-Carlo loss", "C = √(1 − ᾱ_t)(ᾱ_t·Σ + (1 − ᾱ_t)·I)⁻¹")


def test_an_answer_off_by_5_percent_is_told_by_the_oracle_too(capsys):
    """No named mistake matches 1.05·ℓ_lin; the verdict gives the generic message and the oracle's (the Monte-Carlo
    standard error is about 0.5 % of the loss, so 5 % is many standard errors). Catches: an oracle too noisy to see 5 %."""
    assert_fails(capsys, checks.check_linear_denoiser_loss, lambda *a: 1.05 * linear_loss(*a), "differs from the library's answer",
                 "A simpler test fails too", "Monte-Carlo loss")


def test_the_affine_oracle_agrees_with_the_closed_form_and_not_with_the_mistakes():
    """The oracle's Monte-Carlo loss (C from the matrices) agrees with eq. (6.5) computed from eigvalsh(Σ) within 4
    standard errors, for a Σ that is not diagonal, a non-zero mean, both schedules and t = 1, a middle t and T; its
    standard error is below 1 % of the loss; and it rejects the explained part (and √ᾱ_t for t > 1) by many standard errors.
    Catches: a wrong C (e.g. without its √(1 − ᾱ_t), or the mean left out of x_t) or an oracle with too few draws."""
    g = torch.Generator().manual_seed(0)
    for name, t in (("linear", 1), ("cosine", 500), ("linear", 1000)):
        s = dl.make_schedule(name, 1000)
        ab = float(s.alpha_bar[t])
        A = torch.randn(5, 3, generator=g, dtype=torch.float64) * math.sqrt((1 - ab) / ab)   # Σ = AAᵀ, rank 3 of 5
        cov = A @ A.T
        est, se = _affine_denoiser_mc(s, t, cov, 2 + torch.randn(5, generator=g, dtype=torch.float64), A, 40_000, g)
        eigvals = torch.linalg.eigvalsh(cov).clamp(min=0)
        closed = float((ab * eigvals / (ab * eigvals + 1 - ab)).mean())
        assert abs(est - closed) < 4 * se and se < 0.01 * closed, (name, t, est, se, closed)
        wrongs = [linear_loss(s, t, eigvals, explained=True)] + [linear_loss(s, t, eigvals, signal="sqrt")] * (t > 1)
        for wrong in wrongs:                                     # at t = 1, √ᾱ_t and ᾱ_t differ by 5e-5 only
            assert abs(est - float(wrong)) > 10 * se, (name, t, est, se, float(wrong))
