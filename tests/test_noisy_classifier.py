"""Tests of ddpm_lib.noisy_classifier: the noise-aware classifier p_φ(y | x_t, t) (the U-Net's encoder with a
pooled head), its training on noised images, its accuracy at a noise level, and its use for guided sampling.

Each test's docstring names the wrong implementation it catches.
"""
import math

import pytest
import torch
from torch import nn

import ddpm_lib as dl
from ddpm_lib.guidance import classifier_grad_fn
from ddpm_lib.noisy_classifier import NoisyClassifier, noisy_classifier_accuracy, train_noisy_classifier

F64 = torch.float64


def small_classifier(num_classes=2, **kw):
    """The "tiny" preset shrunk to 8×8 images (two levels) so that tests run in well under a second."""
    args = dict(image_size=8, base_width=16, width_mult=(1, 2), attn_res=(4,), heads=2)
    return NoisyClassifier.from_preset("tiny", num_classes=num_classes, **{**args, **kw})


def toy_images(n, generator):
    """Two classes of 8×8 images in [−1, 1]: class 0 bright on the left half, class 1 on the right, with noise."""
    y = torch.arange(n) % 2
    x = -torch.ones(n, 1, 8, 8)
    cols = torch.arange(8)
    left = (cols < 4).float()
    x += 1.6 * torch.where(y[:, None, None, None] == 0, left, 1 - left)
    x += 0.2 * torch.randn(x.shape, generator=generator)
    return x.clamp(-1, 1), y


def test_output_shape_and_presets():
    """Logits (B, K) for the "tiny" preset at 32×32 and the small variant; the "mnist" preset builds with 10
    classes; unknown presets, too few classes and wrong image shapes raise ValueError. Catches: a head that
    does not pool (shape (B, K, H, W)), a wrong channel count after the middle block."""
    torch.manual_seed(0)
    model = NoisyClassifier.from_preset("tiny", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 32, 32), torch.tensor([1, 500, 1000])).shape == (3, 10)
        assert small_classifier(num_classes=4)(torch.randn(5, 1, 8, 8), torch.tensor([3])).shape == (5, 4)
    mnist = NoisyClassifier.from_preset("mnist")
    assert mnist.num_classes == 10 and mnist.head[-1].out_features == 10
    with pytest.raises(ValueError, match="unknown preset"):
        NoisyClassifier.from_preset("resnet")
    with pytest.raises(ValueError, match="num_classes"):
        NoisyClassifier.from_preset("tiny", num_classes=1)
    with pytest.raises(ValueError, match="expected images"):
        model(torch.randn(3, 3, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(3, 1, 30, 30), torch.tensor([1]))


def test_encoder_is_the_unets_encoder():
    """Apart from the head, the classifier's parameters are exactly the U-Net's time MLP, conv_in, down blocks and
    middle (same names and shapes), and none of its decoder. Catches: a decoder kept by mistake, an encoder
    that differs from the U-Net's (other widths, blocks or attention)."""
    kw = dict(image_size=8, base_width=16, width_mult=(1, 2), attn_res=(4,), heads=2)
    clf = small_classifier(**kw)
    unet = dl.UNet.from_preset("tiny", **kw)
    ours = {k: v.shape for k, v in clf.state_dict().items() if not k.startswith("head.")}
    encoder = ("time_mlp", "conv_in", "down", "middle")
    theirs = {k: v.shape for k, v in unet.state_dict().items() if k.split(".")[0] in encoder}
    assert ours == theirs
    assert not any(k.split(".")[0] in ("up", "out") for k in clf.state_dict())


def test_time_input_changes_the_logits():
    """The same x_t at t = 1, 100, 1000 gives different logits (by far more than float32 rounding: the same t
    twice gives the same logits bit for bit): t enters through the embedding. Catches: the time embedding
    computed but not handed to the blocks."""
    torch.manual_seed(1)
    model = small_classifier().eval()
    x = torch.randn(1, 1, 8, 8).expand(4, 1, 8, 8)
    with torch.no_grad():
        logits = model(x, torch.tensor([1, 100, 1000, 100]))
    assert torch.equal(logits[1], logits[3])
    assert (logits[0] - logits[1]).abs().max() > 1e-5 and (logits[1] - logits[2]).abs().max() > 1e-5


def test_logits_of_one_image_ignore_the_rest_of_the_batch():
    """In float64, an image's logits are the same alone and batched with others (GroupNorm only): what
    classifier_grad_fn needs. Catches: a BatchNorm in the network."""
    torch.manual_seed(2)
    model = small_classifier().double().eval()
    x = torch.randn(6, 1, 8, 8, dtype=F64)
    t = torch.tensor([5, 9, 100, 3, 70, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1], t[:1])[0], model(x, t)[0], rtol=1e-12, atol=1e-12)


