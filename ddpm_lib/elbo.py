"""The variational bound of DDPM, term by term, and L_simple (Ho et al. 2020, eqs. 5, 8, 12, 14).

    L = L_T + Σ_{t=2}^{T} L_{t−1} + L_0,  with
    L_T     = KL(q(x_T | x_0) ‖ N(0, I))                         (prior / regulariser)
    L_{t−1} = E_q KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))  (denoising terms)
    L_0     = −E_q log p_θ(x_0 | x_1)                             (reconstruction)

All values are in nats, summed over the data dimensions, one per sample (shape (B,)).
"""
from __future__ import annotations

import math

import torch

from .forward import q_sample
from .indexing import check_operands, check_t, gather
from .posterior import q_posterior
from .sampling import p_mean_var, reverse_variance
from .schedules import Schedule


def normal_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """KL(N(mean1, var1) ‖ N(mean2, var2)) elementwise, in nats:
    ½ [log(var2/var1) + (var1 + (mean1 − mean2)²)/var2 − 1]."""
    mean1, var1, mean2, var2 = (torch.as_tensor(v, dtype=torch.float64) if not torch.is_tensor(v) else v
                                for v in (mean1, var1, mean2, var2))
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def gaussian_log_prob(x, mean, var) -> torch.Tensor:
    """log N(x; mean, var) elementwise: −½ [log(2π var) + (x − mean)²/var]."""
    return -0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mean) ** 2 / var)


def log_normal_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Φ(b) − Φ(a)) for a < b (±∞ allowed), elementwise, without underflow in either tail.

    Φ(b) − Φ(a) rounds to 0 once both ends are more than ~8σ out (float64), so it is taken in log space,
    log Φ(b) + log(1 − exp(log Φ(a) − log Φ(b))), and for a > 0 by symmetry as Φ(−a) − Φ(−b).
    The difference of the two logs loses digits as b − a shrinks: about 10⁻¹⁶/(b − a) relative error in the
    mass (10⁻⁶ at a width of 10⁻¹⁰ σ); the decoder's bins are 2/255 wide, i.e. ≥ 0.1 σ for σ ≤ 0.08."""
    flip = a > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    r = log_lo - log_hi                                                   # ≤ 0: log of the ratio Φ(lo)/Φ(hi)
    log1m_exp = torch.where(r > -math.log(2), torch.log(-torch.expm1(r)), torch.log1p(-torch.exp(r)))
    return log_hi + log1m_exp


def discretized_gaussian_log_likelihood(x0: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                                        bins: int = 256) -> torch.Tensor:
    """log p(x_0 | x_1) of DDPM's discrete decoder (eq. 13), elementwise.

    Data x0 lie in [−1, 1] on ``bins`` evenly spaced levels; each level owns the interval
    x ± 1/(bins − 1), and the two end levels own everything beyond ±1:
        p = Φ((x + δ − μ)/σ) − Φ((x − δ − μ)/σ), δ = 1/(bins − 1), with −∞ / +∞ at the ends.
    Taken in log space (``log_normal_mass``): a level many σ from μ gets its true, very negative log p, so
    −log p never understates L_0 (DDPM's code floors p at 10⁻¹², i.e. log p at −27.6, which can).
    """
    if (x0.abs() > 1 + 1e-6).any():
        raise ValueError("the discrete decoder expects data scaled to [-1, 1]")
    delta = 1.0 / (bins - 1)
    sigma = torch.sqrt(var)
    upper = torch.where(x0 > 1 - delta, torch.full_like(x0, math.inf), (x0 + delta - mean) / sigma)
    lower = torch.where(x0 < -1 + delta, torch.full_like(x0, -math.inf), (x0 - delta - mean) / sigma)
    return log_normal_mass(lower, upper)


