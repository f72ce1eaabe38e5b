"""``python -m ddpm_lib train``, ``sample``, ``evaluate`` and ``train-classifier`` end to end, and their one-line
errors."""
import dataclasses
import hashlib
import json
import re
import shlex
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from ddpm_lib.checkpoint import list_checkpoints, load_checkpoint
from ddpm_lib import cli, cli_evaluate, guidance_eval
from ddpm_lib.cli import main
import ddpm_lib as dl
from ddpm_lib import cli_noisy_classifier, trilemma
from ddpm_lib.ddgan_train import DDGANConfig, train_ddgan
from ddpm_lib.fast_sampling import compiled_eps_model
from helpers import command_env

ROOT = Path(__file__).resolve().parent.parent


def ddpm_lib(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = command_env()
    result = subprocess.run([sys.executable, "-m", "ddpm_lib", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_under_torchrun_only_rank_0_prints_an_error_every_rank_shares(tmp_path, monkeypatch, capsys):
    base = ["train", "--data", "two_moons", "--toy-n", "64", "--T", "30", "--steps", "2", "--batch-size", "8",
            "--sample-every", "0", "--out-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"]
    monkeypatch.setenv("RANK", "1")
    assert main(base + ["--lr", "0"]) == 1                          # a setting: rank 0 says it
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cli, "train", lambda config: (_ for _ in ()).throw(RuntimeError("peer lost")))
    assert main(base) == 1                                          # this rank's own failure names the rank
    assert capsys.readouterr().err.strip() == "error (rank 1): peer lost"
    monkeypatch.setenv("RANK", "0")
    assert main(base + ["--lr", "0"]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_train_then_sample_on_mnist_5k(tmp_path):
    ddpm_lib("train", "--data", "mnist-5k", "--preset", "tiny", "--batch-size", "8", "--steps", "3", "--T", "25",
             "--log-every", "1", "--save-every", "3", "--sample-every", "0", "--out-dir", "run", "--device", "cpu",
             "--no-progress", cwd=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["loss"] > 0 for r in records)
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert ckpt["step"] == 3 and ckpt["config"]["preset"] == "tiny" and ckpt["example_shape"] == (1, 32, 32)
    result = ddpm_lib("sample", "--checkpoint", "run", "--n", "4", "--out", "grid.png", "--device", "cpu",
                      cwd=tmp_path)
    assert "wrote 4 samples" in result.stdout
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("L"), dtype=np.float32)
    assert grid.shape == (2 * (32 + 2) + 2,) * 2                                   # 2 × 2 images, padding 2
    assert grid[2:34, 2:34].std() > 10                                             # not a blank picture


def test_train_then_sample_on_a_toy_set(tmp_path):
    ddpm_lib("train", "--data", "eight_gaussians", "--toy-n", "1000", "--T", "50", "--steps", "40",
             "--batch-size", "64", "--log-every", "20", "--save-every", "20", "--sample-every", "40",
             "--n-samples", "16", "--keep", "1", "--out-dir", "run", "--device", "cpu", "--no-progress", cwd=tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt_00000040.pt"]
    assert torch.load(tmp_path / "run" / "samples_00000040.pt", weights_only=True).shape == (16, 2)
    ddpm_lib("sample", "--checkpoint", "run/ckpt_00000040.pt", "--n", "100", "--out", "points.pt", "--device", "cpu",
             cwd=tmp_path)
    points = torch.load(tmp_path / "points.pt", weights_only=True)
    assert points.shape == (100, 2) and torch.isfinite(points).all()
    result = ddpm_lib("sample", "--checkpoint", "run", "--n", "100", "--out", "ddim.pt", "--device", "cpu",
                      "--sampler", "ddim", "--steps", "5", "--eta", "0", "--seed", "3", cwd=tmp_path)
    assert "DDIM, 5 uniform steps, eta = 0" in result.stdout
    from ddpm_lib import load_ema_model, sample_ddim
    model, s, _ = load_ema_model(tmp_path / "run")
    expected = sample_ddim(model, s, (100, 2), steps=5, eta=0.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.load(tmp_path / "ddim.pt", weights_only=True), expected)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_damaged_checkpoints_and_wrong_outputs_end_with_one_line(tmp_path, capsys):
    assert main(["train", "--data", "two_moons", "--toy-n", "100", "--T", "30", "--steps", "2", "--batch-size", "8",
                 "--sample-every", "0", "--out-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    path = list_checkpoints(tmp_path / "run")[-1]
    assert main(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "x.png"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "x.png").size == (400, 400)                  # 2-D points: a scatter plot
    capsys.readouterr()
    path.write_bytes(path.read_bytes()[:1000])
    assert main(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "x.pt"), "--device", "cpu"]) == 1
    assert "truncated" in one_error_line(capsys)
    assert main(["sample", "--checkpoint", str(tmp_path / "nowhere")]) == 1
    assert "no checkpoint" in one_error_line(capsys)


def test_outputs_and_flags_are_checked_before_sampling(tmp_path, capsys, monkeypatch):
    """A wrong --out (no suffix, a folder, .json for weights), DDIM's flags without --sampler ddim and a
    DDGAN run given to sample or evaluate end with one line before any sampling. Catches: hours of
    sampling thrown away by a typo in --out; --steps 50 silently running all T DDPM steps."""
    run = str(tmp_path / "run")
    assert main(["train", "--data", "two_moons", "--toy-n", "100", "--T", "30", "--steps", "2", "--batch-size", "8",
                 "--sample-every", "0", "--out-dir", run, "--device", "cpu", "--no-progress"]) == 0
    assert main(["train-ddgan", "--data", "two_moons", "--toy-n", "100", "--preset", "tiny", "--steps", "1",
                 "--batch-size", "8", "--sample-every", "0", "--out-dir", str(tmp_path / "gan"), "--no-progress"]) == 0
    capsys.readouterr()

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the command line")

    monkeypatch.setattr(cli_evaluate, "draw_samples", no_sampling)
    monkeypatch.setattr(guidance_eval, "draw_samples", no_sampling)
    cases = [(["sample", "--checkpoint", run, "--out", str(tmp_path / "s")], "must end in .png or .pt"),
             (["sample", "--checkpoint", run, "--out", str(tmp_path / "s.pt"), "--steps", "5", "--eta", "1"],
              "--steps, --eta set the DDIM sampler: add --sampler ddim"),
             (["evaluate", "--checkpoint", run, "--n", "4", "--out", str(tmp_path)], "is a folder"),
             (["evaluate", "--checkpoint", str(tmp_path / "gan"), "--n", "4"], "use sample-ddgan"),
             (["sample", "--checkpoint", str(tmp_path / "gan"), "--out", str(tmp_path / "s.pt")],
              f"{tmp_path / 'gan' / 'ckpt_00000001.pt'} is a DDGAN's checkpoint, not a diffusion model's: use sample-ddgan"),
             (["export", "--checkpoint", run, "--out", str(tmp_path / "w.json")], "must end in .pt")]
    for argv, message in cases:
        assert main(argv) == 1, argv
        assert message in one_error_line(capsys), argv
    monkeypatch.undo()
    assert main(["sample", "--checkpoint", run, "--n", "3", "--sampler", "ddim", "--steps", "5", "--out",
                 str(tmp_path / "new" / "folder" / "s.pt")]) == 0              # the folder is made
    assert torch.load(tmp_path / "new" / "folder" / "s.pt", weights_only=True).shape == (3, 2)


def test_a_diverging_run_stops_with_the_step_in_one_line(tmp_path, capsys):
    code = main(["train", "--data", "two_moons", "--toy-n", "100", "--T", "30", "--steps", "10", "--batch-size", "8",
                 "--lr", "1e30", "--warmup", "0", "--log-every", "1", "--save-every", "1", "--sample-every", "0",
                 "--out-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    message = one_error_line(capsys)
    assert code == 1 and "NaN or infinite at step" in message and "Last good checkpoint" in message
    bad_step = int(message.split("at step ")[1].split(";")[0])
    kept = list_checkpoints(tmp_path / "run")
    assert kept and load_checkpoint(kept[-1])["step"] == bad_step - 1 and f"{kept[-1]}" in message


def test_an_online_only_data_set_offline_gives_the_data_modules_message(tmp_path, capsys, monkeypatch):
    class Offline:
        def __init__(self, *args, **kwargs):
            raise urllib.error.URLError("no network (simulated)")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    assert main(["train", "--data", "cifar10", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "run"),
                 "--device", "cpu"]) == 1
    assert ("offline, use the shipped subset instead: --data mnist-5k on the command line, load_images('mnist-5k') "
            "in Python") in one_error_line(capsys)


def test_resume_takes_the_runs_settings_unless_a_flag_is_given(tmp_path, capsys):
    """``train --out-dir D --steps N --resume`` continues the run with its own settings (not the flags'
    defaults); a flag that contradicts the run gives one line and status 1; flags cannot be abbreviated
    (an abbreviation would escape the check of which flags were given). Catches: a resume that trains
    with the default preset, T or lr, or refuses the documented short form."""
    run = str(tmp_path / "run")
    assert main(["train", "--data", "two_moons", "--toy-n", "100", "--T", "30", "--steps", "2", "--batch-size", "8",
                 "--lr", "0.003", "--warmup", "1", "--sample-every", "0", "--keep", "1", "--out-dir", run,
                 "--device", "cpu", "--no-progress"]) == 0
    assert main(["train", "--out-dir", run, "--steps", "4", "--resume", "--no-progress"]) == 0
    assert [p.name for p in list_checkpoints(run)] == ["ckpt_00000004.pt"]                     # the run's --keep 1
    config = load_checkpoint(list_checkpoints(run)[-1])["config"]
    assert config["steps"] == 4 and (config["data"], config["T"], config["lr"]) == ("two_moons", 30, 0.003)
    capsys.readouterr()
    assert main(["train", "--out-dir", run, "--steps", "6", "--resume", "--lr=0.5", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lr=0.003 there, 0.5 here" in err
    with pytest.raises(SystemExit):
        main(["train", "--out-dir", run, "--steps", "6", "--resume", "--l", "0.5"])


def test_hflip_flag_reaches_the_config_and_is_refused_for_points(tmp_path, capsys):
    """``--hflip`` sets TrainConfig.hflip (off without it); on a 2-D toy set or on digits it ends with one
    line, status 1. Catches: a flag parsed but not passed on, or a default of on (digits must not be mirrored)."""
    parser = cli.build_parser()
    for argv, expected in ((["train", "--data", "cifar10", "--hflip"], True), (["train", "--data", "cifar10"], False)):
        args = parser.parse_args(argv + ["--out-dir", str(tmp_path / "run")])
        assert cli.config_from_args(dl.TrainConfig, args, argv, kind="diffusion").hflip is expected
    for data in ("two_moons", "mnist-5k"):
        assert main(["train", "--data", data, "--hflip", "--out-dir", str(tmp_path / data), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"a mirrored example of '{data}' is not one" in err


def test_help_lists_both_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "train" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--preset", "enormous"])                     # argparse rejects an unknown choice


def option_help(text: str) -> dict[str, str]:
    """``--flag`` → its help text, from argparse's ``--help`` output (wrapped lines joined)."""
    options = " ".join(text.split("options:", 1)[1].split())
    return {chunk.split()[0]: chunk for chunk in ("--" + part for part in options.split(" --")[1:])}


@pytest.mark.parametrize("command", ["train", "evaluate", "train-ddgan", "export", "train-classifier"])
def test_help_gives_each_default_once_and_none_for_flags_or_required_options(command, capsys):
    """Every option with a value shows "(default: …)" once; on/off flags, required options and None
    defaults (whose help says what None means) show none. Catches: argparse's formatter, which printed
    "(default: None)" after "(default: the course's …)" and "(default: False)" after every flag."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    helps = option_help(capsys.readouterr().out)
    for flag, text in helps.items():
        assert text.count("default") <= 1, text
        assert "(default: None)" not in text and "(default: False)" not in text and "(default: True)" not in text
    if command != "export":
        assert helps["--seed"].endswith("(default: 0)")
    if command in ("train", "train-ddgan"):
        assert "(default:" not in helps["--no-compile" if command == "train" else "--resume"]
        assert "(default:" not in helps["--no-progress"] and "(default:" not in helps["--device"]
        assert "None: cuda" in helps["--device"]
    if command in ("evaluate", "export"):
        assert "(default:" not in helps["--checkpoint"]                    # required


# ---- evaluate (FID-MNIST) and train-classifier ----

SHIPPED_CLASSIFIER = ROOT / "data" / "mnist_classifier.pt"


def test_evaluate_end_to_end_on_a_tiny_mnist_checkpoint(tmp_path, capsys, monkeypatch):
    """``python -m ddpm_lib train`` a 3-step model on mnist-5k (T = 2), then ``evaluate --n 64`` (through
    ``main``, in this process) in uneven batches of 40: a table on
    stdout naming the metric, a tqdm bar over the samples and one over each batch's steps, and JSON with the
    metric's name, the counts
    (64 samples, 1,000 held-out digits, 64 training digits for the floor), entropies that match the
    counts, the shipped classifier's sha256, and an FID-MNIST of the untrained model's samples far
    above the real digits' floor. Catches: a missing key, a last batch dropped (63 or 80 samples),
    the reference taken from the training split (not 1,000 digits), an entropy in bits."""
    ddpm_lib("train", "--data", "mnist-5k", "--preset", "tiny", "--steps", "3", "--batch-size", "8", "--T", "2",
             "--schedule", "cosine", "--sample-every", "0", "--out-dir", "run", "--device", "cpu", "--no-progress",
             cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--checkpoint", "run", "--n", "64", "--batch-size", "40", "--seed", "1",
                 "--device", "cpu", "--out", "out/results.json"]) == 0
    result = capsys.readouterr()
    assert "FID-MNIST (features of ddpm_lib's MNIST classifier; not Inception FID)" in result.out
    assert "sampling" in result.err and "64/64" in result.err
    assert re.search(r"DDPM sampling: +\d+%\|[^|]*\| \d/2 \[", result.err)      # a bar over each batch's 2 steps
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert r["metric"] == "FID-MNIST (features of ddpm_lib's MNIST classifier; not Inception FID)"
    assert r["n"] == 64 and r["step"] == 3 and r["T"] == 2 and r["data"] == "mnist-5k" and r["seed"] == 1
    assert r["classifier_sha256"] == hashlib.sha256(SHIPPED_CLASSIFIER.read_bytes()).hexdigest()
    assert r["reference"]["n"] == 1000 and r["max_class_entropy"] == pytest.approx(np.log(10))
    samples, real = r["samples"], r["real_heldout"]
    assert samples["n"] == 64 and sum(samples["class_counts"]) == 64 and len(samples["class_counts"]) == 10
    assert real["n"] == 1000 and sum(real["class_counts"]) == 1000 and real["n_train_digits"] == 64
    for stats in (samples, real):
        p = np.array(stats["class_counts"]) / stats["n"]
        assert stats["class_entropy"] == pytest.approx(-(p[p > 0] * np.log(p[p > 0])).sum())
        assert 0.1 <= stats["confidence"] <= 1.0
    assert real["confidence"] > 0.95
    assert np.isfinite(samples["fid_mnist"]) and samples["fid_mnist"] > 2 * real["fid_mnist_train_vs_heldout"] > 0


@pytest.mark.parametrize("classes", [0, 10])
def test_evaluate_compile_samples_through_one_compiled_network_and_scores_as_the_eager_run(tmp_path, capsys,
                                                                                          monkeypatch, classes):
    """``evaluate --compile --n 6 --batch-size 4`` (T = 3) of an unconditional and of a class-conditional model
    (its null label): the network is compiled once, for batches of 4, and every sampler step goes through it
    (3 steps × 2 batches, the last batch of 2 padded); the FID-MNIST and class counts are the eager run's,
    and the JSON says it was compiled. Stopped after its last batch, the same command compiles nothing: every
    sample is kept. torch.compile's backend is "aot_eager" here (the same graph, no code generation: seconds on
    a CPU). Catches: --compile ignored, one compilation per batch shape, the class-conditional model left
    uncompilable (a lambda), a minute of GPU compiling spent on a run that has nothing left to draw."""
    monkeypatch.chdir(tmp_path)
    dl.train(dl.TrainConfig(data="mnist-5k", preset="tiny", schedule="cosine", T=3, steps=1, batch_size=8,
                            num_classes=classes, sample_every=0, device="cpu", out_dir="run", progress=False))
    built, calls = [], []

    def compiled(model, batch_shape, device=None, **kwargs):
        eps = compiled_eps_model(model, batch_shape, device, backend="aot_eager", warmup=1, **kwargs)
        built.append(tuple(batch_shape))

        def counted(xt, t):
            calls.append(len(xt))
            return eps(xt, t)
        counted.compile_seconds = eps.compile_seconds
        return counted

    monkeypatch.setattr(cli_evaluate, "compiled_eps_model", compiled)
    common = ["evaluate", "--checkpoint", "run", "--n", "6", "--batch-size", "4", "--device", "cpu"]
    assert main(common + ["--out", "eager.json"]) == 0 and not built
    assert main(common + ["--compile", "--out", "compiled.json"]) == 0
    assert built == [(4, 1, 32, 32)] and calls == [4, 4, 4, 2, 2, 2]
    eager, fast = (json.loads((tmp_path / name).read_text()) for name in ("eager.json", "compiled.json"))
    assert fast["compiled"] and not eager["compiled"] and fast["compile_seconds"] >= 0
    assert fast["samples"]["class_counts"] == eager["samples"]["class_counts"]
    assert fast["samples"]["fid_mnist"] == pytest.approx(eager["samples"]["fid_mnist"], rel=1e-4)
    real_statistics = cli_evaluate.image_statistics                # stopped after its last batch: every sample kept
    monkeypatch.setattr(cli_evaluate, "image_statistics", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(common + ["--compile", "--out", "kept.json"]) == 130 and len(built) == 2
    monkeypatch.setattr(cli_evaluate, "image_statistics", real_statistics)
    assert main(common + ["--compile", "--out", "kept.json"]) == 0 and len(built) == 2      # nothing to compile for
    kept = json.loads((tmp_path / "kept.json").read_text())
    assert kept["compiled"] and kept["compile_seconds"] is None and kept["samples"] == fast["samples"]
    capsys.readouterr()


def test_an_interrupted_evaluate_keeps_its_finished_batches_and_the_same_command_finishes_them(tmp_path, capsys,
                                                                                               monkeypatch):
    """Ctrl-C (or SIGTERM) during the third batch of ``evaluate --n 6 --batch-size 2`` ends with one line naming
    the 4 samples kept in ``<out>.partial.pt``; a command with another seed or other weights refuses the
    file in one line; the same command then draws only the last batch, and after a Ctrl-C during the
    statistics, none: it writes the results of an uninterrupted run, to the last digit, and removes the
    file. Catches: samples lost with the batch in progress or before the results exist, a resumed run that
    restarts the generator (other samples), a partial file reused for other settings or left behind."""
    monkeypatch.chdir(tmp_path)
    dl.train(dl.TrainConfig(data="mnist-5k", preset="tiny", schedule="cosine", T=3, steps=1, batch_size=8,
                            sample_every=0, device="cpu", out_dir="run", progress=False))
    common = ["evaluate", "--checkpoint", "run", "--n", "6", "--batch-size", "2", "--device", "cpu"]
    assert main(common + ["--seed", "1", "--out", "whole.json"]) == 0
    real_draw, calls = cli_evaluate.draw_samples, []

    def draw_then_stop(*args, **kwargs):
        calls.append(kwargs.get("progress"))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(cli_evaluate, "draw_samples", draw_then_stop)
    capsys.readouterr()
    assert main(common + ["--seed", "1", "--out", "split.json"]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "interrupted: 4 of 6 samples are kept in split.json.partial.pt; the same command continues from them"
    assert (tmp_path / "split.json.partial.pt").exists() and not (tmp_path / "split.json").exists()
    for other, named in ((["--seed", "2"], "seed=1 there, 2 here"), (["--seed", "1", "--weights", "raw"],
                                                                      "weights='ema' there, 'raw' here")):
        assert main(common + other + ["--out", "split.json"]) == 1
        assert named in capsys.readouterr().err
    calls.clear()
    real_statistics = cli_evaluate.image_statistics
    monkeypatch.setattr(cli_evaluate, "image_statistics", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(common + ["--seed", "1", "--out", "split.json"]) == 130       # stopped after the last batch
    assert len(calls) == 1 and "continuing from the 4 samples kept in split.json.partial.pt" in capsys.readouterr().out
    monkeypatch.setattr(cli_evaluate, "image_statistics", real_statistics)
    assert main(common + ["--seed", "1", "--out", "split.json"]) == 0
    assert len(calls) == 1 and "continuing from the 6 samples kept" in capsys.readouterr().out     # none drawn again
    whole, split = (json.loads((tmp_path / name).read_text()) for name in ("whole.json", "split.json"))
    assert split["samples"] == whole["samples"] and split["real_heldout"] == whole["real_heldout"]
    assert not (tmp_path / "split.json.partial.pt").exists()


def test_a_sigterm_and_its_copy_stop_evaluate_with_the_line_that_names_the_kept_samples(tmp_path, capsys,
                                                                                       monkeypatch):
    """SIGTERM during the second batch of ``evaluate --n 4 --batch-size 2``, and a copy of it while the stop is
    being handled (make and torchrun pass on a signal that the process group already delivered): status
    130, and the last line still says that 2 of 4 samples are kept. Catches: the copy taken as a new
    interrupt, which replaces that line with a generic one."""
    import os
    import signal

    from ddpm_lib import sample_batches
    monkeypatch.chdir(tmp_path)
    dl.train(dl.TrainConfig(data="mnist-5k", preset="tiny", schedule="cosine", T=2, steps=1, batch_size=8,
                            sample_every=0, device="cpu", out_dir="run", progress=False))
    real_draw, real_message, calls = cli_evaluate.draw_samples, sample_batches.stopped_message, []

    def draw_then_terminate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_draw(*args, **kwargs)

    def message_with_a_copy(*args):
        os.kill(os.getpid(), signal.SIGTERM)                  # the copy arrives while the stop is handled
        return real_message(*args)

    monkeypatch.setattr(cli_evaluate, "draw_samples", draw_then_terminate)
    monkeypatch.setattr(sample_batches, "stopped_message", message_with_a_copy)
    assert main(["evaluate", "--checkpoint", "run", "--n", "4", "--batch-size", "2", "--device", "cpu",
                 "--out", "e.json"]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "interrupted: 2 of 4 samples are kept in e.json.partial.pt; the same command continues from them"


def test_evaluate_errors_end_with_one_line(tmp_path, capsys):
    """A missing classifier names the command that trains one; a truncated classifier says
    'truncated'; a checkpoint of 2-D points is refused (FID-MNIST measures digits). Catches: raw
    tracebacks, sampling thousands of points before finding out."""
    assert main(["train", "--data", "two_moons", "--toy-n", "100", "--T", "30", "--steps", "2", "--batch-size", "8",
                 "--sample-every", "0", "--out-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    run = str(tmp_path / "run")
    assert main(["evaluate", "--checkpoint", run, "--classifier", str(tmp_path / "none.pt"), "--device", "cpu"]) == 1
    assert "no classifier file" in (message := one_error_line(capsys)) and "train-classifier" in message
    cut = tmp_path / "cut.pt"
    cut.write_bytes(SHIPPED_CLASSIFIER.read_bytes()[:3000])
    assert main(["evaluate", "--checkpoint", run, "--classifier", str(cut), "--device", "cpu"]) == 1
    assert "truncated" in one_error_line(capsys)
    assert main(["evaluate", "--checkpoint", run, "--n", "8", "--device", "cpu",
                 "--out", str(tmp_path / "r.json")]) == 1
    assert "measures models of MNIST digits" in one_error_line(capsys)
    assert main(["evaluate", "--checkpoint", run, "--n", "1"]) == 1
    assert "--n must be at least 2" in one_error_line(capsys)


def test_train_classifier_writes_weights_and_a_card_with_sha256_and_command(tmp_path, capsys, monkeypatch):
    """``train-classifier`` on 100 training and 50 held-out digits (load_images replaced): the .pt, and a
    .json card beside it with the sha256 of the .pt, the exact command line, the sizes, and the held-out
    accuracy that the saved classifier reproduces; torch's thread count is restored afterwards.
    Catches: a card hashing another file, the command not recorded, the accuracy of the training digits
    reported as held-out, --threads leaking into the caller."""
    from ddpm_lib import cli
    from ddpm_lib.classifier import classifier_accuracy, load_classifier
    x_train, y_train = cli.load_images("mnist-5k", train=True, pad_to_32=True)
    x_held, y_held = cli.load_images("mnist-5k", train=False, pad_to_32=True)
    subsets = {True: (x_train[::40], y_train[::40]), False: (x_held[::20], y_held[::20])}
    monkeypatch.setattr(cli, "load_images", lambda name, root=None, train=True, pad_to_32=False: subsets[train])
    threads = torch.get_num_threads()
    out = tmp_path / "models" / "clf.pt"
    args = ["train-classifier", "--data", "mnist-5k", "--out", str(out), "--epochs", "2", "--batch-size", "25",
            "--seed", "3", "--threads", "1"]
    assert main(args) == 0
    assert torch.get_num_threads() == threads
    assert "held-out accuracy" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["command"] == "python -m ddpm_lib " + " ".join(args)
    assert card["n_train"] == 100 and card["n_heldout"] == 50 and card["epochs"] == 2 and card["seed"] == 3
    assert card["heldout_accuracy"] == classifier_accuracy(load_classifier(out), *subsets[False])


def test_help_lists_evaluate_and_train_classifier_and_names_the_metric(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "evaluate" in out and "train-classifier" in out
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "not Inception FID" in " ".join(capsys.readouterr().out.split())      # argparse wraps lines


def test_sample_and_evaluate_accept_an_exported_weights_file(tmp_path, capsys, monkeypatch):
    """``sample`` and ``evaluate`` take the file ``export`` writes as well as a run folder (one loader that
    reads the format tag): sampling it equals DDIM with ``load_pretrained``'s model, and evaluate
    reports the step and data stored with the weights. Catches: a loader for checkpoints only."""
    import ddpm_lib as dl
    from ddpm_lib.export import export_ema_weights, load_pretrained
    dl.train(dl.TrainConfig(data="mnist-5k", preset="tiny", schedule="cosine", T=2, steps=2, batch_size=8, warmup=1,
                            sample_every=0, out_dir=str(tmp_path / "run"), progress=False, device="cpu"))
    export_ema_weights(tmp_path / "run", tmp_path / "w.pt", command="test")
    assert main(["sample", "--checkpoint", str(tmp_path / "w.pt"), "--n", "3", "--sampler", "ddim", "--steps", "2",
                 "--seed", "5", "--out", str(tmp_path / "x.pt"), "--device", "cpu"]) == 0
    model, s = load_pretrained(tmp_path / "w.pt")
    expected = dl.sample_ddim(model, s, (3, 1, 32, 32), steps=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True), expected)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--checkpoint", "w.pt", "--n", "8", "--device", "cpu", "--out", "r.json"]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["checkpoint"] == "w.pt" and r["step"] == 2 and r["data"] == "mnist-5k" and r["samples"]["n"] == 8


def test_evaluate_can_measure_the_raw_weights_of_a_checkpoint(tmp_path, capsys):
    """``--weights raw`` samples with θ, not θ_ema: the loader returns the checkpoint's "model" tensors, the
    JSON says which weights were measured, an exported file (θ_ema only) is refused, and ``--bf16`` on a CPU
    is refused in one line. Catches: raw silently falling back to θ_ema."""
    import ddpm_lib as dl
    from ddpm_lib.checkpoint import latest_checkpoint, load_checkpoint
    from ddpm_lib.export import export_ema_weights, load_sampling_model
    dl.train(dl.TrainConfig(data="mnist-5k", preset="tiny", schedule="cosine", T=2, steps=3, batch_size=8, warmup=1,
                            sample_every=0, out_dir=str(tmp_path / "run"), progress=False, device="cpu"))
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    raw, _, info = load_sampling_model(tmp_path / "run", weights="raw")
    ema, _, _ = load_sampling_model(tmp_path / "run")
    assert info["weights"] == "raw"
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in raw.state_dict().items())
    assert any(not torch.equal(v, raw.state_dict()[k]) for k, v in ema.state_dict().items())
    out = tmp_path / "raw.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--weights", "raw", "--n", "4",
                 "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["weights"] == "raw" and "raw θ" in r["sampler"] and r["precision"] == "float32"
    capsys.readouterr()
    export_ema_weights(tmp_path / "run", tmp_path / "w.pt", command="test")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "w.pt"), "--weights", "raw", "--n", "4",
                 "--device", "cpu", "--out", str(out)]) == 1
    assert "θ_ema only" in one_error_line(capsys)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--bf16", "--n", "4", "--device", "cpu"]) == 1
    assert "needs a CUDA device" in one_error_line(capsys)


def test_an_interrupted_command_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C during evaluate (here: its work raises KeyboardInterrupt) ends with status 130 and one line on
    stderr naming the command. Catches: a silent exit 130 that leaves the user guessing what was written."""
    monkeypatch.setattr(cli, "run_evaluate", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 130
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("interrupted: evaluate stopped before finishing"), err


def test_outputs_in_any_case_and_under_a_file(tmp_path, capsys):
    """samples.PT is written as a tensor (the suffix check and the writer agree on case), a name under a plain
    file is refused in one line before the work, and an export's card records a command that runs as written
    (quoted). Catches: finished samples lost to 'unknown file extension', '[Errno 17] File exists'."""
    assert main(["train", "--data", "two_moons", "--toy-n", "64", "--T", "30", "--steps", "2", "--batch-size", "8",
                 "--sample-every", "0", "--out-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"]) == 0
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--n", "5", "--out", str(tmp_path / "s.PT"),
                 "--device", "cpu"]) == 0
    assert torch.load(tmp_path / "s.PT", weights_only=True).shape == (5, 2)
    (tmp_path / "afile").write_text("x")
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "afile" / "s.pt")]) == 1
    assert "afile is a file, not a folder" in one_error_line(capsys)
    out = tmp_path / "my models" / "toy.pt"
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 0
    command = json.loads(out.with_suffix(".json").read_text())["command"]
    assert shlex.split(command)[-2:] == ["--out", str(out)]


def test_ddim_steps_equal_to_T_pass_the_check(tmp_path, capsys, monkeypatch):
    """TR1: --ddim-steps T is in 1..T."""
    dl.train(dl.TrainConfig(data="mnist-5k", preset="tiny", schedule="cosine", T=6, steps=1, batch_size=8, warmup=1,
                            sample_every=0, out_dir=str(tmp_path / "ddpm"), progress=False, device="cpu"))
    assert main(["train-ddgan", "--data", "mnist-5k", "--preset", "tiny", "--steps", "1", "--batch-size", "8",
                 "--sample-every", "0", "--out-dir", str(tmp_path / "gan"), "--device", "cpu", "--no-progress"]) == 0
    def reached(*a, **k):
        raise RuntimeError("rows reached")
    monkeypatch.setattr(trilemma, "trilemma_rows", reached)
    capsys.readouterr()
    assert main(["trilemma", "--ddpm", str(tmp_path / "ddpm"), "--ddgan", str(tmp_path / "gan"), "--ddim-steps",
                 "1", "6", "--n", "4", "--device", "cpu", "--out", str(tmp_path / "t.json")]) == 1
    assert "rows reached" in capsys.readouterr().err


def test_noisy_classifier_batch_of_every_digit_and_lr_zero(tmp_path, capsys, monkeypatch):
    """NC1: --batch-size equal to the training digits is allowed; NC3: --lr 0 is refused before any work."""
    splits = {train: tuple(a[::100] for a in dl.load_images("mnist-5k", train=train, pad_to_32=True))
              for train in (True, False)}
    monkeypatch.setattr(cli_noisy_classifier, "load_images", lambda name, root=None, train=True, pad_to_32=False: splits[train])
    n = len(splits[True][0])
    base = ["train-noisy-classifier", "--out", str(tmp_path / "n.pt"), "--steps", "1", "--preset", "tiny",
            "--schedule", "cosine", "--T", "10", "--device", "cpu"]
    assert main(base + ["--batch-size", str(n)]) == 0
    capsys.readouterr()
    assert main(base + ["--batch-size", "4", "--lr", "0"]) == 1
    assert capsys.readouterr().err == "error: --lr must be positive, got 0.0\n"
    assert main(base + ["--batch-size", "4", "--weight-decay", "-1"]) == 1       # was torch's "Invalid weight_decay"
    assert one_error_line(capsys) == "error: --weight-decay must be at least 0, got -1.0"
    assert main(["train-classifier", "--weight-decay", "-0.5", "--out", str(tmp_path / "c.pt")]) == 1
    assert one_error_line(capsys) == "error: weight_decay must be at least 0, got -0.5"
    assert not (tmp_path / "c.pt").exists()


def test_an_interrupted_train_ddgan_prints_no_second_line(monkeypatch, capsys):
    """CLI1: the DDGAN trainer saves and says so itself (``Stopped``); the CLI adds nothing."""
    from ddpm_lib.run_folder import Stopped
    monkeypatch.setattr(cli, "run_ddgan_command", lambda *a: (_ for _ in ()).throw(Stopped("saved")))
    assert main(["train-ddgan", "--data", "two_moons", "--out-dir", "x", "--device", "cpu"]) == 130
    assert "interrupted" not in capsys.readouterr().err


def test_threads_below_one_is_refused(tmp_path, capsys):
    """CLI6."""
    assert main(["train-classifier", "--threads", "0", "--out", str(tmp_path / "c.pt")]) == 1
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_export_records_the_given_training_command(tmp_path):
    """CLI5: --training-command wins over the export's own command line."""
    assert main(["train", "--data", "two_moons", "--toy-n", "64", "--T", "30", "--steps", "2", "--batch-size", "8",
                 "--sample-every", "0", "--out-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"]) == 0
    out = tmp_path / "toy.pt"
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out),
                 "--training-command", "python -m ddpm_lib train --data two_moons"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["command"] == "python -m ddpm_lib train --data two_moons"


def test_ddgan_last_partial_interval_says_how_many_steps(tmp_path):
    """ST2: steps = 5, log_every = 2: the last line averages 1 step."""
    train_ddgan(DDGANConfig(data="two_moons", toy_n=64, preset="tiny", steps=5, batch_size=8, log_every=2,
                            save_every=5, sample_every=0, out_dir=str(tmp_path / "g"), device="cpu", progress=False))
    records = [json.loads(l) for l in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["steps_averaged"]) for r in records] == [(2, 2), (4, 2), (5, 1)]


def test_train_ddgan_under_torchrun_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """Under torchrun each process would train alone and race its siblings for --out-dir's lock."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "gan"
    assert main(["train-ddgan", "--data", "two_moons", "--out-dir", str(out), "--device", "cpu", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "train-ddgan trains in one process" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_run_folder_of_the_other_trainer_is_refused_naming_the_command_that_continues_it(tmp_path, capsys):
    """``train`` into a DDGAN run's folder and ``train-ddgan`` into a diffusion run's, new or ``--resume``:
    one line naming the other command. Catches: ``train --resume`` over a DDGAN run failing on the T = 4 it
    took from that run ("the linear schedule needs T >= 21"), and a new run told to pass --resume to the
    command that cannot continue it."""
    toy = ["--data", "two_moons", "--toy-n", "64", "--steps", "2", "--batch-size", "8", "--sample-every", "0",
           "--device", "cpu", "--no-progress"]
    diffusion, gan = str(tmp_path / "diffusion"), str(tmp_path / "gan")
    assert main(["train", *toy, "--T", "30", "--out-dir", diffusion]) == 0
    assert main(["train-ddgan", *toy, "--preset", "tiny", "--out-dir", gan]) == 0
    capsys.readouterr()
    for command, folder, other in (("train", gan, "train-ddgan"), ("train-ddgan", diffusion, "train")):
        for extra in (["--resume", "--steps", "4"], toy):
            assert main([command, "--out-dir", folder, *extra]) == 1
            err = one_error_line(capsys)
            assert f"`python -m ddpm_lib {other} --out-dir {folder} --resume`" in err, err
            assert ("DDGAN run" if other == "train-ddgan" else "diffusion model run") in err
    assert [p.name for p in list_checkpoints(gan)] == [p.name for p in list_checkpoints(diffusion)] == ["ckpt_00000002.pt"]


@pytest.mark.parametrize("command", [["train", "--data", "two_moons", "--out-dir", "{tmp}/run"],
                                     ["sample", "--checkpoint", "{tmp}/nowhere", "--out", "{tmp}/x.png"],
                                     ["train-ddgan", "--data", "two_moons", "--out-dir", "{tmp}/gan"],
                                     ["evaluate", "--checkpoint", "{tmp}/nowhere", "--out", "{tmp}/e.json"]])
def test_a_device_the_machine_lacks_is_refused_in_one_line_before_any_work(command, tmp_path, capsys, monkeypatch):
    """Catches: torch's "Found no NVIDIA driver on your system…" from deep inside the first ``.to(device)``,
    or a parse error listing every device type torch knows, after data and models were loaded."""
    argv = [a.format(tmp=tmp_path) for a in command]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*argv, "--device", "cuda"]) == 1
    assert "--device cuda: this machine has no CUDA GPU" in one_error_line(capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main([*argv, "--device", "cuda:2"]) == 1
    assert one_error_line(capsys) == "error: --device cuda:2: this machine has 2 CUDA GPU(s), numbered from 0"
    assert main([*argv, "--device", "tpu"]) == 1
    assert "--device tpu: not a device name" in one_error_line(capsys)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    assert main([*argv, "--device", "xpu"]) == 1
    assert f"--device xpu: torch {torch.__version__} cannot use xpu devices" in one_error_line(capsys)
    assert main([*argv, "--device", "meta"]) == 1
    assert "--device meta: a meta tensor holds no numbers" in one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_running_out_of_gpu_memory_names_the_flag_to_lower(tmp_path, capsys, monkeypatch):
    """torch's message says how much memory it asked for, over several lines, not what to change. Faked on the
    CPU by raising torch's OutOfMemoryError inside the command. Catches: a multi-line error, or one without
    the flag (--n for sample, --batch-size in a new --out-dir for train)."""
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB. GPU 0 has a total "
                                          "capacity of 14.74 GiB\nIf reserved but unallocated memory is large …")

    run = str(tmp_path / "run")
    assert main(["train", "--data", "two_moons", "--toy-n", "64", "--T", "30", "--steps", "1", "--batch-size", "8",
                 "--sample-every", "0", "--out-dir", run, "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(guidance_eval, "sample_ddpm", out_of_memory)
    assert main(["sample", "--checkpoint", run, "--n", "5000", "--out", str(tmp_path / "x.pt"), "--device", "cpu"]) == 1
    assert one_error_line(capsys) == ("error: CUDA out of memory. Tried to allocate 9.00 GiB. GPU 0 has a total "
                                      "capacity of 14.74 GiB → draw fewer samples at once (--n)")
    monkeypatch.setattr(dl.training.Trainer, "train_step", out_of_memory)
    assert main(["train", "--out-dir", run, "--steps", "2", "--resume", "--no-progress"]) == 1
    assert "GiB → train with a smaller --batch-size" in one_error_line(capsys)
    # The CPU's allocator says it in a RuntimeError of its own; a grid can be what ran out.
    monkeypatch.setattr(guidance_eval, "sample_ddpm", lambda *a, **k: (_ for _ in ()).throw(RuntimeError(
        "[enforce fail at alloc_cpu.cpp:119] data. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 3932160000 bytes. Error code 12 (Cannot allocate memory)")))
    assert main(["sample", "--checkpoint", run, "--n", "5000", "--out", str(tmp_path / "x.pt"), "--device", "cpu"]) == 1
    assert one_error_line(capsys).endswith("(Cannot allocate memory) → draw fewer samples at once (--n)")
    assert "if a sample grid ran out, --resume with fewer --n-samples" in cli.OUT_OF_MEMORY["train"]


# ---- the parsers: defaults, flags wired to their fields, help (mutation run of cli.py and cli_ddgan.py) ----

TRAIN_FLAGS = (["--data", "cifar10", "--data-root", "R", "--toy-n", "123", "--preset", "tiny", "--schedule", "cosine",
                "--T", "77", "--steps", "11", "--batch-size", "12", "--lr", "0.0013", "--warmup", "14",
                "--weight-decay", "0.015", "--grad-clip", "1.6", "--ema-decay", "0.917", "--hflip", "--compile",
                "--seed", "18", "--out-dir", "O", "--log-every", "19", "--sample-every", "20", "--n-samples", "21",
                "--save-every", "22", "--keep", "23", "--device", "cpu", "--no-progress", "--num-classes", "10",
                "--p-uncond", "0.25"],
               dict(data="cifar10", data_root="R", toy_n=123, preset="tiny", schedule="cosine", T=77, steps=11,
                    batch_size=12, lr=0.0013, warmup=14, weight_decay=0.015, grad_clip=1.6, ema_decay=0.917, hflip=True,
                    compile=True, seed=18, out_dir="O", log_every=19, sample_every=20, n_samples=21, save_every=22,
                    keep=23, device="cpu", progress=False, resume=False, num_classes=10, p_uncond=0.25))
DDGAN_FLAGS = (["--data", "cifar10", "--data-root", "R", "--toy-n", "123", "--preset", "tiny", "--T", "3",
                "--beta-min", "0.2", "--beta-max", "15", "--steps", "11", "--batch-size", "12", "--d-steps", "3",
                "--lr-g", "0.0011", "--lr-d", "0.0012", "--betas", "0.5", "0.9", "--r1-gamma", "0.3", "--lazy-r1", "4",
                "--ema-decay", "0.95", "--hflip", "--seed", "18", "--out-dir", "O", "--log-every", "19",
                "--sample-every", "20", "--n-samples", "21", "--save-every", "22", "--keep", "23", "--device", "cpu",
                "--no-progress"],
               dict(data="cifar10", data_root="R", toy_n=123, preset="tiny", T=3, beta_min=0.2, beta_max=15.0, steps=11,
                    batch_size=12, d_steps=3, lr_g=0.0011, lr_d=0.0012, betas=(0.5, 0.9), r1_gamma=0.3, lazy_r1=4,
                    ema_decay=0.95, hflip=True, seed=18, out_dir="O", log_every=19, sample_every=20, n_samples=21,
                    save_every=22, keep=23, device="cpu", progress=False, resume=False))


@pytest.mark.parametrize("command, config_class, kind, flags", [
    ("train", dl.TrainConfig, "diffusion", TRAIN_FLAGS), ("train-ddgan", DDGANConfig, "ddgan", DDGAN_FLAGS)])
def test_training_flags_default_to_the_config_and_each_sets_its_own_field(command, config_class, kind, flags):
    """``train`` / ``train-ddgan`` with no flags give the config class's defaults (on images and on a toy set,
    whose steps, batch and lr come from KIND_DEFAULTS), and every flag set to a value of its own lands in its
    own field. Catches: a flag's default copied from a neighbouring field (--weight-decay defaulting to
    grad_clip's 1.0, --beta-max to β_min), a hard-coded default that drifts from TrainConfig / DDGANConfig
    (T, ema_decay, the DDGAN's T = 4), a default on --steps that overrides the toy sets' own, a flag stored
    under another field's name, an on/off flag whose action is inverted."""
    parser = cli.build_parser()
    for extra in ([], ["--data", "two_moons"]):
        args = parser.parse_args([command, *extra])
        config = cli.config_from_args(config_class, args, [command, *extra], kind=kind)
        expected = config_class(**({"data": "two_moons"} if extra else {}))
        assert dataclasses.asdict(config) == dataclasses.asdict(expected), extra
    argv, values = flags
    config = cli.config_from_args(config_class, parser.parse_args([command, *argv]), [command, *argv], kind=kind)
    got = dataclasses.asdict(config)
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in got.items()} == values


