"""Denoising Diffusion GANs (Xiao, Kreis & Vahdat, ICLR 2022): a few large steps, each a conditional GAN.

With T = 4 steps the true reverse step q(x_{t−1} | x_t) is far from Gaussian (often multimodal), so
DDGAN models it implicitly:

    x_0′ = G(x_t, z, t),  z ~ N(0, I)                 the generator predicts a clean sample
    x_{t−1} ~ q(x_{t−1} | x_t, x_0′)                   the forward posterior (eqs. 6–7 of DDPM)
    D(x_{t−1}, x_t, t)                                 a time-conditioned discriminator of pairs

trained with the non-saturating GAN loss and an R1 penalty on the real pairs (Algorithm 1 of the paper).

    s = ddgan_schedule(T=4)
    G, D = ToyGenerator(), ToyDiscriminator()
    G_ema, history = train_ddgan_toy(G, D, s, x0_data, steps=1500, batch=256, lr_g=1e-3, lr_d=1e-3,
                                     r1_gamma=0.05, ema_decay=0.999, generator=g)
    x0 = sample_ddgan(G_ema, s, (1000, 2), z_dim=G.z_dim, generator=g)    # exactly T calls of G

Images: ``ddgan_nets.py`` (a U-Net generator with z-adaptive normalisation, a convolutional
discriminator), ``ddgan_train.py`` (the trainer with checkpoints), ``python -m ddpm_lib train-ddgan``.

Index = the paper's t everywhere: the schedule has length T + 1 and t runs over 1..T.
"""
from __future__ import annotations


import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from .ema import ema_decay as ramped_decay
from .ema import make_ema_model, update_ema
from .embedding import timestep_embedding
from .forward import q_step
from .indexing import check_operands, check_t, gather
from .posterior import q_posterior
from .sampling import check_shape, standard_normal
from .schedules import Schedule, schedule_from_betas
from .toy_data import check_points