def test_training_lowers_the_loss_on_noised_toy_images():
    """40 AdamW steps on two classes of toy images (T = 50, cosine): the cross-entropy on a fixed held-out set
    of noised images (fixed t and ε, t spread over 1..50) falls from near log 2 by at least 20% (measured:
    0.695 → 0.478; at t = 50 nothing is left to classify), the history has one finite loss per step and its
    last ten steps are below its first ten, the model ends in eval mode, and the accuracy at t = 1 exceeds
    90% (measured 100%). Catches: the loss not minimised (sign), labels misaligned with their images, t not
    drawn in 1..T."""
    g = torch.Generator().manual_seed(3)
    x_train, y_train = toy_images(256, g)
    x_test, y_test = toy_images(200, g)
    s = dl.make_schedule("cosine", 50)
    t_test = torch.arange(200) % 50 + 1
    xt_test = dl.q_sample(s, x_test, t_test, torch.randn(x_test.shape, generator=g))
    torch.manual_seed(4)
    model = small_classifier()

    def held_out_loss():
        with torch.no_grad():
            return nn.functional.cross_entropy(model.eval()(xt_test, t_test), y_test).item()

    before = held_out_loss()
    history = train_noisy_classifier(model, s, x_train, y_train, steps=40, batch=32, lr=3e-3,
                                     generator=torch.Generator().manual_seed(5))
    after = held_out_loss()
    assert len(history) == 40 and all(math.isfinite(v) for v in history)
    assert not model.training
    assert abs(before - math.log(2)) < 0.3 and after < 0.8 * before, (before, after)
    assert sum(history[-10:]) < sum(history[:10]), history
    acc = noisy_classifier_accuracy(model, s, x_test, y_test, t=1, generator=torch.Generator().manual_seed(6))
    assert acc > 0.9, acc


def test_training_rejects_bad_data():
    """Labels outside the classes, a label count that differs from the images, a batch larger than the data:
    ValueError. Catches: cross-entropy failing later with an index error deep inside torch."""
    model = small_classifier()
    s = dl.make_schedule("cosine", 10)
    x, g = torch.zeros(8, 1, 8, 8), torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        train_noisy_classifier(model, s, x, torch.tensor([0, 1, 2, 0, 1, 0, 1, 0]), 1, 4, 1e-3, g)
    with pytest.raises(ValueError, match="one integer label per image"):
        train_noisy_classifier(model, s, x, torch.zeros(7, dtype=torch.long), 1, 4, 1e-3, g)
    y = torch.zeros(8, dtype=torch.long)
    for args, words in (((1, 9, 1e-3), r"^batch must lie in 1..8 \(the images\), got 9$"),
                        ((0, 4, 1e-3), r"^steps must be at least 1, got 0$"),
                        ((1, 4, float("nan")), r"^lr must be positive, got nan$")):
        with pytest.raises(ValueError, match=words):                 # the one bad setting, not all three
            train_noisy_classifier(model, s, x, y, *args, g)
    with pytest.raises(ValueError, match=r"^weight_decay must be at least 0, got -1.0$"):
        train_noisy_classifier(model, s, x, y, 1, 4, 1e-3, g, weight_decay=-1.0)


class ConstantClassifier(nn.Module):
    """Always predicts class 1 (a stub with a known accuracy: the share of label 1)."""
    num_classes = 3

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, xt, t):
        return torch.tensor([0.0, 1.0, 0.0]).expand(xt.shape[0], 3) + 0 * self.p


