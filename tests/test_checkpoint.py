"""Checkpoints: atomic writes survive a failure midway, keep-last-k, and damaged or foreign files fail clearly."""
import os
import time

import pytest
import torch
from test_training import toy_config

import ddpm_lib as dl
from ddpm_lib import checkpoint
from ddpm_lib import training as train_module
from ddpm_lib.checkpoint import (build_model, latest_checkpoint, list_checkpoints, load_checkpoint, load_ema_model,
                                 load_model_state, resume_training, save_checkpoint)
from ddpm_lib.data import EpochBatches
from ddpm_lib.training import Trainer, train
from ddpm_lib.unet import UNet

SMALL = dict(image_size=16, in_channels=1, base_width=8, width_mult=(1, 2), blocks_per_level=1, attn_res=(),
             linear_attn_res=(), heads=1, dropout=0.0)


def state(step: int) -> dict:
    return {"step": step, "weights": torch.full((3,), float(step))}


def test_keep_last_k_deletes_the_older_checkpoints(tmp_path):
    for step in range(1, 6):
        save_checkpoint(state(step), tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000004.pt", "ckpt_00000005.pt"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 5


def test_a_failed_rename_leaves_the_previous_checkpoint_as_the_latest(tmp_path, monkeypatch):
    save_checkpoint(state(10), tmp_path, keep=1)

    def rename_fails(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", rename_fails)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(state(20), tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000010.pt"]     # no temporary file left
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["weights"], torch.full((3,), 10.0))


