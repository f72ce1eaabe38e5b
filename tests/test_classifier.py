"""Tests of ddpm_lib.classifier: the shipped MNIST classifier (its sha256, its accuracy on the held-out
digits it never saw), the network's shapes, the shift augmentation, training, saving and loading.

Each test's docstring names the wrong implementation it catches.
"""
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ddpm_lib as dl
from ddpm_lib.classifier import (DEFAULT_CLASSIFIER, MNISTClassifier, classifier_accuracy, load_classifier,
                                 random_shift, save_classifier, train_classifier)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "data" / "mnist_classifier.pt"


@pytest.fixture(scope="module")
def heldout():
    return dl.load_images("mnist-5k", train=False, pad_to_32=True)


def test_shipped_classifier_matches_its_card_and_is_accurate_on_held_out_digits(heldout):
    """data/mnist_classifier.pt: its sha256 (hashlib here) is the card's; it loads on the CPU in eval
    mode; its accuracy on mnist-5k's 1,000 held-out digits, recomputed here from the logits' arg-max,
    is ≥ 0.97, at least 0.9 in every class, and the card's number. Catches: a stale card after
    retraining, a classifier trained on the held-out digits' split wrongly reported, a file saved in
    train mode or on a GPU."""
    assert DEFAULT_CLASSIFIER == SHIPPED
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert card["file"] == SHIPPED.name and card["data"] == "mnist-5k" and card["n_heldout"] == 1000
    assert card["command"].startswith("python -m ddpm_lib train-classifier --data mnist-5k")
    model = load_classifier()
    assert not model.training and all(p.device.type == "cpu" for p in model.parameters())
    x, y = heldout
    with torch.no_grad():
        predicted = model(x).argmax(1)
    accuracy = (predicted == y).double().mean().item()
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(card["heldout_accuracy"], abs=0.002)
    per_class = [(predicted[y == k] == k).double().mean().item() for k in range(10)]
    assert min(per_class) >= 0.9, per_class


def test_shapes_padding_and_batch_independent_features(heldout):
    """features: (B, 128), logits: (B, 10); a 28×28 digit gives what its −1-padded 32×32 copy gives;
    an image's features do not depend on its batch (GroupNorm); other shapes raise ValueError.
    Catches: BatchNorm statistics leaking between images, padding with 0, 3-channel input accepted."""
    model = load_classifier()
    x = heldout[0][::100]
    with torch.no_grad():
        features, logits = model.features(x), model(x)
        assert features.shape == (10, 128) and logits.shape == (10, 10)
        torch.testing.assert_close(model.features(x[2:3]), features[2:3], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x[..., 2:30, 2:30]), logits, rtol=0, atol=0)
    for shape in [(2, 3, 32, 32), (2, 1, 16, 16), (1, 32, 32)]:
        with pytest.raises(ValueError, match="32, 32"):
            model(torch.zeros(shape))