def _sum_dims(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


def prior_term(s: Schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T of eq. 5 = KL(q(x_T | x_0) ‖ N(0, I)) = KL(N(√ᾱ_T x_0, 1 − ᾱ_T) ‖ N(0, 1)), summed: shape (B,)."""
    check_operands(x0=x0)
    alpha_bar_T = gather(s.alpha_bar, s.T, x0)
    return _sum_dims(normal_kl(torch.sqrt(alpha_bar_T) * x0, (1 - alpha_bar_T).expand_as(x0),
                               torch.zeros_like(x0), torch.ones_like(x0)))


def denoising_term(s: Schedule, x0: torch.Tensor, xt: torch.Tensor, eps_pred: torch.Tensor, t,
                   var: str = "beta") -> torch.Tensor:
    """L_{t−1} at one draw x_t (t ≥ 2): KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)), summed: (B,).

    Averaging over x_t ~ q(x_t | x_0) gives the term of eq. 5; ``var`` chooses σ_t² (β_t or β̃_t).
    """
    check_t(s, t, batch=x0.shape[0])
    if (torch.as_tensor(t) < 2).any():
        raise ValueError("denoising terms are for t >= 2; t = 1 is the reconstruction term L_0")
    mean_q, var_q = q_posterior(s, x0, xt, t)
    mean_p, var_p = p_mean_var(s, xt, eps_pred, t, var)
    return _sum_dims(normal_kl(mean_q, var_q.expand_as(x0), mean_p, var_p.expand_as(x0)))


def reconstruction_term(s: Schedule, x0: torch.Tensor, x1: torch.Tensor, eps_pred: torch.Tensor,
                        var: str = "beta", discrete: bool = False) -> torch.Tensor:
    """L_0 = −log p_θ(x_0 | x_1) at one draw x_1, summed: shape (B,).

    Continuous data: a Gaussian density N(x_0; μ_θ(x_1, 1), σ_1²). Images in [−1, 1] with
    ``discrete=True``: the discretised decoder of eq. 13. σ_1² = β̃_1 = 0, so ``var`` must be "beta".
    """
    if var != "beta":
        raise ValueError("L_0 needs σ_1² > 0, but β̃_1 = 0: use var='beta' for the bound")
    mean_p, var_p = p_mean_var(s, x1, eps_pred, 1, var)
    var_p = var_p.expand_as(x0)
    log_p = discretized_gaussian_log_likelihood(x0, mean_p, var_p) if discrete else gaussian_log_prob(x0, mean_p, var_p)
    return -_sum_dims(log_p)


def elbo_terms(eps_model, s: Schedule, x0: torch.Tensor, generator: torch.Generator | None = None,
               var: str = "beta", discrete: bool = False) -> torch.Tensor:
    """Every term of the bound for each sample, one Monte-Carlo draw of x_t per t.

    Returns a tensor of shape (T + 1, B): row 0 is L_0, row t − 1 is L_{t−1} for t = 2..T, and
    row T is L_T, so ``elbo_terms(...).sum(0)`` is the negative ELBO (an upper bound on −log p_θ(x_0)).
    """
    B = x0.shape[0]
    rows = []
    for t in range(1, s.T + 1):
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        xt = q_sample(s, x0, t, eps)
        eps_pred = eps_model(xt, torch.full((B,), t, dtype=torch.long, device=x0.device))
        if t == 1:
            rows.append(reconstruction_term(s, x0, xt, eps_pred, var, discrete))
        else:
            rows.append(denoising_term(s, x0, xt, eps_pred, t, var))
    rows.append(prior_term(s, x0))
    return torch.stack(rows)


def l_simple(eps: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
    """L_simple = E ‖ε − ε_θ(x_t, t)‖²   (eq. 14), here the mean over every element."""
    if eps.shape != eps_pred.shape:
        raise ValueError(f"shapes must match: eps {tuple(eps.shape)}, eps_pred {tuple(eps_pred.shape)}")
    return ((eps - eps_pred) ** 2).mean()


def l_simple_weight(s: Schedule, t=None, var: str = "beta") -> torch.Tensor:
    """λ_t = β_t² / (2 σ_t² α_t (1 − ᾱ_t)) so that L_{t−1} = λ_t · E‖ε − ε_θ‖² + C   (eq. 12).

    Without t: the whole curve as a float64 tensor of length T + 1 (index = the paper's t; entry 0 is
    NaN: there is no λ_0). With σ_t² = β̃_t the weight at t = 1 is infinite (β̃_1 = 0), so it starts at
    t = 2 in plots.
    """
    sigma_sq = reverse_variance(s, var)
    lam = s.beta ** 2 / (2 * sigma_sq * s.alpha * (1 - s.alpha_bar))
    if t is None:
        return torch.cat([torch.full((1,), math.nan, dtype=lam.dtype), lam[1:]])
    check_t(s, t)
    return lam[t]
