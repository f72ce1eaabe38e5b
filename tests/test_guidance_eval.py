"""Guidance from the command line: ``sample`` with --label / --cfg-scale / --classifier / --scale,
``evaluate-guidance``, and their one-line errors. Tiny untrained models (T = 10) on the CPU: the tests
check that the command line computes what the formulas say, draw for draw, not that guidance works
(tests/test_guidance.py checks that with exact oracles)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm_lib as dl
from ddpm_lib.classifier import load_classifier
from ddpm_lib.cli import main
from ddpm_lib.export import export_ema_weights
from ddpm_lib.cli_noisy_classifier import default_eval_t
from ddpm_lib.guidance_eval import class_statistics, judged_diversity, mean_pairwise_distance
from ddpm_lib.metrics import classifier_outputs, fid_mnist
from ddpm_lib.noisy_classifier import NoisyClassifier, load_noisy_classifier, save_noisy_classifier

COMMON = dict(data="mnist-5k", preset="tiny", schedule="cosine", T=10, steps=2, batch_size=8, warmup=1,
              sample_every=0, log_every=1, device="cpu", progress=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An unconditional and a class-conditional (CFG) tiny U-Net after 2 steps, the CFG one also exported,
    and untrained noisy classifiers: one for the models' schedule, two for other schedules."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("guidance")
    dl.train(dl.TrainConfig(out_dir=str(root / "uncond"), **COMMON))
    dl.train(dl.TrainConfig(out_dir=str(root / "cfg"), num_classes=10, p_uncond=0.2, **COMMON))
    export_ema_weights(root / "cfg", root / "cfg.pt", command="test")
    torch.manual_seed(0)
    classifier = NoisyClassifier.from_preset("tiny", num_classes=10).eval()
    save_noisy_classifier(classifier, dl.make_schedule("cosine", 10), root / "noisy.pt")
    save_noisy_classifier(classifier, dl.make_schedule("cosine", 20), root / "noisy_T20.pt")
    save_noisy_classifier(classifier, dl.make_schedule("sigmoid", 10), root / "noisy_sigmoid.pt")
    return root


def run(*args) -> int:
    return main([*map(str, args), "--device", "cpu"])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def hand_classifier_cond_fn(classifier, y, scale):
    """s·∇_x log softmax(classifier(x, t))[i, y_i], written here with plain autograd."""
    def cond_fn(xt, t):
        with torch.enable_grad():
            x = xt.detach().requires_grad_(True)
            log_p = torch.log_softmax(classifier(x, t), dim=1)[torch.arange(len(y)), y].sum()
            return scale * torch.autograd.grad(log_p, x)[0]
    return cond_fn


def test_cfg_sample_is_eps_u_plus_w_times_the_difference(models, tmp_path):
    """``sample --label 3 --cfg-scale 3`` (DDIM, η = 0) equals DDIM run here with ε_u + 3·(ε_c − ε_u) from
    the two calls of the conditional U-Net. Catches: w applied to the wrong branch, the label ignored,
    (1 + w)·ε_c − w·ε_u (Ho & Salimans' own w, off by one)."""
    assert run("sample", "--checkpoint", models / "cfg", "--label", 3, "--cfg-scale", 3, "--n", 3, "--seed", 4,
               "--sampler", "ddim", "--steps", 4, "--out", tmp_path / "x.pt") == 0
    model, s, _ = dl.load_ema_model(models / "cfg")

    def eps_model(xt, t):
        eps_u = model(xt, t, torch.full((len(xt),), 10))
        return eps_u + 3.0 * (model(xt, t, torch.full((len(xt),), 3)) - eps_u)

    expected = dl.sample_ddim(eps_model, s, (3, 1, 32, 32), steps=4, generator=torch.Generator().manual_seed(4))
    got = torch.load(tmp_path / "x.pt", weights_only=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    conditional = dl.sample_ddim(lambda xt, t: model(xt, t, torch.full((len(xt),), 3)), s, (3, 1, 32, 32),
                                 steps=4, generator=torch.Generator().manual_seed(4))
    assert (got - conditional).abs().max() > 1e-2                  # w = 3 is not w = 1


def test_label_all_draws_n_of_each_class_one_class_per_row(models, tmp_path):
    """``--label all --n 2`` from the exported file: 20 samples whose i-th has label i // 2 (compared with
    DDIM (η = 1) run here at w = 2 with those labels), and a PNG grid of 10 rows of 2."""
    assert run("sample", "--checkpoint", models / "cfg.pt", "--label", "all", "--cfg-scale", 2, "--n", 2,
               "--sampler", "ddim", "--steps", 3, "--eta", 1, "--out", tmp_path / "x.pt") == 0
    model, s = dl.load_pretrained(models / "cfg.pt")
    labels = torch.arange(10).repeat_interleave(2)

    def eps_model(xt, t):
        eps_u = model(xt, t, torch.full((len(xt),), 10))
        return eps_u + 2.0 * (model(xt, t, labels) - eps_u)

    expected = dl.sample_ddim(eps_model, s, (20, 1, 32, 32), steps=3, eta=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.load(tmp_path / "x.pt", weights_only=True), expected, rtol=1e-4, atol=1e-4)
    assert run("sample", "--checkpoint", models / "cfg", "--label", "all", "--n", 2, "--sampler", "ddim", "--steps", 1,
               "--out", tmp_path / "g.png") == 0
    grid = Image.open(tmp_path / "g.png")
    assert grid.size == (2 * 34 + 2, 10 * 34 + 2)                  # (width, height): 2 columns, 10 rows


def test_classifier_guided_sample_adds_the_scaled_log_probability_gradient(models, tmp_path):
    """``--classifier --label 7 --scale 40`` with DDIM η = 0.5 equals ``sample_ddim`` run here with a
    cond_fn written by hand (autograd of log softmax), and differs from the unguided samples."""
    args = ["sample", "--checkpoint", models / "uncond", "--n", 4, "--seed", 1, "--sampler", "ddim", "--steps", 5,
            "--eta", 0.5]
    assert run(*args, "--classifier", models / "noisy.pt", "--label", 7, "--scale", 40, "--out", tmp_path / "g.pt") == 0
    assert run(*args, "--out", tmp_path / "u.pt") == 0
    model, s, _ = dl.load_ema_model(models / "uncond")
    classifier, _ = load_noisy_classifier(models / "noisy.pt")
    expected = dl.sample_ddim(model, s, (4, 1, 32, 32), steps=5, eta=0.5, generator=torch.Generator().manual_seed(1),
                              cond_fn=hand_classifier_cond_fn(classifier, torch.full((4,), 7), 40.0))
    guided = torch.load(tmp_path / "g.pt", weights_only=True)
    torch.testing.assert_close(guided, expected, rtol=1e-4, atol=1e-4)
    assert (guided - torch.load(tmp_path / "u.pt", weights_only=True)).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", [["--sampler", "ddpm"], ["--sampler", "ddim", "--steps", "4", "--eta", "1"]])
def test_scale_zero_reproduces_the_unguided_command_draw_for_draw(models, tmp_path, sampler):
    """Classifier guidance at s = 0 gives exactly the unguided samples of the same seed (both samplers,
    with noise drawn at every step), and CFG at w = 0 exactly the null-label samples; s = 1 does not."""
    common = ["sample", "--n", 3, "--seed", 3, *sampler]
    assert run(*common, "--checkpoint", models / "uncond", "--out", tmp_path / "u.pt") == 0
    for scale in (0, 1):
        assert run(*common, "--checkpoint", models / "uncond", "--classifier", models / "noisy.pt", "--label", 2,
                   "--scale", scale, "--out", tmp_path / f"s{scale}.pt") == 0
    unguided = torch.load(tmp_path / "u.pt", weights_only=True)
    assert torch.equal(torch.load(tmp_path / "s0.pt", weights_only=True), unguided)
    assert not torch.equal(torch.load(tmp_path / "s1.pt", weights_only=True), unguided)
    assert run(*common, "--checkpoint", models / "cfg", "--out", tmp_path / "null.pt") == 0
    assert run(*common, "--checkpoint", models / "cfg", "--label", 2, "--cfg-scale", 0, "--out", tmp_path / "w0.pt") == 0
    assert torch.equal(torch.load(tmp_path / "w0.pt", weights_only=True), torch.load(tmp_path / "null.pt", weights_only=True))


def test_bad_guidance_flags_end_with_one_line(models, tmp_path, capsys):
    uncond, cfg, noisy = models / "uncond", models / "cfg", models / "noisy.pt"
    out = ["--n", "2", "--out", str(tmp_path / "x.pt")]
    cases = [
        ((cfg, "--label", "10"), "outside 0..9"),
        ((cfg, "--label", "-1"), "outside 0..9"),
        ((cfg, "--label", "three"), "must be a class 0..9 or 'all'"),
        ((uncond, "--classifier", noisy, "--label", "12"), "outside 0..9"),
        ((uncond, "--label", "2", "--cfg-scale", "3"), "needs a class-conditional model"),
        ((cfg, "--label", "2", "--cfg-scale", "-1"), "--cfg-scale must be >= 0"),
        ((uncond, "--classifier", noisy, "--label", "2", "--scale", "-0.5"), "--scale must be >= 0"),
        ((uncond, "--label", "2", "--scale", "2"), "pass --classifier too"),
        ((uncond, "--classifier", noisy), "pass --label"),
        ((uncond, "--label", "2"), "needs a class-conditional model or a --classifier"),
        ((cfg, "--classifier", noisy, "--label", "2", "--cfg-scale", "2"), "either --cfg-scale"),
        ((uncond, "--classifier", models / "noisy_T20.pt", "--label", "2"), "with T = 20"),
        ((uncond, "--classifier", models / "noisy_sigmoid.pt", "--label", "2"), "sigmoid schedule"),
        ((uncond, "--classifier", tmp_path / "none.pt", "--label", "2"), "no noisy classifier file"),
    ]
    for args, message in cases:
        assert run("sample", "--checkpoint", *args, *out) == 1, args
        assert message in one_error_line(capsys), (args, message)
    assert not (tmp_path / "x.pt").exists()


def test_bad_evaluate_guidance_flags_end_with_one_line(models, tmp_path, capsys):
    common = ["evaluate-guidance", "--n-per-class", "2", "--out", str(tmp_path / "r.json")]
    cases = [
        ((models / "uncond", "--classifier", models / "noisy.pt", "--scales", 0, 1, "--cfg-scales", 1),
         "exactly one of --scales"),
        ((models / "uncond", "--scales", 0, 1), "pass --classifier"),
        ((models / "uncond", "--cfg-scales", 0, 1), "needs a class-conditional model"),
        ((models / "uncond", "--classifier", models / "noisy.pt", "--scales", 0, -1), "must all be finite and >= 0"),
        ((models / "uncond", "--classifier", models / "noisy.pt", "--scales", 0, "nan"), "must all be finite"),
        ((models / "cfg", "--cfg-scales", 0, "inf"), "must all be finite"),
        ((models / "uncond", "--classifier", models / "noisy_T20.pt", "--scales", 1), "with T = 20"),
        ((models / "cfg", "--cfg-scales", 1, "--n-per-class", 1), "--n-per-class must be at least 2"),
    ]
    for args, message in cases:
        assert run(*common, "--checkpoint", *args) == 1, args
        assert message in one_error_line(capsys), (args, message)


def test_evaluate_guidance_end_to_end_with_a_noisy_classifier(models, tmp_path, capsys):
    """``evaluate-guidance --scales 30 0``: JSON keys, the scales echoed, and, at s = 0, figures recomputed
    here from ``sample`` (the unguided command draws the same 20 samples in the same order): the clean
    classifier's accuracy on labels 0,0,1,1,…, its mean confidence, the mean pairwise feature distance
    within each class (numpy loops) and the overall FID-MNIST. Catches: accuracy on the noisy classifier,
    labels out of step with the samples, a new x_T per scale, a diversity over all classes at once."""
    assert run("evaluate-guidance", "--checkpoint", models / "uncond", "--classifier", models / "noisy.pt",
               "--scales", 30, 0, "--n-per-class", 2, "--batch-size", 8, "--sampler", "ddim", "--steps", 3,
               "--out", tmp_path / "out" / "r.json") == 0
    table = capsys.readouterr().out
    assert "accuracy" in table and "not Inception FID" in table
    r = json.loads((tmp_path / "out" / "r.json").read_text())
    assert r["scales"] == [30.0, 0.0] and [row["scale"] for row in r["results"]] == [30.0, 0.0]
    assert r["guidance"] == "classifier" and r["n_per_class"] == 2 and r["num_classes"] == 10
    assert r["real_heldout"]["n"] == 1000 and r["real_heldout"]["accuracy"] > 0.95
    for row in r["results"]:
        assert set(row) == {"scale", "accuracy", "per_class_accuracy", "confidence", "target_probability",
                            "diversity", "diversity_judged", "fid_mnist_within_class", "fid_mnist",
                            "sampling_seconds"}
        assert 0 <= row["accuracy"] <= 1 and len(row["per_class_accuracy"]) == 10
        assert row["accuracy"] == pytest.approx(np.mean(row["per_class_accuracy"]))
        assert row["fid_mnist_within_class"] is None                 # 2 per class ≤ 128 features
    assert run("sample", "--checkpoint", models / "uncond", "--n", 20, "--sampler", "ddim", "--steps", 3,
               "--out", tmp_path / "u.pt") == 0
    x = torch.load(tmp_path / "u.pt", weights_only=True).clamp(-1, 1).half().float()   # kept in fp16 as drawn
    clean = load_classifier()
    features, probs = classifier_outputs(x, clean)
    labels = np.repeat(np.arange(10), 2)
    unguided = r["results"][1]                                            # s = 0, drawn after s = 30
    assert unguided["accuracy"] == pytest.approx(float((probs.argmax(1).numpy() == labels).mean()))
    assert unguided["confidence"] == pytest.approx(float(probs.max(1).values.mean()), rel=1e-5)
    f = features.double().numpy()
    pairs = [np.mean([np.linalg.norm(f[i] - f[j]) for i in np.flatnonzero(labels == k)
                      for j in np.flatnonzero(labels == k) if i != j]) for k in range(10)]
    assert unguided["diversity"] == pytest.approx(np.mean(pairs), rel=1e-6)
    seen = probs.argmax(1).numpy()
    judged = [np.mean([np.linalg.norm(f[i] - f[j]) for i in np.flatnonzero(seen == k)
                       for j in np.flatnonzero(seen == k) if i != j]) for k in range(10) if (seen == k).sum() >= 2]
    assert unguided["diversity_judged"] == pytest.approx(np.mean(judged), rel=1e-6)
    assert r["real_heldout"]["diversity_judged"] > 0
    heldout, _ = dl.load_images("mnist-5k", train=False, pad_to_32=True)
    assert unguided["fid_mnist"] == pytest.approx(fid_mnist(x, heldout, clean), rel=1e-6)
    assert r["results"][0]["fid_mnist"] != unguided["fid_mnist"]          # s = 30 changed the samples


def test_evaluate_guidance_with_cfg_scales_on_an_exported_model(models, tmp_path):
    assert run("evaluate-guidance", "--checkpoint", models / "cfg.pt", "--cfg-scales", 0, 4, "--n-per-class", 2,
               "--sampler", "ddim", "--steps", 1, "--out", tmp_path / "r.json") == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["guidance"] == "classifier-free" and r["scales"] == [0.0, 4.0] and r["step"] == 2
    assert r["noisy_classifier"] is None and r["checkpoint"].endswith("cfg.pt")
    assert all(0 <= row["accuracy"] <= 1 and row["sampling_seconds"] >= 0 for row in r["results"])
    assert len({row["fid_mnist"] for row in r["results"]}) == 2      # two different sets of samples


def test_evaluate_takes_a_class_conditional_model_unconditionally(models, tmp_path):
    """Plain ``evaluate`` of a CFG model samples with the null label: the same samples as ``sample``
    without --label (so the same FID-MNIST as those samples measured here)."""
    assert run("evaluate", "--checkpoint", models / "cfg", "--n", 6, "--sampler", "ddim", "--steps", 2,
               "--out", tmp_path / "r.json") == 0
    assert run("sample", "--checkpoint", models / "cfg", "--n", 6, "--sampler", "ddim", "--steps", 2,
               "--out", tmp_path / "x.pt") == 0
    x = torch.load(tmp_path / "x.pt", weights_only=True).clamp(-1, 1)
    heldout, _ = dl.load_images("mnist-5k", train=False, pad_to_32=True)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["samples"]["fid_mnist"] == pytest.approx(fid_mnist(x, heldout, load_classifier()), rel=1e-6)


def test_class_statistics_against_brute_force(gen):
    """Within-class figures on made-up features (D = 3, 6 per class, so the within-class Fréchet distance
    is defined): diversity by a double loop, within-class FID by scipy's sqrtm, accuracy and p(target)."""
    from scipy.linalg import sqrtm
    features = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    real = torch.randn(14, 3, generator=gen, dtype=torch.float64) + 0.5
    labels, real_labels = torch.arange(2).repeat_interleave(6), torch.arange(2).repeat(7)
    probs = torch.softmax(torch.randn(12, 2, generator=gen, dtype=torch.float64), 1)
    stats = class_statistics(features, probs, labels, 2, real, real_labels)
    f, fr = features.numpy(), real.numpy()
    assert stats["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).double().mean()))
    assert stats["target_probability"] == pytest.approx(float(np.mean([probs[i, labels[i]] for i in range(12)])))

    def fid(a, b):
        m1, m2, s1, s2 = a.mean(0), b.mean(0), np.cov(a.T), np.cov(b.T)
        return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))

    fids = [fid(f[labels.numpy() == k], fr[real_labels.numpy() == k]) for k in range(2)]
    assert stats["fid_mnist_within_class"] == pytest.approx(np.mean(fids), rel=1e-6)
    pairs = [np.mean([np.linalg.norm(a - b) for i, a in enumerate(f[labels.numpy() == k])
                      for j, b in enumerate(f[labels.numpy() == k]) if i != j]) for k in range(2)]
    assert stats["diversity"] == pytest.approx(np.mean(pairs), rel=1e-9)
    seen = probs.argmax(1).numpy()
    judged = [np.mean([np.linalg.norm(a - b) for i, a in enumerate(f[seen == k]) for j, b in enumerate(f[seen == k])
                       if i != j]) for k in range(2) if (seen == k).sum() >= 2]
    assert stats["diversity_judged"] == pytest.approx(np.mean(judged), rel=1e-9)
    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    few = class_statistics(features, probs, labels, 2, real[:6], real_labels[:6])     # 3 real per class ≤ D = 3
    assert few["fid_mnist_within_class"] is None


def test_judged_diversity_groups_by_the_digit_seen_not_the_digit_asked_for():
    """Features 0, 1, 10, 11 asked to be digits 0, 1, 0, 1 and seen as 0, 0, 1, 1: grouped by the digit asked
    for, each group spans 10; grouped by the digit seen, each is 1 wide. Then six samples, seen as 0, 0, 1,
    1, 2, 0: digit 2, seen once, has no pair and is left out, so the judged figure is the mean of digit 0's
    {0, 1, 60} (mean distance (1 + 60 + 59)/3 = 40) and digit 1's {10, 11} (1). Catches: grouping by the
    labels, a digit seen once counted as 0 or crashing the command."""
    features = torch.tensor([[0.0], [1.0], [10.0], [11.0]], dtype=torch.float64)
    seen_as = lambda *digits: torch.eye(3, dtype=torch.float64)[list(digits)] * 0.8 + 0.2 / 3   # noqa: E731
    stats = class_statistics(features[:, :], seen_as(0, 0, 1, 1)[:, :2], torch.tensor([0, 1, 0, 1]), 2)
    assert stats["diversity"] == pytest.approx(10.0) and stats["diversity_judged"] == pytest.approx(1.0)
    features = torch.tensor([[0.0], [1.0], [10.0], [11.0], [50.0], [60.0]], dtype=torch.float64)
    stats = class_statistics(features, seen_as(0, 0, 1, 1, 2, 0), torch.tensor([0, 1, 2, 0, 1, 2]), 3)
    assert stats["diversity_judged"] == pytest.approx((40.0 + 1.0) / 2)
    with pytest.raises(ValueError, match="no digit is seen twice"):
        judged_diversity(features[:3], seen_as(0, 1, 2))


def test_default_noise_levels_of_the_accuracy_card():
    assert default_eval_t(1000) == [1, 250, 500, 750, 1000] and default_eval_t(10) == [1, 2, 5, 8, 10]


def test_a_stopped_evaluate_guidance_continues_from_the_kept_scales_and_writes_the_uninterrupted_results(
        models, tmp_path, capsys, monkeypatch):
    """CFG at w = 0 and 2, 2 digits per class in batches of 8 (20 samples: batches 0–7, 8–15, 16–19 per scale),
    stopped in w = 2's second batch: the line names that scale's 8 kept samples, and the run again draws only
    the batches from sample 8 on (with the labels of samples 8…, not 0…), then writes the results of an
    uninterrupted run and removes the kept files. Catches: a stopped or a finished scale started over, a
    resumed batch given the first batch's labels, kept files left behind."""
    from ddpm_lib import guidance_eval
    real_draw, starts = guidance_eval.draw_samples, []

    def counted(stop_at=None):
        def draw(model, schedule, shape, generator, args, progress=False, cond_fn=None):
            starts.append(shape[0])
            if len(starts) == stop_at:
                raise KeyboardInterrupt
            return real_draw(model, schedule, shape, generator, args, progress, cond_fn)
        return draw

    command = ["evaluate-guidance", "--checkpoint", models / "cfg.pt", "--cfg-scales", 0, 2, "--n-per-class", 2,
               "--batch-size", 8, "--sampler", "ddim", "--steps", 3]
    assert run(*command, "--out", tmp_path / "whole.json") == 0
    out = tmp_path / "split.json"
    monkeypatch.setattr(guidance_eval, "draw_samples", counted(stop_at=5))      # w = 0: 3 batches; w = 2: the 2nd
    capsys.readouterr()
    assert run(*command, "--out", out) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"interrupted: 8 of 20 samples are kept in {out}.row2.partial.pt; the same command continues "
                    f"from them")
    assert sorted(p.name for p in tmp_path.glob("split*")) == ["split.json.row1.partial.pt",
                                                               "split.json.row2.partial.pt"]
    starts.clear()
    labels_seen = []
    real_guided = guidance_eval.guided_model
    monkeypatch.setattr(guidance_eval, "guided_model", lambda model, info, y, *a: labels_seen.append(y.tolist())
                        or real_guided(model, info, y, *a))
    monkeypatch.setattr(guidance_eval, "draw_samples", counted())
    assert run(*command, "--out", out) == 0
    assert starts == [8, 4] and labels_seen == [[4, 4, 5, 5, 6, 6, 7, 7], [8, 8, 9, 9]]
    whole, split = (json.loads((tmp_path / name).read_text()) for name in ("whole.json", "split.json"))
    for row in (*whole["results"], *split["results"]):
        assert row.pop("sampling_seconds") > 0                             # the clock differs, nothing else
    assert split["results"] == whole["results"]
    assert sorted(p.name for p in tmp_path.glob("split*")) == ["split.json"]


