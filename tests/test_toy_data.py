"""Tests of ddpm_lib.toy_data: shapes, dtypes, labels, seeding, names, and the geometry of each set.

Each test's docstring names the wrong implementation it catches.
"""
import math

import pytest
import torch

import ddpm_lib as dl

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name, n_classes", [("swiss_roll", None), ("two_moons", 2), ("eight_gaussians", 8)])
def test_make_toy_shapes_dtypes_labels(name, n_classes):
    """(x, y): x (n, 2) float64, y long (n,) in 0..K−1 (None for the swiss roll), every class present.
    Catches: float32 data, labels out of range or all one class, a transposed (2, n) array."""
    n = 3000
    x, y = dl.make_toy(name, n, gen(0))
    assert x.shape == (n, 2) and x.dtype == F64
    assert torch.isfinite(x).all()
    if n_classes is None:
        assert y is None
    else:
        assert y.shape == (n,) and y.dtype == torch.long
        assert int(y.min()) == 0 and int(y.max()) == n_classes - 1
        assert (torch.bincount(y, minlength=n_classes) > 0).all()


@pytest.mark.parametrize("name", dl.TOY_SETS)
def test_make_toy_reproducible_with_seed(name):
    """Same seed → identical data (and labels); another seed → different data.
    Catches: draws from the global RNG instead of the generator."""
    x_a, y_a = dl.make_toy(name, 500, gen(1))
    torch.manual_seed(999)
    x_b, y_b = dl.make_toy(name, 500, gen(1))
    x_c, _ = dl.make_toy(name, 500, gen(2))
    assert torch.equal(x_a, x_b)
    assert (y_a is None and y_b is None) or torch.equal(y_a, y_b)
    assert not torch.allclose(x_a, x_c)


def test_make_toy_unknown_name():
    """An unknown name raises ValueError listing the valid names. Catches: a silent default set."""
    with pytest.raises(ValueError, match="swiss_roll"):
        dl.make_toy("three_moons", 10)


def test_two_moons_geometry_and_separation():
    """Noise-free: class 0 lies on the upper half of the unit circle centred (−0.5, −0.25), class 1 on the
    lower half of the one centred (0.5, 0.25), and the classes are ≥ 0.45 apart. With the default noise
    the radial spread is 0.05 and a leave-one-out nearest-neighbour classifier is ≥ 99 % right.
    Catches: labels swapped between the moons, a moon flipped onto the other, noise of the wrong scale."""
    x, y = dl.two_moons(2000, gen(3), noise=0.0)
    centre = torch.tensor([[-0.5, -0.25], [0.5, 0.25]], dtype=F64)
    rel = x - centre[y]
    torch.testing.assert_close(rel.norm(dim=1), torch.ones(2000, dtype=F64), rtol=0, atol=1e-12)
    assert (rel[y == 0, 1] >= -1e-12).all() and (rel[y == 1, 1] <= 1e-12).all()
    assert torch.cdist(x[y == 0], x[y == 1]).min() > 0.45
    assert abs((y == 1).double().mean().item() - 0.5) < 5 * 0.5 / math.sqrt(2000)

    x, y = dl.two_moons(20_000, gen(4))
    radial = (x - centre[y]).norm(dim=1) - 1.0
    assert abs(radial.std().item() - 0.05) < 0.003
    x, y = x[:3000], y[:3000]
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(float("inf"))
    assert (y[dist.argmin(1)] == y).double().mean() > 0.99


def test_ring_of_gaussians_means_on_circle():
    """k means at radius r and angles 2πj/k, equal stds, uniform (or normalised) weights, float64 exactly;
    samples of each component centre on its mean. Catches: angles 2πj/(k−1) (two means coincide),
    the radius applied as a diameter, stds rounded through float32, weights not normalised."""
    ring = dl.ring_of_gaussians(k=6, radius=3.0, std=0.2)
    assert ring.K == 6 and ring.D == 2 and ring.means.dtype == F64
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((6,), 3.0, dtype=F64), rtol=0, atol=1e-12)
    angles = torch.atan2(ring.means[:, 1], ring.means[:, 0]) % (2 * math.pi)
    torch.testing.assert_close(angles, 2 * math.pi * torch.arange(6, dtype=F64) / 6, rtol=0, atol=1e-12)
    assert torch.equal(ring.stds, torch.full((6,), 0.2, dtype=F64))
    torch.testing.assert_close(ring.weights, torch.full((6,), 1 / 6, dtype=F64), rtol=0, atol=1e-15)
    weighted = dl.ring_of_gaussians(k=3, weights=torch.tensor([1.0, 1.0, 2.0], dtype=F64))
    torch.testing.assert_close(weighted.weights, torch.tensor([0.25, 0.25, 0.5], dtype=F64))
    n = 8000
    x, y = ring.sample(n, gen(5))
    for j in range(6):
        xj = x[y == j]
        assert ((xj.mean(0) - ring.means[j]).abs() < 5 * 0.2 / math.sqrt(len(xj))).all()
    # the default "eight_gaussians" set: 8 components of std 0.1 on the circle of radius 2
    x, y = dl.make_toy("eight_gaussians", 4000, gen(6))
    assert ((x.norm(dim=1) - 2.0).abs() < 0.6).all()


