"""Tests of ddpm_lib.metrics: the Fréchet distance against closed forms and scipy, the feature
Gaussian against numpy, and FID-MNIST with the shipped classifier on real, noised and random images.

Each test's docstring names the wrong implementation it catches.
"""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

import ddpm_lib as dl
from ddpm_lib.classifier import load_classifier
from ddpm_lib.metrics import (class_histogram, classifier_confidence, classifier_outputs, fid_mnist,
                              frechet_distance, gaussian_stats, histogram_entropy, image_statistics)


def random_spd(D: int, gen: torch.Generator, rank: int | None = None) -> torch.Tensor:
    """A random symmetric positive (semi-)definite D×D matrix in float64, far from diagonal."""
    A = torch.randn(D, rank or D, generator=gen, dtype=torch.float64)
    return A @ A.T / D + (0 if rank else 0.1 * torch.eye(D, dtype=torch.float64))


def scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with scipy's general matrix square root of Σ₁Σ₂ (not symmetric)."""
    mu1, mu2, sigma1, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, sigma1, sigma2))
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real)


def test_identical_gaussians_are_at_distance_zero(gen):
    """d(N(μ, Σ), N(μ, Σ)) = 0 for a non-diagonal Σ. Catches: tr(Σ₁ + Σ₂) − 2 tr(Σ₁Σ₂) (no root),
    the root taken elementwise, a factor 1 instead of 2 on the cross term."""
    sigma, mu = random_spd(7, gen), torch.randn(7, generator=gen, dtype=torch.float64)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9
    # Round-off leaves the raw sum at about ±1e-13 for a 40-dimensional Σ; a distance is never negative.
    for seed in range(20):
        A = torch.randn(40, 40, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert frechet_distance(torch.zeros(40), A @ A.T / 40, torch.zeros(40), A @ A.T / 40) >= 0


def test_commuting_covariances_follow_the_closed_form(gen):
    """For Σ₁ = Q diag(a) Qᵀ and Σ₂ = Q diag(b) Qᵀ (they commute), d = ‖Δμ‖² + Σ (√a − √b)², also with
    zero variances (a singular Σ); in 1-D this is (m₁ − m₂)² + (s₁ − s₂)². Catches: a missing ‖Δμ‖²,
    (√a − √b) without the square, a distance (square root) instead of the squared distance, NaN from
    the square root of a round-off negative eigenvalue."""
    D = 6
    a = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0, 0.25], dtype=torch.float64)
    b = torch.tensor([1.5, 0.1, 0.7, 1.0, 0.0, 4.0], dtype=torch.float64)
    mu1, mu2 = torch.randn(2, D, generator=gen, dtype=torch.float64)
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
    rotated = frechet_distance(mu1, Q @ torch.diag(a) @ Q.T, mu2, Q @ torch.diag(b) @ Q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)
    one_d = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[9.0]]))
    assert one_d == pytest.approx(3.0 ** 2 + (2.0 - 3.0) ** 2, rel=1e-12)


@pytest.mark.parametrize("D", [3, 40])
def test_non_commuting_covariances_match_scipy_sqrtm(D, gen):
    """Random non-commuting SPD matrices: equal to ‖Δμ‖² + tr Σ₁ + tr Σ₂ − 2 tr sqrtm(Σ₁Σ₂) with scipy's
    general square root, and symmetric in its two Gaussians. Catches: tr(Σ₁^{1/2} Σ₂^{1/2}) (right only
    when they commute), a square root of Σ₁Σ₂ taken as if it were symmetric, float32 round-off."""
    sigma1, sigma2 = random_spd(D, gen), random_spd(D, gen)
    assert not torch.allclose(sigma1 @ sigma2, sigma2 @ sigma1, atol=1e-3)
    mu1, mu2 = torch.randn(2, D, generator=gen, dtype=torch.float64)
    d12 = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert d12 == pytest.approx(scipy_frechet(mu1, sigma1, mu2, sigma2), rel=1e-8)
    assert frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(d12, rel=1e-10)
    wrong = float((mu1 - mu2).square().sum() + torch.trace(sigma1) + torch.trace(sigma2)
                  - 2 * torch.trace(scipy_sqrt(sigma1) @ scipy_sqrt(sigma2)))
    assert abs(wrong - d12) > 1e-3 * d12                 # the test can tell the commuting shortcut apart