def test_train_compiles_by_default_on_a_cuda_gpu_only(monkeypatch):
    """``train`` without --compile / --no-compile compiles its step when the run computes on a CUDA GPU (the
    default command is the fast one), not on the CPU; either flag decides; a resumed run keeps its setting unless
    --no-compile is given. Catches: compile off by default on a GPU, on for --device cpu, --no-compile ignored,
    --no-compile not counted as given on --resume."""
    parser = cli.build_parser()

    def compile_for(argv, cuda):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        return cli.config_from_args(dl.TrainConfig, parser.parse_args(["train", *argv]), ["train", *argv],
                                    kind="diffusion").compile
    assert compile_for([], cuda=True) is True and compile_for(["--device", "cuda:0"], cuda=True) is True
    assert compile_for(["--device", "cpu"], cuda=True) is False and compile_for([], cuda=False) is False
    assert compile_for(["--no-compile"], cuda=True) is False and compile_for(["--compile"], cuda=False) is True
    assert dl.TrainConfig().compile is False                               # the library's own default: eager


def test_resume_keeps_the_runs_compile_setting_unless_no_compile_is_given(tmp_path, monkeypatch):
    """A run saved with compile on continues compiled when --resume names nothing (also on a machine without a
    GPU); --no-compile on the resume line turns it off. Catches: "--no-compile" not read as the compile setting."""
    out = str(tmp_path / "run")
    config = dl.TrainConfig(data="two_moons", steps=2, batch_size=8, lr=1e-3, warmup=1, out_dir=out, compile=True,
                            device="cpu", progress=False, sample_every=0, log_every=1, save_every=1)
    from ddpm_lib.training import Trainer
    monkeypatch.setattr(Trainer, "__init__", _eager_trainer_init(Trainer.__init__))
    dl.train(config)
    parser = cli.build_parser()
    for argv, expected in ((["--out-dir", out, "--resume"], True),
                           (["--out-dir", out, "--resume", "--no-compile"], False)):
        args = parser.parse_args(["train", *argv])
        assert cli.config_from_args(dl.TrainConfig, args, ["train", *argv], kind="diffusion").compile is expected