def test_swiss_roll_spiral():
    """Noise-free points satisfy (x, y) = θ(cos θ, sin θ)/7 with θ ∈ [1.5π, 4.5π] drawn uniformly:
    7‖x‖ = θ lies in the range with mean 3π, and the polar angle equals θ mod 2π.
    Catches: θ not uniform, a wrong range or scale, cos and sin swapped (a mirrored spiral)."""
    n = 20_000
    x = dl.swiss_roll(n, gen(7), noise=0.0)
    theta = 7.0 * x.norm(dim=1)
    assert theta.min() >= 1.5 * math.pi - 1e-9 and theta.max() <= 4.5 * math.pi + 1e-9
    half_width = 1.5 * math.pi                                  # θ ~ U(3π − 1.5π, 3π + 1.5π)
    assert abs(theta.mean().item() - 3 * math.pi) < 5 * half_width / math.sqrt(3 * n)
    polar = torch.atan2(x[:, 1], x[:, 0])
    torch.testing.assert_close(torch.cos(polar - theta), torch.ones(n, dtype=F64), rtol=0, atol=1e-9)
    noisy = dl.swiss_roll(n, gen(7))                           # same θ draws, plus N(0, 0.05²) noise
    assert abs((noisy - x).std().item() - 0.05) < 0.002


def test_eight_gaussians_is_eight_components_of_std_0_1_on_the_circle_of_radius_2():
    """make_toy("eight_gaussians"): label j ∈ 0..7 is drawn uniformly and its point is N(2(cos 2πj/8,
    sin 2πj/8), 0.1² I), checked against those formulas written out: each component's residual has mean 0
    and standard deviation 0.1 in both coordinates, to 5 standard errors. Catches: a default radius, std or
    number of components other than the documented 2, 0.1 and 8 (the set every toy lecture shows), and
    make_toy passing other parameters than the defaults."""
    n, k = 16_000, 8
    x, y = dl.make_toy("eight_gaussians", n, gen(11))
    assert int(y.min()) == 0 and int(y.max()) == k - 1
    counts = torch.bincount(y, minlength=k).double()
    assert ((counts - n / k).abs() < 5 * math.sqrt(n * (1 / k) * (1 - 1 / k))).all()
    angle = 2 * math.pi * y.double() / k
    residual = x - 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    for j in range(k):
        r = residual[y == j]
        assert (r.mean(0).abs() < 5 * 0.1 / math.sqrt(len(r))).all(), j
    assert abs(residual.std().item() - 0.1) < 5 * 0.1 / math.sqrt(2 * residual.numel())


@pytest.mark.parametrize("data, words", [
    (torch.zeros(4, 2, 1, dtype=F64), r"\(N, D\) points with N >= 1 .*got shape \(4, 2, 1\)"),
    (torch.zeros(0, 2, dtype=F64), r"got shape \(0, 2\)"),
    (torch.tensor([[0.0, 1.0], [2.0, math.nan], [1.0, 1.0]], dtype=F64), "NaN or infinite"),
    (torch.tensor([[0.0, 1.0], [2.0, 3.0], [-math.inf, 1.0]], dtype=F64), "NaN or infinite")])
def test_check_points_refuses_what_is_not_a_finite_cloud_of_points(data, words):
    """check_points (the toy trainers' guard) refuses images or any array of more than two dimensions, no points,
    and a single NaN or ±∞ among finite points, and takes one point in one dimension. Catches: ``ndim < 2`` for
    ``ndim != 2`` (a (B, C, H, W) batch taken as points), ``isfinite(...).any()`` for ``.all()`` (one bad value
    among good ones let through to a NaN loss)."""
    from ddpm_lib.toy_data import check_points
    with pytest.raises(ValueError, match=words):
        check_points(data)
    assert check_points(torch.zeros(1, 1, dtype=F64)) is None
    assert check_points(torch.randn(5, 3, dtype=torch.float32)) is None