def ddgan_schedule(T: int = 4, beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """The discretised variance-preserving (VP) SDE schedule of DDGAN (Xiao et al. 2022, appendix on the
    diffusion process).

    The continuous VP SDE of Song et al. (2021) has ᾱ(τ) = exp(−β_min·τ − ½(β_max − β_min)·τ²) for
    τ ∈ [0, 1]. DDGAN evaluates it at τ = t/T (its code adds a small offset, τ = 10⁻³ + (1 − 10⁻³)·t/T, which moves
    β_1 from 0.476 to 0.478 for T = 4; not here) and takes β_t = 1 − ᾱ_t / ᾱ_{t−1}, which written out is
        β_t = 1 − exp(−β_min/T − ½(β_max − β_min)·(2t − 1)/T²),   t = 1..T.
    Returned as a course ``Schedule`` (length T + 1, index = t), so ᾱ_t is the closed form above up
    to rounding.
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a whole number of steps >= 1, got {T!r}")
    if not 0 < beta_min < beta_max:
        raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
    t = torch.arange(1, T + 1, dtype=torch.float64)
    beta = 1.0 - torch.exp(-beta_min / T - 0.5 * (beta_max - beta_min) * (2 * t - 1) / T ** 2)
    return schedule_from_betas(beta, name=f"ddgan_vp(beta_min={beta_min}, beta_max={beta_max})")


def _as_batch_t(t, batch: int, device) -> torch.Tensor:
    """t as a long tensor of shape (B,) (an int is repeated)."""
    if isinstance(t, int):
        return torch.full((batch,), t, dtype=torch.long, device=device)
    return t.to(device).reshape(-1).expand(batch) if t.numel() == 1 else t.to(device)


def q_sample_pairs(s: Schedule, x0: torch.Tensor, t, generator: torch.Generator | None = None):
    """A real training pair (x_{t−1}, x_t) for DDGAN's discriminator.

    x_{t−1} ~ q(x_{t−1} | x_0) = N(√ᾱ_{t−1} x_0, (1 − ᾱ_{t−1}) I)   (x_0 itself when t = 1, since ᾱ_0 = 1),
    x_t     ~ q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t I)                (one forward step, eq. 2).
    x0: (B, ...); t: int or long (B,) in 1..T. Returns ``(x_prev, xt)``, both of x0's shape.
    """
    check_operands(x0=x0)
    check_t(s, t, batch=x0.shape[0])
    eps_prev = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    eps_step = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    t_prev = t - 1
    alpha_bar_prev = gather(s.alpha_bar, t_prev, x0)
    x_prev = torch.sqrt(alpha_bar_prev) * x0 + torch.sqrt(1.0 - alpha_bar_prev) * eps_prev
    return x_prev, q_step(s, x_prev, t, eps_step)


def posterior_sample(s: Schedule, x0_pred: torch.Tensor, xt: torch.Tensor, t, noise: torch.Tensor):
    """x_{t−1} = μ̃_t(x_t, x_0′) + √β̃_t · noise, a draw from q(x_{t−1} | x_t, x_0′) (DDPM eqs. 6–7).

    At t = 1, β̃_1 = 0, so the draw is the mean μ̃_1 = x_0′ and the noise is not used.
    x0_pred, xt, noise: (B, ...); t: int or long (B,) in 1..T.
    """
    check_operands(x0_pred=x0_pred, xt=xt, noise=noise)
    mean, var = q_posterior(s, x0_pred, xt, t)
    return mean + torch.sqrt(var) * noise


class ToyGenerator(nn.Module):
    """G(x_t, z, t) → x_0′ for D-dimensional points: an MLP with z-adaptive scale and shift.

    The latent z goes through a small mapping network to a style vector w; every hidden layer is
    normalised (LayerNorm without its own affine) and then scaled and shifted by affine maps of w,
    h ← (1 + γ(w))·norm(h) + b(w): adaptive normalisation as in DDGAN's generator, in a tiny form.
    The sinusoidal embedding of t is added to every hidden pre-activation.
    xt (B, D), z (B, z_dim), t int or long (B,) in 1..T; returns (B, D) in xt's dtype.
    """

    def __init__(self, dim: int = 2, z_dim: int = 8, hidden: int = 128, layers: int = 3, emb_dim: int = 32):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        self.dim, self.z_dim, self.emb_dim = dim, z_dim, emb_dim
        self.mapping = nn.Sequential(nn.Linear(z_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.style = nn.ModuleList(nn.Linear(hidden, 2 * hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, dim)

    def forward(self, xt: torch.Tensor, z: torch.Tensor, t) -> torch.Tensor:
        D = self.inp.in_features
        if xt.ndim != 2 or xt.shape[1] != D or z.ndim != 2 or z.shape != (xt.shape[0], self.z_dim):
            raise ValueError(f"expected xt (B, {D}) and z (B, {self.z_dim}) for this generator (dim={D}), got "
                             f"{tuple(xt.shape)}, {tuple(z.shape)}")
        x = xt.to(self.inp.weight.dtype)
        t = _as_batch_t(t, x.shape[0], x.device)
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim).to(x.dtype))
        w = self.mapping(z.to(x.dtype))
        h = self.inp(x)
        for layer, style in zip(self.hidden, self.style):
            gamma, shift = style(w).chunk(2, dim=1)
            h = F.layer_norm(layer(F.silu(h)) + emb, h.shape[1:])
            h = (1.0 + gamma) * h + shift
        return self.out(F.silu(h)).to(xt.dtype)


class ToyDiscriminator(nn.Module):
    """D(x_{t−1}, x_t, t) → a logit: an MLP on [x_{t−1}, x_t] with LeakyReLU(0.2), time-conditioned.

    The embedding of t is added to every hidden pre-activation. x_prev, xt (B, D); returns (B,).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, emb_dim: int = 32):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(2 * dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, 1)

    def forward(self, x_prev: torch.Tensor, xt: torch.Tensor, t) -> torch.Tensor:
        check_operands(x_prev=x_prev, xt=xt)
        if xt.ndim != 2 or 2 * xt.shape[1] != self.inp.in_features:
            raise ValueError(f"expected pairs of points (B, {self.inp.in_features // 2}) for this discriminator, "
                             f"got {tuple(xt.shape)}")
        x = torch.cat([x_prev, xt], dim=1).to(self.inp.weight.dtype)
        t = _as_batch_t(t, x.shape[0], x.device)
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim).to(x.dtype))
        h = F.leaky_relu(self.inp(x) + emb, 0.2)
        for layer in self.hidden:
            h = F.leaky_relu(layer(h) + emb, 0.2)
        return self.out(h).squeeze(1)


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss E[softplus(−D(real))] + E[softplus(D(fake))] = −E log σ(D_real) − E log(1 − σ(D_fake))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss E[softplus(−D(fake))] = −E log σ(D_fake) (Goodfellow et al. 2014)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(d_fn, x_real: torch.Tensor, xt: torch.Tensor, t) -> torch.Tensor:
    """R1 (Mescheder et al. 2018) on real pairs: E ‖∇_{x_{t−1}} D(x_{t−1}, x_t, t)‖², differentiable.

    The gradient is taken with ``create_graph=True`` so the penalty can itself be trained through.
    A discriminator that does not depend on x_{t−1} has zero gradient, hence zero penalty.
    """
    x = x_real.detach().requires_grad_(True)
    logits = d_fn(x, xt, t)
    if not logits.requires_grad:                          # D does not depend on x at all
        return torch.zeros((), dtype=x.dtype, device=x.device)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True, allow_unused=True)
    if grad is None:
        return logits.sum() * 0.0                         # zero, and still in D's graph
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def _fake_prev(G: nn.Module, s: Schedule, xt: torch.Tensor, t: torch.Tensor, generator) -> torch.Tensor:
    """x_{t−1}′ ~ q(x_{t−1} | x_t, G(x_t, z, t)) with fresh z and posterior noise."""
    z = torch.randn(xt.shape[0], G.z_dim, generator=generator, dtype=xt.dtype, device=xt.device)
    noise = torch.randn(xt.shape, generator=generator, dtype=xt.dtype, device=xt.device)
    return posterior_sample(s, G(xt, z, t), xt, t, noise)


