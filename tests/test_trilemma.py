"""Tests of ddpm_lib.trilemma: network evaluations are counted, not assumed, and the table's quality
columns rank a perfect sampler above a broken one."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lib import sample_batches, trilemma
from ddpm_lib.classifier import load_classifier
from ddpm_lib.cli import main
from ddpm_lib.data import load_images
from ddpm_lib.ddim import sample_ddim
from ddpm_lib.metrics import frechet_distance
from ddpm_lib.oracle import GaussianMixture
from ddpm_lib.sampling import sample_ddpm
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


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[str, str]:
    """A DDPM of T = 6 and a DDGAN (T = 4), each trained for 2 steps on mnist-5k: their run folders."""
    import ddpm_lib as dl
    root = tmp_path_factory.mktemp("models")
    dl.train(dl.TrainConfig(data="mnist-5k", preset="tiny", schedule="cosine", T=6, steps=2, batch_size=8, warmup=1,
                            sample_every=0, out_dir=str(root / "ddpm"), progress=False, device="cpu"))
    assert main(["train-ddgan", "--data", "mnist-5k", "--preset", "tiny", "--steps", "2", "--batch-size", "8",
                 "--sample-every", "0", "--out-dir", str(root / "gan"), "--device", "cpu", "--no-progress"]) == 0
    return str(root / "ddpm"), str(root / "gan")


def test_trilemma_command_end_to_end(tiny_models, tmp_path, capsys):
    """A 2-step DDPM (T = 6) and a 2-step DDGAN (T = 4) on mnist-5k through ``python -m ddpm_lib trilemma``:
    four rows with the counted NFE (T, each DDIM step count, the DDGAN's T), positive timings, a JSON file;
    models of different image shapes are refused in one line. Catches: a row's NFE taken from its name
    rather than counted, the DDGAN sampled with the DDPM's schedule."""
    import json

    import ddpm_lib as dl
    ddpm, gan = tiny_models
    out = tmp_path / "t.json"
    assert main(["trilemma", "--ddpm", ddpm, "--ddgan", gan, "--ddim-steps", "3", "2",
                 "--n", "6", "--batch-size", "4", "--device", "cpu", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert [r["nfe"] for r in table["rows"]] == [6, 3, 2, 4]
    assert table["n"] == 6 and all(r["seconds_per_1000"] > 0 and r["n"] == 6 for r in table["rows"])
    printed = capsys.readouterr().out
    assert "DDGAN" in printed and "DDPM (6 steps): 6 samples in" in printed     # a progress line per row, then the table
    dl.train(dl.TrainConfig(data="two_moons", toy_n=64, T=30, steps=1, batch_size=8, sample_every=0,
                            out_dir=str(tmp_path / "moons"), device="cpu", progress=False))
    capsys.readouterr()
    assert main(["trilemma", "--ddpm", str(tmp_path / "moons"), "--ddgan", gan, "--n", "4",
                 "--device", "cpu", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "same data" in err
    assert main(["trilemma", "--ddpm", ddpm, "--ddgan", gan, "--bf16",
                 "--device", "cpu", "--out", str(out)]) == 1
    assert "needs a CUDA device" in capsys.readouterr().err
    assert table["precision"] == "float32"


def test_measure_sampler_clamps_and_draws_every_batch_from_one_seeded_generator():
    """Samples outside [−1, 1] come back clamped (3 → 1, −3 → −1); n = 10 in batches of 4 are the
    randn(4), randn(4), randn(2) of one generator seeded with ``seed``, in order, rounded to fp16. Catches:
    the clamp removed, the generator re-seeded for every batch (batches repeat), the seed ignored."""
    net = CallCounter(torch.nn.Identity())
    x, _, _ = measure_sampler(lambda b, g: torch.full((b, 1), 3.0), net, n=5, batch_size=2, device="cpu")
    assert torch.equal(x, torch.ones(5, 1))
    x, _, _ = measure_sampler(lambda b, g: torch.full((b, 1), -3.0), net, n=3, batch_size=2, device="cpu")
    assert torch.equal(x, -torch.ones(3, 1))
    x, _, _ = measure_sampler(lambda b, g: torch.randn((b, 1), generator=g, dtype=torch.float64),
                              net, n=10, batch_size=4, device="cpu", seed=5)
    g = torch.Generator().manual_seed(5)
    expected = torch.cat([torch.randn((b, 1), generator=g, dtype=torch.float64) for b in (4, 4, 2)])
    assert torch.equal(x, expected.clamp(-1, 1).to(torch.float16).float())


def test_row_fid_is_the_frechet_distance_of_numpy_statistics_and_timing_is_per_1000(monkeypatch):
    """A 'sampler' returning 0.8·digit + 0.1 for 50 held-out digits, scored against 60 others: the row's
    FID-MNIST equals frechet_distance of numpy means and covariances (np.cov) of the classifier's
    features of both sets; with a fake clock measuring 2.5 s in each of the three batches, seconds_per_1000
    is 1000 · 7.5 / 50 = 150 exactly. Catches: one set's mean or covariance used for both, seconds / n
    without the factor 1,000, seconds reported per batch, the time between batches counted."""
    real, _ = load_images("mnist-5k", train=False, pad_to_32=True)
    fake, ref = (0.8 * real[:50] + 0.1).half().float(), real[100:160]      # values fp16 holds, as samples are kept
    classifier = load_classifier()
    clock = iter([100.0, 102.5, 200.0, 202.5, 300.0, 302.5])     # three batches of 2.5 s, 100 s apart
    monkeypatch.setattr(sample_batches, "time", type("FakeTime", (), {"perf_counter": staticmethod(
        lambda: next(clock))}))
    net = CallCounter(torch.nn.Identity())
    pos = {"i": 0}

    def replay(b, g):
        net(None)
        pos["i"] += b
        return fake[pos["i"] - b:pos["i"]]

    (row,) = trilemma_rows({"shifted": (replay, net)}, ref, classifier, n=50, batch_size=20, device="cpu")
    assert row["seconds_per_1000"] == 150.0
    with torch.no_grad():
        f1, f2 = (classifier.features(x).double().numpy() for x in (fake, ref))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    expected = frechet_distance(torch.from_numpy(mu1), torch.from_numpy(np.cov(f1, rowvar=False)),
                                torch.from_numpy(mu2), torch.from_numpy(np.cov(f2, rowvar=False)))
    assert np.sum((mu1 - mu2) ** 2) > 0.05 * expected                 # the means matter to the value
    assert row["fid_mnist"] == pytest.approx(expected, rel=1e-6)


def test_ddim_steps_are_checked_before_any_row_is_sampled(tiny_models, tmp_path, capsys, monkeypatch):
    """--ddim-steps outside 1..T, or repeated, is refused in one line before the DDPM row (the slowest) runs.
    Catches: the check left to the DDIM row's sampler, after hours of DDPM-1000 sampling."""
    ddpm, gan = tiny_models
    monkeypatch.setattr(trilemma, "trilemma_rows", lambda *a, **k: pytest.fail("a row ran before the check"))
    capsys.readouterr()
    for steps, message in ((["7"], "1..T = 1..6"), (["0"], "1..T = 1..6"), (["3", "3"], "distinct")):
        assert main(["trilemma", "--ddpm", ddpm, "--ddgan", gan, "--ddim-steps",
                     *steps, "--n", "4", "--device", "cpu", "--out", str(tmp_path / "t.json")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err



def test_a_stopped_trilemma_continues_from_its_kept_rows_and_writes_the_uninterrupted_table(tiny_models, tmp_path,
                                                                                            capsys, monkeypatch):
    """Three rows (DDPM, DDIM, DDGAN), n = 6 in batches of 4, stopped three times: in the DDIM row's first
    batch (the line names the finished DDPM row's file), in its second batch (4 of 6 kept), and while the
    table is written (every row's file is still there). Each run draws only what is missing, the last
    none, and the table equals an uninterrupted run's: the same samplers, NFE, FID-MNIST and class entropy,
    with no kept file left. Catches: a stopped or finished row started over, the NFE of a row drawn wholly
    from its file lost, a stop line that hides the kept rows, the kept files left behind or deleted before
    the table exists."""
    import json
    ddpm, gan = tiny_models
    command = ["trilemma", "--ddpm", ddpm, "--ddgan", gan, "--ddim-steps", "3", "--n", "6", "--batch-size", "4",
               "--device", "cpu"]
    assert main([*command, "--out", str(tmp_path / "whole.json")]) == 0
    ddpm_sampler, ddim_sampler, drawn = trilemma.sample_ddpm, trilemma.sample_ddim, []

    def counted(sampler, name, stop_at=None):
        def sample(*args, **kwargs):
            drawn.append(name)
            if drawn.count(name) == stop_at:
                raise KeyboardInterrupt
            return sampler(*args, **kwargs)
        return sample

    def run(stop_ddim_at=None) -> tuple[int, str]:
        """The command with the samplers counted: its status and the last line it printed to stderr."""
        drawn.clear()
        monkeypatch.setattr(trilemma, "sample_ddpm", counted(ddpm_sampler, "ddpm"))
        monkeypatch.setattr(trilemma, "sample_ddim", counted(ddim_sampler, "ddim", stop_ddim_at))
        capsys.readouterr()
        status = main([*command, "--out", str(out)])
        return status, (capsys.readouterr().err.strip().splitlines() or [""])[-1]

    def kept():
        return sorted(p.name for p in tmp_path.glob("split*"))

    out = tmp_path / "split.json"
    status, last = run(stop_ddim_at=1)
    assert status == 130 and drawn == ["ddpm", "ddpm", "ddim"] and kept() == ["split.json.row1.partial.pt"]
    assert last == (f"interrupted: the samples kept in {out}.row1.partial.pt stay there; the same command "
                    f"continues from them")
    status, last = run(stop_ddim_at=2)
    assert status == 130 and drawn == ["ddim", "ddim"]
    assert last == (f"interrupted: 4 of 6 samples are kept in {out}.row2.partial.pt; the same command continues "
                    f"from them")
    assert kept() == ["split.json.row1.partial.pt", "split.json.row2.partial.pt"]
    real_write = trilemma.write_json
    monkeypatch.setattr(trilemma, "write_json", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    status, last = run()
    assert status == 130 and drawn == ["ddim"] and "interrupted: the samples kept in" in last
    assert kept() == [f"split.json.row{i}.partial.pt" for i in (1, 2, 3)]
    monkeypatch.setattr(trilemma, "write_json", real_write)
    status, _ = run()
    assert status == 0 and drawn == [] and kept() == ["split.json"]
    whole, split = (json.loads((tmp_path / name).read_text())["rows"] for name in ("whole.json", "split.json"))
    assert [r["sampler"] for r in split] == [r["sampler"] for r in whole] and len(whole) == 3
    for a, b in zip(whole, split):
        assert a["nfe"] == b["nfe"] and a["class_entropy"] == pytest.approx(b["class_entropy"], rel=1e-9)
        assert a["fid_mnist"] == pytest.approx(b["fid_mnist"], rel=1e-9)


def test_measure_sampler_refuses_no_samples_or_empty_batches_before_drawing():
    """n = 0 or batch_size = 0 (or below) is refused by a ValueError naming both, before anything is drawn.
    Catches: a bound that lets 0 through (n = 0 fails later inside torch.cat with another message;
    batch_size = 0 draws empty batches for ever)."""
    net = CallCounter(torch.nn.Identity())
    drawn = []

    def draw(b, g):
        drawn.append(b)
        if len(drawn) > 3:
            raise AssertionError("still drawing")           # ends the endless loop of empty batches
        net(None)
        return torch.zeros(b, 1)
    for n, batch_size in ((0, 3), (5, 0), (-1, 3), (5, -2)):
        with pytest.raises(ValueError, match="n and batch_size must be at least 1"):
            measure_sampler(draw, net, n=n, batch_size=batch_size, device="cpu")
    assert drawn == []


def test_ddpm_and_ddim_draws_are_the_samplers_with_the_given_settings(capsys):
    """ddim_draw(steps=4, eta=1) returns sample_ddim(steps=4, eta=1) from the same generator (other samples
    than η = 0) and ddpm_draw returns sample_ddpm, each with a progress bar over its steps only when asked.
    Catches: eta dropped (every DDIM row deterministic whatever was asked), a bar that ignores progress
    (hundreds of bar lines in a log)."""
    s, counter = oracle_counter(T=12)

    def run(draw):
        return draw(5, torch.Generator().manual_seed(3))
    eta1 = run(ddim_draw(counter, s, (1,), steps=4, eta=1.0))
    assert torch.equal(eta1, sample_ddim(counter, s, (5, 1), steps=4, eta=1.0,
                                         generator=torch.Generator().manual_seed(3)))
    assert (eta1 - run(ddim_draw(counter, s, (1,), steps=4))).abs().max() > 1e-3
    assert torch.equal(run(ddpm_draw(counter, s, (1,))),
                       sample_ddpm(counter, s, (5, 1), generator=torch.Generator().manual_seed(3)))
    capsys.readouterr()
    run(ddpm_draw(counter, s, (1,)))
    run(ddim_draw(counter, s, (1,), steps=4))
    assert capsys.readouterr().err == ""
    run(ddpm_draw(counter, s, (1,), progress=True))
    assert "DDPM sampling" in capsys.readouterr().err
    run(ddim_draw(counter, s, (1,), steps=4, progress=True))
    assert "DDIM sampling" in capsys.readouterr().err


def fake_statistics(images, classifier, batch_size=500):
    """image_statistics without a classifier: the statistics of the pixels' mean and spread."""
    f = torch.stack([images.flatten(1).mean(1), images.flatten(1).std(1)], 1).double()
    return {"mu": f.mean(0), "sigma": torch.cov(f.T), "class_entropy": 1.0, "confidence": 0.5}


def test_a_rows_kept_samples_belong_to_its_sampler_and_a_stop_while_scoring_says_they_are_kept(
        tmp_path, monkeypatch):
    """Row 1 (sampler "A") stopped after its first batch keeps 2 of 4 samples; a table whose row 1 is
    another sampler ("B") refuses that file, naming the row; once "A" has all 4, a Ctrl-C while its samples
    are scored says that all 4 are kept. Catches: the row's name left out of the key (a DDIM-3 row's
    samples scored as DDIM-5's when --ddim-steps changes), the scoring left outside kept_on_stop (a bare
    KeyboardInterrupt that hides the kept samples)."""
    monkeypatch.setattr(trilemma, "image_statistics", fake_statistics)
    net = CallCounter(torch.nn.Identity())
    calls = []

    def draw(b, g):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt
        net(None)
        return torch.rand((b, 1, 2, 2), generator=g) * 2 - 1
    out, real = tmp_path / "t.json", torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))

    def rows(name):
        return trilemma_rows({name: (draw, net)}, real, None, n=4, batch_size=2, device="cpu", out=out,
                             key={"seed": 0})
    with pytest.raises(KeyboardInterrupt, match="2 of 4 samples are kept"):
        rows("A")
    with pytest.raises(ValueError, match="row='A' there, 'B' here"):
        rows("B")

    def stopped_scoring(images, classifier, batch_size=500):
        if len(images) == 4:                                 # the row's samples, not the reference's 6
            raise KeyboardInterrupt
        return fake_statistics(images, classifier)
    monkeypatch.setattr(trilemma, "image_statistics", stopped_scoring)
    with pytest.raises(KeyboardInterrupt) as stop:
        rows("A")
    assert str(stop.value) == (f"interrupted: 4 of 4 samples are kept in {out}.row1.partial.pt; the same command "
                               f"continues from them")


def test_rows_show_no_progress_bar_unless_asked(monkeypatch, capsys):
    """trilemma_rows prints one line per row; the bar over each row's samples, named after the row, appears
    only with progress=True. Catches: the bar shown whatever progress says."""
    monkeypatch.setattr(trilemma, "image_statistics", fake_statistics)
    net = CallCounter(torch.nn.Identity())

    def draw(b, g):
        net(None)
        return torch.rand((b, 1, 2, 2), generator=g) * 2 - 1
    real = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    trilemma_rows({"quiet row": (draw, net)}, real, None, n=4, batch_size=2, device="cpu")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("quiet row: 4 samples in")
    trilemma_rows({"loud row": (draw, net)}, real, None, n=4, batch_size=2, device="cpu", progress=True)
    assert "loud row" in capsys.readouterr().err


def test_format_rows_puts_each_figure_in_its_own_column():
    """A row with NFE 7, FID-MNIST 12.345, class entropy 2.25, confidence 0.875 and 3.5 s per 1,000
    samples prints those, in that order under the header, and the footnote gives ln 10 = 2.303.
    Catches: the entropy and confidence columns swapped, a column scaled (seconds per sample), the footnote's
    constant wrong."""
    table = format_rows([{"sampler": "DDIM (4 steps, η = 0)", "nfe": 7, "fid_mnist": 12.345, "class_entropy": 2.25,
                          "confidence": 0.875, "seconds_per_1000": 3.5}])
    header, line, note = table.splitlines()
    assert header.split()[1:] == ["NFE", "FID-MNIST", "class", "entropy", "confidence", "s", "/", "1000"]
    assert line.startswith("DDIM (4 steps, η = 0)")
    assert line[22:].split() == ["7", "12.35", "2.250", "0.875", "3.50"]
    assert note.endswith("ln 10 = 2.303)")


def test_too_few_samples_or_an_empty_batch_are_refused_in_one_line_before_any_file_is_read(capsys):
    """--n 1 (a covariance needs two samples) and --batch-size 0 are refused in one line naming the option,
    before the model files are even looked for. Catches: --n 1 let through (FID-MNIST of one sample: NaN
    after minutes of sampling), --batch-size 0 let through."""
    for option, value, got in (("--n", "1", "got 1 and 500"), ("--batch-size", "0", "got 5000 and 0")):
        capsys.readouterr()
        assert main(["trilemma", "--ddpm", "missing.pt", "--ddgan", "missing.pt", option, value,
                     "--device", "cpu"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--n must be at least 2" in err and got in err, err


def test_the_command_hands_its_settings_to_the_rows_and_names_its_inputs(tiny_models, tmp_path, monkeypatch):
    """--ddim-steps 6 1 on a T = 6 DDPM (6 = T is allowed), --n 5, --batch-size 2, --seed 3: the rows get the
    samplers DDPM (6 steps), DDIM (6 steps, η = 0), DDIM (1 steps, η = 0) and DDGAN (4 steps, its own T),
    the held-out digits as reference, n 5, batch 2, seed 3 and a key with everything that decides the
    samples; the table records the seed, the reference's size and the models and classifier by file name
    (no folders) and sha256. Catches: T itself refused as a step count, the DDGAN row named with the DDPM's
    T, the training digits as reference, the seed or a setting dropped from the rows or their key (a kept
    row reused after --seed or --n changed), a sha256 of the wrong file, a machine's folders in the table."""
    import json

    from ddpm_lib.files import file_sha256
    from ddpm_lib.classifier import classifier_path
    from ddpm_lib.ddgan_export import load_ddgan_generator
    from ddpm_lib.export import load_sampling_model
    ddpm, gan = tiny_models
    seen = {}

    def rows(samplers, real, classifier, n, batch_size, device, seed, progress=False, out=None, key=None):
        seen.update(samplers=list(samplers), real=real, n=n, batch_size=batch_size, seed=seed, key=key)
        return []
    monkeypatch.setattr(trilemma, "trilemma_rows", rows)
    out = tmp_path / "t.json"
    assert main(["trilemma", "--ddpm", ddpm, "--ddgan", gan, "--ddim-steps", "6", "1", "--n", "5",
                 "--batch-size", "2", "--seed", "3", "--device", "cpu", "--out", str(out)]) == 0
    assert seen["samplers"] == ["DDPM (6 steps)", "DDIM (6 steps, η = 0)", "DDIM (1 steps, η = 0)", "DDGAN (4 steps)"]
    held_out, _ = load_images("mnist-5k", train=False, pad_to_32=True)
    assert torch.equal(seen["real"], held_out)
    assert (seen["n"], seen["batch_size"], seen["seed"]) == (5, 2, 3)
    ddpm_file = load_sampling_model(ddpm, "cpu")[2]["path"]
    gan_file = load_ddgan_generator(gan, "cpu")[2]["source"]
    sha = {"ddpm_sha256": file_sha256(ddpm_file), "ddgan_sha256": file_sha256(gan_file)}
    assert seen["key"] == {"ddpm": Path(ddpm_file).name, "ddgan": Path(gan_file).name, **sha, "n": 5,
                           "batch_size": 2, "seed": 3, "bf16": False, "machine": "cpu", "torch": str(torch.__version__)}
    table = json.loads(out.read_text())
    assert table["seed"] == 3 and table["reference"] == {"n": len(held_out), "split": "held-out"}
    assert {k: table[k] for k in sha} == sha and table["ddpm"] == Path(ddpm_file).name
    assert table["classifier_sha256"] == file_sha256(classifier_path(None))