def _eager_trainer_init(init):
    """Trainer.__init__ with torch.compile's backend set to "eager" (a saved run's compile flag, no compiler)."""
    def eager_init(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "compile_backend": "eager"})
    return eager_init


def test_by_kind_help_names_each_commands_own_defaults_images_first(capsys):
    """The help of every flag whose default depends on the data's kind gives the images' default, then the toy
    sets', from its own trainer's KIND_DEFAULTS (train: training's; train-ddgan: the DDGAN's). Catches: the two
    values swapped, train-ddgan's help quoting the diffusion trainer's 20000 steps, --lr-d's help giving lr_g's."""
    from ddpm_lib import ddgan_train, train_config
    assert cli.by_kind("steps") == " (default: 20000 for images, 5000 for 2-D toy sets)"
    for command, table in (("train", train_config.KIND_DEFAULTS), ("train-ddgan", ddgan_train.KIND_DEFAULTS)):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps = option_help(capsys.readouterr().out)
        for name in table["images"]:
            expected = f"(default: {table['images'][name]:g} for images, {table['toy'][name]:g} for 2-D toy sets)"
            assert helps["--" + name.replace("_", "-")].endswith(expected), (command, name)


def test_resume_takes_this_commands_progress_bar_not_the_runs(tmp_path):
    """With ``--resume`` the progress bar is the one setting that follows this command line even when not
    given: a run started with --no-progress resumes with a bar unless --no-progress is given again. Catches:
    'progress' taken from the checkpoint like the run's settings (a resumed run in a terminal stays silent)."""
    run = str(tmp_path / "run")
    assert main(["train", "--data", "two_moons", "--toy-n", "64", "--T", "30", "--steps", "1", "--batch-size", "8",
                 "--sample-every", "0", "--out-dir", run, "--device", "cpu", "--no-progress"]) == 0
    parser = cli.build_parser()
    for extra, progress in (([], True), (["--no-progress"], False)):
        argv = ["train", "--out-dir", run, "--steps", "2", "--resume", *extra]
        config = cli.config_from_args(dl.TrainConfig, parser.parse_args(argv), argv, kind="diffusion")
        assert config.progress is progress and config.resume and (config.T, config.data) == (30, "two_moons")


