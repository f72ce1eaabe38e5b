"""DDIM: the non-Markovian sampler of Song, Meng & Ermon 2021 ("Denoising Diffusion Implicit Models").

Notation: DDIM's α_t is our ``alpha_bar`` (ᾱ_t = ∏_{s≤t} α_s of Ho et al.); every formula here is
written with ᾱ. Index = the paper's t (README, "The package"), so ``alpha_bar[0] = 1`` is the clean data and a
step may land on t' = 0 with no special case. One step from t to t' < t (eq. 12):

    x̂_0      = (x_t − √(1 − ᾱ_t)·ε_θ(x_t, t)) / √ᾱ_t                    "predicted x_0"
    x_{t'}   = √ᾱ_{t'}·x̂_0 + √(1 − ᾱ_{t'} − σ²)·ε_θ(x_t, t) + σ·z,    z ~ N(0, I)
    σ        = η·√((1 − ᾱ_{t'})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t'})             (eq. 16)

η = 1 with t' = t − 1 gives σ² = β̃_t, and the step is DDPM's Algorithm 2; η = 0 is deterministic
(the "implicit" model, an Euler step of the ODE of Sec. 4.3). Sampling visits a respaced grid
τ_S > … > τ_1 of S ≤ T timesteps (App. D.2) and ends with one step to t' = 0.

Classifier guidance (Dhariwal & Nichol 2021, Algorithm 2) replaces ε_θ by
ε̂ = ε_θ(x_t, t) − √(1 − ᾱ_t)·g with g = s·∇_{x_t} log p_φ(y | x_t), then takes the same step with ε̂
(``cond_grad`` of ``ddim_step``, ``cond_fn`` of ``sample_ddim``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm import tqdm

from .indexing import check_operands, check_t, gather
from .sampling import initial_latent, standard_normal
from .schedules import Schedule

GRIDS = ("uniform", "quadratic")
EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def step_grid(T: int, steps: int, kind: str = "uniform") -> list[int]:
    """The DDIM timesteps τ_S > … > τ_1 (App. D.2): ``steps`` integers from T down to 1.

    ``"uniform"`` spaces them evenly, τ_i ≈ 1 + c·i; ``"quadratic"`` as τ_i ≈ 1 + c·i², which is
    denser near t = 1 where the data's fine detail is decided. With S = steps and i = 0..S−1:

        v_i = 1 + ⌊(T − 1)·f(i/(S − 1))⌋,  f(x) = x or x²   (exact integer arithmetic)
        τ_0 = v_0 = 1,  τ_i = max(v_i, τ_{i−1} + 1)          (push a collision up by one)

    Why the properties hold by construction: the max makes the grid strictly increasing, so it has
    S distinct values starting at 1. It never overshoots T because f(x) ≤ x gives
    v_j ≤ 1 + (T − 1)·j/(S − 1) ≤ T − (S − 1 − j), so pushing up from any v_j reaches at most T at
    i = S − 1, and v_{S−1} = T. Steps = 1 gives [T]; steps = T gives T, T − 1, …, 1.
    Returned in sampling order (decreasing), as a list of Python ints.
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a whole number of steps >= 1, got {T!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be a whole number in 1..T = 1..{T} (a DDIM grid is a subset of "
                         f"the T timesteps), got steps={steps!r}")
    if kind not in GRIDS:
        raise ValueError(f"unknown step grid {kind!r}: choose one of {', '.join(GRIDS)}")
    if steps == 1:
        return [T]
    S = steps
    grid = [1]
    for i in range(1, S):
        if kind == "uniform":
            v = 1 + (T - 1) * i // (S - 1)
        else:
            v = 1 + (T - 1) * i * i // ((S - 1) * (S - 1))
        grid.append(max(v, grid[-1] + 1))
    return grid[::-1]


def _check_eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or math.isnan(eta):
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (η = 0: deterministic DDIM, η = 1: DDPM's σ² = β̃); "
                         f"a larger η can make σ² exceed 1 − ᾱ_t', which no DDIM step allows; got eta={eta}")
    return float(eta)


def _check_t_prev(t, t_prev, batch: int) -> None:
    """Raise ``ValueError`` unless t_prev (int or integer tensor (B,)) satisfies 0 <= t_prev < t."""
    if isinstance(t_prev, bool) or not isinstance(t_prev, (int, torch.Tensor)):
        raise ValueError(f"t_prev must be an int or an integer tensor, got {t_prev!r}")
    if isinstance(t_prev, torch.Tensor):
        if t_prev.is_floating_point() or t_prev.is_complex() or t_prev.dtype == torch.bool:
            raise ValueError(f"t_prev must hold integer timesteps, got a {t_prev.dtype} tensor")
        if t_prev.ndim > 1 or t_prev.numel() == 0:
            raise ValueError(f"t_prev must be an int or a non-empty tensor of shape (B,), "
                             f"got shape {tuple(t_prev.shape)}")
        if t_prev.ndim == 1 and t_prev.shape[0] not in (1, batch):
            raise ValueError(f"t_prev has {t_prev.shape[0]} timesteps but the batch has {batch} samples")
    on_gpu = [v.device for v in (t, t_prev) if isinstance(v, torch.Tensor) and v.device.type != "cpu"]
    tt = torch.as_tensor(t, device=on_gpu[0] if on_gpu else None)
    tp = torch.as_tensor(t_prev, device=tt.device)
    ok = (tp >= 0) & (tp < tt)
    if on_gpu:                      # check on the device: reading back would stall the GPU
        torch._assert_async(ok.all(), "t_prev must lie in 0..t-1")
    elif not bool(ok.all()):
        i = int((~ok).reshape(-1).nonzero()[0])
        bad_t, bad_p = tt.expand_as(ok).reshape(-1)[i].item(), tp.expand_as(ok).reshape(-1)[i].item()
        raise ValueError(f"t_prev must lie in 0..t−1 (DDIM steps go down, to 0 at the end), "
                         f"got t_prev={bad_p} for t={bad_t}")


def ddim_step(s: Schedule, xt: torch.Tensor, eps_pred: torch.Tensor, t, t_prev, eta: float,
              noise: torch.Tensor, clip_x0: float | None = None,
              cond_grad: torch.Tensor | None = None, return_x0: bool = False):
    """One DDIM step x_t → x_{t'} (Song et al. 2021, eq. 12, with σ of eq. 16; DDIM's α_t is our ᾱ_t).

        x̂_0 = (x_t − √(1 − ᾱ_t)·ε) / √ᾱ_t
        x_{t'} = √ᾱ_{t'}·x̂_0 + √(1 − ᾱ_{t'} − σ²)·ε + σ·noise,
        σ = η·√((1 − ᾱ_{t'})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t'})

    xt, eps_pred, noise: (B, ...); t: int or long tensor (B,) in 1..T; t_prev (the paper's t'):
    int or long tensor (B,) with 0 <= t_prev < t; eta in [0, 1]. With t' = t − 1 and η = 1, σ² = β̃_t
    (DDPM); with t_prev = 0, σ = 0 and the step returns x̂_0 itself. ``clip_x0`` (e.g. 1.0 for
    images) clamps x̂_0 to [−clip_x0, clip_x0] and recomputes ε from the clipped x̂_0.
    ``cond_grad`` (xt's shape), when given, is g = s·∇_{x_t} log p_φ(y | x_t): the step then uses
    ε̂ = ε_θ − √(1 − ᾱ_t)·g in place of ε_θ (classifier-guided DDIM, Dhariwal & Nichol 2021, Alg. 2).
    Returns x_{t'}, or ``(x_{t'}, x̂_0)`` with ``return_x0`` (``sample_ddim``'s callback shows both).
    """
    check_operands(xt=xt, eps_pred=eps_pred, noise=noise)
    if cond_grad is not None:
        check_operands(xt=xt, cond_grad=cond_grad)
    check_t(s, t, batch=xt.shape[0])
    _check_t_prev(t, t_prev, xt.shape[0])
    eta = _check_eta(eta)
    if clip_x0 is not None and not (isinstance(clip_x0, (int, float)) and clip_x0 > 0):
        raise ValueError(f"clip_x0 must be a positive number (1.0 for images in [−1, 1]) or None, got {clip_x0!r}")
    # Coefficients in float64 (the schedule's dtype), cast at the point of use: 1 − ᾱ_t/ᾱ_{t'} is a
    # difference of nearly equal numbers when t' = t − 1 and would lose digits in float32.
    like64 = torch.empty((1,) * xt.ndim, dtype=torch.float64, device=s.alpha_bar.device)
    alpha_bar_t = gather(s.alpha_bar, t, like64)                 # ᾱ_t   (DDIM's α_t)
    alpha_bar_prev = gather(s.alpha_bar, t_prev, like64)         # ᾱ_{t'}; ᾱ_0 = 1
    sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) \
        * torch.sqrt(1 - alpha_bar_t / alpha_bar_prev)           # eq. 16
    # 1 − ᾱ_{t'} − σ² >= 0 for η <= 1; the clamp only removes a rounding-level negative.
    coef_eps = torch.sqrt(torch.clamp(1 - alpha_bar_prev - sigma ** 2, min=0.0))
    cast = dict(device=xt.device, dtype=xt.dtype)
    sqrt_alpha_bar_t = torch.sqrt(alpha_bar_t).to(**cast)
    sqrt_one_minus_alpha_bar_t = torch.sqrt(1 - alpha_bar_t).to(**cast)
    if cond_grad is not None:                                    # guided ε̂ (Dhariwal & Nichol, Alg. 2)
        eps_pred = eps_pred - sqrt_one_minus_alpha_bar_t * cond_grad
    x0_pred = (xt - sqrt_one_minus_alpha_bar_t * eps_pred) / sqrt_alpha_bar_t
    if clip_x0 is not None:
        # Clip x̂_0 to the data range, then recompute the ε that points from it to x_t (eq. 4 solved
        # for ε), so that both terms of the update agree with the clipped x̂_0 — the usual practice.
        x0_pred = x0_pred.clamp(-clip_x0, clip_x0)
        eps_pred = (xt - sqrt_alpha_bar_t * x0_pred) / sqrt_one_minus_alpha_bar_t
    x_prev = torch.sqrt(alpha_bar_prev).to(**cast) * x0_pred + coef_eps.to(**cast) * eps_pred \
        + sigma.to(**cast) * noise
    return (x_prev, x0_pred) if return_x0 else x_prev