def test_draw_samples_passes_every_ddim_flag_and_the_description_names_them():
    """``draw_samples`` with --sampler ddim --steps 3 --eta 0.5 --grid quadratic equals ``sample_ddim`` with
    those settings (and not the uniform grid's), and ``describe_sampler``, which the key of kept samples
    holds, changes with each of steps, grid and η. Catches: a flag dropped on its way to the sampler, or
    from the key (a stopped run resumed with another grid or η would mix two samplers' samples)."""
    import argparse
    from ddpm_lib.guidance_eval import describe_sampler, draw_samples
    s = dl.make_schedule("cosine", 20)

    def eps_model(xt, t):
        return 0.3 * torch.tanh(xt) + 0.02 * t.float()[:, None]

    args = argparse.Namespace(sampler="ddim", steps=3, eta=0.5, grid="quadratic")
    got = draw_samples(eps_model, s, (4, 2), torch.Generator().manual_seed(0), args)
    expected = dl.sample_ddim(eps_model, s, (4, 2), steps=3, eta=0.5, grid="quadratic",
                              generator=torch.Generator().manual_seed(0))
    uniform = dl.sample_ddim(eps_model, s, (4, 2), steps=3, eta=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, expected) and not torch.allclose(got, uniform)
    words = {describe_sampler(argparse.Namespace(**{**vars(args), **change}), 20)
             for change in ({}, {"steps": 4}, {"grid": "uniform"}, {"eta": 0.0})}
    assert len(words) == 4