def test_a_write_cut_off_midway_never_becomes_a_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(state(10), tmp_path, keep=3)
    real_save = torch.save

    def save_half_then_crash(obj, f):
        real_save(obj, f)
        f.seek(f.tell() // 2)
        f.truncate()
        raise RuntimeError("killed while writing (simulated)")

    monkeypatch.setattr(checkpoint.torch, "save", save_half_then_crash)
    with pytest.raises(RuntimeError, match="simulated"):
        save_checkpoint(state(20), tmp_path, keep=3)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_00000010.pt"]
    # a temporary file left by a process killed outright (no cleanup) is not taken for a checkpoint either
    (tmp_path / ".ckpt_00000030.pt.tmp-12345").write_bytes(b"PK\x03\x04 half a zip")
    assert latest_checkpoint(tmp_path).name == "ckpt_00000010.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 10


def test_the_latest_checkpoint_is_the_highest_step_whatever_the_file_times(tmp_path):
    """Steps, not modification times, order checkpoints: an old one touched later (copied back, say) is
    neither taken as the latest nor kept over newer ones; keep = 0 is refused (it would delete the file
    just written). Catches: ordering by mtime, keep = 0 keeping everything."""
    for step in (10, 20):
        save_checkpoint(state(step), tmp_path, keep=3)
    later = time.time() + 100
    os.utime(tmp_path / "ckpt_00000010.pt", (later, later))
    assert latest_checkpoint(tmp_path).name == "ckpt_00000020.pt"
    save_checkpoint(state(30), tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000020.pt", "ckpt_00000030.pt"]
    with pytest.raises(ValueError, match="keep must be at least 1"):
        save_checkpoint(state(40), tmp_path, keep=0)


def test_ctrl_c_during_a_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A KeyboardInterrupt (the second Ctrl-C) inside torch.save removes the temporary file and leaves the
    previous checkpoint the latest. Catches: cleaning up on Exception only (KeyboardInterrupt is not one)."""
    save_checkpoint(state(10), tmp_path, keep=3)

    def interrupted(obj, f):
        f.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(state(20), tmp_path, keep=3)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_00000010.pt"]


def test_a_setting_an_older_checkpoint_lacks_counts_as_its_default():
    """check_same_run compares a setting missing from a checkpoint's config with the setting's default:
    p_uncond = 0.3 against an old config without it is refused, the default 0.1 is accepted.
    Catches: missing settings skipped (any value accepted)."""
    from ddpm_lib.training import TrainConfig
    saved = {k: v for k, v in vars(TrainConfig(num_classes=10)).items() if k != "p_uncond"}
    checkpoint.check_same_run("old.pt", saved, TrainConfig(num_classes=10))
    with pytest.raises(ValueError, match="p_uncond=0.1 there, 0.3 here"):
        checkpoint.check_same_run("old.pt", saved, TrainConfig(num_classes=10, p_uncond=0.3))


def test_a_truncated_file_gives_a_one_line_error(tmp_path):
    path = save_checkpoint(state(1), tmp_path, keep=1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RuntimeError, match="truncated") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_bytes_changed_inside_a_checkpoint_are_found_by_its_checksums(tmp_path):
    """1,000 bytes zeroed in the middle of a checkpoint's weights: torch.load reads it without a word (the weights
    are simply wrong), so the loader compares each part with the CRC-32 that torch.save wrote, and refuses the
    file in one line naming the part. A file written without checksums (torch's compute_crc32 off) still
    loads. Catches: a corrupt checkpoint resumed, then named "last good checkpoint" when the loss turns NaN."""
    from ddpm_lib import files
    path = save_checkpoint({"step": 1, "weights": torch.randn(100_000)}, tmp_path, keep=1)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 1000] = bytes(1000)
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"cannot read checkpoint {path}: the file is damaged (its part archive/data/0 "
                              f"no longer matches the checksum written with it)")
    try:
        from torch.utils.serialization import config
    except ImportError:                                  # torch before 2.6 always writes checksums
        return
    previous, config.save.compute_crc32 = config.save.compute_crc32, False
    try:
        unchecked = save_checkpoint({"step": 2, "weights": torch.ones(3)}, tmp_path / "plain", keep=1)
    finally:
        config.save.compute_crc32 = previous
    assert files.damaged_member(unchecked) is None and load_checkpoint(unchecked)["step"] == 2


def test_a_file_in_torchs_legacy_format_loads_without_a_checksum_check(tmp_path):
    """``torch.save(..., _use_new_zipfile_serialization=False)`` writes no zip archive, so there are no checksums
    to compare: the file loads as before. A mapped read (a peek at the config) does not read the weights to check
    them; the full load does. Catches: zipfile's BadZipFile escaping as a traceback (it is no RuntimeError or
    ValueError, which the command line turns into one line); every peek reading a 600 MB file."""
    from ddpm_lib import files
    legacy = tmp_path / "legacy.pt"
    torch.save({"format": checkpoint.FORMAT, "step": 3}, legacy, _use_new_zipfile_serialization=False)
    assert files.damaged_member(legacy) is None and load_checkpoint(legacy)["step"] == 3
    path = save_checkpoint({"step": 1, "weights": torch.randn(100_000)}, tmp_path / "run", keep=1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert load_checkpoint(path, mmap=True)["step"] == 1
    with pytest.raises(RuntimeError, match="the file is damaged"):
        load_checkpoint(path)
    with pytest.raises(RuntimeError, match="the file is damaged"):          # --resume checks what it peeks at
        checkpoint.checkpoint_to_resume(tmp_path / "run", resume=True, kind="diffusion")


def test_a_damaged_latest_checkpoint_on_resume_names_the_older_one_to_fall_back_on(tmp_path):
    """A run keeps steps 4 and 8 and the latest is cut short (a disk that filled up, a copy stopped midway):
    ``--resume`` says it is damaged and that moving it aside resumes from ckpt_00000004.pt, which it then
    does; with no older checkpoint the error is the plain one. Catches: a dead end for the user, who may
    not know that the run keeps older checkpoints."""
    train(toy_config(tmp_path, steps=8))
    latest = list_checkpoints(tmp_path / "run")[-1]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    with pytest.raises(RuntimeError) as err:
        train(toy_config(tmp_path, steps=10, resume=True))
    assert "truncated" in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).endswith(f"The run also keeps ckpt_00000004.pt: move ckpt_00000008.pt out of "
                                   f"{tmp_path / 'run'} and --resume continues from the older one")
    latest.rename(tmp_path / "damaged.pt")
    assert train(toy_config(tmp_path, steps=10, resume=True)).step == 10
    only = save_checkpoint(state(1), tmp_path / "alone", keep=1)
    only.write_bytes(only.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="truncated") as err:
        checkpoint.checkpoint_to_resume(tmp_path / "alone", resume=True, kind="diffusion")
    assert "older" not in str(err.value)


def test_an_output_named_like_a_checkpoint_is_refused(tmp_path):
    """``sample --checkpoint run --out run/ckpt_00000004.pt``: only the latest checkpoint is the input, but the
    older ones are the run's too. Catches: a kept checkpoint silently replaced by a tensor of samples."""
    with pytest.raises(ValueError, match=r"--out .*ckpt_00000004.pt is named like a training checkpoint"):
        checkpoint.check_files({"--checkpoint": None}, tmp_path / "run" / "ckpt_00000004.pt")
    checkpoint.check_files({"--checkpoint": None}, tmp_path / "run" / "ckpt_4.pt")     # not a checkpoint's name


def test_files_that_are_not_training_checkpoints_are_refused(tmp_path):
    torch.save({"step": 1}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a ddpm_lib checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a ddpm_lib checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"format": checkpoint.FORMAT, "object": torch.nn.Linear(2, 2)}, tmp_path / "code.pt")
    with pytest.raises(RuntimeError, match="cannot read checkpoint") as err:   # weights_only=True refuses modules
        load_checkpoint(tmp_path / "code.pt")
    assert "Python objects that weights_only=True will not unpickle" in str(err.value)
    assert "weights_only` set to `False`" not in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "notes.pt").write_text('{"step": 1}')
    with pytest.raises(RuntimeError, match="it is no zip archive") as err:
        load_checkpoint(tmp_path / "notes.pt")
    assert "False" not in str(err.value)