def scipy_sqrt(m: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(scipy.linalg.sqrtm(m.numpy()).real)


def test_a_mean_shift_adds_its_squared_length_and_a_common_shift_changes_nothing(gen):
    """d(N(μ + δ, Σ₁), N(μ, Σ₂)) = d(N(μ, Σ₁), N(μ, Σ₂)) + ‖δ‖², and moving both means by c leaves d
    unchanged. Catches: ‖Δμ‖ instead of ‖Δμ‖², the means' norms instead of their difference."""
    sigma1, sigma2 = random_spd(5, gen, rank=3), random_spd(5, gen)      # Σ₁ singular (rank 3)
    mu, delta, c = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    base = frechet_distance(mu, sigma1, mu, sigma2)
    assert base > 0.1
    assert frechet_distance(mu + delta, sigma1, mu, sigma2) == pytest.approx(base + float(delta.square().sum()),
                                                                             rel=1e-10)
    assert frechet_distance(mu + delta + c, sigma1, mu + c, sigma2) == pytest.approx(
        frechet_distance(mu + delta, sigma1, mu, sigma2), rel=1e-10)


def test_frechet_distance_rejects_mismatched_shapes():
    """Means and covariances of different sizes raise ValueError. Catches: silent broadcasting."""
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))


def test_gaussian_stats_is_numpys_mean_and_unbiased_covariance(gen):
    """mu = numpy mean, sigma = numpy.cov(rowvar=False) (divisor N − 1), both float64, from float32
    features. Catches: divisor N, the covariance of the rows (N×N), float32 results."""
    features = torch.randn(50, 4, generator=gen) * torch.tensor([1.0, 2.0, 0.5, 3.0]) + 7.0
    mu, sigma = gaussian_stats(features)
    assert mu.dtype == sigma.dtype == torch.float64 and sigma.shape == (4, 4)
    f = features.double().numpy()
    np.testing.assert_allclose(mu.numpy(), f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(f, rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match="N ≥ 2"):
        gaussian_stats(features[:1])


def test_class_histogram_and_its_entropy():
    """Counts of arg-max classes; entropy in nats: ln 10 for a uniform spread, 0 for a single class,
    −Σ p ln p for counts (1, 1, 2). Catches: log base 2, counting probabilities instead of arg-maxes,
    NaN from 0·ln 0."""
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.4, 0.6]])
    assert class_histogram(probs).tolist() == [1, 1, 2]
    assert class_histogram(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])).tolist() == [1, 1, 0]   # an empty class
    assert histogram_entropy(torch.tensor([1, 1, 2])) == pytest.approx(-2 * 0.25 * math.log(0.25) - 0.5 * math.log(0.5))
    assert histogram_entropy(torch.full((10,), 7)) == pytest.approx(math.log(10))
    assert histogram_entropy(torch.tensor([0, 0, 5, 0])) == 0.0


@pytest.fixture(scope="module")
def fid_setting():
    """The shipped classifier and mnist-5k's splits, with features of the held-out digits."""
    classifier = load_classifier()
    x_train, _ = dl.load_images("mnist-5k", train=True, pad_to_32=True)
    x_heldout, y_heldout = dl.load_images("mnist-5k", train=False, pad_to_32=True)
    return classifier, x_train, x_heldout, y_heldout


