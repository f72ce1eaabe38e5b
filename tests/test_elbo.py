"""Tests of ddpm_lib.elbo: the Gaussian KL, every term of the bound against its definition, and the
whole bound on Gaussian data driven by the exact ε (Ho et al. 2020, eqs. 5, 12, 13). float64 throughout.

Each test's docstring names the wrong implementation it catches.
"""
import math

import pytest
import torch
from helpers import hand_schedule
from scipy import stats

import ddpm_lib as dl

F64 = torch.float64
# A short schedule with sizeable β so that ᾱ_T ≈ 0.57: every term (and every off-by-one) is visible.
BETAS = torch.linspace(0.01, 0.1, 10, dtype=F64)


def hand_log_normal(x, mean, var):
    """log N(x; mean, var), written out."""
    return -0.5 * torch.log(2 * math.pi * var) - (x - mean) ** 2 / (2 * var)


# --------------------------------------------------------------------------------------------- normal_kl

@pytest.mark.parametrize("m1, v1, m2, v2", [(0.3, 0.5, -0.2, 2.0), (1.0, 4.0, 0.0, 1.0),
                                            (0.0, 1.0, 0.0, 4.0), (-1.0, 0.2, 0.5, 0.3)])
def test_normal_kl_matches_monte_carlo(m1, v1, m2, v2):
    """KL = E_{x~N1}[log N1(x) − log N2(x)], estimated from 200k draws (log-densities from scipy).
    Catches: a missing ½, the '−1' dropped, log(var1/var2) with the wrong sign, arguments swapped."""
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x = m1 + math.sqrt(v1) * torch.randn(n, generator=g, dtype=F64)
    log_ratio = (stats.norm.logpdf(x.numpy(), m1, math.sqrt(v1))
                 - stats.norm.logpdf(x.numpy(), m2, math.sqrt(v2)))
    mc, se = log_ratio.mean(), log_ratio.std(ddof=1) / math.sqrt(n)
    kl = dl.normal_kl(torch.tensor(m1, dtype=F64), torch.tensor(v1, dtype=F64),
                      torch.tensor(m2, dtype=F64), torch.tensor(v2, dtype=F64)).item()
    assert abs(kl - mc) < 5 * se + 1e-12, (kl, mc, se)


def test_normal_kl_known_cases():
    """KL(P‖P) = 0; KL(N(0,1)‖N(0,4)) = ½(ln 4 + ¼ − 1) ≠ KL(N(0,4)‖N(0,1)) = ½(−ln 4 + 4 − 1);
    a pure mean shift gives Δ²/2. Catches: a symmetrised KL, swapped arguments, a missing mean term."""
    m = torch.tensor([-2.0, 0.0, 0.7, 3.0], dtype=F64)
    v = torch.tensor([0.01, 1.0, 2.5, 9.0], dtype=F64)
    assert torch.equal(dl.normal_kl(m, v, m, v), torch.zeros(4, dtype=F64))
    forward = dl.normal_kl(0.0, 1.0, 0.0, 4.0).item()      # Python floats are accepted too
    backward = dl.normal_kl(0.0, 4.0, 0.0, 1.0).item()
    assert forward == pytest.approx(0.5 * (math.log(4.0) + 0.25 - 1.0), rel=1e-12)
    assert backward == pytest.approx(0.5 * (-math.log(4.0) + 4.0 - 1.0), rel=1e-12)
    assert abs(forward - backward) > 0.4
    assert dl.normal_kl(1.0, 1.0, 0.0, 1.0).item() == pytest.approx(0.5, rel=1e-12)
    assert dl.normal_kl(0.0, 0.5, 3.0, 0.5).item() == pytest.approx(9.0, rel=1e-12)   # Δ²/(2 var)


# ------------------------------------------------------------------------------------ terms of the bound