def test_guided_model_defaults_and_a_class_conditional_model_under_classifier_guidance(models):
    """A class-conditional model with labels and no --cfg-scale is ε_θ(x, t, y) (w = 1); under classifier
    guidance it runs with its null label, ε_θ(x, t, ∅), beside the classifier's cond_fn. Catches: a default
    w of 0 (unconditional samples for ``--label 3``), the conditional model called without labels."""
    from ddpm_lib.guidance_eval import guided_model
    model, _, _ = dl.load_ema_model(models / "cfg")
    info = {"model_spec": {"kind": "conditional_unet"}}
    xt = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([9, 4]), torch.tensor([3, 7])
    eps_model, cond_fn, words = guided_model(model, info, y)
    with torch.no_grad():
        torch.testing.assert_close(eps_model(xt, t), model(xt, t, y), rtol=0, atol=0)
        assert cond_fn is None and "w = 1" in words
        classifier, _ = load_noisy_classifier(models / "noisy.pt")
        eps_model, cond_fn, words = guided_model(model, info, y, classifier=classifier, scale=2.0)
        torch.testing.assert_close(eps_model(xt, t), model(xt, t, torch.full((2,), 10)), rtol=0, atol=0)
    assert cond_fn is not None and words == "classifier guidance, scale 2"


