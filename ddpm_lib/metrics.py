"""Sample quality for MNIST models: FID-MNIST, the classifier's confidence and the spread over classes.

FID (Heusel et al. 2017) fits a Gaussian N(μ, Σ) to the features of real images and another to the
features of generated ones and reports their Fréchet (2-Wasserstein) distance

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}).                         (FID)

FID-MNIST uses the 128 penultimate features (before the ReLU) of ``ddpm_lib``'s own MNIST classifier
(``classifier.MNISTClassifier.features``), not Inception-v3's 2048: its numbers are comparable with
each other, never with Inception FIDs in papers. Lower is better; two samples of the same
distribution still differ by a finite-sample bias that shrinks with the numbers of images.

Also here: the classifier's mean confidence (mean max-softmax; sharp, recognisable digits score
near 1) and the histogram of predicted classes with its entropy (mode coverage: ln 10 ≈ 2.303 nats
when all ten digits are equally frequent, 0 when a model draws one digit only).
"""
from __future__ import annotations

import math
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

# How every JSON table and help text names the metric, so that no reader takes it for Inception FID.
METRIC = "FID-MNIST (features of ddpm_lib's MNIST classifier; not Inception FID)"


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix by its eigendecomposition
    (eigenvalues below 0 from round-off are set to 0)."""
    eigvals, eigvecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, sigma)``: the mean (D,) and the unbiased covariance (D, D) (divisor N − 1, like
    ``numpy.cov``) of ``features`` (N, D), both in float64. Needs N ≥ 2."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N ≥ 2 rows, got {tuple(features.shape)}")
    f = features.detach().to("cpu", torch.float64)
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """The Fréchet distance (FID) of N(mu1, sigma1) and N(mu2, sigma2): ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ −
    2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}), in float64 with symmetric eigendecompositions (``torch.linalg.eigh``).

    tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}) = tr((Σ₁ Σ₂)^{1/2}), the form other FID code writes with
    ``scipy.linalg.sqrtm``; the symmetric form keeps every matrix symmetric and needs no scipy.
    mu: (D,), sigma: (D, D) symmetric positive semi-definite.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mu1, mu2, sigma1, sigma2))
    D = mu1.shape[0]
    if mu1.shape != (D,) or mu2.shape != (D,) or sigma1.shape != (D, D) or sigma2.shape != (D, D):
        raise ValueError(f"need means (D,) and covariances (D, D) of one D, got {tuple(mu1.shape)}, "
                         f"{tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    root1 = _sqrtm_psd(sigma1)
    cross = root1 @ sigma2 @ root1
    trace_cross_root = torch.linalg.eigvalsh((cross + cross.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_cross_root
    return max(float(distance), 0.0)            # round-off can leave −1e-12 for identical Gaussians


def warn_caller(message: str) -> None:
    """``warnings.warn`` pointing at the first line outside ddpm_lib and torch (the user's call)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("ddpm_lib", "torch"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


@torch.no_grad()
def classifier_outputs(images: torch.Tensor, classifier: nn.Module, batch_size: int = 500):
    """``(features, probs)`` of ``images`` (N, 1, 32, 32) in [−1, 1]: the classifier's penultimate
    features (N, D) and its softmax probabilities (N, 10), float32 on the CPU, computed in batches on
    the classifier's device with the classifier in eval mode."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not images.is_floating_point():
        raise ValueError(f"images are {images.dtype}: the classifier takes floats in [−1, 1] "
                         f"(pixels 0..255: dl.to_model_range)")
    if len(images) and float(images.min()) >= 0:
        warn_caller("no pixel is below 0: images in [0, 1]? The classifier takes [−1, 1] with background −1 "
                    "(x * 2 − 1)")
    classifier.eval()
    device = next(classifier.parameters()).device
    features, probs = [], []
    for i in range(0, len(images), batch_size):
        f = classifier.features(images[i:i + batch_size].to(device, torch.float32))
        features.append(f.cpu())
        probs.append(classifier.head(F.relu(f)).softmax(-1).cpu())   # = forward(x) in eval mode (no dropout)
    return torch.cat(features), torch.cat(probs)


def fid_mnist(samples: torch.Tensor, real: torch.Tensor, classifier: nn.Module, batch_size: int = 500) -> float:
    """FID-MNIST of two image sets (N, 1, 32, 32) in [−1, 1]: eq. (FID) between the Gaussians of
    their classifier features. Not comparable with Inception FID."""
    stats = [gaussian_stats(classifier_outputs(x, classifier, batch_size)[0]) for x in (samples, real)]
    return frechet_distance(*stats[0], *stats[1])


def classifier_confidence(images: torch.Tensor, classifier: nn.Module, batch_size: int = 500) -> float:
    """Mean over ``images`` of the classifier's largest softmax probability (in [1/10, 1])."""
    return float(classifier_outputs(images, classifier, batch_size)[1].max(-1).values.double().mean())


def class_histogram(probs: torch.Tensor) -> torch.Tensor:
    """How many images the classifier assigns to each class (arg-max of ``probs`` (N, K)): long (K,)."""
    return torch.bincount(probs.argmax(-1), minlength=probs.shape[-1])


def histogram_entropy(counts: torch.Tensor) -> float:
    """Entropy in nats of the class frequencies ``counts`` (K,): ln K for a uniform spread, 0 for one class."""
    p = counts.to(torch.float64) / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def image_statistics(images: torch.Tensor, classifier: nn.Module, batch_size: int = 500) -> dict:
    """One classifier pass over ``images``: the Gaussian of the features (``mu``, ``sigma``), the mean
    confidence, the predicted-class counts and their entropy (nats)."""
    features, probs = classifier_outputs(images, classifier, batch_size)
    mu, sigma = gaussian_stats(features)
    counts = class_histogram(probs)
    return {"n": len(images), "mu": mu, "sigma": sigma,
            "confidence": float(probs.max(-1).values.double().mean()),
            "class_counts": counts.tolist(), "class_entropy": histogram_entropy(counts),
            "max_class_entropy": math.log(probs.shape[-1])}


def fid_floor_redraws(real: torch.Tensor, reference: torch.Tensor, n: int, classifier: nn.Module, times: int = 10,
                      generator: torch.Generator | None = None, batch_size: int = 500) -> torch.Tensor:
    """How much the FID-MNIST floor moves from one random set of real images to the next: the FID-MNIST of
    ``times`` sets of ``n`` images drawn *with replacement* (a bootstrap, so ``n`` may be all of ``real``)
    from ``real``, each against all of ``reference``. One classifier pass over each tensor; float64 (times,)."""
    if n < 2 or times < 1:
        raise ValueError(f"n must be at least 2 (a covariance needs two images) and times at least 1, got {n}, {times}")
    features = classifier_outputs(real, classifier, batch_size)[0].double()
    mu_ref, sigma_ref = gaussian_stats(classifier_outputs(reference, classifier, batch_size)[0].double())
    picks = [torch.randint(len(features), (n,), generator=generator) for _ in range(times)]
    return torch.tensor([frechet_distance(*gaussian_stats(features[p]), mu_ref, sigma_ref) for p in picks],
                        dtype=torch.float64)
