"""Exported fp16 EMA weights: the card's sha256, a round trip to float32, and clear errors."""
import json

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.checkpoint import load_checkpoint, latest_checkpoint
from ddpm_lib.files import file_sha256
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


def test_the_card_is_checked_and_the_file_is_what_counts(run_dir, tmp_path):
    """A card without its sha256 fails the check like a wrong one; an edited card (other T and step, its
    sha256 kept) does not change what load_sampling_model reports: config and step come from the weights
    file. An unknown ``weights`` name is refused. Catches: a card with no sha256 trusted, the card's
    config preferred over the file's, "EMA" silently read as the raw weights."""
    from ddpm_lib.export import load_sampling_model
    path = tmp_path / "toy.pt"
    export_ema_weights(run_dir, path)
    card_path, card = tmp_path / "toy.json", json.loads((tmp_path / "toy.json").read_text())
    card_path.write_text(json.dumps({**card, "step": 99, "config": {**card["config"], "T": 7}}))
    _, s, info = load_sampling_model(path)
    blob = torch.load(path, weights_only=True)
    assert s.T == 30 and info["step"] == blob["step"] == 3 and info["config"] == blob["config"]
    card_path.write_text(json.dumps({k: v for k, v in card.items() if k != "sha256"}))
    for load in (load_pretrained, load_sampling_model):
        with pytest.raises(ValueError, match="does not match the sha256"):
            load(path)
    with pytest.raises(ValueError, match="weights must be"):
        load_sampling_model(run_dir, weights="EMA")


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


# ---- the class-conditional model, and one loader for checkpoints and weights files ----

@pytest.fixture(scope="module")
def cfg_run(tmp_path_factory):
    """A class-conditional (CFG) tiny U-Net after 2 steps on mnist-5k (T = 10, cosine)."""
    out = tmp_path_factory.mktemp("cfg")
    dl.train(dl.TrainConfig(data="mnist-5k", preset="tiny", schedule="cosine", T=10, steps=2, batch_size=8, warmup=1,
                            sample_every=0, log_every=1, out_dir=str(out), progress=False, device="cpu",
                            num_classes=10))
    return out


def test_conditional_model_exports_and_loads_with_its_null_label(cfg_run, tmp_path):
    from ddpm_lib.export import load_sampling_model
    card = export_ema_weights(cfg_run, tmp_path / "cfg.pt", command="test")
    assert card["model_spec"]["kind"] == "conditional_unet" and card["config"]["num_classes"] == 10
    model, s = load_pretrained(tmp_path / "cfg.pt")
    assert isinstance(model, dl.ConditionalUNet) and model.null_label == 10 and (s.name, s.T) == ("cosine", 10)
    ema = load_checkpoint(latest_checkpoint(cfg_run))["ema"]
    assert all(torch.equal(v, ema[k].half().float()) for k, v in model.state_dict().items())
    from_file, s_file, info_file = load_sampling_model(tmp_path / "cfg.pt")
    from_run, s_run, info_run = load_sampling_model(cfg_run)
    assert (info_file["source"], info_run["source"]) == ("weights", "checkpoint")
    for key in ("step", "example_shape", "config", "model_spec"):
        assert info_file[key] == info_run[key], key
    assert info_file["example_shape"] == (1, 32, 32) and info_file["step"] == 2
    assert all(torch.equal(v, from_run.state_dict()[k].half().float()) for k, v in from_file.state_dict().items())
    xt, t, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 9]), torch.tensor([4, 10])
    torch.testing.assert_close(from_file(xt, t, y), from_run(xt, t, y), rtol=0.05, atol=0.05)   # fp16 weights


def test_sampling_loader_reads_weights_exported_before_step_and_shape_were_stored(run_dir, tmp_path):
    """An older weights file (format, model_spec, ema, schedule only): the step and config come from its
    card, the example shape from the architecture; a file of another kind is refused in one line."""
    from ddpm_lib.files import save_atomic
    from ddpm_lib.classifier import DEFAULT_CLASSIFIER
    from ddpm_lib.export import load_sampling_model
    path = tmp_path / "old.pt"
    export_ema_weights(run_dir, path)
    blob = torch.load(path, weights_only=True)
    save_atomic({k: blob[k] for k in ("format", "model_spec", "ema", "schedule")}, path)
    card = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**card, "sha256": file_sha256(path)}))
    model, s, info = load_sampling_model(path)
    assert info["step"] == 3 and info["example_shape"] == (2,) and info["config"]["data"] == "two_moons"
    assert s.T == 30 and info["source"] == "weights"
    with pytest.raises(ValueError, match="is the MNIST classifier behind FID-MNIST .*, not a ddpm_lib checkpoint or "
                                         "exported weights file"):
        load_sampling_model(DEFAULT_CLASSIFIER)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_sampling_model(path)