def test_a_class_conditional_model_at_w_one_costs_one_network_call_per_step():
    """At w = 1 (also the default with labels) ε̃ = ε_c needs ε_c alone: one call of the model per step, with
    the labels; at w = 2 two (ε_c and ε_u). Catches: the w = 1 shortcut lost (every plain conditional sample
    twice as slow)."""
    from ddpm_lib.guidance_eval import guided_model
    seen = []

    class Conditional(torch.nn.Module):
        null_label = 10

        def forward(self, xt, t, y):
            seen.append(y.tolist())
            return 0.5 * xt

    info, y = {"model_spec": {"kind": "conditional_unet"}}, torch.tensor([3, 7])
    for w in (None, 1.0):
        seen.clear()
        eps_model, _, _ = guided_model(Conditional(), info, y, cfg_scale=w)
        assert torch.equal(eps_model(torch.ones(2, 3), torch.tensor([5, 5])), torch.full((2, 3), 0.5))
        assert seen == [[3, 7]]
    seen.clear()
    guided_model(Conditional(), info, y, cfg_scale=2.0)[0](torch.ones(2, 3), torch.tensor([5, 5]))
    assert sorted(seen) == [[3, 7], [10, 10]]


def test_the_null_label_wrapper_keeps_the_models_eval_mode_so_that_it_compiles(models):
    """Unguided, a class-conditional model in eval mode is wrapped (ε_θ(x, t, ∅)) as a module in eval mode
    too, which ``compiled_eps_model`` accepts (it refuses a module in train mode); a model in train mode
    gives a wrapper in train mode. Catches: the wrapper left in nn.Module's default train mode, which made
    ``evaluate --compile`` refuse every class-conditional model."""
    from ddpm_lib.fast_sampling import compiled_eps_model
    from ddpm_lib.guidance_eval import guided_model
    model, _, _ = dl.load_ema_model(models / "cfg")
    info = {"model_spec": {"kind": "conditional_unet"}}
    base, cond_fn, _ = guided_model(model.eval(), info, None)
    assert isinstance(base, torch.nn.Module) and not base.training and cond_fn is None
    compiled_eps_model(base, (2, 1, 32, 32), device="cpu", backend="eager", warmup=0)
    assert guided_model(model.train(), info, None)[0].training
    model.eval()