def test_weights_of_another_architecture_give_a_one_line_error():
    small, wider = UNet(**SMALL), UNet(**{**SMALL, "base_width": 16})
    with pytest.raises(ValueError, match="different architecture") as err:
        load_model_state(small, wider.state_dict(), source="run/ckpt_00000100.pt")
    assert "\n" not in str(err.value) and "time_mlp.0.weight is (64, 16) there but (32, 8) here" in str(err.value)
    with_attention = UNet(**{**SMALL, "attn_res": (8,)})           # extra tensors, none reshaped
    with pytest.raises(ValueError, match=r"[1-9]\d* missing, 0 unexpected and 0 differently shaped"):
        load_model_state(with_attention, small.state_dict())
    load_model_state(small, UNet(**SMALL).state_dict())        # the same architecture loads


def test_load_ema_model_rebuilds_the_network_with_the_ema_weights(tmp_path):
    spec = {"kind": "unet", "config": SMALL}
    model, ema = build_model(spec), build_model(spec)
    assert not torch.equal(model.conv_in.weight, ema.conv_in.weight)
    save_checkpoint({"step": 7, "model": model.state_dict(), "ema": ema.state_dict(), "model_spec": spec,
                     "config": {"schedule": "cosine", "T": 40}}, tmp_path, keep=1)
    loaded, schedule, ckpt = load_ema_model(tmp_path)                 # a run folder: its latest checkpoint
    assert torch.equal(loaded.conv_in.weight, ema.conv_in.weight) and not loaded.training
    assert (schedule.name, schedule.T, ckpt["step"]) == ("cosine", 40, 7)
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model({"kind": "transformer", "config": {}})


def test_only_rank_0_warns_about_the_random_streams(tmp_path, capsys):
    """K25: every rank resumes, one warns."""
    train(toy_config(tmp_path, steps=4))
    path = list_checkpoints(tmp_path / "run")[-1]
    config = toy_config(tmp_path, steps=8, resume=True)
    trainer = Trainer(dl.ToyEpsModel(), config, torch.device("cpu"))
    capsys.readouterr()
    resume_training(path, trainer, EpochBatches(config.toy_n, config.batch_size, config.seed, 1, 2), config,
                    train_module.unused_settings(config), rank=1, world=2)
    assert "warning" not in capsys.readouterr().out


def test_the_temporary_file_is_fsynced_before_it_is_renamed_and_the_folder_after(tmp_path, monkeypatch):
    """The order of the durable write, recorded by wrapping os.fsync (by the inode of the descriptor) and
    os.replace: fsync of the temporary file (the inode that ends up as ckpt_00000007.pt), then
    os.replace(tmp, final), then fsync of the folder. Catches: the file's fsync dropped (after a power cut
    the rename can land before the data: a complete-looking, empty ckpt_*.pt), the folder's fsync dropped,
    the rename before the fsync."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(str(src)), os.path.basename(str(dst))))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = save_checkpoint(state(7), tmp_path, keep=1)
    tmp = ".ckpt_00000007.pt.tmp-" + str(os.getpid())
    assert events == [("fsync", os.stat(path).st_ino), ("replace", tmp, "ckpt_00000007.pt"),
                      ("fsync", os.stat(tmp_path).st_ino)]


def test_resume_refuses_every_setting_but_run_control():
    """check_same_run refuses a checkpoint whose config differs in any TrainConfig field except the run
    controls listed here (written out: steps, out_dir, log_every, sample_every, n_samples, save_every,
    keep, device, compile, progress, resume, data_root), one field changed at a time. Catches: a training
    setting (seed, T, schedule, batch size, …) silently added to the settings a resume may change."""
    from dataclasses import asdict, fields
    from pathlib import Path
    from ddpm_lib.checkpoint import check_same_run
    from ddpm_lib.training import TrainConfig
    run_control = {"steps", "out_dir", "log_every", "sample_every", "n_samples", "save_every", "keep", "device",
                   "compile", "progress", "resume", "data_root"}
    config = TrainConfig(num_classes=10)
    for f in fields(config):
        saved = asdict(config)
        value = saved[f.name]
        saved[f.name] = (not value) if isinstance(value, bool) else (value + 1) if isinstance(value, (int, float)) \
            else "other" if isinstance(value, str) or value is None else value
        assert saved[f.name] != getattr(config, f.name), f.name
        if f.name in run_control:
            check_same_run(Path("ckpt.pt"), saved, config)
        else:
            with pytest.raises(ValueError, match=f"{f.name}="):
                check_same_run(Path("ckpt.pt"), saved, config)
