"""Exported fp16 EMA weights: the card's sha256, a round trip to float32, and clear errors."""
import json

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.checkpoint import load_checkpoint, latest_checkpoint
from ddpm_lib.checkpoint import file_sha256
from ddpm_lib.export import export_ema_weights, load_pretrained


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    dl.train(dl.TrainConfig(data="two_moons", toy_n=256, T=30, steps=3, batch_size=16, warmup=1,
                            sample_every=0, log_every=1, out_dir=str(out), progress=False, device="cpu"))
    return out


def test_export_writes_half_precision_ema_and_a_card_with_its_sha256(run_dir, tmp_path):
    card = export_ema_weights(run_dir, tmp_path / "toy.pt", command="python -m ddpm_lib export ...")
    on_disk = json.loads((tmp_path / "toy.json").read_text())
    assert on_disk == card and card["sha256"] == file_sha256(tmp_path / "toy.pt") and card["step"] == 3
    blob = torch.load(tmp_path / "toy.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in blob["ema"].values() if v.is_floating_point())


def test_loaded_model_holds_the_ema_weights_rounded_to_fp16(run_dir, tmp_path):
    export_ema_weights(run_dir, tmp_path / "toy.pt")
    model, s = load_pretrained(tmp_path / "toy.pt")
    ema = load_checkpoint(latest_checkpoint(run_dir))["ema"]
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, ema[k].half().float()), k
    assert s.T == 30 and not model.training
    x0 = dl.sample_ddpm(model, s, (8, 2), generator=torch.Generator().manual_seed(0))
    assert x0.shape == (8, 2) and torch.isfinite(x0).all()


def test_a_changed_or_truncated_file_is_refused(run_dir, tmp_path):
    path = tmp_path / "toy.pt"
    export_ema_weights(run_dir, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_pretrained(path)
    with pytest.raises(RuntimeError, match="cannot read"):
        load_pretrained(path, check_sha256=False)
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "missing.pt")


def test_export_command_line(run_dir, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "toy.pt"
    r = subprocess.run([sys.executable, "-m", "ddpm_lib", "export", "--checkpoint", str(run_dir), "--out", str(out),
                        "--training-command", "python -m ddpm_lib train --data two_moons"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["command"] == "python -m ddpm_lib train --data two_moons" and card["sha256"] == file_sha256(out)
    r = subprocess.run([sys.executable, "-m", "ddpm_lib", "export", "--checkpoint", str(tmp_path / "none"),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
