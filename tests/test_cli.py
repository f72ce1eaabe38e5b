"""``python -m ddpm_lib train`` and ``sample`` end to end, and their one-line errors."""
import json
import os
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
from ddpm_lib.cli import main

ROOT = Path(__file__).resolve().parent.parent


def ddpm_lib(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "ddpm_lib", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


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


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_damaged_checkpoints_and_wrong_outputs_end_with_one_line(tmp_path, capsys):
    assert main(["train", "--data", "two_moons", "--toy-n", "100", "--T", "30", "--steps", "2", "--batch-size", "8",
                 "--sample-every", "0", "--out-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    path = list_checkpoints(tmp_path / "run")[-1]
    assert main(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "x.png"), "--device", "cpu"]) == 1
    assert "pass --out with a .pt name" in one_error_line(capsys)
    path.write_bytes(path.read_bytes()[:1000])
    assert main(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "x.pt"), "--device", "cpu"]) == 1
    assert "truncated" in one_error_line(capsys)
    assert main(["sample", "--checkpoint", str(tmp_path / "nowhere")]) == 1
    assert "no checkpoint" in one_error_line(capsys)


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
    assert "offline, use the shipped subset instead: load_images('mnist-5k')" in one_error_line(capsys)


def test_help_lists_both_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "train" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--preset", "enormous"])                     # argparse rejects an unknown choice
