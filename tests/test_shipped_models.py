"""The models shipped in data/laptop still do their job with today's code.

Notebooks 06–09 start from these files. A change to the networks that keeps every shape but changes
what a weight means (the halves of the time projection swapped, a norm moved, an input channel order)
passes the architecture tests and the loader's shape checks, yet turns the shipped weights into noise.
Each test measures a file's job on held-out digits against a bar far from what a broken network
scores: ε prediction against ε = 0, a classifier's accuracy against chance, samples' confidence.
"""
from pathlib import Path

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.classifier import load_classifier
from ddpm_lib.ddgan import sample_ddgan
from ddpm_lib.metrics import class_histogram, classifier_outputs, histogram_entropy
from ddpm_lib.noisy_classifier import load_noisy_classifier, noisy_classifier_accuracy

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "laptop"


@pytest.fixture(scope="module")
def digits():
    """128 held-out digits of every class (mnist-5k's held-out split, every 8th), 32×32 in [−1, 1]."""
    x, y = dl.load_images("mnist-5k", train=False, pad_to_32=True)
    return x[::8][:128], y[::8][:128]


def eps_mse(model, s, x0, t, labels=None):
    """E‖ε_θ(x_t, t) − ε‖² per element at level t, ε of a fixed seed (x_t by eq. 4, written out)."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
    a_bar = s.alpha_bar[t].float()
    xt = a_bar.sqrt() * x0 + (1 - a_bar).sqrt() * eps
    tt = torch.full((len(x0),), t)
    with torch.no_grad():
        pred = model(xt, tt) if labels is None else model(xt, tt, labels)
    return float(((pred - eps) ** 2).mean())


def test_the_shipped_ddpm_predicts_the_noise(digits):
    """ε_θ of data/laptop/ddpm_mnist.pt misses ε by a mean square below 0.2 at t = 10, 200 and 500
    (about 0.11, 0.03 and 0.01 when it was shipped); predicting ε = 0 scores 1. Catches: shipped weights
    that no longer mean what they did (e.g. scale and shift of the time projection swapped)."""
    x, _ = digits
    model, s = dl.load_pretrained(SHIPPED / "ddpm_mnist.pt")
    for t in (10, 200, 500):
        assert eps_mse(model, s, x, t) < 0.2, t


def test_the_shipped_class_conditional_ddpm_predicts_the_noise_and_uses_the_label(digits):
    """The CFG model of data/laptop/ddpm_mnist_cfg.pt: ε error below 0.2 with the true labels and with the
    null label, and at t = 500 (where the digit is mostly noise) the true label lowers the error by more
    than 10% (about 20% when shipped). Catches: the class embedding ignored or scrambled."""
    x, y = digits
    model, s, info = dl.load_sampling_model(SHIPPED / "ddpm_mnist_cfg.pt")
    null = torch.full_like(y, info["config"]["num_classes"])
    for t in (10, 200, 500):
        assert eps_mse(model, s, x, t, y) < 0.2 and eps_mse(model, s, x, t, null) < 0.2, t
    assert eps_mse(model, s, x, 500, y) < 0.9 * eps_mse(model, s, x, 500, null)


def test_the_shipped_ddgan_draws_confident_varied_digits():
    """128 samples of data/laptop/ddgan_mnist.pt (4 generator calls) are classified with mean confidence
    above 0.85 (0.94 when shipped; random images score about 0.3) and spread over the classes with
    entropy above 2.0 nats (ln 10 = 2.30). Catches: broken weights, a collapsed generator."""
    G, s, _ = dl.load_ddgan_generator(SHIPPED / "ddgan_mnist.pt")
    x0 = sample_ddgan(G, s, (128, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    _, probs = classifier_outputs(x0.clamp(-1, 1), load_classifier())
    assert probs.max(1).values.mean() > 0.85
    assert histogram_entropy(class_histogram(probs)) > 2.0


def test_the_shipped_noisy_classifier_recognises_noised_digits(digits):
    """data/laptop/noisy_classifier_mnist.pt classifies held-out digits noised to t = 1 and t = 250 with
    accuracy above 0.85 (its card: 0.95 and 0.94 on 1,000 digits; chance is 0.1)."""
    x, y = digits
    model, s = load_noisy_classifier(SHIPPED / "noisy_classifier_mnist.pt")
    for t in (1, 250):
        assert noisy_classifier_accuracy(model, s, x, y, t, torch.Generator().manual_seed(t)) > 0.85, t


@pytest.mark.parametrize("load, name", [(dl.load_pretrained, "ddpm_mnist"), (load_classifier, "../mnist_classifier"),
                                        (dl.load_ddgan_generator, "ddgan_mnist"),
                                        (load_noisy_classifier, "noisy_classifier_mnist")])
def test_a_card_given_for_its_weights_is_named_as_such(load, name):
    """A student passes ``ddpm_mnist.json`` (the card, beside the weights) to a loader. Catches: "does not match
    the sha256 in ddpm_mnist.json: the file is damaged or was replaced" (the card checked against itself), or
    "not a PyTorch file"."""
    card = SHIPPED / f"{name}.json"
    with pytest.raises(ValueError, match=rf"^{card}.* is a JSON card: pass the file it describes, .*{name}\.pt$"):
        load(card)