def test_accuracy_counts_the_arg_max():
    """A classifier that always says 1 has accuracy = the share of label 1 (here 7 of 20), across batches of 6,
    and is put back in training mode if it was in it. Catches: a mean over batches instead of over images,
    off-by-one batch slicing."""
    y = torch.tensor([1] * 7 + [0] * 8 + [2] * 5)
    model = ConstantClassifier().train()
    acc = noisy_classifier_accuracy(model, dl.make_schedule("cosine", 10), torch.zeros(20, 1, 4, 4), y, t=5,
                                    generator=torch.Generator().manual_seed(0), batch_size=6)
    assert acc == 7 / 20 and model.training


def test_head_sees_the_middle_blocks_output():
    """Forward hooks on the small classifier: the middle block receives the last down block's output and the
    head receives the middle block's output, and the logits are the head of it. Catches: the middle block
    (Res, Attn, Res) skipped, the head fed the down path's output or conv_in's."""
    torch.manual_seed(9)
    model = small_classifier().eval()
    seen = {}
    model.down[-1].register_forward_hook(lambda m, args, out: seen.__setitem__("down", out))
    model.middle.register_forward_pre_hook(lambda m, args: seen.__setitem__("middle_in", args[0]))
    model.middle.register_forward_hook(lambda m, args, out: seen.__setitem__("middle_out", out))
    model.head.register_forward_pre_hook(lambda m, args: seen.__setitem__("head_in", args[0]))
    with torch.no_grad():
        logits = model(torch.randn(3, 1, 8, 8), torch.tensor([1, 40, 900]))
        assert set(seen) == {"down", "middle_in", "middle_out", "head_in"}
        assert seen["middle_in"] is seen["down"] and seen["head_in"] is seen["middle_out"]
        assert (seen["middle_out"] - seen["down"]).abs().max() > 1e-3          # the middle block does something
        assert torch.equal(logits, model.head(seen["middle_out"]))


def test_training_leaves_the_model_in_eval_mode():
    """Right after one training step (nothing else touching the model) it is in eval mode, as the docstring
    promises (ready to guide). Catches: the model left in train mode."""
    torch.manual_seed(10)
    model = small_classifier().train()
    x, y = toy_images(8, torch.Generator().manual_seed(11))
    train_noisy_classifier(model, dl.make_schedule("cosine", 10), x, y, steps=1, batch=4, lr=1e-3,
                           generator=torch.Generator().manual_seed(12))
    assert not model.training


class ProbeClassifier(nn.Module):
    """Records every (x_t, t) it is called with; float64 so that x_t can be checked to round-off."""
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1, dtype=F64))
        self.calls = []

    def forward(self, xt, t):
        self.calls.append((xt.clone(), t.clone()))
        return torch.zeros(xt.shape[0], 2, dtype=F64) + 0 * self.p


def test_accuracy_noises_the_images_to_level_t():
    """A probe model sees, in batches of 3 of 5 images, x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε (eq. 4, written out
    here from s.alpha_bar) with ε the generator's next randn draws of each batch's shape (float64, the
    model's dtype), and t the requested level for every image. Catches: the clean x_0 classified, ε
    redrawn from another generator or shared by all batches, t off by one or ᾱ indexed at t − 1."""
    s = dl.make_schedule("cosine", 20)
    x0 = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(13), dtype=F64) * 2 - 1
    y = torch.tensor([0, 1, 0, 1, 1])
    model = ProbeClassifier()
    noisy_classifier_accuracy(model, s, x0, y, t=7, generator=torch.Generator().manual_seed(14), batch_size=3)
    g = torch.Generator().manual_seed(14)
    eps = torch.cat([torch.randn((b, 1, 4, 4), generator=g, dtype=F64) for b in (3, 2)])
    abar = s.alpha_bar[7].item()
    assert abar == pytest.approx(math.prod(1 - s.beta[k].item() for k in range(1, 8)), rel=1e-12)
    expected = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    assert [c[0].shape[0] for c in model.calls] == [3, 2]
    torch.testing.assert_close(torch.cat([c[0] for c in model.calls]), expected, rtol=1e-12, atol=1e-12)
    assert torch.cat([c[1] for c in model.calls]).tolist() == [7] * 5