@torch.no_grad()
def sample_ddim(eps_model: EpsModel, s: Schedule, shape, steps: int = 50, eta: float = 0.0,
                generator: torch.Generator | None = None, grid: str = "uniform", device=None,
                dtype: torch.dtype = torch.float32, x_T: torch.Tensor | None = None,
                clip_x0: float | None = None, callback: Callable | None = None,
                progress: bool = False, cond_fn: Callable | None = None) -> torch.Tensor:
    """DDIM sampling: draw x_T ~ N(0, I), apply ``ddim_step`` along ``step_grid(T, steps, grid)``
    (τ_S = T, …, τ_1 = 1), then one last step from τ_1 to t' = 0; returns x_0.

    ``eps_model(xt, t)`` gets t as a long tensor of shape (B,) holding the paper's t (a grid value).
    ``generator`` fixes every draw (made on its device, used where the network is, as in ``sample_ddpm``);
    noise is drawn only where σ > 0 (never for η = 0, never on the
    step to 0), so with η = 0 the result depends on x_T alone. With steps = T and η = 1 the draws
    and the result are those of ``sample_ddpm`` with its default σ² = β̃. ``callback(t, xt, x0_pred)``
    is called after each step with the step's t, the new x_{t'} and the x̂_0 predicted at t.
    ``cond_fn(xt, t)``, when given, returns s·∇_{x_t} log p_φ(y | x_t) (xt's shape; e.g. from
    ``guidance.classifier_grad_fn``) and each step uses ε̂ = ε_θ − √(1 − ᾱ_t)·cond_fn(x_t, t)
    (Dhariwal & Nichol 2021, Algorithm 2); x̂_0 in the callback is then the guided one. It draws
    nothing from ``generator``: scale 0 gives the unguided samples draw for draw.
    """
    eta = _check_eta(eta)
    timesteps = step_grid(s.T, steps, grid)
    x = initial_latent(shape, generator, device, dtype, x_T, eps_model)
    for i, t in enumerate(tqdm(timesteps, desc="DDIM sampling", disable=not progress, leave=False)):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps_pred = eps_model(x, t_batch).to(x.dtype)
        cond_grad = cond_fn(x, t_batch).to(x.dtype) if cond_fn is not None else None
        noise = standard_normal(x.shape, generator, x.device, x.dtype) if (eta > 0 and t_prev > 0) \
            else torch.zeros_like(x)
        x, x0_pred = ddim_step(s, x, eps_pred, t, t_prev, eta, noise, clip_x0, cond_grad, return_x0=True)
        if callback is not None:
            callback(t, x, x0_pred)
    return x


