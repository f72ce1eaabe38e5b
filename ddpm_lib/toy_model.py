"""A small time-conditioned MLP ε-model for 2-D toy data, and its training loop (Ho et al. 2020, Algorithm 1).

    model = ToyEpsModel()                 # eps_pred = model(xt, t), xt (B, D) float, t long (B,) in 1..T
    history = train_toy(model, s, x0_data, steps=2000, batch=256, lr=1e-3, loss="simple")

Small enough to train on a CPU in seconds; the samplers of ``ddpm_lib`` take it as their ``eps_model``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from tqdm import tqdm

from .embedding import batch_timesteps, timestep_embedding
from .elbo import l_simple, l_simple_weight
from .forward import q_sample
from .schedules import Schedule
from .toy_data import check_points

LOSSES = ("simple", "vlb")


class ToyEpsModel(nn.Module):
    """ε_θ(x_t, t) for D-dimensional points: an MLP on [x_t, embedding(t)] with SiLU activations.

    The time embedding goes through its own small MLP and is fed to every hidden layer
    (added to the pre-activation), so the network can change its behaviour with t.
    Input xt (B, D), t an int or long (B,) in 1..T; output (B, D) in xt's dtype.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, emb_dim: int = 32):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.time_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, dim)

    def forward(self, xt: torch.Tensor, t) -> torch.Tensor:
        if xt.ndim != 2 or xt.shape[1] != self.inp.in_features:
            raise ValueError(f"expected points xt (B, {self.inp.in_features}) for this model (dim="
                             f"{self.inp.in_features}), got {tuple(xt.shape)}")
        t = batch_timesteps(t, xt.shape[0], xt.device)                 # int or (B,); a ValueError otherwise
        x = xt.to(self.inp.weight.dtype)
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim).to(x.dtype))
        h = nn.functional.silu(self.inp(x) + emb)
        for layer, proj in zip(self.hidden, self.time_proj):
            h = nn.functional.silu(layer(h) + proj(emb))
        return self.out(h).to(xt.dtype)


def vlb_weights(s: Schedule) -> torch.Tensor:
    """The bound's ε-weights λ_t (eq. 12, σ_t² = β_t) divided by their mean over t = 1..T.

    Length T + 1 (index = the paper's t, entry 0 unused), float64. Dividing by the mean keeps the
    loss on the scale of L_simple, so the same learning rate fits both; the gradient direction is
    unchanged: E_t[λ_t ‖ε − ε_θ‖²] ∝ Σ_t L_{t−1} up to terms free of θ (t = 1 is L_0, since
    with σ_1² = β_1 the Gaussian decoder's −log p_θ(x_0 | x_1) is λ_1 ‖ε − ε_θ‖² + const).
    """
    lam = l_simple_weight(s, var="beta")[1:]                       # t = 1..T
    return torch.cat([torch.zeros(1, dtype=torch.float64), lam / lam.mean()])


def train_toy(model: nn.Module, s: Schedule, x0_data: torch.Tensor, steps: int = 2000, batch: int = 256,
              lr: float = 1e-3, loss: str = "simple", generator: torch.Generator | None = None,
              progress: bool = False) -> list[float]:
    """Algorithm 1 of DDPM with Adam: repeat { x_0 ~ data, t ~ U{1..T}, ε ~ N(0, I), step on the loss }.

    loss="simple": L_simple = ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖² averaged (eq. 14).
    loss="vlb":    the same squared error per sample times ``vlb_weights(s)[t]``, i.e. the true
                   bound's weighting λ_t = β_t² / (2σ_t² α_t (1 − ᾱ_t)) with fixed σ_t² = β_t (eq. 12),
                   divided by its mean over t (see ``vlb_weights``).
    x0_data: (N, D) training points; ``generator`` fixes the minibatches, t and ε (not the weights'
    initialisation: seed that before building the model). Returns the loss of every step.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
    check_points(x0_data)
    if steps < 0 or batch < 1:
        raise ValueError(f"need steps >= 0 and batch >= 1, got steps={steps}, batch={batch}")
    device = next(model.parameters()).device
    x0_data = x0_data.to(device=device, dtype=torch.float32)
    weights = vlb_weights(s).to(device=device, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen_device = generator.device if generator is not None else "cpu"
    history = []
    model.train()
    for step in tqdm(range(1, steps + 1), desc=f"training ({loss})", disable=not progress, leave=False):
        idx = torch.randint(0, x0_data.shape[0], (batch,), generator=generator, device=gen_device).to(device)
        t = torch.randint(1, s.T + 1, (batch,), generator=generator, device=gen_device).to(device)
        eps = torch.randn((batch, x0_data.shape[1]), generator=generator, device=gen_device).to(device)
        x0 = x0_data[idx]
        eps_pred = model(q_sample(s, x0, t, eps), t)
        if loss == "simple":
            value = l_simple(eps, eps_pred)
        else:
            value = (weights[t] * ((eps - eps_pred) ** 2).mean(dim=1)).mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        history.append(value.item())
        if not math.isfinite(history[-1]):
            raise FloatingPointError(f"the loss became {history[-1]} at step {step}: lower lr (it is {lr})")
    model.eval()
    return history