def test_guided_ddim_with_the_noisy_classifier_on_images():
    """classifier_grad_fn(NoisyClassifier) drives sample_ddim on images inside its no_grad: the result has the
    image shape and is finite, scale 0 reproduces the unguided draw exactly, and scale 5 moves it. Catches:
    the gradient lost under no_grad, a (B, K) gradient instead of the image's shape."""
    torch.manual_seed(7)
    clf = small_classifier(num_classes=3).eval()
    s = dl.make_schedule("cosine", 20)
    eps_model = lambda xt, t: 0.5 * xt                                        # noqa: E731
    runs = []
    for scale in (None, 0.0, 5.0):
        cond_fn = None if scale is None else classifier_grad_fn(clf, torch.tensor([0, 1, 2, 1]), scale)
        runs.append(dl.sample_ddim(eps_model, s, (4, 1, 8, 8), steps=4, eta=1.0,
                                   generator=torch.Generator().manual_seed(8), cond_fn=cond_fn))
    assert runs[2].shape == (4, 1, 8, 8) and torch.isfinite(runs[2]).all()
    assert torch.equal(runs[0], runs[1])
    assert (runs[2] - runs[0]).abs().max() > 1e-3


# ---- the train-noisy-classifier command, saving and loading ----

def test_train_noisy_classifier_command_end_to_end(tmp_path, capsys, monkeypatch):
    """``train-noisy-classifier`` on mnist-5k (tiny preset, 3 steps, T = 10; every 10th digit of each split
    to keep the test fast): the weights and a card holding the file's sha256, the exact command, the
    schedule and the held-out accuracy at each --eval-t, which the reloaded classifier reproduces on the
    held-out digits with the card's noise seed (seed + 1). Catches: a card hashing another file, accuracy
    of the training split, a schedule not saved, weights that do not round-trip."""
    import hashlib
    import json

    from ddpm_lib import cli_noisy_classifier
    from ddpm_lib.cli import main
    from ddpm_lib.noisy_classifier import load_noisy_classifier
    splits = {train: tuple(a[::10] for a in dl.load_images("mnist-5k", train=train, pad_to_32=True))
              for train in (True, False)}
    monkeypatch.setattr(cli_noisy_classifier, "load_images", lambda name, root=None, train=True, pad_to_32=False: splits[train])
    out = tmp_path / "models" / "noisy.pt"
    args = ["train-noisy-classifier", "--data", "mnist-5k", "--out", str(out), "--steps", "3", "--batch-size", "16",
            "--preset", "tiny", "--schedule", "cosine", "--T", "10", "--eval-t", "1", "10", "--seed", "2",
            "--device", "cpu"]
    assert main(args) == 0
    assert "held-out accuracy at t = 1:" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["command"] == "python -m ddpm_lib " + " ".join(args)
    assert card["schedule"] == {"name": "cosine", "T": 10} and card["steps"] == 3 and card["seed"] == 2
    assert card["n_train"] == 400 and card["n_heldout"] == 100 and card["train_seconds"] >= 0
    assert set(card["heldout_accuracy_at_t"]) == {"1", "10"} and card["config"]["num_classes"] == 10
    model, s = load_noisy_classifier(out)
    assert isinstance(model, NoisyClassifier) and not model.training and (s.name, s.T) == ("cosine", 10)
    torch.testing.assert_close(s.beta, dl.make_schedule("cosine", 10).beta, rtol=0, atol=0)
    x_held, y_held = splits[False]
    for t, accuracy in card["heldout_accuracy_at_t"].items():
        assert 0 <= accuracy <= 1
        assert accuracy == noisy_classifier_accuracy(model, s, x_held, y_held, int(t), torch.Generator().manual_seed(3))
    capsys.readouterr()                               # a batch larger than the 400 digits: refused, not shrunk
    assert main([*args[:args.index("--batch-size")], "--batch-size", "401", *args[args.index("--batch-size") + 2:],
                 "--out", str(tmp_path / "big.pt")]) == 1
    assert "--batch-size 401 is larger than the 400 training digits" in capsys.readouterr().err