def test_classifier_guidance_without_scale_is_scale_one(models, tmp_path):
    """``--classifier --label 5`` without --scale draws what ``--scale 1`` draws. Catches: another default."""
    common = ["sample", "--checkpoint", models / "uncond", "--classifier", models / "noisy.pt", "--label", 5, "--n", 2,
              "--seed", 2, "--sampler", "ddim", "--steps", 2, "--eta", 1]
    assert run(*common, "--out", tmp_path / "d.pt") == 0
    assert run(*common, "--scale", 1, "--out", tmp_path / "one.pt") == 0
    assert run(*common, "--scale", 0, "--out", tmp_path / "zero.pt") == 0
    default = torch.load(tmp_path / "d.pt", weights_only=True)
    assert torch.equal(default, torch.load(tmp_path / "one.pt", weights_only=True))
    assert not torch.equal(default, torch.load(tmp_path / "zero.pt", weights_only=True))


def test_fid_mnist_refuses_models_of_other_data_or_shape():
    """``mnist_digits`` refuses a model of toy data, and an MNIST model of another image shape, naming both.
    Catches: either check dropped (a FID-MNIST of 2-D points, or of 28×28 images against 32×32 digits)."""
    from ddpm_lib.guidance_eval import mean_pairwise_distance, mnist_digits
    with pytest.raises(ValueError, match="trained on 'two_moons' with examples of shape \\(2,\\)"):
        mnist_digits({"config": {"data": "two_moons"}, "example_shape": [2]}, train=False)
    with pytest.raises(ValueError, match="trained on 'mnist-5k' with examples of shape \\(1, 28, 28\\)"):
        mnist_digits({"config": {"data": "mnist-5k"}, "example_shape": [1, 28, 28]}, train=False)
    with pytest.raises(ValueError, match="trained on 'fashion-mnist' with examples of shape \\(1, 32, 32\\)"):
        mnist_digits({"config": {"data": "fashion-mnist"}, "example_shape": [1, 32, 32]}, train=False)
    with pytest.raises(ValueError, match="at least 2 rows"):
        mean_pairwise_distance(torch.zeros(1, 3))