def test_train_ddgan_flags_cannot_be_abbreviated():
    """As for ``train``: an abbreviated flag would escape --resume's check of which flags were given.
    Catches: allow_abbrev left on for train-ddgan (``--d-st 3`` taken as --d-steps, then the run's value)."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train-ddgan", "--out-dir", "x", "--resume", "--d-st", "3"])


def test_train_classifier_passes_each_flag_to_the_trainer_and_the_card(tmp_path, monkeypatch):
    """Every ``train-classifier`` flag reaches ``train_classifier`` under its own name and the card records it
    (the trainer replaced by one that records its arguments: no training). Catches: --max-shift dropped (the
    shift augmentation silently fixed), --lr and --weight-decay swapped, a card recording another flag's value."""
    from ddpm_lib.classifier import MNISTClassifier
    x, y = torch.zeros(6, 1, 32, 32), torch.arange(6) % 10
    monkeypatch.setattr(cli, "load_images", lambda name, root=None, train=True, pad_to_32=False: (x, y))
    seen = {}

    def trainer(*tensors, **kwargs):
        seen.update(kwargs)
        return MNISTClassifier(width=8, feature_dim=8), 0.5

    monkeypatch.setattr(cli, "train_classifier", trainer)
    out = tmp_path / "c.pt"
    assert main(["train-classifier", "--out", str(out), "--epochs", "3", "--batch-size", "5", "--lr", "0.007",
                 "--weight-decay", "0.03", "--max-shift", "1", "--seed", "4", "--threads", "1"]) == 0
    assert {k: seen[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "max_shift", "seed", "device")} == \
        dict(epochs=3, batch_size=5, lr=0.007, weight_decay=0.03, max_shift=1, seed=4, device="cpu")
    card = json.loads(out.with_suffix(".json").read_text())
    assert {k: card[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "max_shift", "seed", "threads")} == \
        dict(epochs=3, batch_size=5, lr=0.007, weight_decay=0.03, max_shift=1, seed=4, threads=1)


