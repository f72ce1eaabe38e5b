"""Tests of ddpm_lib.trilemma: network evaluations are counted, not assumed, and the table's quality
columns rank a perfect sampler above a broken one."""
import math

import pytest
import torch

from ddpm_lib.classifier import load_classifier
from ddpm_lib.data import load_images
from ddpm_lib.oracle import GaussianMixture
from ddpm_lib.schedules import make_schedule
from ddpm_lib.trilemma import CallCounter, ddim_draw, ddpm_draw, format_rows, measure_sampler, trilemma_rows


def oracle_counter(T=12):
    s = make_schedule("cosine", T)
    data = GaussianMixture.gaussian(torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64))
    return s, CallCounter(data.eps_model(s))


def test_network_evaluations_are_counted_per_sample_batch():
    """DDPM makes T calls and DDIM ``steps`` calls per batch, whatever the batch size; a sampler whose
    call count changes between batches is refused (its NFE would be meaningless)."""
    s, counter = oracle_counter(T=12)
    x, seconds, nfe = measure_sampler(ddpm_draw(counter, s, (1,)), counter, n=10, batch_size=4, device="cpu")
    assert nfe == 12 and x.shape == (10, 1) and seconds > 0
    assert counter.calls == 12 * 3                       # batches of 4, 4 and 2
    _, _, nfe = measure_sampler(ddim_draw(counter, s, (1,), steps=5), counter, n=6, batch_size=6, device="cpu")
    assert nfe == 5

    def uneven(b, g):
        for _ in range(b):                               # one call per sample: depends on the batch
            counter(torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.long))
        return torch.zeros(b, 1)
    with pytest.raises(RuntimeError, match="different number of network calls"):
        measure_sampler(uneven, counter, n=5, batch_size=3, device="cpu")
    with pytest.raises(ValueError):
        measure_sampler(uneven, counter, n=0, batch_size=3, device="cpu")


def test_rows_rank_real_digits_above_noise():
    """A 'sampler' that returns held-out digits scores FID-MNIST 0 against those digits, class entropy
    near ln 10 and high confidence; one that returns noise scores far worse on all three."""
    real, _ = load_images("mnist-5k", train=False, pad_to_32=True)
    real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:300]]   # all classes
    classifier = load_classifier()
    pos = {"i": 0}
    net = CallCounter(torch.nn.Identity())

    def replay(b, g):
        net(None)
        out = real[pos["i"]:pos["i"] + b]
        pos["i"] += b
        return out

    def noise(b, g):
        net(None)
        net(None)
        return torch.randn((b, 1, 32, 32), generator=g).clamp(-1, 1)

    rows = trilemma_rows({"replay": (replay, net), "noise": (noise, net)}, real, classifier, n=300,
                         batch_size=100, device="cpu")
    by = {r["sampler"]: r for r in rows}
    assert by["replay"]["fid_mnist"] == pytest.approx(0.0, abs=1e-6)
    assert by["replay"]["nfe"] == 1 and by["noise"]["nfe"] == 2
    assert by["replay"]["class_entropy"] > math.log(10) - 0.05
    assert by["noise"]["fid_mnist"] > 100 and by["noise"]["confidence"] < by["replay"]["confidence"]
    table = format_rows(rows)
    assert "replay" in table and "noise" in table and "FID-MNIST" in table


def test_trilemma_command_end_to_end(tmp_path, capsys):
    """A 2-step DDPM (T = 6) and a 2-step DDGAN (T = 4) on mnist-5k through ``python -m ddpm_lib trilemma``:
    four rows with the counted NFE (T, each DDIM step count, the DDGAN's T), positive timings, a JSON file;
    models of different image shapes are refused in one line. Catches: a row's NFE taken from its name
    rather than counted, the DDGAN sampled with the DDPM's schedule."""
    import json

    import ddpm_lib as dl
    from ddpm_lib.cli import main
    dl.train(dl.TrainConfig(data="mnist-5k", preset="tiny", schedule="cosine", T=6, steps=2, batch_size=8, warmup=1,
                            sample_every=0, out_dir=str(tmp_path / "ddpm"), progress=False, device="cpu"))
    assert main(["train-ddgan", "--data", "mnist-5k", "--preset", "tiny", "--steps", "2", "--batch-size", "8",
                 "--sample-every", "0", "--out-dir", str(tmp_path / "gan"), "--device", "cpu", "--no-progress"]) == 0
    out = tmp_path / "t.json"
    assert main(["trilemma", "--ddpm", str(tmp_path / "ddpm"), "--ddgan", str(tmp_path / "gan"), "--ddim-steps", "3", "2",
                 "--n", "6", "--batch-size", "4", "--device", "cpu", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert [r["nfe"] for r in table["rows"]] == [6, 3, 2, 4]
    assert table["n"] == 6 and all(r["seconds_per_1000"] > 0 and r["n"] == 6 for r in table["rows"])
    printed = capsys.readouterr().out
    assert "DDGAN" in printed and "DDPM (6 steps): 6 samples in" in printed     # a progress line per row, then the table
    dl.train(dl.TrainConfig(data="two_moons", toy_n=64, T=30, steps=1, batch_size=8, sample_every=0,
                            out_dir=str(tmp_path / "moons"), device="cpu", progress=False))
    capsys.readouterr()
    assert main(["trilemma", "--ddpm", str(tmp_path / "moons"), "--ddgan", str(tmp_path / "gan"), "--n", "4",
                 "--device", "cpu", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "same data" in err
    assert main(["trilemma", "--ddpm", str(tmp_path / "ddpm"), "--ddgan", str(tmp_path / "gan"), "--bf16",
                 "--device", "cpu", "--out", str(out)]) == 1
    assert "needs a CUDA device" in capsys.readouterr().err
    assert table["precision"] == "float32"
