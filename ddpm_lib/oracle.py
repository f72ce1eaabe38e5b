"""Exact ε-predictors ("oracles") for data whose noised marginals are known in closed form.

If x_0 follows a mixture Σ_k w_k N(μ_k, s_k² I), then by eq. 4 every marginal is again a mixture:
    q(x_t) = Σ_k w_k N(√ᾱ_t μ_k, (ᾱ_t s_k² + 1 − ᾱ_t) I),
and the minimiser of L_simple is ε*(x_t, t) = E[ε | x_t] = −√(1 − ᾱ_t) ∇ log q(x_t) (Tweedie).
So samplers and bounds can be tested exactly, with no training. A single Gaussian is K = 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .indexing import gather
from .schedules import Schedule


def _check_t0(s: Schedule, t):
    """Like check_t, but t = 0 (the data itself) is allowed here."""
    tt = torch.as_tensor(t)
    if tt.is_floating_point() or (tt < 0).any() or (tt > s.T).any():
        raise ValueError(f"t must be integer(s) in 0..T = 0..{s.T}")


@dataclass
class GaussianMixture:
    """Σ_k w_k N(μ_k, s_k² I) in D dimensions: means (K, D), stds (K,), weights (K,), float64. The weights
    are normalised to sum 1."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self):
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        if self.means.ndim == 1:                       # K one-dimensional components
            self.means = self.means[:, None]
        K = self.means.shape[0]
        self.stds = torch.as_tensor(self.stds, dtype=torch.float64).reshape(-1).expand(K).clone()
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64).reshape(-1)
        if self.weights.shape[0] != K:
            raise ValueError(f"{K} means but {self.weights.shape[0]} weights")
        if K == 0:
            raise ValueError("a mixture needs at least one component")
        if (self.stds <= 0).any() or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("stds must be positive, and weights non-negative with a positive sum")
        self.weights = self.weights / self.weights.sum()             # normalised: any positive weights will do

    @classmethod
    def gaussian(cls, mean, std) -> "GaussianMixture":
        """One Gaussian N(mean, std² I); ``mean`` a number (1-D data) or a vector."""
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        return cls(mean, torch.tensor([float(std)], dtype=torch.float64), torch.ones(1, dtype=torch.float64))

    @property
    def K(self) -> int:
        return self.means.shape[0]

    @property
    def D(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None):
        """n draws: returns ``(x, y)`` with x (n, D) float64 and the component labels y (n,)."""
        y = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.D, generator=generator, dtype=torch.float64)
        return self.means[y] + self.stds[y, None] * z, y

    def _components_at(self, s: Schedule, x: torch.Tensor, t):
        """Component means (B or 1, K, D) and variances (B or 1, K) of q(x_t | y = k)."""
        _check_t0(s, t)
        ab = gather(s.alpha_bar, t, x)                 # (B, 1) or (1, 1)
        means = torch.sqrt(ab)[:, :, None] * self.means.to(x)[None]
        var = ab * self.stds.to(x)[None] ** 2 + (1 - ab)
        return means, var

    def _log_joint(self, s: Schedule, x: torch.Tensor, t):
        """log w_k + log N(x_t; √ᾱ_t μ_k, v_k I), shape (B, K), and the pieces for the score."""
        means, var = self._components_at(s, x, t)
        sq = ((x[:, None, :] - means) ** 2).sum(-1)
        log_joint = torch.log(self.weights.to(x)) - 0.5 * self.D * torch.log(2 * math.pi * var) - 0.5 * sq / var
        return log_joint, means, var

    def log_prob(self, s: Schedule, x: torch.Tensor, t) -> torch.Tensor:
        """log q(x_t) for x of shape (B, D); t = 0 gives the data density."""
        return torch.logsumexp(self._log_joint(s, x, t)[0], dim=1)

    def class_posterior(self, s: Schedule, x: torch.Tensor, t) -> torch.Tensor:
        """p(y = k | x_t), shape (B, K): the exact noise-aware classifier."""
        return torch.softmax(self._log_joint(s, x, t)[0], dim=1)

    def log_class_posterior(self, s: Schedule, x: torch.Tensor, t) -> torch.Tensor:
        """log p(y = k | x_t), shape (B, K), as a log-softmax of the log joint: finite where p underflows."""
        return torch.log_softmax(self._log_joint(s, x, t)[0], dim=1)

    def score(self, s: Schedule, x: torch.Tensor, t) -> torch.Tensor:
        """∇_x log q(x_t) = Σ_k p(k | x_t) · (√ᾱ_t μ_k − x_t) / v_k, shape (B, D)."""
        log_joint, means, var = self._log_joint(s, x, t)
        resp = torch.softmax(log_joint, dim=1)
        return (resp[:, :, None] * (means - x[:, None, :]) / var[:, :, None]).sum(1)

    def eps(self, s: Schedule, xt: torch.Tensor, t) -> torch.Tensor:
        """The optimal noise prediction ε*(x_t, t) = −√(1 − ᾱ_t) ∇ log q(x_t)."""
        return -torch.sqrt(1 - gather(s.alpha_bar, t, xt)) * self.score(s, xt, t)

    def eps_model(self, s: Schedule):
        """A callable ``eps_model(xt, t)`` for the samplers (xt of shape (B, D))."""
        return lambda xt, t: self.eps(s, xt, t)


def gaussian_model_marginal(s: Schedule, mean: float, std: float, var: str = "beta",
                            last_step_noise: bool = True):
    """Exact law N(m, v) of x_0 under the reverse chain p_θ driven by the exact ε of N(mean, std²) data.

    With one Gaussian, ε* is affine in x_t, so μ_θ(x_t) = A_t x_t + B_t and the chain stays Gaussian:
    m ← A_t m + B_t,  v ← A_t² v + σ_t², starting from x_T ~ N(0, 1). ``last_step_noise`` adds σ_1²
    at t = 1 (the decoder p_θ(x_0 | x_1) of the bound); the sampler adds none there.
    Returns ``(m, v)`` as Python floats.
    """
    if var not in ("beta", "beta_tilde"):
        raise ValueError(f"unknown reverse variance {var!r}: choose 'beta' or 'beta_tilde'")
    sigma_sq = getattr(s, var)                                     # σ_t² = β_t or β̃_t, index = t
    m, v = 0.0, 1.0
    for t in range(s.T, 0, -1):
        ab, a, b = s.alpha_bar[t].item(), s.alpha[t].item(), s.beta[t].item()
        g = math.sqrt(1 - ab) / (ab * std ** 2 + 1 - ab)          # ε* = g (x_t − √ᾱ_t mean)
        A = (1 - b * g / math.sqrt(1 - ab)) / math.sqrt(a)
        B = b * g * math.sqrt(ab) * mean / (math.sqrt(1 - ab) * math.sqrt(a))
        m, v = A * m + B, A * A * v + (sigma_sq[t].item() if (t > 1 or last_step_noise) else 0.0)
    return m, v