def test_prior_term_closed_form():
    """L_T = Σ_d ½[ᾱ_T x0² + (1 − ᾱ_T) − 1 − ln(1 − ᾱ_T)], summed per sample.
    Catches: ᾱ_{T−1} for ᾱ_T, ᾱ_T instead of √ᾱ_T in the mean, a mean over dimensions, KL reversed."""
    s = dl.schedule_from_betas(BETAS)
    _, _, alpha_bar = hand_schedule(BETAS)
    ab = alpha_bar[-1]
    g = torch.Generator().manual_seed(1)
    x0 = 2.0 * torch.randn(6, 2, 3, generator=g, dtype=F64)
    expected = (0.5 * (ab * x0 ** 2 + (1 - ab) - 1 - torch.log(1 - ab))).sum(dim=(1, 2))
    got = dl.prior_term(s, x0)
    assert got.shape == (6,)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def hand_denoising_kl(x0, xt, eps_pred, t, var):
    """KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) from eqs. 6–7 and 11, written out here."""
    beta, alpha, alpha_bar = hand_schedule(BETAS)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    b, a = beta[t].reshape(shape), alpha[t].reshape(shape)
    ab, ab_prev = alpha_bar[t].reshape(shape), alpha_bar[t - 1].reshape(shape)
    mu_tilde = torch.sqrt(ab_prev) * b / (1 - ab) * x0 + torch.sqrt(a) * (1 - ab_prev) / (1 - ab) * xt
    beta_tilde = (1 - ab_prev) / (1 - ab) * b
    mu_theta = (xt - b / torch.sqrt(1 - ab) * eps_pred) / torch.sqrt(a)
    sigma_sq = b if var == "beta" else beta_tilde
    kl = 0.5 * (torch.log(sigma_sq / beta_tilde) + (beta_tilde + (mu_tilde - mu_theta) ** 2) / sigma_sq - 1)
    return kl.reshape(x0.shape[0], -1).sum(1)


@pytest.mark.parametrize("var", ["beta", "beta_tilde"])
def test_denoising_term_matches_hand_kl(var):
    """L_{t−1} against the KL of the two Gaussians computed by hand, per-sample t and an int t.
    Catches: ᾱ_t used for ᾱ_{t−1} (off by one), the KL reversed, σ_t² chosen wrongly, no sum over dims."""
    s = dl.schedule_from_betas(BETAS)
    g = torch.Generator().manual_seed(2)
    x0, xt, eps_pred = (torch.randn(6, 2, 3, generator=g, dtype=F64) for _ in range(3))
    t = torch.tensor([2, 3, 5, 10, 7, 2])
    got = dl.denoising_term(s, x0, xt, eps_pred, t, var=var)
    assert got.shape == (6,)
    torch.testing.assert_close(got, hand_denoising_kl(x0, xt, eps_pred, t, var), rtol=1e-10, atol=1e-12)
    got_int = dl.denoising_term(s, x0, xt, eps_pred, 4, var=var)
    torch.testing.assert_close(got_int, hand_denoising_kl(x0, xt, eps_pred, torch.full((6,), 4), var),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):
        dl.denoising_term(s, x0, xt, eps_pred, 1, var=var)     # t = 1 is the reconstruction term