def train_ddgan_toy(G: nn.Module, D: nn.Module, s: Schedule, x0_data: torch.Tensor, steps: int,
                    batch: int = 256, lr_g: float = 1e-3, lr_d: float = 1e-3, r1_gamma: float = 0.05,
                    ema_decay: float = 0.999, generator: torch.Generator | None = None, progress: bool = False):
    """Algorithm 1 of DDGAN on points x0_data (N, D); returns ``(G_ema, history)``.

    Each step: x_0 from the data, t ~ U{1..T}, a real pair (x_{t−1}, x_t) ~ q (``q_sample_pairs``),
    a fake x_{t−1}′ = posterior_sample(G(x_t, z, t)). The discriminator descends
    softplus(−D(real)) + softplus(D(fake)) + (r1_gamma/2)·R1(real); then the generator, on a fresh
    batch, descends softplus(−D(fake)). Adam with (β1, β2) = (0.5, 0.9) for both; after each G step
    the EMA copy G_ema is updated with the ramped decay of ``ema.py``. Training is in float32.
    ``history`` holds the per-step ``d_loss`` (without R1), ``g_loss`` and ``r1`` as floats.
    """
    check_points(x0_data)
    for ok, why in ((steps >= 1, f"steps must be at least 1, got {steps}"),
                    (batch >= 1, f"batch must be at least 1, got {batch}")):
        if not ok:
            raise ValueError(why)
    dtype = next(G.parameters()).dtype
    data = x0_data.to(dtype)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr_g, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr_d, betas=(0.5, 0.9))
    G_ema = make_ema_model(G)
    history = {"d_loss": [], "g_loss": [], "r1": []}
    G.train(), D.train()

    def draw():
        idx = torch.randint(0, data.shape[0], (batch,), generator=generator)
        t = torch.randint(1, s.T + 1, (batch,), generator=generator)
        x_prev, xt = q_sample_pairs(s, data[idx], t, generator)
        return x_prev, xt, t

    for step in tqdm(range(1, steps + 1), disable=not progress, desc="ddgan"):
        # discriminator step: real pairs up, fake pairs down, R1 on the real ones
        x_prev, xt, t = draw()
        with torch.no_grad():
            x_fake = _fake_prev(G, s, xt, t, generator)
        real_logits, fake_logits = D(x_prev, xt, t), D(x_fake, xt, t)
        loss_d = d_loss(real_logits, fake_logits)
        r1 = r1_penalty(D, x_prev, xt, t)
        opt_d.zero_grad(set_to_none=True)
        (loss_d + 0.5 * r1_gamma * r1).backward()
        opt_d.step()
        # generator step: fool the (fixed) discriminator on a fresh batch
        _, xt, t = draw()
        loss_g = g_loss(D(_fake_prev(G, s, xt, t, generator), xt, t))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        update_ema(G_ema, G, ramped_decay(ema_decay, step))
        history["d_loss"].append(float(loss_d.detach()))
        history["g_loss"].append(float(loss_g.detach()))
        history["r1"].append(float(r1.detach()))
    return G_ema, history


@torch.no_grad()
def sample_ddgan(G: nn.Module, s: Schedule, shape, z_dim: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """DDGAN sampling: x_T ~ N(0, I); for t = T..1, x_0′ = G(x_t, z, t) with fresh z and
    x_{t−1} ~ q(x_{t−1} | x_t, x_0′). Exactly T generator calls; the last step adds no noise.

    shape: (B, D) for points or (B, C, H, W) for images; z_dim defaults to ``G.z_dim``. The noise is
    drawn on the generator's device (G's when none is given) and moved to G's. Returns x_0 of
    ``shape`` in G's dtype, on G's device.
    """
    z_dim = G.z_dim if z_dim is None else z_dim
    shape = check_shape(shape)
    param = next(G.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")

    def randn(*size):
        return standard_normal(size, generator, device, dtype)

    x = randn(*shape)
    for t in range(s.T, 0, -1):
        z, noise = randn(shape[0], z_dim), randn(*shape)
        x0_pred = G(x, z, torch.full((shape[0],), t, dtype=torch.long, device=device))
        x = posterior_sample(s, x0_pred, x, t, noise)
    return x