def test_saved_noisy_classifier_round_trips_and_refuses_changed_files(tmp_path):
    """save → load gives the logits of the model with its weights rounded to fp16 (the file holds fp16, half
    the size), as float32, and the schedule; a changed byte, a missing card, a truncated file and a file of
    another kind are refused with the right error type."""
    from ddpm_lib.classifier import DEFAULT_CLASSIFIER
    from ddpm_lib.noisy_classifier import load_noisy_classifier, save_noisy_classifier
    torch.manual_seed(0)
    model = small_classifier(num_classes=3).eval()
    path = tmp_path / "c.pt"
    card = save_noisy_classifier(model, dl.make_schedule("sigmoid", 40), path, {"note": "test"})
    assert card["note"] == "test" and card["schedule"] == {"name": "sigmoid", "T": 40}
    loaded, s = load_noisy_classifier(path)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 40])
    rounded = small_classifier(num_classes=3).eval()
    rounded.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                             for k, v in model.state_dict().items()})
    assert torch.equal(loaded(x, t), rounded(x, t)) and s.name == "sigmoid" and s.T == 40
    assert not torch.equal(rounded(x, t), model(x, t))                    # the rounding is visible
    assert all(v.dtype == torch.float16 for v in torch.load(path, weights_only=True)["state_dict"].values()
               if v.is_floating_point())
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="the file is damaged"):              # torch.save's own checksums
        load_noisy_classifier(path)
    card_path = path.with_suffix(".json")
    path.write_bytes(bytes(data[:-100]) + bytes([data[-100] ^ 1]) + bytes(data[-99:]))     # whole again
    card_path.write_text(card_path.read_text().replace(card["sha256"], "0" * 64))
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_noisy_classifier(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(ValueError, match="no card"):
        load_noisy_classifier(path)
    path.write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(RuntimeError, match="truncated"):
        load_noisy_classifier(path, check_sha256=False)
    with pytest.raises(ValueError, match="not a ddpm_lib noisy classifier"):
        load_noisy_classifier(DEFAULT_CLASSIFIER, check_sha256=False)
    with pytest.raises(FileNotFoundError):
        load_noisy_classifier(tmp_path / "none.pt")


def test_training_noises_each_minibatch_with_uniform_t_replayed_from_the_generator():
    """A probe model trained for 3 steps of batch 4 on 5 images (T = 3) sees, at each step, x_t = √ᾱ_t·x_0[idx] +
    √(1 − ᾱ_t)·ε (eq. 4 with ᾱ written out from β) and t, where idx, t ~ U{1..T} and ε are replayed here from
    the same seed in the documented order (idx, t, ε). Catches: the clean images fed to the model, t drawn from
    1..T − 1 (randint's exclusive end), ᾱ indexed at t − 1."""
    betas = torch.tensor([0.2, 0.4, 0.6], dtype=F64)
    s = dl.schedule_from_betas(betas)
    alpha_bar = torch.cat([torch.ones(1, dtype=F64), torch.cumprod(1 - betas, 0)])
    x0 = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(20), dtype=F64) * 2 - 1
    y = torch.tensor([0, 1, 0, 1, 1])
    model = ProbeClassifier()
    train_noisy_classifier(model, s, x0, y, steps=3, batch=4, lr=1e-3, generator=torch.Generator().manual_seed(21))
    g = torch.Generator().manual_seed(21)
    seen_t = []
    assert len(model.calls) == 3
    for xt, t in model.calls:
        idx = torch.randint(0, 5, (4,), generator=g)
        t_hand = torch.randint(1, 4, (4,), generator=g)
        eps = torch.randn((4, 1, 4, 4), generator=g, dtype=F64)
        ab = alpha_bar[t_hand].reshape(4, 1, 1, 1)
        assert torch.equal(t, t_hand)
        torch.testing.assert_close(xt, ab.sqrt() * x0[idx] + (1 - ab).sqrt() * eps, rtol=1e-12, atol=1e-12)
        seen_t += t.tolist()
    assert 3 in seen_t                                          # t = T is drawn (12 draws from {1, 2, 3})


def test_accuracy_leaves_an_eval_model_in_eval_mode():
    """noisy_classifier_accuracy puts the model back in the mode it found: eval stays eval (the training case is
    in test_accuracy_counts_the_arg_max). Catches: the model switched to training mode after measuring."""
    model = ConstantClassifier().eval()
    noisy_classifier_accuracy(model, dl.make_schedule("cosine", 10), torch.zeros(4, 1, 4, 4),
                              torch.tensor([1, 1, 0, 2]), t=3, generator=torch.Generator().manual_seed(0))
    assert not model.training