def test_evaluate_refuses_a_batch_size_below_one_by_its_flag_before_any_work(tmp_path, capsys, monkeypatch):
    """Catches: --batch-size 0 let through to the sampler (an endless loop of empty batches or a
    ZeroDivisionError after the models are loaded)."""
    monkeypatch.setattr(cli_evaluate, "load_sampling_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded before the check")))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--n", "4", "--batch-size", "0",
                 "--device", "cpu", "--out", str(tmp_path / "r.json")]) == 1
    assert "--batch-size at least 1" in one_error_line(capsys)


def test_evaluate_compiles_for_n_when_n_is_below_the_batch_size(tmp_path, capsys, monkeypatch):
    """``evaluate --compile --n 3 --batch-size 500``: one batch of 3, so the network is compiled (and warmed up)
    for batches of 3. Catches: a network compiled for 500 samples that runs only 3 (minutes of compiling and
    GPU memory for a padded batch)."""
    dl.train(dl.TrainConfig(data="mnist-5k", preset="tiny", schedule="cosine", T=2, steps=1, batch_size=8,
                            sample_every=0, device="cpu", out_dir=str(tmp_path / "run"), progress=False))
    shapes = []

    def compiled(model, batch_shape, device=None, **kwargs):
        shapes.append(tuple(batch_shape))
        raise RuntimeError("compiled")

    monkeypatch.setattr(cli_evaluate, "compiled_eps_model", compiled)
    monkeypatch.setattr(cli_evaluate, "warm_up", lambda net, batch_shape, *a: shapes.append(tuple(batch_shape)))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--n", "3", "--batch-size", "500", "--compile",
                 "--device", "cpu", "--out", str(tmp_path / "r.json")]) == 1
    assert shapes == [(3, 1, 32, 32)] and "compiled" in one_error_line(capsys)