def test_fid_mnist_batches_like_one_pass_and_confidence_is_the_mean_max_softmax(fid_setting):
    """fid_mnist with uneven batches (128 into 300 and 250) equals the Fréchet distance of numpy
    statistics of ``features`` computed in one pass; classifier_confidence equals the mean of the
    largest softmax probability of ``forward``. Catches: a dropped last batch, features taken in train
    mode (dropout), the mean logit or the mean of all probabilities reported as confidence."""
    classifier, x_train, x_heldout, _ = fid_setting
    a, b = x_train[::13][:300], x_heldout[::4]
    with torch.no_grad():
        fa, fb = classifier.features(a).double().numpy(), classifier.features(b).double().numpy()
        probs = classifier(b).softmax(-1)
    expected = scipy_frechet(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    assert fid_mnist(a, b, classifier, batch_size=128) == pytest.approx(expected, rel=1e-5)
    assert classifier_confidence(b, classifier, batch_size=128) == pytest.approx(float(probs.max(-1).values.mean()),
                                                                                  rel=1e-6)
    features, out_probs = classifier_outputs(b, classifier, batch_size=128)
    assert features.shape == (250, 128) and out_probs.shape == (250, 10)
    noise = torch.rand(250, *b.shape[1:], generator=torch.Generator().manual_seed(0)) * 2 - 1
    mixed = torch.cat([b[:30], noise[:20]])              # sure digits and unsure noise: mean ≠ median
    stats = image_statistics(mixed, classifier)
    assert stats["confidence"] == pytest.approx(classifier_confidence(mixed, classifier), rel=1e-12)
    assert stats["class_counts"] == class_histogram(classifier_outputs(mixed, classifier)[1]).tolist()


def test_fid_mnist_orders_real_noised_and_random_images(fid_setting, capsys):
    """Held-out digits against 1,000 training digits score low (≈ 10: two finite samples of one
    distribution); against 500 of those digits noised (σ = 0.5, then σ = 1, clamped to [−1, 1]) and
    against 500 uniform noise images the score rises in that order, the last two by more than 20×. The
    held-out digits are classified with confidence > 0.95 and an even spread over the ten classes.
    Catches: features that ignore the image (all distances alike), FID computed from the logits'
    arg-max only, a sign error that rewards noise."""
    classifier, x_train, x_heldout, _ = fid_setting
    g = torch.Generator().manual_seed(0)
    train_subset = x_train[torch.randperm(len(x_train), generator=g)[:1000]]
    noised = train_subset[:500]
    held = image_statistics(x_heldout, classifier)

    def fid(images):
        stats = image_statistics(images, classifier)
        return frechet_distance(stats["mu"], stats["sigma"], held["mu"], held["sigma"])

    fids = {"train digits": fid(train_subset),
            "noised σ = 0.5": fid((noised + 0.5 * torch.randn(noised.shape, generator=g)).clamp(-1, 1)),
            "noised σ = 1": fid((noised + torch.randn(noised.shape, generator=g)).clamp(-1, 1)),
            "uniform noise": fid(torch.rand(500, 1, 32, 32, generator=g) * 2 - 1)}
    with capsys.disabled():
        print("\nFID-MNIST vs the 1,000 held-out digits: " + ", ".join(f"{k} {v:.2f}" for k, v in fids.items()))
    values = list(fids.values())
    assert values[0] < 20
    assert values == sorted(values) and values[2] > 20 * values[0] and values[3] > 20 * values[0]
    assert held["confidence"] > 0.95
    assert sum(held["class_counts"]) == 1000 and held["class_entropy"] > math.log(10) - 0.01


def test_fid_floor_redraws_are_bootstrap_sets_scored_against_the_whole_reference(fid_setting):
    """Each redraw is the FID-MNIST (computed by ``fid_mnist``, an independent path) of the images picked by
    ``torch.randint`` with the same generator, against all the reference images; the redraws differ from one
    another; n larger than the pool works (with replacement); n < 2 is refused. Catches: one set reused for
    every redraw, the reference subsampled too, picks without the caller's generator, indices off by one set."""
    classifier, x_train, x_heldout, _ = fid_setting
    real, reference = x_train[:300], x_heldout[:400]
    redraws = dl.fid_floor_redraws(real, reference, 150, classifier, times=3, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    expected = [fid_mnist(real[torch.randint(300, (150,), generator=g)], reference, classifier) for _ in range(3)]
    assert redraws.dtype == torch.float64 and redraws.shape == (3,)
    assert redraws.tolist() == pytest.approx(expected, rel=1e-4)
    assert len(set(redraws.tolist())) == 3
    assert dl.fid_floor_redraws(real[:50], reference, 80, classifier, times=1).shape == (1,)
    with pytest.raises(ValueError, match="at least 2"):
        dl.fid_floor_redraws(real, reference, 1, classifier)


@pytest.mark.parametrize("wrong", ["mu1", "sigma1", "mu2", "sigma2"])
def test_frechet_distance_refuses_each_argument_of_another_size(wrong):
    """One argument of the wrong size, the other three of D = 3, raises the one-line ValueError, whichever it
    is. Catches: a shape check that forgets one of the four (broadcasting or a matmul error instead)."""
    args = {"mu1": torch.zeros(3), "sigma1": torch.eye(3), "mu2": torch.zeros(3), "sigma2": torch.eye(3)}
    args[wrong] = torch.zeros(2) if wrong.startswith("mu") else torch.eye(2)
    with pytest.raises(ValueError, match="need means \\(D,\\) and covariances \\(D, D\\) of one D"):
        frechet_distance(**args)


def test_float32_arguments_are_computed_in_float64():
    """Commuting float32 covariances diag(a), diag(b) with means m₁, m₂: the distance equals the closed form
    ‖m₁ − m₂‖² + Σ(√a − √b)² evaluated in float64 from the same float32 numbers, to 1e-12. Catches: the
    arithmetic done in the arguments' float32 (errors of 1e-7)."""
    a = torch.tensor([0.3, 1.7, 2.9, 0.011], dtype=torch.float32)
    b = torch.tensor([1.1, 0.23, 2.7, 0.5], dtype=torch.float32)
    m1 = torch.tensor([0.1, -0.7, 0.33, 1.9], dtype=torch.float32)
    m2 = torch.tensor([0.2, 0.6, -0.21, 1.7], dtype=torch.float32)
    expected = float((m1.double() - m2.double()).square().sum()
                     + (a.double().sqrt() - b.double().sqrt()).square().sum())
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)


class TinyClassifier(torch.nn.Module):
    """A stand-in with the interface of ``MNISTClassifier`` (``features``, ``head``): features are the pixel
    means of the four quadrants times fixed weights, passed through dropout so that train mode shows."""

    def __init__(self, num_classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.proj = torch.nn.Parameter(torch.randn(4, 5, generator=g))
        self.dropout = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(5, num_classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(num_classes, 5, generator=g))
            self.head.bias.zero_()

    def features(self, x):
        q = x.unflatten(-1, (2, -1)).unflatten(-3, (2, -1)).mean((-1, -3)).flatten(1)   # (N, 4)
        return self.dropout(q @ self.proj)


def test_classifier_outputs_are_taken_in_eval_mode_and_refuse_batch_size_zero(gen):
    """A classifier left in train mode (its features pass through dropout) gives the eval-mode features and
    softmax(head(relu(features))), the same in batches of 3 as in one; ``batch_size=0`` is refused by name.
    Catches: the classifier not put in eval mode (dropout in FID features), a batch size 0 reaching range()."""
    from ddpm_lib.metrics import classifier_outputs
    classifier = TinyClassifier()
    images = torch.rand(7, 1, 8, 8, generator=gen) * 2 - 1
    with torch.no_grad():
        expected = classifier.eval().features(images)
    classifier.train()
    features, probs = classifier_outputs(images, classifier, batch_size=3)
    torch.testing.assert_close(features, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(probs, torch.softmax(classifier.head(torch.relu(expected)), -1).detach(),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        classifier_outputs(images, classifier, batch_size=0)


def test_image_statistics_of_a_small_classifier_against_its_own_outputs(gen):
    """``image_statistics`` with 3 classes: n, the mean and covariance of ``classifier_outputs``'s features
    (numpy), the mean max-probability, the arg-max counts, their entropy (−Σ p ln p by hand) and ln 3 as the
    largest entropy. Catches: log₂ as the maximum, a class dropped from the entropy, a median confidence."""
    from ddpm_lib.metrics import classifier_outputs
    classifier = TinyClassifier().eval()
    images = torch.rand(40, 1, 8, 8, generator=gen) * 2 - 1
    stats = image_statistics(images, classifier, batch_size=16)
    features, probs = classifier_outputs(images, classifier)
    f = features.double().numpy()
    counts = np.bincount(probs.argmax(1).numpy(), minlength=3)
    assert stats["n"] == 40 and stats["class_counts"] == counts.tolist() and counts.min() > 0
    np.testing.assert_allclose(stats["mu"].numpy(), f.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["sigma"].numpy(), np.cov(f, rowvar=False), rtol=1e-9)
    assert stats["confidence"] == pytest.approx(float(probs.max(1).values.double().mean()), rel=1e-9)
    p = counts / counts.sum()
    assert stats["class_entropy"] == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)
    assert stats["max_class_entropy"] == pytest.approx(math.log(3), rel=1e-12)


def test_fid_floor_redraws_refuse_zero_redraws():
    """``times=0`` is refused (an empty tensor would give a NaN spread). Catches: only n checked."""
    with pytest.raises(ValueError, match="times at least 1"):
        dl.fid_floor_redraws(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8), 2, TinyClassifier(), times=0)


def test_pixels_0_to_255_are_refused_and_images_in_0_1_are_warned_about(gen):
    """The classifier reads images in [−1, 1] with background −1. uint8 pixels were cast to floats 0..255 and
    scored without a word; images in [0, 1] (torchvision's ToTensor) lose their background. Catches: either
    accepted silently, a warning for proper images, or a warning that points into the package."""
    classifier = TinyClassifier()
    images = torch.rand(7, 1, 8, 8, generator=gen) * 2 - 1
    with pytest.raises(ValueError, match=r"images are torch.uint8: .* dl.to_model_range"):
        classifier_outputs(((images + 1) * 127.5).to(torch.uint8), classifier)
    with pytest.warns(UserWarning, match=r"no pixel is below 0: images in \[0, 1\]\?") as caught:
        classifier_confidence((images + 1) / 2, classifier)
    assert [w.filename for w in caught] == [__file__]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        classifier_outputs(images, classifier)
