"""The reverse process p_θ and DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2).

    x_{t−1} = 1/√α_t · (x_t − β_t / √(1 − ᾱ_t) · ε_θ(x_t, t)) + σ_t z,   z ~ N(0, I) if t > 1 else 0

with σ_t² = β̃_t (default, ``var="beta_tilde"``) or σ_t² = β_t (``var="beta"``).

Classifier guidance (Dhariwal & Nichol 2021, Algorithm 1) moves the mean of every step by σ_t² times
g = s·∇_{x_t} log p_φ(y | x_t): x_{t−1} ~ N(μ_θ(x_t, t) + σ_t²·g, σ_t² I). Pass g to ``ddpm_step``
as ``cond_grad``, or a function computing it (``guidance.classifier_grad_fn``) to ``sample_ddpm``
as ``cond_fn``. With σ_1² = β̃_1 = 0 the last step is neither noised nor guided.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm import tqdm

from .indexing import check_operands, gather
from .posterior import mu_from_eps
from .schedules import Schedule

VARIANCES = ("beta_tilde", "beta")


def reverse_variance(s: Schedule, var: str = "beta_tilde") -> torch.Tensor:
    """σ_t² for t = 0..T (float64, length T + 1): β̃_t (``"beta_tilde"``) or β_t (``"beta"``)."""
    if var == "beta_tilde":
        return s.beta_tilde
    if var == "beta":
        return s.beta
    raise ValueError(f"unknown reverse variance {var!r}: choose one of {', '.join(VARIANCES)}")


def p_mean_var(s: Schedule, xt: torch.Tensor, eps_pred: torch.Tensor, t, var: str = "beta_tilde"):
    """Mean μ_θ(x_t, t) (eq. 11 with ε_θ; xt's shape (B, ...)) and variance σ_t² (shape (B, 1, ..., 1), or
    (1, ..., 1) for an int t) of p_θ(x_{t−1} | x_t)."""
    return mu_from_eps(s, xt, t, eps_pred), gather(reverse_variance(s, var), t, xt)


def ddpm_step(s: Schedule, xt: torch.Tensor, eps_pred: torch.Tensor, t, noise: torch.Tensor,
              var: str = "beta_tilde", cond_grad: torch.Tensor | None = None) -> torch.Tensor:
    """One step of Algorithm 2: x_{t−1} = μ_θ(x_t, t) + σ_t·z, with no noise added where t = 1, and

        μ_θ(x_t, t) = (x_t − β_t/√(1 − ᾱ_t) · ε_θ(x_t, t)) / √α_t                     (eq. 11)

    xt, eps_pred (ε_θ), noise (z): (B, ...); t: int or long tensor (B,) in 1..T.
    ``var`` chooses σ_t²: ``"beta_tilde"`` σ_t² = β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t, ``"beta"`` σ_t² = β_t
    (Sec. 3.2: the two extremes, both fine for sampling).
    ``cond_grad`` (xt's shape), when given, is g = s·∇_{x_t} log p_φ(y | x_t) and the mean becomes
    μ_θ + σ_t²·g (classifier guidance, Dhariwal & Nichol 2021, Algorithm 1). Where σ_t² = β̃_1 = 0
    (t = 1, default variance) the shift is zero; with ``var="beta"`` it is β_1·g there.
    """
    check_operands(xt=xt, eps_pred=eps_pred, noise=noise)
    mean, sigma_sq = p_mean_var(s, xt, eps_pred, t, var)
    if cond_grad is not None:
        check_operands(xt=xt, cond_grad=cond_grad)
        mean = mean + sigma_sq * cond_grad
    if isinstance(t, int):
        nonzero = float(t > 1)
    else:                                                # per-sample "z = 0 if t == 1"
        nonzero = (t > 1).to(xt.dtype).reshape((-1,) + (1,) * (xt.ndim - 1))
    return mean + nonzero * torch.sqrt(sigma_sq) * noise


EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def standard_normal(shape, generator: torch.Generator | None, device, dtype: torch.dtype) -> torch.Tensor:
    """z ~ N(0, I) of ``shape`` on ``device``. With a generator the numbers are drawn where it lives and then
    moved, so one CPU generator gives the same draws whether the network runs on the CPU or on a GPU."""
    draw_on = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_on, dtype=dtype).to(device)


def sampling_device(device, eps_model, x_T: torch.Tensor | None, generator: torch.Generator | None) -> torch.device:
    """Where a sampler computes: ``device`` when given, else where ``eps_model``'s parameters are (an
    ``nn.Module`` loaded onto a GPU samples there), else where a given x_T is, else the generator's device,
    else the CPU. A generator only decides where the random numbers are drawn (``standard_normal``)."""
    if device is not None:
        return torch.device(device)
    params = eps_model.parameters() if isinstance(eps_model, torch.nn.Module) else iter(())
    model_device = next((p.device for p in params), None)
    if model_device is not None:
        return model_device
    if x_T is not None:
        return x_T.device
    return generator.device if generator is not None else torch.device("cpu")


def check_shape(shape) -> tuple:
    """A sampler's ``shape`` as a tuple of ints, batch first; anything else is a one-line ``ValueError``."""
    if isinstance(shape, int) or not all(hasattr(n, "__index__") and not isinstance(n, bool) for n in shape):
        raise ValueError(f"shape must be a tuple of ints with the batch first, e.g. (B, C, H, W) or (B, D), "
                         f"got {shape!r}")
    return tuple(shape)


