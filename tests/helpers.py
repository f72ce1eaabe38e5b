"""Independent re-computations shared by several test files (written here, not taken from ddpm_lib), and the
environment of the tests that run `python -m ddpm_lib` in a subprocess."""
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def command_env() -> dict:
    """The environment of a ``python -m ddpm_lib`` subprocess: this checkout first on PYTHONPATH, before
    any path already there (a machine may hold packages on PYTHONPATH alone), one thread."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}

F64 = torch.float64


def hand_schedule(betas):
    """β, α, ᾱ padded at index 0 (index = the paper's t), computed here, not by the library."""
    beta = torch.cat([torch.zeros(1, dtype=F64), betas.to(F64)])
    alpha = 1.0 - beta
    alpha_bar = torch.ones_like(beta)
    for t in range(1, len(beta)):
        alpha_bar[t] = alpha_bar[t - 1] * alpha[t]
    return beta, alpha, alpha_bar


def assert_d_and_g_steps_lower_their_losses(G, D, s, x_prev, xt, t, z, noise, steps):
    """``steps`` Adam steps of D on a fixed batch of real pairs and one fixed fake x_{t−1}′ lower d_loss; then,
    with D frozen, ``steps`` Adam steps of G lower g_loss (the fake redrawn through G each time). Each by 0.05."""
    from ddpm_lib.ddgan import d_loss, g_loss, posterior_sample

    def fake():
        return posterior_sample(s, G(xt, z, t), xt, t, noise)

    def descend(params, loss_fn):
        opt = torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.9))
        before = loss_fn().item()
        for _ in range(steps):
            loss = loss_fn()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss_fn().item() < before - 0.05

    with torch.no_grad():
        x_fake = fake()
    descend(D.parameters(), lambda: d_loss(D(x_prev, xt, t), D(x_fake, xt, t)))
    D.requires_grad_(False)
    descend(G.parameters(), lambda: g_loss(D(fake(), xt, t)))