@torch.no_grad()
def ddim_invert(eps_model: EpsModel, s: Schedule, x0: torch.Tensor, steps: int = 50,
                grid: str = "uniform", callback: Callable | None = None) -> torch.Tensor:
    """DDIM inversion: run the deterministic (η = 0) DDIM ODE forward, x_0 → x_T (Sec. 4.3, 5.4).

    Along the grid read upwards, 0 → τ_1 = 1 → … → τ_S = T, each step from t to the next t_n is

        x̂_0 = (x_t − √(1 − ᾱ_t)·ε) / √ᾱ_t,   x_{t_n} = √ᾱ_{t_n}·x̂_0 + √(1 − ᾱ_{t_n})·ε,
        ε = ε_θ(x_t, t_n),

    the sampler's step read backwards. Its ε_θ(x_{t_n}, t_n) needs the point not reached yet, so ε is
    evaluated at the current point x_t with the label t_n (the standard approximation, exact as the
    steps shrink; it also avoids ε_θ(·, 0), which no model is trained on). ``sample_ddim`` with η = 0,
    the same steps and grid, started from the result, reconstructs x0 up to this approximation.
    ``callback(t, xt, x0_pred)`` is called after each step with the t reached, x_t and x̂_0.
    """
    timesteps = step_grid(s.T, steps, grid)[::-1]                # τ_1 = 1, …, τ_S = T
    check_operands(x0=x0)                                        # real numbers, before the network sees them
    x, t = x0, 0
    like64 = torch.empty((1,) * x.ndim, dtype=torch.float64, device=s.alpha_bar.device)
    cast = dict(device=x.device, dtype=x.dtype)
    for t_next in timesteps:
        eps_pred = eps_model(x, torch.full((x.shape[0],), t_next, device=x.device, dtype=torch.long)).to(x.dtype)
        check_operands(xt=x, eps_pred=eps_pred)
        alpha_bar_t, alpha_bar_next = gather(s.alpha_bar, t, like64), gather(s.alpha_bar, t_next, like64)
        x0_pred = (x - torch.sqrt(1 - alpha_bar_t).to(**cast) * eps_pred) / torch.sqrt(alpha_bar_t).to(**cast)
        x = torch.sqrt(alpha_bar_next).to(**cast) * x0_pred + torch.sqrt(1 - alpha_bar_next).to(**cast) * eps_pred
        t = t_next
        if callback is not None:
            callback(t, x, x0_pred)
    return x


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha) -> torch.Tensor:
    """Spherical interpolation between latents, per sample (DDIM's Sec. 5.3 interpolation in x_T):

        slerp(z_0, z_1; α) = sin((1 − α)θ)/sin θ · z_0 + sin(αθ)/sin θ · z_1,

    θ the angle between the flattened samples z_0[b] and z_1[b]. For equal norms the path stays on
    the sphere of that norm (a Gaussian latent's typical set; a straight line would cut inside it)
    and the angle to z_0 grows linearly, α·θ. z0, z1: (B, ...); alpha: a number or a tensor (N,)
    that broadcasts against the batch (e.g. z of batch 1 and N values of α give N latents).
    θ is computed as 2·atan2(|u_0 − u_1|, |u_0 + u_1|) of the unit vectors, accurate at any angle.
    Nearly parallel samples (θ < 1e-6) fall back to the straight line (1 − α)·z_0 + α·z_1, which
    differs from the arc by O(θ²). Opposite samples (θ = π) have no unique arc: ValueError.
    """
    check_operands(z0=z0, z1=z1)
    flat0, flat1 = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    norm0, norm1 = flat0.norm(dim=1, keepdim=True), flat1.norm(dim=1, keepdim=True)
    if (norm0 == 0).any() or (norm1 == 0).any():
        raise ValueError("slerp needs non-zero latents: the angle to a zero vector is undefined")
    u0, u1 = flat0 / norm0, flat1 / norm1
    theta = 2 * torch.atan2((u0 - u1).norm(dim=1), (u0 + u1).norm(dim=1))          # (B,)
    if (theta > math.pi - 1e-6).any():
        raise ValueError("slerp of opposite latents (angle π) has no unique great circle")
    theta = theta.reshape((-1,) + (1,) * (z0.ndim - 1))
    alpha = torch.as_tensor(alpha, dtype=z0.dtype, device=z0.device)
    if alpha.ndim > 1:
        raise ValueError(f"alpha must be a number or a 1-D tensor, got shape {tuple(alpha.shape)}")
    alpha = alpha.reshape((-1,) + (1,) * (z0.ndim - 1))
    parallel = theta < 1e-6
    safe = torch.where(parallel, torch.ones_like(theta), theta)                       # no 0/0 below
    w0 = torch.where(parallel, 1 - alpha, torch.sin((1 - alpha) * safe) / torch.sin(safe))
    w1 = torch.where(parallel, alpha, torch.sin(alpha * safe) / torch.sin(safe))
    return w0 * z0 + w1 * z1