def initial_latent(shape, generator: torch.Generator | None, device, dtype: torch.dtype,
                   x_T: torch.Tensor | None, eps_model=None) -> torch.Tensor:
    """x_T of ``shape`` on ``sampling_device(device, eps_model, x_T, generator)``: ``x_T`` itself when given
    (moved there and cast to ``dtype``), else a draw from N(0, I) with ``standard_normal``."""
    device = sampling_device(device, eps_model, x_T, generator)
    shape = check_shape(shape)
    if x_T is None:
        return standard_normal(shape, generator, device, dtype)
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was asked for")
    return x_T.to(device=device, dtype=dtype)


@torch.no_grad()
def sample_ddpm(eps_model: EpsModel, s: Schedule, shape, generator: torch.Generator | None = None,
                var: str = "beta_tilde", device=None, dtype: torch.dtype = torch.float32,
                x_T: torch.Tensor | None = None, callback: Callable | None = None,
                progress: bool = False, cond_fn: Callable | None = None) -> torch.Tensor:
    """Algorithm 2: draw x_T ~ N(0, I) and apply ``ddpm_step`` for t = T, …, 1; returns x_0.

    ``eps_model(xt, t)`` gets t as a long tensor of shape (B,) holding the paper's t.
    ``generator`` fixes every draw (made on its device, used on ``sampling_device``'s: a CPU generator gives
    the same x_T and noise for a network on a GPU); pass ``x_T`` to start from a given latent instead.
    ``callback(t, xt)`` is called after each step with the new x_{t−1} (for trajectories).
    ``cond_fn(xt, t)``, when given, returns s·∇_{x_t} log p_φ(y | x_t) (xt's shape; e.g. from
    ``guidance.classifier_grad_fn``) and every step's mean moves by σ_t² times it (classifier-guided
    sampling, Dhariwal & Nichol 2021, Algorithm 1). It is called once per step, at x_t, and draws
    nothing from ``generator``: scale 0 gives the unguided samples draw for draw.
    """
    if var not in VARIANCES:
        raise ValueError(f"unknown reverse variance {var!r}: choose one of {', '.join(VARIANCES)}")
    x = initial_latent(shape, generator, device, dtype, x_T, eps_model)
    steps = range(s.T, 0, -1)
    for t in tqdm(steps, desc="DDPM sampling", disable=not progress, leave=False):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps_pred = eps_model(x, t_batch)
        cond_grad = cond_fn(x, t_batch).to(x.dtype) if cond_fn is not None else None
        noise = standard_normal(x.shape, generator, x.device, x.dtype) if t > 1 else torch.zeros_like(x)
        x = ddpm_step(s, x, eps_pred.to(x.dtype), t, noise, var, cond_grad)
        if callback is not None:
            callback(t, x)
    return x