def test_the_card_records_the_training_time_and_by_default_the_command_that_ran(run_dir, tmp_path, monkeypatch):
    """Without ``command`` the card records this process's command line, quoted for a shell, as
    ``python -m ddpm_lib …``; ``training_seconds`` is the checkpoint's elapsed time. Catches: a card whose
    command is null, the training time dropped."""
    monkeypatch.setattr("sys.argv", ["/x/ddpm_lib/__main__.py", "export", "--checkpoint", "my run", "--out", "w.pt"])
    card = export_ema_weights(run_dir, tmp_path / "w.pt")
    assert card["command"] == "python -m ddpm_lib export --checkpoint 'my run' --out w.pt"
    elapsed = load_checkpoint(latest_checkpoint(run_dir))["elapsed"]
    assert isinstance(elapsed, float) and card["training_seconds"] == elapsed
    assert json.loads((tmp_path / "w.json").read_text())["training_seconds"] == elapsed


def test_a_checkpoint_without_ema_weights_is_refused_with_the_command_for_it(run_dir, tmp_path):
    """A DDGAN checkpoint (no θ_ema) is refused in one line that points to export-ddgan; nothing is written.
    Catches: a KeyError, or an export of another model's weights."""
    from ddpm_lib.files import save_atomic
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    del ckpt["ema"]
    ckpt["model_spec"] = {**ckpt["model_spec"], "kind": "ddgan"}
    save_atomic(ckpt, tmp_path / "gan.pt")
    with pytest.raises(ValueError, match="is not a diffusion training checkpoint \\(model kind 'ddgan'\\): export a "
                                         "DDGAN run with export-ddgan"):
        export_ema_weights(tmp_path / "gan.pt", tmp_path / "w.pt")
    assert not (tmp_path / "w.pt").exists() and not (tmp_path / "w.json").exists()


def test_an_export_whose_card_would_replace_the_checkpoints_card_is_refused(run_dir, tmp_path):
    """``--checkpoint run/ckpt.pth --out run/ckpt.pt``: the new card run/ckpt.json would take the name of the
    checkpoint's card, so the export is refused before any work. Catches: only the weights file checked."""
    import shutil
    shutil.copy(latest_checkpoint(run_dir), tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match="would overwrite the --checkpoint card"):
        export_ema_weights(tmp_path / "ckpt.pth", tmp_path / "ckpt.pt")
    assert not (tmp_path / "ckpt.pt").exists()


def test_raw_weights_of_a_checkpoint_are_reported_as_such_in_eval_mode(run_dir):
    """``load_sampling_model(run, weights="raw")``: the checkpoint's θ (not θ_ema), in eval mode, and ``info``
    says ``weights: raw``; the default says ``ema``. Catches: the choice not recorded, a model left in train mode."""
    from ddpm_lib.export import load_sampling_model
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    model, _, info = load_sampling_model(run_dir, weights="raw")
    assert info["weights"] == "raw" and info["source"] == "checkpoint" and not model.training
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())
    model, _, info = load_sampling_model(run_dir)
    assert info["weights"] == "ema" and not model.training
    assert all(torch.equal(v, ckpt["ema"][k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["ema"])


def test_the_weights_file_holds_what_sampling_needs(cfg_run, tmp_path):
    """Besides θ_ema in fp16 the file holds its schedule (name and T: cosine, 10), the step, the example shape
    and the training config, taken from the checkpoint. Catches: a field left out or fixed (loaders would
    fall back on the card or the architecture, which a file passed on without its card lacks)."""
    export_ema_weights(cfg_run, tmp_path / "w.pt", command="test")
    ckpt = load_checkpoint(latest_checkpoint(cfg_run))
    blob = torch.load(tmp_path / "w.pt", weights_only=True)
    assert blob["format"] == "ddpm_lib-weights-1" and blob["model_spec"] == ckpt["model_spec"]
    assert blob["schedule"] == {"name": "cosine", "T": 10} and blob["step"] == 2
    assert blob["example_shape"] == list(ckpt["example_shape"]) == [1, 32, 32] and blob["config"] == ckpt["config"]


def test_an_old_weights_file_without_its_card_still_loads_with_its_own_schedule(run_dir, tmp_path):
    """An older weights file (format, model_spec, ema, schedule only) passed on without its card: the schedule
    comes from the file itself (T = 30), the step is unknown and the config empty. Catches: the schedule
    rebuilt from a config that such a file does not have (a KeyError)."""
    from ddpm_lib.files import save_atomic
    from ddpm_lib.export import load_sampling_model
    path = tmp_path / "old.pt"
    export_ema_weights(run_dir, path)
    blob = torch.load(path, weights_only=True)
    save_atomic({k: blob[k] for k in ("format", "model_spec", "ema", "schedule")}, path)
    path.with_suffix(".json").unlink()
    model, s, info = load_sampling_model(path)
    assert (s.name, s.T) == (blob["schedule"]["name"], 30) and info["step"] is None and info["config"] == {}
    assert info["example_shape"] == (2,) and not model.training