def test_random_shift_moves_each_image_by_at_most_two_pixels_without_wrapping():
    """A lone bright pixel at (10, 12) lands at (10 + u, 12 + v) with |u|, |v| ≤ 2, and all 25 shifts
    occur over 500 images; a pixel at the corner (0, 0) either stays within rows/columns 0..2 or falls
    off, never reappearing at the far side; the background stays −1. Catches: torch.roll (wraps
    around), one shift for the whole batch, shifts of 0..2 only, padding with 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.full((500, 1, 32, 32), -1.0)
    x[:, 0, 10, 12] = 1.0
    x[:, 0, 0, 0] = 1.0
    out = random_shift(x, 2, g)
    assert out.shape == x.shape and set(out.unique().tolist()) == {-1.0, 1.0}
    lit = (out[:, 0] == 1.0).nonzero()
    interior = lit[lit[:, 1] >= 5]
    corner = lit[lit[:, 1] < 5]
    assert len(interior) == 500 and torch.equal(interior[:, 0], torch.arange(500))
    moves = {(r - 10, c - 12) for r, c in interior[:, 1:].tolist()}
    assert moves == {(u, v) for u in range(-2, 3) for v in range(-2, 3)}
    assert corner[:, 1:].max() <= 2 and len(corner) < 500                # fell off for negative moves
    assert torch.equal(random_shift(x, 0, g), x)


def test_training_on_a_tiny_subset_lowers_the_loss_and_is_seeded(heldout):
    """200 training digits, 4 epochs of batches of 10 (80 steps, no shifts): the last 10 steps' mean
    loss is below 0.6 × the first 5 steps', the returned model's cross-entropy on those digits is below
    ½ ln 10 (an untrained one is near ln 10 ≈ 2.3), the returned accuracy is classifier_accuracy on
    the held-out digits, and a second run with the same seed gives the same weights. Catches: a
    missing optimizer step or zero_grad, a learning rate stuck at 0, unseeded shifts or data order."""
    x_all, y_all = dl.load_images("mnist-5k", train=True, pad_to_32=True)
    pick = torch.cat([torch.nonzero(y_all == k)[:20, 0] for k in range(10)])
    x, y = x_all[pick], y_all[pick]
    x_held, y_held = heldout[0][::10], heldout[1][::10]
    losses = []
    settings = dict(epochs=4, batch_size=10, lr=3e-3, max_shift=0, seed=6, model_config=dict(width=8, feature_dim=64))
    model, accuracy = train_classifier(x, y, x_held, y_held, log=lambda step, loss: losses.append(loss), **settings)
    assert len(losses) == 80
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() < 0.5 * math.log(10)
    assert accuracy == classifier_accuracy(model, x_held, y_held)
    run1, _ = train_classifier(x, y, x_held, y_held, **{**settings, "epochs": 1})
    run2, _ = train_classifier(x, y, x_held, y_held, **{**settings, "epochs": 1})
    for name, tensor in run1.state_dict().items():
        assert torch.equal(tensor, run2.state_dict()[name]), name
    for bad, words in (({"batch_size": 500}, r"^batch_size must lie in 1..200 \(the training digits\), got 500$"),
                       ({"epochs": 0}, r"^epochs must be at least 1, got 0$"),
                       ({"lr": 0.0}, r"^lr must be positive, got 0.0$"),       # a classifier at chance, written
                       ({"lr": float("nan")}, r"^lr must be positive, got nan$"),  # without a word
                       ({"max_shift": 16}, r"^max_shift must lie in 0..15 \(under half the image side\), got 16$"),
                       ({"weight_decay": -0.1}, r"^weight_decay must be at least 0, got -0.1$")):
        with pytest.raises(ValueError, match=words):               # the one bad setting, by name (not all five)
            train_classifier(x, y, x_held, y_held, **{**settings, **bad})


def test_save_writes_weights_and_a_card_with_the_files_sha256(tmp_path, heldout):
    """save_classifier writes the .pt and a .json card beside it holding the given fields, the format,
    the config, the file name and the sha256 of the written bytes; load_classifier gives back the same
    function. Catches: the hash of another file or of the state dict, a card that drops the given
    fields, a width lost on loading."""
    torch.manual_seed(0)
    model = MNISTClassifier(width=8, feature_dim=64).eval()
    path = tmp_path / "sub" / "clf.pt"
    card = save_classifier(model, path, {"heldout_accuracy": 0.5, "command": "python -m ddpm_lib train-classifier"})
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk == card
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["file"] == "clf.pt" and card["heldout_accuracy"] == 0.5 and card["config"]["width"] == 8
    loaded = load_classifier(path)
    x = heldout[0][:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_missing_truncated_and_foreign_files_fail_clearly(tmp_path):
    """Missing: FileNotFoundError saying how to train one; truncated: RuntimeError saying 'truncated';
    a torch file that is not a classifier: ValueError; another architecture: ValueError. Catches: a raw
    zipfile or KeyError traceback, loading with weights_only=False, silently random weights."""
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        load_classifier(tmp_path / "nowhere.pt")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(SHIPPED.read_bytes()[:5000])
    with pytest.raises(RuntimeError, match="truncated"):
        load_classifier(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not a ddpm_lib MNIST classifier"):
        load_classifier(foreign)
    saved = torch.load(SHIPPED, weights_only=True)
    saved["config"]["width"] = 8                                   # weights of width 16 under width 8
    other = tmp_path / "other.pt"
    torch.save(saved, other)
    with pytest.raises(ValueError, match="different architecture"):
        load_classifier(other)


def test_learning_rate_warms_up_over_the_first_epoch_then_decays_by_a_cosine(heldout, monkeypatch):
    """40 digits in batches of 10 for 3 epochs (12 steps, warm-up 4): the lr each AdamW step uses is
    lr·k/4 for k = 1..4 (lr at the end of warm-up) and lr·½(1 + cos(π(k − 4)/8)) after, 0 at the last step.
    Catches: an off-by-one warm-up ((k − 1)/4: lr 0 at the first step), a decay that does not reach 0, a
    warm-up over the whole run."""
    used = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            used.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    x, y = heldout[0][:40], heldout[1][:40]
    train_classifier(x, y, x[:10], y[:10], epochs=3, batch_size=10, lr=2e-3, max_shift=0,
                     model_config=dict(width=8, feature_dim=16))
    expected = [2e-3 * k / 4 for k in range(1, 5)] + [2e-3 * 0.5 * (1 + math.cos(math.pi * (k - 4) / 8))
                                                      for k in range(5, 13)]
    assert used == pytest.approx(expected, rel=1e-12, abs=1e-18)
    assert used[0] == pytest.approx(5e-4) and used[3] == pytest.approx(2e-3) and used[-1] == pytest.approx(0, abs=1e-18)


def test_accuracy_is_measured_in_eval_mode_and_restores_the_mode(heldout):
    """The shipped classifier with dropout raised to 0.9: classifier_accuracy on 200 held-out digits is the
    eval-mode arg-max accuracy computed here (the same value twice: no dropout), and a model in train mode
    is back in train mode afterwards, one in eval mode stays in eval mode. Catches: accuracy in train mode
    (dropout on), the mode not restored, the model always left in train mode."""
    model = load_classifier()
    model.dropout.p = 0.9
    x, y = heldout[0][:200], heldout[1][:200]
    with torch.no_grad():
        expected = (model.eval()(x).argmax(1) == y).double().mean().item()
    model.train()
    first = classifier_accuracy(model, x, y, batch_size=64)
    assert model.training
    assert first == pytest.approx(expected, abs=1e-12) and classifier_accuracy(model, x, y) == first
    model.eval()
    assert classifier_accuracy(model, x, y, batch_size=64) == first and not model.training


def test_features_are_taken_before_the_relu(heldout):
    """On 100 held-out digits the shipped classifier's features include negative values and every one of
    the 128 columns varies (variance > 0, in float64); in eval mode forward(x) = head(ReLU(features(x))).
    Catches: features taken after the ReLU (no negatives; units dead on every digit make the FID
    covariance singular), a forward that skips the ReLU or applies it twice."""
    model = load_classifier()
    x = heldout[0][:100]
    with torch.no_grad():
        f = model.features(x)
        logits = model(x)
    assert (f < 0).float().mean() > 0.1
    assert f.double().var(dim=0).min() > 0
    torch.testing.assert_close(logits, f.clamp(min=0) @ model.head.weight.T + model.head.bias, rtol=1e-5, atol=1e-5)