def evaluate_results(weights: str) -> dict:
    return {"metric": "FID-MNIST", "n": 8, "step": 5, "T": 10, "weights": weights,
            "reference": {"n": 1000, "data": "mnist-5k"},
            "samples": {"fid_mnist": 12.5, "confidence": 0.25, "class_entropy": 1.5, "class_counts": [8] + [0] * 9},
            "real_heldout": {"fid_mnist_train_vs_heldout": 1.25, "confidence": 0.75, "class_entropy": 2.25,
                             "class_counts": [100] * 10, "n_train_digits": 8},
            "max_class_entropy": 2.302585}


def test_evaluate_table_names_the_weights_and_puts_samples_before_real_digits(capsys):
    """``print_results``: the header names θ_ema or raw θ as measured, and each row gives the samples' figure,
    then the held-out digits'. Catches: a table that calls raw weights θ_ema, a row with the columns swapped."""
    cli_evaluate.print_results(evaluate_results("raw"))
    out = capsys.readouterr().out
    assert "8 samples (raw θ after step 5, T = 10) vs 1000 held-out mnist-5k digits" in out
    rows = {line[:24].strip(): line[24:].split() for line in out.splitlines()[2:]}
    assert rows["FID-MNIST"][:2] == ["12.500", "1.250"]
    assert rows["mean confidence"] == ["0.2500", "0.7500"]
    assert rows["class entropy (nats)"][:2] == ["1.5000", "2.2500"]
    cli_evaluate.print_results(evaluate_results("ema"))
    assert "8 samples (θ_ema after step 5" in capsys.readouterr().out


def test_a_stopped_bench_names_kept_rows_only_when_there_are_some(tmp_path):
    """Catches: 'the rows measured so far are kept in …' said after a Ctrl-C before any row was measured,
    naming a file that does not exist."""
    import argparse
    from ddpm_lib.bench import bench_rows_file
    args = argparse.Namespace(command="bench", out=str(tmp_path / "b.json"))
    assert cli.stopped_line(args) == "interrupted: bench stopped before finishing (it writes its output at the end)"
    bench_rows_file(args.out).write_text("{}")
    assert cli.stopped_line(args).startswith(f"interrupted: the rows measured so far are kept in {bench_rows_file(args.out)}")


def test_bench_takes_warmup_zero(capsys, monkeypatch):
    """--warmup counts untimed steps, so 0 is allowed (only below 0 is refused). Catches: the warm-up held to
    the '>= 1' of the other counts."""
    monkeypatch.setattr(cli, "bench", lambda *a, **k: (_ for _ in ()).throw(ValueError("benchmark reached")))
    assert main(["bench", "--preset", "tiny", "--batch-size", "4", "--sample-batch", "4", "--iters", "2",
                 "--warmup", "0", "--ddim-steps", "2", "--compile-backend", "eager", "--device", "cpu"]) == 1
    assert one_error_line(capsys) == "error: benchmark reached"


OUT_OF_MEMORY_CASES = {   # command → (argv, the function main runs for it, the flag its hint must name)
    "train": (["train", "--out-dir", "r"], "train", "--batch-size"),
    "train-ddgan": (["train-ddgan", "--out-dir", "r"], "run_ddgan_command", "--batch-size"),
    "sample": (["sample", "--checkpoint", "c"], "run_sample", "--n"),
    "sample-ddgan": (["sample-ddgan", "--checkpoint", "c"], "run_ddgan_command", "--n"),
    "evaluate": (["evaluate", "--checkpoint", "c"], "run_evaluate", "--batch-size"),
    "evaluate-guidance": (["evaluate-guidance", "--checkpoint", "c", "--cfg-scales", "1"], "run_evaluate_guidance",
                          "--batch-size"),
    "trilemma": (["trilemma", "--ddpm", "a", "--ddgan", "b"], "run_trilemma", "--batch-size"),
    "bench": (["bench"], "bench", "--batch-size"),
    "train-noisy-classifier": (["train-noisy-classifier"], "run_train_noisy_classifier", "--batch-size"),
    "train-classifier": (["train-classifier"], "run_train_classifier", "--batch-size"),
}


@pytest.mark.parametrize("command", list(OUT_OF_MEMORY_CASES))
def test_each_command_out_of_gpu_memory_names_a_flag_of_its_own_to_lower(command, capsys, monkeypatch):
    """Every command that holds a batch on the GPU, faked out of memory, ends with torch's first line and
    "→ …" naming the flag that sizes its batch, a flag the command has. Catches: a hint naming another
    command's flag (evaluate told to draw fewer --n, which sets how many samples, not how many at once),
    a command missing from the table (no hint at all)."""
    argv, runner, flag = OUT_OF_MEMORY_CASES[command]

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nmore lines")

    monkeypatch.setattr(cli, runner, out_of_memory)
    assert main(argv) == 1
    message = one_error_line(capsys)
    assert message.startswith("error: CUDA out of memory. Tried to allocate 2.00 GiB. → ")
    named = re.findall(r"--[a-z][a-z0-9-]*", message.split("→", 1)[1])
    assert named[0] == flag, message
    options = {option for action in cli.build_parser()._subparsers._group_actions[0].choices[command]._actions
               for option in action.option_strings}
    assert set(named) <= options, message


def test_main_gives_the_callers_sigterm_handler_back(tmp_path):
    """``main`` sets its own SIGTERM handler while a command runs and restores the one it found. Catches: the
    default handler put back instead, which silently drops the SIGTERM handling of a program (or a test
    runner) that calls ``main``."""
    import signal

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["sample", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")]) == 1
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- train-noisy-classifier (cli_noisy_classifier.py) ----

def test_noisy_classifier_defaults_to_the_schedule_and_T_of_train():
    """A classifier guides only models of its own schedule: with no flags it is trained for what ``train``
    makes with no flags. Catches: a default --schedule or --T that drifts from TrainConfig's (every default
    model then refused by its default classifier)."""
    args = cli.build_parser().parse_args(["train-noisy-classifier"])
    assert (args.schedule, args.T) == (dl.TrainConfig().schedule, dl.TrainConfig().T)


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--lr", "nan"], "--lr must be positive, got nan"),
    (["--weight-decay", "nan"], "--weight-decay must be at least 0, got nan"),
    (["--out", "{tmp}/nc.png"], "the name must end in .pt"),
    (["--eval-t", "0", "10"], "--eval-t values must lie in 1..10 (T), got [0, 10]")])
def test_noisy_classifier_flags_out_of_range_are_refused_before_the_data_is_read(flags, message, tmp_path, capsys,
                                                                                 monkeypatch):
    """Catches: --batch-size 0 or a NaN --lr / --weight-decay reaching AdamW (a NaN run written as a
    classifier), a wrong --out found only after training, t = 0 (no noise level of the schedule) accepted."""
    monkeypatch.setattr(cli_noisy_classifier, "load_images",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("data read before the check")))
    argv = ["train-noisy-classifier", "--out", str(tmp_path / "nc.pt"), "--steps", "5", "--batch-size", "4",
            "--schedule", "cosine", "--T", "10", "--device", "cpu", *[f.format(tmp=tmp_path) for f in flags]]
    assert main(argv) == 1
    assert message in one_error_line(capsys)
    assert not (tmp_path / "nc.pt").exists()


def test_noisy_classifier_flags_reach_the_trainer_and_the_card_and_the_seed_fixes_the_weights(tmp_path, monkeypatch):
    """With the training loop replaced by one that records its arguments and the first weights: --steps,
    --batch-size, --lr and --weight-decay reach it, the card records them with --preset, the final loss is
    the mean of the last 100 losses, and the same --seed gives the same first weights (another seed others).
    Catches: a flag recorded or passed as another, the card's final loss from the last step alone, the
    weights left to torch's global random state."""
    splits = {train: tuple(a[::250] for a in dl.load_images("mnist-5k", train=train, pad_to_32=True))
              for train in (True, False)}
    monkeypatch.setattr(cli_noisy_classifier, "load_images", lambda name, root=None, train=True, pad_to_32=False: splits[train])
    calls = []

    def trainer(model, s, x, y, steps, batch, lr, generator, weight_decay=0.0, log=None, progress=False):
        calls.append(dict(steps=steps, batch=batch, lr=lr, weight_decay=weight_decay,
                          first=[p.detach().clone() for p in model.parameters()]))
        return [float(i) for i in range(150)]

    monkeypatch.setattr(cli_noisy_classifier, "train_noisy_classifier", trainer)
    for seed, name in ((2, "a"), (2, "b"), (3, "c")):
        assert main(["train-noisy-classifier", "--out", str(tmp_path / f"{name}.pt"), "--steps", "7", "--batch-size", "5",
                     "--lr", "0.002", "--weight-decay", "0.01", "--preset", "mnist", "--schedule", "cosine", "--T", "10",
                     "--eval-t", "5", "--seed", str(seed), "--device", "cpu"]) == 0
    assert [{k: v for k, v in c.items() if k != "first"} for c in calls] == \
        [dict(steps=7, batch=5, lr=0.002, weight_decay=0.01)] * 3
    same = [all(torch.equal(p, q) for p, q in zip(calls[0]["first"], c["first"])) for c in calls[1:]]
    assert same == [True, False]
    card = json.loads((tmp_path / "a.json").read_text())
    assert {k: card[k] for k in ("steps", "batch_size", "lr", "weight_decay", "preset", "seed")} == \
        dict(steps=7, batch_size=5, lr=0.002, weight_decay=0.01, preset="mnist", seed=2)
    assert card["final_loss"] == pytest.approx(99.5)                                 # mean of 50 … 149