def test_evaluate_guidance_refuses_batch_size_zero(models, tmp_path, capsys):
    assert run("evaluate-guidance", "--checkpoint", models / "cfg.pt", "--cfg-scales", 1, "--batch-size", 0,
               "--out", tmp_path / "r.json") == 1
    assert "--batch-size at least 1" in one_error_line(capsys)


def test_kept_samples_record_every_setting_that_decides_them_and_a_stop_while_measuring_keeps_them(
        models, tmp_path, capsys, monkeypatch):
    """A Ctrl-C while the clean classifier measures the first scale's samples (all drawn) ends with the line
    that names the 20 kept samples; their file's key is exactly the settings that decide the samples
    (checkpoint and its sha256, noisy classifier sha256, guidance kind, sampler with its steps, grid and η,
    n per class, batch size, seed, machine, torch build, scale), and a run with another seed is refused
    naming it. Catches: a setting left out of the key (samples of another seed, scale or checkpoint taken
    for this command's), a stop during the measurement that says nothing of the kept samples."""
    from ddpm_lib import guidance_eval
    from ddpm_lib.files import file_sha256, recorded_path
    real_outputs, calls = guidance_eval.classifier_outputs, []

    def stop_on_samples(images, classifier, batch_size=500):
        calls.append(len(images))
        if len(calls) == 2:                              # 1: the held-out digits, 2: the first scale's samples
            raise KeyboardInterrupt
        return real_outputs(images, classifier, batch_size)

    monkeypatch.setattr(guidance_eval, "classifier_outputs", stop_on_samples)
    out = tmp_path / "r.json"
    command = ["evaluate-guidance", "--checkpoint", models / "cfg.pt", "--cfg-scales", 1.5, 2, "--n-per-class", 2,
               "--batch-size", 8, "--sampler", "ddim", "--steps", 1, "--eta", 0.5]
    assert run(*command, "--out", out) == 130
    kept = tmp_path / "r.json.row1.partial.pt"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted: 20 of 20 samples are kept in {kept}; the same command continues from them")
    assert calls == [1000, 20]
    key = torch.load(kept, weights_only=True)["key"]
    assert key == {"checkpoint": recorded_path(models / "cfg.pt"), "checkpoint_sha256": file_sha256(models / "cfg.pt"),
                   "noisy_classifier_sha256": None, "guidance": "classifier-free",
                   "sampler": "DDIM, 1 uniform steps, eta = 0.5", "n_per_class": 2, "batch_size": 8, "seed": 0,
                   "machine": "cpu", "torch": str(torch.__version__), "scale": 1.5}
    assert run(*command, "--seed", 1, "--out", out) == 1
    assert "seed=0 there, 1 here" in one_error_line(capsys)
