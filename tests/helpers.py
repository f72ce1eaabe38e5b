"""Independent re-computations shared by several test files (written here, not taken from ddpm_lib)."""
import torch

F64 = torch.float64


def hand_schedule(betas):
    """β, α, ᾱ padded at index 0 (index = the paper's t), computed here, not by the library."""
    beta = torch.cat([torch.zeros(1, dtype=F64), betas.to(F64)])
    alpha = 1.0 - beta
    alpha_bar = torch.ones_like(beta)
    for t in range(1, len(beta)):
        alpha_bar[t] = alpha_bar[t - 1] * alpha[t]
    return beta, alpha, alpha_bar