# ---- sample-ddgan and export-ddgan (cli_ddgan.py) ----

def test_sample_ddgan_shares_sample_defaults_and_refuses_n_below_one(tmp_path, capsys, monkeypatch):
    """``sample-ddgan`` draws as many samples from the same seed as ``sample`` when neither is told otherwise,
    and --n 0 ends in one line before the generator is loaded. Catches: another default --n or --seed than
    sample's, --n 0 reaching the sampler (an empty grid)."""
    parser = cli.build_parser()
    plain, gan = (parser.parse_args([command, "--checkpoint", "c"]) for command in ("sample", "sample-ddgan"))
    assert (gan.n, gan.seed, gan.device) == (plain.n, plain.seed, plain.device) == (64, 0, None)
    from ddpm_lib import cli_ddgan
    monkeypatch.setattr(cli_ddgan, "load_ddgan_generator",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded before the check")))
    assert main(["sample-ddgan", "--checkpoint", str(tmp_path), "--n", "0", "--out", str(tmp_path / "g.pt")]) == 1
    assert one_error_line(capsys) == "error: --n must be at least 1, got 0"


def test_sample_ddgan_follows_its_seed_and_export_ddgan_records_a_runnable_command(tmp_path, capsys):
    """The same --seed draws the same points, another seed others; the line names the step of G_ema; an
    export's card records a command that runs as written (a path with a space quoted). Catches: --seed
    ignored, another number reported as the step, a card command that splits a path in two."""
    run = str(tmp_path / "gan")
    assert main(["train-ddgan", "--data", "two_moons", "--toy-n", "64", "--preset", "tiny", "--steps", "2",
                 "--batch-size", "8", "--sample-every", "0", "--out-dir", run, "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    drawn = []
    for seed, name in ((1, "a.pt"), (1, "b.pt"), (2, "c.pt")):
        assert main(["sample-ddgan", "--checkpoint", run, "--n", "5", "--seed", str(seed), "--out",
                     str(tmp_path / name), "--device", "cpu"]) == 0
        drawn.append(torch.load(tmp_path / name, weights_only=True))
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])
    assert f"wrote 5 samples (G_ema after step 2, 4 generator calls) to {tmp_path / 'c.pt'}" in capsys.readouterr().out
    out = tmp_path / "my models" / "gan.pt"
    assert main(["export-ddgan", "--checkpoint", run, "--out", str(out)]) == 0
    command = json.loads(out.with_suffix(".json").read_text())["command"]
    assert shlex.split(command)[-4:] == ["--checkpoint", run, "--out", str(out)]


def test_help_formatter_adds_a_default_only_where_it_says_something():
    """``cli_help.HelpFormatter`` on a parser of its own: a value's default is added once; not to a required
    option (even one with a default), an on/off flag, a None default, or a help text that names its default
    already, in whatever words. Catches: "(default: 5)" after "5 per batch by default", a required option
    showing a default it never uses."""
    import argparse
    from ddpm_lib.cli_help import HelpFormatter
    p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    p.add_argument("--plain", type=int, default=3, help="a count")
    p.add_argument("--named", type=int, default=5, help="a count, 5 per batch by default")
    p.add_argument("--needed", required=True, default="a", help="a name")
    p.add_argument("--flag", action="store_true", help="on or off")
    p.add_argument("--maybe", default=None, help="None: the usual")
    helps = option_help(p.format_help())
    assert helps["--plain"].endswith("a count (default: 3)")
    assert helps["--named"].endswith("a count, 5 per batch by default")
    assert [f for f in ("--needed", "--flag", "--maybe") if "default" in helps[f]] == []


# ---- config_from_args and main, mutation-tested (cli.py) ----

def fake_resume(monkeypatch, saved: dict) -> list:
    """``cli.checkpoint_to_resume`` and ``cli.load_checkpoint`` faked to find one checkpoint whose config is
    ``saved`` (no training); returns the list the ``kind`` of each look-up is appended to."""
    kinds = []

    def checkpoint_to_resume(out_dir, resume, kind):
        kinds.append(kind)
        return Path(out_dir) / "ckpt_00000010.pt"
    monkeypatch.setattr(cli, "checkpoint_to_resume", checkpoint_to_resume)
    monkeypatch.setattr(cli, "load_checkpoint", lambda path, mmap=False: {"config": dict(saved)})
    return kinds


@pytest.mark.parametrize("command, config_class, kind", [("train", dl.TrainConfig, "diffusion"),
                                                         ("train-ddgan", DDGANConfig, "ddgan")])
def test_resume_keeps_the_runs_device_when_this_machine_has_it(tmp_path, monkeypatch, capsys, command, config_class,
                                                               kind):
    """A run started with ``--device cpu`` resumes on the CPU (bit for bit, no autocast switched on by a GPU);
    one started with ``--device cuda`` on a machine without CUDA continues on this machine's default (None), in
    one line saying so, printed by rank 0 only; ``--device`` on the resume wins; the run's other settings are
    kept. Catches: the recorded 'cuda' refused with "leave device out…" to a user who did; an explicit
    --device cpu (or cuda:1) dropped on resume, moving the run to another device."""
    def resolved(saved_device, extra=()):
        saved = dataclasses.asdict(config_class(data="two_moons", T=4, device=saved_device, seed=7,
                                                out_dir=str(tmp_path)))
        fake_resume(monkeypatch, saved)
        argv = [command, "--out-dir", str(tmp_path), "--resume", *extra]
        config = cli.config_from_args(config_class, cli.build_parser().parse_args(argv), argv, kind=kind)
        assert (config.seed, config.T, config.data) == (7, 4, "two_moons")
        return config.device

    assert resolved("cpu") == "cpu" and resolved(None) is None and capsys.readouterr().out == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolved("cuda") is None
    assert capsys.readouterr().out == ("the run was trained with --device cuda, which this machine lacks: it continues "
                                       "on cpu (give --device to choose)\n")
    assert resolved("cuda", ["--device", "cpu"]) == "cpu"
    monkeypatch.setenv("RANK", "1")
    assert resolved("cuda") is None and capsys.readouterr().out == ""


def test_resume_keeps_each_multi_word_flag_given_in_either_spelling(tmp_path, monkeypatch):
    """With ``--resume``, a multi-word flag given as ``--log-every 7`` or ``--save-every=9`` keeps its value;
    every setting not given (T, data, sample_every) comes from the run's checkpoint. Catches: a flag's name
    not turned into its field's (``log-every`` is not ``log_every``: the run's value silently wins over the
    flag), the field name taken from after the ``=``."""
    saved = dataclasses.asdict(dl.TrainConfig(data="two_moons", T=30, log_every=100, save_every=50, sample_every=0,
                                              out_dir=str(tmp_path)))
    kinds = fake_resume(monkeypatch, saved)
    argv = ["train", "--out-dir", str(tmp_path), "--resume", "--log-every", "7", "--save-every=9"]
    config = cli.config_from_args(dl.TrainConfig, cli.build_parser().parse_args(argv), argv, kind="diffusion")
    assert (config.log_every, config.save_every) == (7, 9)
    assert (config.T, config.data, config.sample_every, config.resume) == (30, "two_moons", 0, True)
    assert kinds == ["diffusion"]


def test_resume_of_a_ddgan_checkpoint_that_predates_d_steps_takes_one_d_update(tmp_path, monkeypatch):
    """A DDGAN checkpoint written before ``d_steps`` was recorded trained with one D update per step: resuming
    it takes ``BEFORE_RECORDED``'s 1, not the toy sets' by-kind default of 2 (the trainer would then refuse the
    run as changed, or train it differently). Catches: only the settings the checkpoint records taken from it,
    the look-up made for diffusion runs whatever the command."""
    saved = dataclasses.asdict(DDGANConfig(data="two_moons", out_dir=str(tmp_path)))
    del saved["d_steps"]
    kinds = fake_resume(monkeypatch, saved)
    argv = ["train-ddgan", "--out-dir", str(tmp_path), "--resume", "--steps", "20"]
    config = cli.config_from_args(DDGANConfig, cli.build_parser().parse_args(argv), argv, kind="ddgan")
    assert (config.d_steps, config.steps, config.data) == (1, 20, "two_moons")
    assert kinds == ["ddgan"]


def test_resume_into_an_empty_folder_says_no_checkpoint_unless_a_run_holds_it(tmp_path, monkeypatch):
    """``--resume`` into a folder with no checkpoint is a missing checkpoint (FileNotFoundError); only when a
    run holds the folder's lock (faked here) is it refused as in use. Catches: the lock test inverted (every
    empty folder said to be in use by another run, and a locked one said to have no checkpoint)."""
    argv = ["train", "--out-dir", str(tmp_path), "--resume"]
    args = cli.build_parser().parse_args(argv)
    with pytest.raises(FileNotFoundError):
        cli.config_from_args(dl.TrainConfig, args, argv, kind="diffusion")
    monkeypatch.setattr(cli, "is_locked", lambda out_dir: True)
    with pytest.raises(cli.RunLocked, match="has saved no checkpoint yet"):
        cli.config_from_args(dl.TrainConfig, args, argv, kind="diffusion")


def test_train_classifier_gives_torch_its_own_thread_count_back(tmp_path, monkeypatch):
    """``--threads`` holds only while the classifier trains: afterwards torch has the caller's thread count
    again, also when --threads differs from it (the trainer faked: no training). Catches: the caller's count
    not restored (every later computation of the process held to --threads; invisible with --threads 1 under
    OMP_NUM_THREADS=1)."""
    from ddpm_lib.classifier import MNISTClassifier
    x, y = torch.zeros(6, 1, 32, 32), torch.arange(6) % 10
    monkeypatch.setattr(cli, "load_images", lambda name, root=None, train=True, pad_to_32=False: (x, y))
    during = []

    def trainer(*tensors, **kwargs):
        during.append(torch.get_num_threads())
        return MNISTClassifier(width=8, feature_dim=8), 0.5

    monkeypatch.setattr(cli, "train_classifier", trainer)
    threads = torch.get_num_threads()
    try:
        assert main(["train-classifier", "--out", str(tmp_path / "c.pt"), "--threads", str(threads + 1)]) == 0
        assert during == [threads + 1] and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(threads)


def test_train_classifier_defaults_rebuild_the_shipped_classifier():
    """The card of the shipped data/mnist_classifier.pt records the command that trained it and every setting:
    that command parsed with today's defaults gives the card's settings, and with no flags at all the command
    writes the same file from the same data. Catches: a default that drifted from the shipped classifier's
    (--max-shift 0: no shift augmentation, --data mnist: another training set), so that the documented command
    no longer rebuilds the classifier FID-MNIST's numbers rest on."""
    card = json.loads(SHIPPED_CLASSIFIER.with_suffix(".json").read_text())
    parser = cli.build_parser()
    args = parser.parse_args(shlex.split(card["command"])[3:])
    assert {k: getattr(args, k) for k in ("data", "epochs", "batch_size", "lr", "weight_decay", "max_shift", "seed",
                                          "device", "threads")} == \
        {k: card[k] for k in ("data", "epochs", "batch_size", "lr", "weight_decay", "max_shift", "seed", "device",
                              "threads")}
    default = parser.parse_args(["train-classifier"])
    assert (default.data, default.out) == (card["data"], "data/" + card["file"]) and vars(default) == vars(args)


def test_a_stopped_sampling_command_names_its_kept_samples(tmp_path):
    """``evaluate``, ``trilemma`` and ``evaluate-guidance`` keep finished batches in ``OUT.partial.pt``: when one
    is stopped, its line names the kept file and says the same command continues; with nothing kept it says
    the command stopped. Catches: a command left out of the list (evaluate-guidance's kept samples not named,
    the user told to start again)."""
    import argparse
    from ddpm_lib.sample_batches import partial_path
    for command in ("evaluate", "trilemma", "evaluate-guidance"):
        args = argparse.Namespace(command=command, out=str(tmp_path / f"{command}.json"))
        assert cli.stopped_line(args) == \
            f"interrupted: {command} stopped before finishing (it writes its output at the end)"
        partial_path(args.out).write_bytes(b"")
        assert cli.stopped_line(args) == (f"interrupted: the samples kept in {partial_path(args.out)} stay there; "
                                          f"the same command continues from them"), command


def test_bench_checks_ddim_steps_keeps_its_rows_and_drops_them_once_written(tmp_path, capsys, monkeypatch):
    """``bench`` (the benchmark faked: no timing): --ddim-steps 0 is refused by name before any work; with
    --out, the benchmark is given OUT's rows file to keep its finished rows in, the figures go to OUT and the
    rows file is removed once they are written; its defaults are five untimed warm-up steps before 20 timed.
    Catches: --ddim-steps left out of the check, the rows file never passed (a stopped bench starts over) or
    never removed (a later bench takes stale rows as measured), warm-up steps defaulting to none (compilation
    timed as throughput)."""
    from ddpm_lib.bench import bench_rows_file
    calls = []

    def fake_bench(*args, keep=None, **kwargs):
        calls.append(keep)
        keep.write_text("{}")
        return {"rows": []}

    monkeypatch.setattr(cli, "bench", fake_bench)
    monkeypatch.setattr(cli, "format_table", lambda figures: "the table")
    out = tmp_path / "b.json"
    base = ["bench", "--preset", "tiny", "--device", "cpu", "--out", str(out)]
    assert main([*base, "--ddim-steps", "0"]) == 1
    assert "--ddim-steps must be at least 1" in one_error_line(capsys) and calls == []
    assert main(base) == 0
    assert calls == [bench_rows_file(out)] and json.loads(out.read_text()) == {"rows": []}
    assert not bench_rows_file(out).exists()
    defaults = cli.build_parser().parse_args(["bench"])
    assert (defaults.warmup, defaults.iters) == (5, 20)


def test_main_reads_the_command_line_after_the_programs_name(tmp_path, monkeypatch, capsys):
    """``main()`` with no argument parses ``sys.argv[1:]`` (as ``python -m ddpm_lib`` calls it). Catches: the
    program's own name taken for the command (every command line refused by argparse)."""
    monkeypatch.setattr(sys, "argv", ["ddpm_lib", "train-classifier", "--threads", "0",
                                      "--out", str(tmp_path / "c.pt")])
    assert main() == 1
    assert "--threads must be at least 1" in one_error_line(capsys)


def test_evaluate_warms_up_an_eager_network_compiles_only_for_samples_still_to_draw_and_refuses_bf16_on_a_cpu(
        tmp_path, capsys, monkeypatch):
    """``evaluate`` with the models, the real digits and the drawing faked (no checkpoint, no sampling): an eager
    network gets one untimed warm-up call for the batch shape before the timed batches; ``--compile`` compiles
    for that shape (no separate warm-up), but not when every sample is already kept from a stopped run;
    ``--bf16`` on a CPU is refused before the model is loaded. Catches: the warm-up given to the compiled network
    instead of the eager one (the first timed batch pays for loading the kernels), minutes of compiling for a
    run that has nothing left to draw, the bf16 check inverted (refused on CUDA, let through on a CPU)."""
    calls = []

    class Schedule:
        T = 10

        def to(self, device):
            return self

    checkpoint, classifier = tmp_path / "ckpt.pt", tmp_path / "clf.pt"
    checkpoint.write_bytes(b"weights")
    classifier.write_bytes(b"classifier")
    ckpt = {"example_shape": (1, 32, 32), "path": checkpoint, "step": 1, "config": {"data": "mnist-5k"}}

    def load_sampling_model(path, device, weights):
        calls.append("load")
        return torch.nn.Identity(), Schedule(), ckpt

    def compiled(model, batch_shape, device=None, **kwargs):
        calls.append(("compile", tuple(batch_shape)))
        model.compile_seconds = 0.0
        return model

    monkeypatch.setattr(cli_evaluate, "load_classifier", lambda path, device: None)
    monkeypatch.setattr(cli_evaluate, "load_sampling_model", load_sampling_model)
    monkeypatch.setattr(cli_evaluate, "guided_model", lambda model, info, label: (model,))
    monkeypatch.setattr(cli_evaluate, "real_digits", lambda info: (None, None))
    monkeypatch.setattr(cli_evaluate, "compiled_eps_model", compiled)
    monkeypatch.setattr(cli_evaluate, "warm_up", lambda net, batch_shape, *a: calls.append(("warm_up", tuple(batch_shape))))
    monkeypatch.setattr(cli_evaluate, "draw_batches", lambda *a: (_ for _ in ()).throw(ValueError("drawing reached")))
    kept = {"count": 0}
    monkeypatch.setattr(cli_evaluate, "kept_count", lambda out: kept["count"])
    base = ["evaluate", "--checkpoint", str(checkpoint), "--classifier", str(classifier), "--n", "6",
            "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "r.json")]
    for extra, count, expected in (([], 0, ["load", ("warm_up", (4, 1, 32, 32))]),
                                   (["--compile"], 0, ["load", ("compile", (4, 1, 32, 32))]),
                                   (["--compile"], 6, ["load"])):
        calls.clear()
        kept["count"] = count
        assert main([*base, *extra]) == 1
        assert one_error_line(capsys) == "error: drawing reached" and calls == expected, (extra, count)
    calls.clear()
    assert main([*base, "--bf16"]) == 1
    assert "--bf16 needs a CUDA device" in one_error_line(capsys) and calls == []


def test_evaluate_defaults_to_the_sample_size_of_the_courses_fid_mnist_figures():
    """``evaluate`` with only --checkpoint measures 10,000 samples of θ_ema, 500 at a time, seed 0 (the size the
    README's command and the kept-batch files are planned for). Catches: a smaller default --n, whose FID-MNIST
    (biased upward at small n) is not comparable with the course's figures."""
    args = cli.build_parser().parse_args(["evaluate", "--checkpoint", "run"])
    assert (args.n, args.batch_size, args.seed, args.weights, args.out) == (10_000, 500, 0, "ema", "results.json")


def test_train_noisy_classifier_records_its_whole_command_line(tmp_path, monkeypatch):
    """``train-noisy-classifier`` hands its trainer the command line to record in the card, the command's name
    included and quoted for a shell (the trainer faked: no training). Catches: the command's name dropped from
    the recorded line (the card's command cannot be run again)."""
    seen = {}
    monkeypatch.setattr(cli, "run_train_noisy_classifier", lambda args, command: seen.update(command=command))
    argv = ["train-noisy-classifier", "--out", str(tmp_path / "my models" / "noisy.pt")]
    assert main(argv) == 0
    assert shlex.split(seen["command"]) == ["python", "-m", "ddpm_lib", *argv]


def test_a_trainer_stopped_without_saving_says_so_and_names_the_checkpoint_to_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C while ``train`` loads its data (before any save), or a second Ctrl-C during a save, ends with status
    130 and one line saying that nothing was saved and which checkpoint --resume would take; a trainer that
    saved (``Stopped``) has said so itself, so nothing is added; under torchrun only rank 0 speaks. Catches: a
    silent status 130 after which the user does not know whether the last 1,000 steps were kept."""
    from ddpm_lib.run_folder import Stopped
    run = tmp_path / "run"
    argv = ["train", "--data", "two_moons", "--toy-n", "64", "--T", "30", "--steps", "2", "--batch-size", "8",
            "--sample-every", "0", "--save-every", "1", "--out-dir", str(run), "--device", "cpu", "--no-progress"]
    stop = {"with": KeyboardInterrupt()}
    monkeypatch.setattr(cli, "train", lambda config: (_ for _ in ()).throw(stop["with"]))
    assert main(argv) == 130
    assert capsys.readouterr().err == f"interrupted: train stopped; no checkpoint is in {run} yet\n"
    monkeypatch.undo()
    assert main(argv) == 0
    capsys.readouterr()
    monkeypatch.setattr(cli, "train", lambda config: (_ for _ in ()).throw(stop["with"]))
    stop["with"] = KeyboardInterrupt("a second Ctrl-C: stopped at once, without waiting for the save")
    assert main(argv + ["--resume"]) == 130
    assert capsys.readouterr().err == ("interrupted (a second Ctrl-C: stopped at once, without waiting for the save): "
                                       f"train stopped; the latest checkpoint is "
                                       f"{run / 'ckpt_00000002.pt'} (--resume continues from it)\n")
    stop["with"] = Stopped("interrupted at step 2: saved …")
    assert main(argv + ["--resume"]) == 130 and capsys.readouterr().err == ""
    stop["with"] = KeyboardInterrupt()
    monkeypatch.setenv("RANK", "1")
    assert main(argv + ["--resume"]) == 130 and capsys.readouterr().err == ""
