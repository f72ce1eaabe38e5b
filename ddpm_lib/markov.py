"""Markov chains: stationary distributions of a transition matrix and the Gaussian chain's moments."""
from __future__ import annotations

import torch


def check_transition_matrix(P: torch.Tensor) -> None:
    """Raise ``ValueError`` unless P is square, non-negative, and each row sums to 1."""
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"a transition matrix is square, got shape {tuple(P.shape)}")
    if (P < 0).any() or not torch.allclose(P.sum(1), torch.ones(P.shape[0], dtype=P.dtype), atol=1e-8):
        raise ValueError("a transition matrix has non-negative entries and rows summing to 1 "
                         "(P[i, j] = P[s_{t+1} = j | s_t = i])")


def stationary_by_power_iteration(P: torch.Tensor, start: torch.Tensor | None = None,
                                  tol: float = 1e-12, max_iter: int = 100_000):
    """Iterate π ← π P from ``start`` (uniform by default) until it stops moving.

    Returns ``(pi, n_iter)``. π P = π defines a stationary distribution.
    """
    check_transition_matrix(P)
    pi = torch.full((P.shape[0],), 1.0 / P.shape[0], dtype=P.dtype) if start is None else start.to(P.dtype)
    for n in range(1, max_iter + 1):
        nxt = pi @ P
        if (nxt - pi).abs().max() < tol:
            return nxt, n
        pi = nxt
    raise RuntimeError(f"power iteration did not converge in {max_iter} steps (is the chain periodic?)")


def stationary_by_eigenvector(P: torch.Tensor) -> torch.Tensor:
    """The left eigenvector of P for eigenvalue 1 (Pᵀ v = v), normalised to sum to 1.

    It is unique when the eigenvalue 1 is simple, as for an irreducible chain; a P with several (a reducible
    chain, such as the identity) has many stationary distributions, and is refused with a ValueError.
    """
    check_transition_matrix(P)
    vals, vecs = torch.linalg.eig(P.T)
    ones = int(((vals - 1).abs() < 1e-9).sum())
    if ones > 1:
        raise ValueError(f"P has the eigenvalue 1 {ones} times: the chain is reducible and has more than one "
                         f"stationary distribution")
    k = torch.argmin((vals - 1).abs())
    v = vecs[:, k].real.to(P.dtype)
    return v / v.sum()


def sample_chain(P: torch.Tensor, start: int, steps: int, generator: torch.Generator | None = None):
    """A path s_0 = start, s_1, …, s_steps drawn with P[s_{t+1} | s_t]: long tensor (steps + 1,)."""
    check_transition_matrix(P)
    if not 0 <= start < P.shape[0]:
        raise ValueError(f"start must be a state 0..{P.shape[0] - 1} of P, got {start}")
    path = [start]
    for _ in range(steps):
        path.append(int(torch.multinomial(P[path[-1]], 1, generator=generator)))
    return torch.tensor(path)


def gaussian_chain_moments(a: float, b: float, mean0: float, var0: float, steps: int):
    """Mean and variance of x_t = a x_{t−1} + b ε for t = 0..steps (float64 tensors of length steps + 1):
    m_t = a m_{t−1},  v_t = a² v_{t−1} + b².  With |a| < 1 they tend to 0 and b² / (1 − a²)."""
    m, v = [float(mean0)], [float(var0)]
    for _ in range(steps):
        m.append(a * m[-1])
        v.append(a * a * v[-1] + b * b)
    return torch.tensor(m, dtype=torch.float64), torch.tensor(v, dtype=torch.float64)
