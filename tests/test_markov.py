"""Markov chains: stationary distributions against hand-solved chains, sampling against them within
Monte-Carlo error, and the Gaussian chain's moments against their closed form."""
import math

import pytest
import torch

import ddpm_lib as dl


def two_state(p: float, q: float) -> torch.Tensor:
    """P[i, j] = P(s_{t+1} = j | s_t = i): leave state 0 with probability p, state 1 with probability q."""
    return torch.tensor([[1 - p, p], [q, 1 - q]], dtype=torch.float64)


# A birth–death chain; detailed balance π_0·½ = π_1·¼ and π_1·¼ = π_2·½ gives π = (1, 2, 1)/4.
BIRTH_DEATH = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]], dtype=torch.float64)


@pytest.mark.parametrize("p, q", [(0.3, 0.1), (0.05, 0.6), (0.9, 0.7)])
def test_two_state_stationary_distribution_closed_form(p, q):
    P = two_state(p, q)
    expected = torch.tensor([q, p], dtype=torch.float64) / (p + q)
    pi_power, n_iter = dl.stationary_by_power_iteration(P)
    pi_eig = dl.stationary_by_eigenvector(P)
    torch.testing.assert_close(pi_power, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(pi_eig, expected, rtol=0, atol=1e-12)
    assert pi_eig.dtype == torch.float64 and n_iter > 1
    # from a different start, power iteration reaches the same π
    torch.testing.assert_close(dl.stationary_by_power_iteration(P, start=torch.tensor([1.0, 0.0]))[0],
                               expected, rtol=0, atol=1e-10)


def test_birth_death_chain_both_methods_agree_with_detailed_balance():
    expected = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    pi_power, _ = dl.stationary_by_power_iteration(BIRTH_DEATH)
    pi_eig = dl.stationary_by_eigenvector(BIRTH_DEATH)
    torch.testing.assert_close(pi_power, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(pi_eig, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(pi_eig @ BIRTH_DEATH, pi_eig, rtol=0, atol=1e-12)


def test_power_iteration_stops_at_once_on_a_stationary_start():
    _, n_iter = dl.stationary_by_power_iteration(BIRTH_DEATH, start=torch.tensor([0.25, 0.5, 0.25]))
    assert n_iter == 1


def test_a_reducible_chain_is_refused_by_the_eigenvector_method():
    """Two closed classes {0, 1} and {2}: every mixture of their stationary laws is stationary, and eig returns an
    arbitrary vector of the 2-D eigenspace (entries of either sign). Catches: one of them returned silently."""
    P = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    for reducible in (P, torch.eye(3, dtype=torch.float64)):
        with pytest.raises(ValueError, match="reducible"):
            dl.stationary_by_eigenvector(reducible)


def test_periodic_chain():
    flip = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(dl.stationary_by_eigenvector(flip), torch.tensor([0.5, 0.5], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="did not converge"):
        dl.stationary_by_power_iteration(flip, start=torch.tensor([1.0, 0.0]), max_iter=50)


def test_sample_chain_visits_states_with_the_stationary_frequencies(gen):
    """For a two-state chain the fraction of time in state 1 has asymptotic variance
    π_0 π_1 (1 + λ)/(1 − λ)/n, with λ = 1 − p − q the second eigenvalue of P."""
    p, q, n = 0.3, 0.1, 20_000
    path = dl.sample_chain(two_state(p, q), start=0, steps=n, generator=gen)
    assert path.shape == (n + 1,) and path.dtype == torch.long and path[0] == 0
    assert set(path.tolist()) == {0, 1}

    pi1, lam = p / (p + q), 1 - p - q
    se = math.sqrt(pi1 * (1 - pi1) * (1 + lam) / (1 - lam) / n)
    freq1 = path[1:].double().mean().item()
    assert abs(freq1 - pi1) < 5 * se, f"time in state 1: {freq1:.4f}, stationary {pi1:.4f} ± {se:.4f}"

    # each departure from state 0 goes to 1 with probability p, independently (Markov property)
    from0 = path[:-1] == 0
    n0 = int(from0.sum())
    jump = (path[1:][from0] == 1).double().mean().item()
    assert abs(jump - p) < 5 * math.sqrt(p * (1 - p) / n0)


def test_sample_chain_never_takes_a_zero_probability_step(gen):
    path = dl.sample_chain(BIRTH_DEATH, start=2, steps=2_000, generator=gen)
    assert path[0] == 2 and set(path.tolist()) == {0, 1, 2}
    assert ((path[1:] - path[:-1]).abs() <= 1).all(), "the birth–death chain never jumps between 0 and 2"


@pytest.mark.parametrize("P, phrase", [
    (torch.tensor([[0.5, 0.6], [0.5, 0.5]]), "rows summing to 1"),
    (torch.tensor([[0.9, 0.5], [0.1, 0.5]]), "rows summing to 1"),     # columns sum to 1: the transpose
    (torch.tensor([[1.2, -0.2], [0.5, 0.5]]), "non-negative"),
    (torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]), "square"),
    (torch.tensor([0.5, 0.5]), "square"),
])
def test_not_a_transition_matrix(P, phrase):
    P = P.double()
    for call in (lambda: dl.stationary_by_power_iteration(P), lambda: dl.stationary_by_eigenvector(P),
                 lambda: dl.sample_chain(P, start=0, steps=3)):
        with pytest.raises(ValueError, match=phrase):
            call()


@pytest.mark.parametrize("a, b, mean0, var0", [(0.9, 0.5, 3.0, 2.0), (-0.5, 1.0, 1.0, 0.0),
                                               (1.1, 0.2, -1.0, 0.5), (math.sqrt(1 - 0.02), math.sqrt(0.02), 5.0, 1.0)])
def test_gaussian_chain_moments_closed_form(a, b, mean0, var0):
    steps = 60
    m, v = dl.gaussian_chain_moments(a, b, mean0, var0, steps)
    assert m.shape == v.shape == (steps + 1,) and m.dtype == v.dtype == torch.float64
    for t in range(steps + 1):
        expected_v = a ** (2 * t) * var0 + b ** 2 * (1 - a ** (2 * t)) / (1 - a ** 2)
        assert m[t].item() == pytest.approx(a ** t * mean0, rel=1e-12, abs=1e-300)
        assert v[t].item() == pytest.approx(expected_v, rel=1e-12)


def test_variance_preserving_chain_keeps_unit_variance():
    """a = √(1 − β), b = √β (DDPM's step): unit variance stays unit, the mean decays as (1 − β)^{t/2}."""
    beta = 0.05
    m, v = dl.gaussian_chain_moments(math.sqrt(1 - beta), math.sqrt(beta), 2.0, 1.0, 100)
    torch.testing.assert_close(v, torch.ones(101, dtype=torch.float64), rtol=0, atol=1e-13)
    assert m[100].item() == pytest.approx(2.0 * (1 - beta) ** 50, rel=1e-12)


def test_power_iteration_returns_the_last_iterate_and_counts_its_products():
    """With a loose tol = 1e-4 the returned π is start·Pⁿ for the returned n, and n is the first step whose
    change |π_n − π_{n−1}| falls below tol. For the two-state chain π_n = π* + (π_0 − π*)·λⁿ, λ = 1 − p − q,
    written out here. Catches: returning the previous iterate π_{n−1} (off by one product), a count off by one."""
    p, q, tol = 0.3, 0.1, 1e-4
    pi_star = torch.tensor([q, p], dtype=torch.float64) / (p + q)
    start = torch.tensor([1.0, 0.0], dtype=torch.float64)
    lam = 1 - p - q

    def pi_n(n):
        return pi_star + (start - pi_star) * lam ** n

    n_expected = next(n for n in range(1, 1000) if (pi_n(n) - pi_n(n - 1)).abs().max() < tol)
    pi, n_iter = dl.stationary_by_power_iteration(two_state(p, q), start=start, tol=tol)
    assert n_iter == n_expected == 17
    torch.testing.assert_close(pi, pi_n(n_iter), rtol=0, atol=1e-15)
    assert (pi - pi_n(n_iter - 1)).abs().max() > 1e-6            # the two candidates are distinguishable


def test_sample_chain_refuses_a_start_outside_the_states():
    """Catches: IndexError "index 5 is out of bounds for dimension 0 with size 2" from inside the loop, and a
    negative start silently read as a state counted from the end (P[-1])."""
    P = torch.tensor([[0.9, 0.1], [0.5, 0.5]], dtype=torch.float64)
    for start in (2, 5, -1):
        with pytest.raises(ValueError, match=rf"start must be a state 0..1 of P, got {start}"):
            dl.sample_chain(P, start, 10)
    assert dl.sample_chain(P, 1, 0).tolist() == [1]