def test_the_default_reverse_variance_is_beta():
    """σ_t² = β_t (the bound's choice: L_0 needs σ_1² > 0) is the default of denoising_term,
    l_simple_weight and elbo_terms. Catches: a default of β̃_t in one of them, which changes every
    bound printed without the caller asking."""
    s = dl.schedule_from_betas(BETAS)
    g = torch.Generator().manual_seed(4)
    x0, xt, eps_pred = (torch.randn(4, 3, generator=g, dtype=F64) for _ in range(3))
    t = torch.tensor([2, 5, 9, 3])
    assert torch.equal(dl.denoising_term(s, x0, xt, eps_pred, t), dl.denoising_term(s, x0, xt, eps_pred, t, var="beta"))
    assert not torch.allclose(dl.denoising_term(s, x0, xt, eps_pred, t),
                              dl.denoising_term(s, x0, xt, eps_pred, t, var="beta_tilde"))
    torch.testing.assert_close(dl.l_simple_weight(s), dl.l_simple_weight(s, var="beta"), equal_nan=True, rtol=0, atol=0)
    assert dl.l_simple_weight(s, 5) == dl.l_simple_weight(s, 5, var="beta") != dl.l_simple_weight(s, 5, var="beta_tilde")

    def model(xt, t):
        return 0.5 * xt

    default = dl.elbo_terms(model, s, x0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(default, dl.elbo_terms(model, s, x0, generator=torch.Generator().manual_seed(5),
                                                      var="beta"), rtol=0, atol=0)


def test_denoising_term_is_weighted_l_simple():
    """Eq. 12: with σ_t² = β̃_t, L_{t−1} = λ_t ‖ε − ε_θ‖² exactly, λ_t = β_t²/(2σ_t² α_t (1−ᾱ_t));
    with σ_t² = β_t the difference is the ε-free constant Σ_d ½[ln(β_t/β̃_t) + β̃_t/β_t − 1].
    Catches: a wrong l_simple_weight (e.g. missing α_t or the 2), a denoising term that is not the KL."""
    s = dl.schedule_from_betas(BETAS)
    beta, alpha, alpha_bar = hand_schedule(BETAS)
    g = torch.Generator().manual_seed(3)
    B, D = 5, 4
    x0, eps, eps_pred = (torch.randn(B, D, generator=g, dtype=F64) for _ in range(3))
    for t in range(2, s.T + 1):
        xt = torch.sqrt(alpha_bar[t]) * x0 + torch.sqrt(1 - alpha_bar[t]) * eps
        sq = ((eps - eps_pred) ** 2).sum(1)
        lam = dl.l_simple_weight(s, t, var="beta_tilde")
        beta_tilde_t = (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * beta[t]
        assert lam.item() == pytest.approx((beta[t] ** 2 / (2 * beta_tilde_t * alpha[t] * (1 - alpha_bar[t]))).item(),
                                           rel=1e-12)
        torch.testing.assert_close(dl.denoising_term(s, x0, xt, eps_pred, t, var="beta_tilde"), lam * sq,
                                   rtol=1e-9, atol=1e-12)
        const = D * 0.5 * (torch.log(beta[t] / beta_tilde_t) + beta_tilde_t / beta[t] - 1)
        lam_beta = dl.l_simple_weight(s, t, var="beta")
        torch.testing.assert_close(dl.denoising_term(s, x0, xt, eps_pred, t, var="beta"),
                                   lam_beta * sq + const, rtol=1e-9, atol=1e-12)
    # The whole curve: length T + 1, entry t is λ_t (index = the paper's t), entry 0 NaN; λ_1 is infinite for β̃.
    curve = dl.l_simple_weight(s, var="beta")
    assert curve.shape == (s.T + 1,) and curve.dtype == F64 and torch.isnan(curve[0])
    torch.testing.assert_close(curve[1:], beta[1:] / (2 * alpha[1:] * (1 - alpha_bar[1:])), rtol=1e-12, atol=0)
    assert all(curve[t] == dl.l_simple_weight(s, t, var="beta") for t in range(1, s.T + 1))
    assert torch.isinf(dl.l_simple_weight(s, var="beta_tilde")[1])


def test_l_simple_is_mean_squared_error():
    """L_simple is the mean of (ε − ε_θ)² over every element. Catches: a sum, a missing square, no shape check."""
    eps = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=F64)
    eps_pred = torch.tensor([[0.0, 1.0], [0.5, -1.0]], dtype=F64)
    assert dl.l_simple(eps, eps_pred).item() == pytest.approx((1 + 4 + 0 + 9) / 4)
    with pytest.raises(ValueError):
        dl.l_simple(eps, eps_pred[:, :1])


def test_reconstruction_term_gaussian_density():
    """L_0 = −Σ_d log N(x0; μ_θ(x_1, 1), β_1) with μ_θ = (x_1 − β_1/√(1−ᾱ_1) ε_θ)/√α_1, written out.
    Catches: a sign error (+log p), σ_1² = β̃_1 = 0, μ_θ from the wrong t, a mean over dimensions."""
    s = dl.schedule_from_betas(BETAS)
    beta, alpha, alpha_bar = hand_schedule(BETAS)
    g = torch.Generator().manual_seed(4)
    x0, x1, eps_pred = (torch.randn(5, 3, generator=g, dtype=F64) for _ in range(3))
    mean = (x1 - beta[1] / torch.sqrt(1 - alpha_bar[1]) * eps_pred) / torch.sqrt(alpha[1])
    expected = -hand_log_normal(x0, mean, beta[1]).sum(1)
    torch.testing.assert_close(dl.reconstruction_term(s, x0, x1, eps_pred), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        dl.reconstruction_term(s, x0, x1, eps_pred, var="beta_tilde")


def test_reconstruction_term_discrete_decoder():
    """discrete=True: −Σ_d log P(bin of x0) under N(μ_θ, β_1), bins of half-width 1/255 (scipy cdf).
    Catches: the continuous density used instead of bin probabilities, wrong bin width."""
    s = dl.schedule_from_betas(BETAS)
    beta, alpha, alpha_bar = hand_schedule(BETAS)
    g = torch.Generator().manual_seed(5)
    levels = torch.randint(1, 255, (4, 6), generator=g)            # interior levels
    x0 = levels.to(F64) / 127.5 - 1.0
    x1 = torch.sqrt(alpha_bar[1]) * x0 + torch.sqrt(1 - alpha_bar[1]) * torch.randn(4, 6, generator=g, dtype=F64)
    eps_pred = torch.randn(4, 6, generator=g, dtype=F64)
    mean = ((x1 - beta[1] / torch.sqrt(1 - alpha_bar[1]) * eps_pred) / torch.sqrt(alpha[1])).numpy()
    sd = math.sqrt(beta[1].item())
    p = stats.norm.cdf(x0.numpy() + 1 / 255, mean, sd) - stats.norm.cdf(x0.numpy() - 1 / 255, mean, sd)
    expected = -torch.from_numpy(p).log().sum(1)
    torch.testing.assert_close(dl.reconstruction_term(s, x0, x1, eps_pred, discrete=True), expected,
                               rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------- the discretised decoder (eq. 13)

LEVELS = torch.linspace(-1.0, 1.0, 256, dtype=F64)     # x_k = −1 + 2k/255


@pytest.mark.parametrize("mean, var", [(0.3, 0.04), (-0.98, 0.01), (0.0, 4.0), (1.1, 0.2)])
def test_discrete_decoder_sums_to_one(mean, var):
    """Σ over the 256 levels of P(level) = 1 for any mean/var. Catches: bin half-width 2/255 (sum ≈ 2),
    edges that do not take the tails (sum < 1), bins that overlap or leave gaps."""
    logp = dl.discretized_gaussian_log_likelihood(LEVELS, torch.full_like(LEVELS, mean), torch.full_like(LEVELS, var))
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discrete_decoder_edges_take_the_tails():
    """P(−1) = Φ((−1 + δ − μ)/σ) and P(+1) = 1 − Φ((1 − δ − μ)/σ), δ = 1/255; an interior level
    is Φ(x+δ) − Φ(x−δ) (scipy). Catches: edge bins cut at ±1 ± δ instead of ±∞."""
    mean, sd = -1.2, 0.5
    delta = 1 / 255
    x0 = torch.tensor([-1.0, LEVELS[100].item(), 1.0], dtype=F64)
    logp = dl.discretized_gaussian_log_likelihood(x0, torch.full_like(x0, mean), torch.full_like(x0, sd ** 2))
    expected = [stats.norm.cdf(-1 + delta, mean, sd),
                stats.norm.cdf(x0[1].item() + delta, mean, sd) - stats.norm.cdf(x0[1].item() - delta, mean, sd),
                stats.norm.sf(1 - delta, mean, sd)]
    torch.testing.assert_close(logp.exp(), torch.tensor(expected, dtype=F64), rtol=1e-9, atol=1e-15)
    assert expected[0] > 0.6                 # the lower tail is most of the mass: a real test of the edge


def test_discrete_decoder_narrow_gaussian_between_two_levels():
    """A very narrow Gaussian centred halfway between levels k and k+1 puts ½ on each (the bin edge is
    the midpoint), and one centred on a level puts all its mass there. Catches: a wrong bin width or offset."""
    k = 140
    mid = 0.5 * (LEVELS[k] + LEVELS[k + 1])
    var = torch.full_like(LEVELS, 1e-12)
    logp = dl.discretized_gaussian_log_likelihood(LEVELS, torch.full_like(LEVELS, mid.item()), var)
    assert logp[k].item() == pytest.approx(math.log(0.5), abs=1e-6)
    assert logp[k + 1].item() == pytest.approx(math.log(0.5), abs=1e-6)
    others = torch.cat([logp[:k], logp[k + 2:]])
    assert (others < math.log(1e-10)).all()
    # Far levels hold a mass that is 0 in floating point; its log is still finite and exact (next test).
    assert torch.isfinite(logp).all() and logp.min().item() < -1e9
    on_level = dl.discretized_gaussian_log_likelihood(LEVELS, torch.full_like(LEVELS, LEVELS[k].item()), var)
    assert on_level[k].item() == pytest.approx(0.0, abs=1e-9)


def exact_level_log_mass(x: float, mean: float, var: float, bins: int = 256) -> float:
    """log P(level x) of eq. 13 with 80-digit arithmetic (mpmath): Φ(z) = ½ erfc(−z/√2), and a bin above the
    mean measured as its mirror image below it, Φ(−lo) − Φ(−hi), where both terms are tiny and exact."""
    import mpmath
    with mpmath.workdps(80):
        delta, sd = mpmath.mpf(1) / (bins - 1), mpmath.sqrt(var)
        hi = mpmath.inf if x > 1 - delta else (x + delta - mean) / sd
        lo = -mpmath.inf if x < -1 + delta else (x - delta - mean) / sd
        if lo > 0:
            lo, hi = -hi, -lo
        phi = lambda z: mpmath.erfc(-z / mpmath.sqrt(2)) / 2        # noqa: E731
        return float(mpmath.log(phi(hi) - phi(lo)))


@pytest.mark.parametrize("x, mean, var", [(0.5, -0.5, 0.01), (-1.0, 3.0, 0.01), (1.0, -3.0, 0.01),
                                          (LEVELS[200].item(), 0.1, 1e-6), (LEVELS[3].item(), 0.9, 1e-4),
                                          (0.0, 0.0, 1.0), (1.0, 0.2, 0.05)])
def test_discrete_decoder_is_exact_many_sigma_from_the_mean(x, mean, var):
    """A level 10 to 800 standard deviations from μ (both tails, an interior level and both end levels) has
    the log-mass of 80-digit arithmetic, to 1e-9 relative. Catches: Φ(b) − Φ(a) computed in linear space,
    which rounds to 0 beyond ~8σ (then −inf, or DDPM code's floor log 1e-12 = −27.6, which understates
    −log p by hundreds of nats and so breaks the bound); an upper tail computed as 1 − Φ."""
    logp = dl.discretized_gaussian_log_likelihood(*(torch.tensor([v], dtype=F64) for v in (x, mean, var)))
    assert logp.item() == pytest.approx(exact_level_log_mass(x, mean, var), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("bad", [1.01, -1.5])
def test_discrete_decoder_rejects_data_outside_range(bad):
    """Data must be scaled to [−1, 1]. Catches: pixels in 0..255 silently scored."""
    x0 = torch.tensor([0.0, bad], dtype=F64)
    with pytest.raises(ValueError):
        dl.discretized_gaussian_log_likelihood(x0, torch.zeros_like(x0), torch.ones_like(x0))


# ----------------------------------------------------- the whole bound on Gaussian data with the exact ε

MU, SD = 0.5, 0.3          # data N(MU, SD²), 1-D


def expected_elbo_terms(s, mu, sd):
    """E_{x0 ~ N(mu, sd²)} of every term of the bound for the exact-ε model, var = "beta", in closed form.

    Derivation (1-D): ε*(x_t) = g_t (x_t − √ᾱ_t mu), g_t = √(1−ᾱ_t)/(ᾱ_t sd² + 1 − ᾱ_t), so
    μ_θ(x_t) = (x_t − β_t/√(1−ᾱ_t) ε*)/√α_t = A_t x_t + B_t with
    A_t = (1 − β_t g_t/√(1−ᾱ_t))/√α_t,  B_t = β_t g_t √ᾱ_t mu/(√(1−ᾱ_t) √α_t).
    With x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε and μ̃ = c0 x0 + c1 x_t:
    μ̃ − μ_θ = k x0 + (c1 − A_t)√(1−ᾱ_t) ε − B_t, k = c0 + (c1 − A_t)√ᾱ_t, hence
    E(μ̃ − μ_θ)² = (k mu − B_t)² + k² sd² + (c1 − A_t)²(1 − ᾱ_t)  (x0 and ε independent).
    L_{t−1} = ½[ln(β_t/β̃_t) + β̃_t/β_t − 1] + E(μ̃ − μ_θ)²/(2β_t);
    L_0 = ½ ln(2π β_1) + E(x0 − A_1 x_1 − B_1)²/(2β_1);  L_T = ½[ᾱ_T E x0² + (1−ᾱ_T) − 1 − ln(1−ᾱ_T)].
    Returns a list: entry 0 is L_0, entry t − 1 is L_{t−1}, entry T is L_T (the rows of elbo_terms).
    """
    beta, alpha, alpha_bar = hand_schedule(s.beta[1:])
    beta, alpha, alpha_bar = beta.tolist(), alpha.tolist(), alpha_bar.tolist()
    out = []
    for t in range(1, s.T + 1):
        b, a, ab, ab_prev = beta[t], alpha[t], alpha_bar[t], alpha_bar[t - 1]
        g = math.sqrt(1 - ab) / (ab * sd ** 2 + 1 - ab)
        A = (1 - b * g / math.sqrt(1 - ab)) / math.sqrt(a)
        B = b * g * math.sqrt(ab) * mu / (math.sqrt(1 - ab) * math.sqrt(a))
        if t == 1:
            c = 1 - A * math.sqrt(ab)                  # x0 − A x1 − B = c x0 − A √(1−ᾱ_1) ε − B
            sq = (c * mu - B) ** 2 + c ** 2 * sd ** 2 + A ** 2 * (1 - ab)
            out.append(0.5 * math.log(2 * math.pi * b) + sq / (2 * b))
        else:
            c0 = math.sqrt(ab_prev) * b / (1 - ab)
            c1 = math.sqrt(a) * (1 - ab_prev) / (1 - ab)
            beta_tilde = (1 - ab_prev) / (1 - ab) * b
            k = c0 + (c1 - A) * math.sqrt(ab)
            sq = (k * mu - B) ** 2 + k ** 2 * sd ** 2 + (c1 - A) ** 2 * (1 - ab)
            out.append(0.5 * (math.log(b / beta_tilde) + beta_tilde / b - 1) + sq / (2 * b))
    ab = alpha_bar[s.T]
    out.append(0.5 * (ab * (mu ** 2 + sd ** 2) + (1 - ab) - 1 - math.log(1 - ab)))
    return out


def mc_bound(s, n, seed):
    """Monte-Carlo terms (T+1, n) of the bound for x0 ~ N(MU, SD²) with the exact ε, and the x0."""
    data = dl.GaussianMixture.gaussian(MU, SD)
    g = torch.Generator().manual_seed(seed)
    x0, _ = data.sample(n, g)
    return dl.elbo_terms(data.eps_model(s), s, x0, generator=g, var="beta"), x0


def exact_nll(s, x0):
    """−log p_θ(x0) under the exact law N(m, v) of the model (decoder noise at t = 1 included)."""
    m, v = dl.gaussian_model_marginal(s, MU, SD, var="beta", last_step_noise=True)
    return 0.5 * math.log(2 * math.pi * v) + (x0[:, 0] - m) ** 2 / (2 * v)


@pytest.mark.parametrize("name, T", [("cosine", 20), ("linear", 50)])
def test_elbo_terms_match_closed_form_per_t(name, T):
    """Every row of elbo_terms (mean over 20k x0, one x_t draw each) equals the closed-form expectation
    derived in the test, within 5 standard errors. Catches: rows in the wrong order, t passed to the
    model off by one, x_t drawn at the wrong t, the KL reversed, a wrong σ_t², a sign error in L_0."""
    s = dl.make_schedule(name, T)
    n = 20_000
    terms, _ = mc_bound(s, n, seed=10)
    assert terms.shape == (T + 1, n) and terms.dtype == F64
    expected = torch.tensor(expected_elbo_terms(s, MU, SD), dtype=F64)
    mc, se = terms.mean(1), terms.std(1) / math.sqrt(n)
    assert ((mc - expected).abs() <= 5 * se + 1e-12).all(), ((mc - expected) / se)


def test_elbo_bounds_exact_log_likelihood():
    """E_x0[L(x0)] ≥ E_x0[−log p_θ(x0)] with p_θ = N(m, v) from gaussian_model_marginal: the paired
    difference is ≥ −4 SE (MC), and the closed-form bound exceeds the exact NLL; the MC gap equals the
    closed-form gap. Catches: L_0 dropped, a halved or doubled KL, a model law that is not the chain's.
    (L_T is ~1e-8 nats here; dropping it is caught by the per-t test, where its SE is as small.)"""
    s = dl.make_schedule("cosine", 200)
    n = 20_000
    terms, x0 = mc_bound(s, n, seed=11)
    gap = terms.sum(0) - exact_nll(s, x0)
    mean_gap, se = gap.mean().item(), gap.std().item() / math.sqrt(n)
    assert mean_gap >= -4 * se, (mean_gap, se)
    m, v = dl.gaussian_model_marginal(s, MU, SD, var="beta", last_step_noise=True)
    nll = 0.5 * math.log(2 * math.pi * v) + ((MU - m) ** 2 + SD ** 2) / (2 * v)   # E over x0 ~ N(MU, SD²)
    bound = sum(expected_elbo_terms(s, MU, SD))
    assert bound > nll
    assert abs(mean_gap - (bound - nll)) < 5 * se     # MC gap agrees with the closed-form gap


def test_bound_tightens_as_T_grows():
    """The gap E[L] − E[−log p_θ] shrinks from T = 20 to T = 200 (cosine), by Monte Carlo (difference
    > 4 combined SE) and in closed form. Catches: a bound whose terms do not shrink with β_t
    (e.g. a missing β_t² in the weights), or an extra constant per step."""
    gaps, ses, exact = [], [], []
    for T, seed in [(20, 12), (200, 13)]:
        s = dl.make_schedule("cosine", T)
        n = 20_000
        terms, x0 = mc_bound(s, n, seed)
        gap = terms.sum(0) - exact_nll(s, x0)
        gaps.append(gap.mean().item())
        ses.append(gap.std().item() / math.sqrt(n))
        m, v = dl.gaussian_model_marginal(s, MU, SD, var="beta", last_step_noise=True)
        exact.append(sum(expected_elbo_terms(s, MU, SD))
                     - (0.5 * math.log(2 * math.pi * v) + ((MU - m) ** 2 + SD ** 2) / (2 * v)))
    assert gaps[0] - gaps[1] > 4 * math.hypot(*ses), (gaps, ses)
    assert exact[0] > exact[1] > 0, exact


def exact_log_normal_mass(a: float, b: float) -> float:
    """log(Φ(b) − Φ(a)) with 400-digit arithmetic (mpmath), Φ(z) = ½ erfc(−z/√2): enough digits to hold
    Φ(40) − Φ(39) ≈ 1e-333 as the difference of two numbers next to 1."""
    import mpmath
    with mpmath.workdps(400):
        phi = lambda z: mpmath.erfc(-mpmath.mpf(z) / mpmath.sqrt(2)) / 2        # noqa: E731
        return float(mpmath.log(phi(b) - phi(a)))


@pytest.mark.parametrize("a, b", [(-6.3, math.inf), (-math.inf, 6.3), (-8.0, 8.0), (-5.0, 40.0), (2.0, 2.01),
                                  (5.0, 6.0), (-6.0, -5.0), (-40.0, -39.0), (39.0, 40.0), (-0.5, 0.25)])
def test_log_normal_mass_is_exact_to_relative_precision(a, b):
    """log(Φ(b) − Φ(a)) to 1e-12 relative, against 400-digit arithmetic, where a plain formula loses digits:
    almost all the mass (log p ≈ −1.5e-10 for (−6.3, ∞), which log(1 − Φ(a)/Φ(b)) = log(−expm1(r)) rounds to
    a multiple of 1e-16, 1e-6 off), both tails out to 40σ, and an ordinary interval. Catches: log(−expm1(r))
    used for r well below −log 2 (a switch at r = −30, say, or the two formulas swapped), and log Φ taken as
    log(ndtr) (−inf 40σ out)."""
    from ddpm_lib.elbo import log_normal_mass
    got = log_normal_mass(torch.tensor([a], dtype=F64), torch.tensor([b], dtype=F64))
    assert got.dtype == F64
    assert got.item() == pytest.approx(exact_log_normal_mass(a, b), rel=1e-12, abs=0)


@pytest.mark.parametrize("end", [1.0, -1.0])
def test_data_a_rounding_error_from_an_end_level_is_scored_as_that_level(end):
    """The end levels own everything beyond ±(1 − δ), so a pixel that arithmetic left 1e-7 inside or outside ±1
    (allowed up to 1e-6 outside) still gets its end level's open tail: log(1 − Φ((x − δ − μ)/σ)) near +1 and
    log Φ((x + δ − μ)/σ) near −1 (scipy). Catches: the tail given only to x ≥ 1 (or x ≤ −1) exactly, which
    scores 1 − 1e-7 as an ordinary bin of width 2δ and drops the 22 % of mass above it; the range check
    refusing 1 + 1e-7."""
    mean, sd, delta = 0.7 * end, 0.4, 1 / 255
    x = [end, end * (1 - 1e-7), end * (1 + 1e-7)]
    tail = [stats.norm.logsf(v - delta, mean, sd) if end > 0 else stats.norm.logcdf(v + delta, mean, sd) for v in x]
    x0 = torch.tensor(x, dtype=F64)
    logp = dl.discretized_gaussian_log_likelihood(x0, torch.full_like(x0, mean), torch.full_like(x0, sd ** 2))
    torch.testing.assert_close(logp, torch.tensor(tail, dtype=F64), rtol=1e-12, atol=0)
