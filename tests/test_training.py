"""The trainer: Algorithm 1's step, warm-up, EMA, batches, overfitting, bit-exact resume, Ctrl-C, NaN."""
import copy
import json
import math
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import ddpm_lib as dl
from ddpm_lib import training as train_module
from ddpm_lib.checkpoint import build_model, list_checkpoints, load_checkpoint, model_spec, resume_training
from ddpm_lib.ema import ema_decay, make_ema_model, update_ema
from ddpm_lib.data import EpochBatches
from ddpm_lib.run_folder import Stopped
from ddpm_lib.training import Trainer, TrainConfig, diffusion_loss, learning_rate, train
from ddpm_lib.unet import PRESETS, UNet

# A U-Net small enough for a CPU test (16×16 images, two levels), with dropout so that resuming
# must also restore torch's CPU random state.
MICRO = dict(image_size=16, in_channels=1, base_width=8, width_mult=(1, 2), blocks_per_level=1, attn_res=(),
             linear_attn_res=(), heads=1, dropout=0.1, time_cond="scale_shift", downsample="conv4")


@pytest.fixture
def micro_images(monkeypatch):
    """Register the "micro" preset and replace the image loader by 32 fixed 1×16×16 pictures."""
    monkeypatch.setitem(PRESETS, "micro", MICRO)
    g = torch.Generator().manual_seed(7)
    images = torch.where(torch.rand(32, 1, 16, 16, generator=g) > 0.7, 1.0, -1.0)
    labels = torch.zeros(32, dtype=torch.long)
    monkeypatch.setattr(train_module, "load_images", lambda *args, **kwargs: (images, labels))
    return images


def toy_config(tmp_path, name="run", **changes) -> TrainConfig:
    settings = dict(data="two_moons", toy_n=256, T=50, steps=8, batch_size=16, lr=1e-3, warmup=3, log_every=2,
                    save_every=4, sample_every=0, keep=10, out_dir=str(tmp_path / name), device="cpu", progress=False)
    return TrainConfig(**{**settings, **changes})


def assert_same_training_state(a: Trainer, b: Trainer):
    assert a.step == b.step
    for net in ("model", "ema_model"):
        state_a, state_b = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        assert state_a.keys() == state_b.keys()
        for name in state_a:
            assert torch.equal(state_a[name], state_b[name]), (net, name)
    state_a, state_b = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state_a[k][key], state_b[k][key]), (k, key)


def test_diffusion_loss_noises_like_q_sample_and_returns_the_mean_squared_error(gen):
    s = dl.make_schedule("linear", T=100)
    x0, eps = torch.randn(4, 1, 8, 8, generator=gen), torch.randn(4, 1, 8, 8, generator=gen)
    t = torch.tensor([1, 30, 77, 100])
    seen = {}

    def model(xt, t_in):
        seen["xt"], seen["t"] = xt, t_in
        return 0.5 * xt

    loss = diffusion_loss(model, s, x0, t, eps)
    assert torch.equal(seen["xt"], dl.q_sample(s, x0, t, eps)) and torch.equal(seen["t"], t)
    ab = s.alpha_bar[t].reshape(-1, 1, 1, 1)                        # eq. 4 and eq. 14 in float64
    xt = ab.sqrt() * x0.double() + (1 - ab).sqrt() * eps.double()
    assert loss.item() == pytest.approx(((eps.double() - 0.5 * xt) ** 2).mean().item(), rel=1e-5)


def test_learning_rate_rises_linearly_then_stays():
    config = TrainConfig(lr=1e-3, warmup=100)
    assert [learning_rate(config, k) for k in (1, 50, 100, 5000)] == pytest.approx([1e-5, 5e-4, 1e-3, 1e-3])
    assert learning_rate(TrainConfig(lr=1e-3, warmup=0), 1) == 1e-3


def test_ema_is_a_convex_combination_with_a_ramped_decay(gen):
    model = torch.nn.Linear(3, 2)
    ema = make_ema_model(model)
    before = [p.detach().double().clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    update_ema(ema, model, 0.9)
    for old, new, target in zip(before, ema.parameters(), model.parameters()):
        torch.testing.assert_close(new.double(), 0.9 * old + 0.1 * target.double(), rtol=1e-6, atol=1e-7)
    assert not any(p.requires_grad for p in ema.parameters()) and not ema.training
    assert ema_decay(0.9999, 1) == pytest.approx(2 / 11) and ema_decay(0.9999, 10**6) == 0.9999
    # (1 + n)/(10 + n) reaches 0.9999 at n = (10·0.9999 − 1)/(1 − 0.9999) = 89,990
    assert ema_decay(0.9999, 89_990) == pytest.approx(0.9999, abs=1e-12) and ema_decay(0.9999, 89_989) < 0.9999


def test_epoch_batches_visit_each_example_once_per_epoch_with_disjoint_ranks():
    ranks = [EpochBatches(100, 40, seed=3, rank=r, world=2) for r in range(2)]
    epochs = []
    for _ in range(2):                                   # an epoch: 2 global batches = 80 of the 100 examples
        slices = [[b.next_indices() for b in ranks] for _ in range(2)]
        assert all(len(s) == 20 for batch in slices for s in batch)
        epochs.append(torch.cat([s for batch in slices for s in batch]))
        assert len(set(epochs[-1].tolist())) == 80      # the ranks' slices are disjoint, no example twice
    assert not torch.equal(epochs[0], epochs[1])         # a fresh permutation each epoch
    saved = ranks[0].state_dict()
    following = [ranks[0].next_indices() for _ in range(3)]
    ranks[0].load_state_dict(saved)
    assert all(torch.equal(a, ranks[0].next_indices()) for a in following)
    with pytest.raises(ValueError, match="split evenly"):
        EpochBatches(10, 5, seed=0, world=2)
    whole = EpochBatches(8, 4, seed=1)                   # batches that fill the epoch exactly: both are used
    assert sorted(torch.cat([whole.next_indices(), whole.next_indices()]).tolist()) == list(range(8))


def test_ema_copies_buffers_as_they_are():
    """Buffers (BatchNorm's running statistics) are copied, not averaged. Catches: buffers left at the
    values of the copy made at step 0."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = make_ema_model(model)
    model(torch.randn(16, 3, generator=torch.Generator().manual_seed(0)))      # train mode: statistics move
    update_ema(ema, model, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(ema.buffers(), model.buffers()))
    assert not torch.equal(ema[1].running_mean, torch.zeros(4))


def test_train_step_replayed_by_hand(monkeypatch):
    """Algorithm 1 as the Trainer wires it, against the config's formulas written out here: t and ε of
    step k are the next draws of a generator seeded with seed + 1000 (t ~ U{1..T}, ε ~ N(0, I)); AdamW
    steps with lr·min(1, k/warmup); the gradient it sees has norm grad_clip (the raw one is far larger);
    θ_ema after step 1 is d₁·θ₀ + (1 − d₁)·θ₁ with d₁ = (1 + 1)/(10 + 1). Catches: ε ~ U(0, 1), t from
    0..T − 1, the lr of the previous step, no clipping or clipping after the step, the EMA's full decay
    from step 1 (no warm-up), the wrong generator."""
    config = TrainConfig(data="two_moons", T=50, batch_size=8, lr=1e-2, warmup=10, grad_clip=1e-3, seed=4,
                         device="cpu", progress=False)
    torch.manual_seed(0)
    trainer = Trainer(dl.ToyEpsModel(hidden=16), config, torch.device("cpu"))
    seen, optimizer_saw = [], []
    real_loss = train_module.diffusion_loss
    monkeypatch.setattr(train_module, "diffusion_loss",
                        lambda net, s, x0, t, eps, y: seen.append((t, eps)) or real_loss(net, s, x0, t, eps, y))
    real_step = trainer.optimizer.step

    def step_and_record(*args, **kwargs):
        grads = [p.grad for p in trainer.model.parameters()]
        optimizer_saw.append((trainer.optimizer.param_groups[0]["lr"], torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", step_and_record)
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    theta0 = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step(x0)
    d1 = 2 / 11
    for ema, p, p0 in zip(trainer.ema_model.parameters(), trainer.model.parameters(), theta0):
        torch.testing.assert_close(ema, d1 * p0 + (1 - d1) * p.detach(), rtol=1e-6, atol=1e-7)
    for _ in range(11):
        trainer.train_step(x0)
    g = torch.Generator().manual_seed(config.seed + 1000)
    for k, ((t, eps), (lr, norm)) in enumerate(zip(seen, optimizer_saw), start=1):
        assert torch.equal(t, torch.randint(1, config.T + 1, (8,), generator=g))
        assert torch.equal(eps, torch.randn(8, 2, generator=g))
        assert lr == pytest.approx(config.lr * min(1.0, k / config.warmup), rel=1e-12)
        assert norm == pytest.approx(config.grad_clip, rel=1e-3)
    assert len(seen) == 12 and torch.cat([t for t, _ in seen]).min() >= 1


def test_the_first_line_names_the_precision_a_run_computes_in(tmp_path, capsys):
    """A CPU run says "float32" (no autocast); a GPU's autocast is named by its dtype. Catches: the
    Python repr "autocast None" that told a reader nothing."""
    train(toy_config(tmp_path, steps=1, log_every=1, save_every=1))
    assert ": cpu, float32, 1 process(es), from step 0" in capsys.readouterr().out
    assert train_module.precision_name(torch.bfloat16) == "bfloat16 autocast"
    assert train_module.precision_name(torch.float16) == "float16 autocast"


def test_a_few_steps_overfit_a_fixed_batch():
    torch.manual_seed(0)
    x0 = torch.full((8, 1, 16, 16), -1.0)
    x0[:, :, 4:12, 6:10] = 1.0                                      # eight copies of one bar
    trainer = Trainer(UNet(**{**MICRO, "dropout": 0.0}), TrainConfig(T=50, lr=3e-3, warmup=0), torch.device("cpu"))
    losses = [trainer.train_step(x0).item() for _ in range(20)]
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("hflip", [False, True])
def test_resume_continues_bit_for_bit(tmp_path, micro_images, hflip):
    """With hflip the mirror coins come from the checkpointed noise generator, so they resume too."""
    common = dict(data="cifar10" if hflip else "mnist-5k", preset="micro", T=50, batch_size=8, lr=1e-3, warmup=2,
                  log_every=1, save_every=3, sample_every=0, keep=5, device="cpu", progress=False, hflip=hflip)
    whole = train(TrainConfig(steps=6, out_dir=str(tmp_path / "whole"), **common))
    split = tmp_path / "split"
    train(TrainConfig(steps=5, out_dir=str(split), **common))      # saves at 3 and 5 (an epoch is 4 steps)
    (split / "ckpt_00000005.pt").unlink()                          # as if killed after logging step 5
    resumed = train(TrainConfig(steps=6, out_dir=str(split), resume=True, **common))    # goes on from 3
    assert_same_training_state(whole, resumed)
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]                             # steps 4 and 5 logged once, not twice


def test_hflip_feeds_the_step_each_image_or_its_mirror_by_a_coin_of_the_noise_generator(tmp_path, micro_images,
                                                                                         monkeypatch):
    """With hflip every image train_step receives is a data image x_0[i] of the step's batch, mirrored
    exactly where a uniform draw of the noise generator (seed + 1000, drawn before the step's t and ε,
    replayed here by hand with the data order) falls below 1/2; without it, the batch as it is. Catches:
    the flag ignored, the coins from another stream, the flip applied to the whole batch or after the step."""
    fed = []
    original = Trainer.train_step

    def record(self, x0, y=None):
        fed.append(x0.clone())
        return original(self, x0, y)

    monkeypatch.setattr(Trainer, "train_step", record)
    common = dict(data="cifar10", preset="micro", T=50, steps=6, batch_size=8, warmup=0, log_every=3, save_every=6,
                  sample_every=0, device="cpu", progress=False, seed=2)     # the fixture's pictures stand in for it
    train(TrainConfig(out_dir=str(tmp_path / "plain"), **common))
    plain, fed[:] = list(fed), []
    train(TrainConfig(out_dir=str(tmp_path / "flipped"), hflip=True, **common))
    batches, g = EpochBatches(32, 8, seed=2), torch.Generator().manual_seed(2 + 1000)
    n_mirrored = 0
    for step, (x_plain, x_flipped) in enumerate(zip(plain, fed), start=1):
        batch = micro_images[batches.next_indices()]
        assert torch.equal(x_plain, batch), step
        mirror = torch.rand(8, generator=g) < 0.5
        torch.randint(1, 51, (8,), generator=g), torch.randn(8, 1, 16, 16, generator=g)     # the step's t, ε
        assert torch.equal(x_flipped, torch.where(mirror[:, None, None, None], batch.flip(-1), batch)), step
        n_mirrored += int(mirror.sum())
    assert 0 < n_mirrored < 48
    for data in ("two_moons", "mnist-5k", "mnist"):                 # points, and digits: a mirrored 3 is no digit
        with pytest.raises(ValueError, match=f"hflip is for .*; a mirrored example of '{data}' is not one"):
            TrainConfig(data=data, hflip=True)


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    whole = train(toy_config(tmp_path, "whole"))
    original = Trainer.train_step

    def step_then_ctrl_c(self, x0, y=None):
        loss = original(self, x0, y)
        if self.step == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(toy_config(tmp_path, "split"))
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["ckpt_00000004.pt", "ckpt_00000005.pt"]
    monkeypatch.setattr(Trainer, "train_step", original)
    assert_same_training_state(whole, train(toy_config(tmp_path, "split", resume=True)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_trains_and_resumes_exactly(tmp_path, monkeypatch, dtype):
    # The GPU choices, exercised with CPU autocast: fp16 + GradScaler (a T4) and bf16 without one.
    monkeypatch.setattr(train_module, "autocast_dtype", lambda device: dtype)
    whole = train(toy_config(tmp_path, "whole"))
    assert whole.scaler.is_enabled() == (dtype == torch.float16)
    train(toy_config(tmp_path, "split", steps=4))
    resumed = train(toy_config(tmp_path, "split", resume=True))
    assert_same_training_state(whole, resumed)
    assert resumed.scaler.state_dict() == whole.scaler.state_dict()
    assert all(torch.isfinite(p).all() for p in resumed.model.parameters())


@pytest.mark.parametrize("log_every", [3, 100])
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, log_every):
    calls = []

    def nan_from_the_fifth_step(eps, eps_pred):
        calls.append(1)
        loss = dl.l_simple(eps, eps_pred)
        return loss * float("nan") if len(calls) >= 5 else loss

    monkeypatch.setattr(train_module, "l_simple", nan_from_the_fifth_step)
    config = toy_config(tmp_path, steps=20, save_every=2, log_every=log_every)
    with pytest.raises(FloatingPointError) as err:
        train(config)
    message = str(err.value)
    assert "\n" not in message and "at step 5;" in message and "ckpt_00000004.pt" in message
    assert [p.name for p in list_checkpoints(config.out_dir)] == ["ckpt_00000002.pt", "ckpt_00000004.pt"]
    ckpt = load_checkpoint(list_checkpoints(config.out_dir)[-1])
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_toy_run_learns_and_writes_its_outputs(tmp_path):
    config = toy_config(tmp_path, toy_n=2000, steps=200, batch_size=64, warmup=10, log_every=50, save_every=100,
                        sample_every=100, n_samples=32, keep=1)
    trainer = train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150, 200]
    assert set(records[0]) == {"step", "steps_averaged", "loss", "lr", "img_per_s", "time"}
    assert records[-1]["img_per_s"] > 0
    assert records[-1]["loss"] < 0.7 * records[0]["loss"], records
    assert [p.name for p in list_checkpoints(config.out_dir)] == ["ckpt_00000200.pt"]        # keep=1
    samples = torch.load(tmp_path / "run" / "samples_00000200.pt", weights_only=True)
    assert samples.shape == (32, 2) and (tmp_path / "run" / "samples_00000100.pt").exists()
    ckpt = load_checkpoint(config.out_dir + "/ckpt_00000200.pt")
    assert ckpt["config"]["steps"] == 200 and ckpt["model_spec"]["kind"] == "toy_mlp"
    assert all(torch.equal(v, ckpt["ema"][k]) for k, v in trainer.ema_model.state_dict().items())


def test_metrics_lines_hold_the_windows_mean_loss_and_images_per_second_of_training_alone(tmp_path, monkeypatch):
    """A fake clock moves 1 s per train_step and 10 s per sample grid written (grids at every log step):
    every metrics line has img_per_s = batch_size exactly (one batch per second; the grid's time left
    out) and loss = the mean of the losses train_step returned since the previous line. Catches: the
    window's sum or last loss, images counted once per window, sampling time counted as training."""
    clock, losses = [0.0], []
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    real_step, real_write = Trainer.train_step, train_module.write_samples

    def timed_step(self, x0, y=None):
        clock[0] += 1.0
        losses.append(real_step(self, x0, y))
        return losses[-1]

    def slow_write(*args, **kwargs):
        clock[0] += 10.0
        return real_write(*args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", timed_step)
    monkeypatch.setattr(train_module, "write_samples", slow_write)
    config = toy_config(tmp_path, steps=9, log_every=3, sample_every=3, save_every=100)
    train(config)
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in records] == [3, 6, 9] and len(losses) == 9
    for r in records:
        assert r["img_per_s"] == config.batch_size
        assert r["loss"] == pytest.approx(float(torch.stack(losses[r["step"] - 3:r["step"]]).mean()), rel=1e-6)


def test_a_run_folder_is_never_overwritten_and_resume_checks_the_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume"):
        train(toy_config(tmp_path, resume=True))
    train(toy_config(tmp_path, steps=4))
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train(toy_config(tmp_path, steps=4))
    with pytest.raises(ValueError, match="T=50 there, 60 here"):
        train(toy_config(tmp_path, steps=8, T=60, resume=True))


def test_each_metrics_line_says_how_many_steps_its_means_cover(tmp_path):
    """Lines every 4 steps; the run stops at step 6 (its last line covers steps 5–6) and resumes to 11: the
    lines at 8 and 11 cover 2 and 3 steps. Catches: a line after a resume or at the end that averages fewer
    steps than log_every with nothing to say so."""
    train(toy_config(tmp_path, steps=6, log_every=4, save_every=6))
    train(toy_config(tmp_path, steps=11, log_every=4, save_every=6, resume=True))
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [(r["step"], r["steps_averaged"]) for r in records] == [(4, 4), (6, 2), (8, 2), (11, 3)]


def test_resume_refuses_a_changed_training_setting_and_allows_run_control(tmp_path, capsys):
    """A resumed run may change its step budget, logging, grids, saving and device, and settings it
    never reads (the U-Net preset of a toy set, p_uncond of an unconditional model), nothing else.
    Catches: a resume that trains on with a learning rate or weight decay its checkpoint does not record
    (AdamW's loaded param_groups keep the old weight decay), and a resume refused over unused settings."""
    train(toy_config(tmp_path, steps=4))
    for change, message in [({"lr": 0.5}, "lr=0.001 there, 0.5 here"),
                            ({"weight_decay": 0.3}, "weight_decay=0.0 there, 0.3 here"),
                            ({"ema_decay": 0.5}, "ema_decay=0.9999 there, 0.5 here"),
                            ({"warmup": 0, "grad_clip": 2.0}, "warmup=3 there, 0 here; grad_clip=1.0 there, 2.0 here")]:
        with pytest.raises(ValueError, match=message) as err:
            train(toy_config(tmp_path, steps=6, resume=True, **change))
        assert "\n" not in str(err.value) and "start a new --out-dir" in str(err.value)
    resumed = train(toy_config(tmp_path, steps=6, resume=True, log_every=1, save_every=1, keep=2, sample_every=3,
                               preset="tiny", p_uncond=0.5))
    assert resumed.step == 6 and [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt_00000005.pt",
                                                                                           "ckpt_00000006.pt"]
    capsys.readouterr()
    assert train(toy_config(tmp_path, steps=5, resume=True)).step == 6
    assert "already at step 6 and --steps is 5: nothing to train" in capsys.readouterr().out


def test_resuming_with_another_number_of_processes_restarts_the_random_streams_and_says_so(tmp_path, capsys):
    """A checkpoint of 1 process resumed as rank 0 of 2: θ, the optimizer and the step are loaded, but t and
    ε come from the seed's stream of rank 0 (one stream per rank cannot be split), with a warning. Catches:
    rank 0 taking the single process's stream (two ranks would then draw what one did, silently)."""
    train(toy_config(tmp_path, steps=4))
    path = list_checkpoints(tmp_path / "run")[-1]
    config = toy_config(tmp_path, steps=8, resume=True)
    torch.manual_seed(0)
    trainer = Trainer(dl.ToyEpsModel(), config, torch.device("cpu"))     # rank 0: its stream is seed + 1000
    fresh = trainer.noise_generator.get_state()
    capsys.readouterr()
    ckpt = resume_training(path, trainer, EpochBatches(config.toy_n, config.batch_size, config.seed, 0, 2), config,
                           train_module.unused_settings(config), rank=0, world=2)
    assert "written by 1 process and this run has 2" in capsys.readouterr().out
    assert trainer.step == ckpt["step"] == 4 and torch.equal(trainer.noise_generator.get_state(), fresh)
    assert all(torch.equal(p, ckpt["model"][k]) for k, p in trainer.model.state_dict().items())


def test_resuming_on_another_kind_of_device_restarts_the_random_streams_and_says_so(tmp_path, capsys):
    """A checkpoint whose random streams were drawn on a GPU (a CUDA generator's 16-byte state, a CUDA global
    state) resumed on the CPU: θ and the step load, the streams restart from the seed, with a warning; the
    run then trains on. Catches: "RNG state is wrong size" ending a resume that moves between a GPU and a CPU,
    which the README allows."""
    train(toy_config(tmp_path, steps=4))
    path = list_checkpoints(tmp_path / "run")[-1]
    ckpt = torch.load(path, weights_only=True)
    ckpt["rng"][0]["noise"] = torch.zeros(16, dtype=torch.uint8)                 # as torch.Generator("cuda") keeps
    ckpt["rng"][0]["torch_cuda"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(ckpt, path)
    capsys.readouterr()
    resumed = train(toy_config(tmp_path, steps=6, resume=True))
    assert "was written on another kind of device: t, ε and dropout draw fresh random streams" in capsys.readouterr().out
    assert resumed.step == 6


def test_config_rejects_unknown_names_and_bad_numbers():
    with pytest.raises(ValueError, match="unknown data set"):
        TrainConfig(data="imagenet")
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        TrainConfig(preset="huge")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        TrainConfig(batch_size=0)
    bad = {"lr": [0, -1e-4, math.nan], "grad_clip": [0, -1], "warmup": [-1], "sample_every": [-1],
           "weight_decay": [-0.1, math.nan], "ema_decay": [-0.1, 1, 1.5]}
    for name, values in bad.items():           # each message names the setting and its value
        for value in values:
            with pytest.raises(ValueError, match=f"^{name} must .*, got {value}$"):
                TrainConfig(**{name: value})
    TrainConfig(warmup=0, sample_every=0, weight_decay=0, ema_decay=0)      # the edges that are allowed


# ---- classifier-free guidance: a class-conditional U-Net trained with label dropout ----

@pytest.fixture
def micro_labelled(monkeypatch):
    """The "micro" preset and 40 fixed 1×16×16 pictures with labels 0..9 (four of each)."""
    monkeypatch.setitem(PRESETS, "micro", MICRO)
    g = torch.Generator().manual_seed(8)
    images = torch.where(torch.rand(40, 1, 16, 16, generator=g) > 0.7, 1.0, -1.0)
    labels = torch.arange(40) % 10
    monkeypatch.setattr(train_module, "load_images", lambda *args, **kwargs: (images, labels))
    return images, labels


CFG_RUN = dict(data="mnist-5k", preset="micro", T=50, batch_size=8, lr=1e-3, warmup=2, log_every=1, save_every=3,
               sample_every=0, keep=5, device="cpu", progress=False, num_classes=10, p_uncond=0.3)


def test_cfg_training_resumes_bit_for_bit(tmp_path, micro_labelled):
    """A ConditionalUNet run of 6 steps equals 5 steps, the step-5 checkpoint deleted, and a resume from
    step 3: the label-dropout generator is checkpointed too. Catches: dropped labels drawn from a stream
    that restarts at the seed on resume (the resumed run drops other labels from step 4 on)."""
    whole = train(TrainConfig(steps=6, out_dir=str(tmp_path / "whole"), **CFG_RUN))
    assert isinstance(whole.model, dl.ConditionalUNet) and whole.model.null_label == 10
    split = tmp_path / "split"
    train(TrainConfig(steps=5, out_dir=str(split), **CFG_RUN))
    (split / "ckpt_00000005.pt").unlink()
    resumed = train(TrainConfig(steps=6, out_dir=str(split), resume=True, **CFG_RUN))
    assert_same_training_state(whole, resumed)
    assert torch.equal(whole.label_generator.get_state(), resumed.label_generator.get_state())
    ckpt = load_checkpoint(list_checkpoints(split)[-1])
    assert ckpt["model_spec"]["kind"] == "conditional_unet" and ckpt["model_spec"]["config"]["num_classes"] == 10
    with pytest.raises(ValueError, match="p_uncond=0.3 there, 0.5 here"):
        train(TrainConfig(**{**CFG_RUN, "p_uncond": 0.5}, steps=8, out_dir=str(split), resume=True))


def test_cfg_step_feeds_the_labels_dropped_with_its_own_generator(micro_labelled):
    """train_step passes the network the batch's labels with each replaced by the null label 10 where a
    uniform draw of the label generator (seed + 1000 + 2, re-drawn here by hand) falls below p_uncond,
    and draws t and ε as the unconditional step does. Catches: labels not dropped, dropped with the
    noise generator (shifting t and ε), dropped to label 0."""
    config = TrainConfig(**{**CFG_RUN, "p_uncond": 0.5, "seed": 4})
    torch.manual_seed(0)
    trainer = Trainer(dl.ConditionalUNet(num_classes=10, **MICRO), config, torch.device("cpu"))
    seen = []
    trainer.model.register_forward_hook(lambda module, args, out: seen.append(args))
    x0, y = micro_labelled[0][:8], micro_labelled[1][:8]
    trainer.train_step(x0, y)
    trainer.train_step(x0, y)
    drops = torch.Generator().manual_seed(4 + 1000 + 2)
    noise = torch.Generator().manual_seed(4 + 1000)
    for xt, t, labels in seen:
        expected = torch.where(torch.rand(8, generator=drops) < 0.5, torch.tensor(10), y)
        assert torch.equal(labels, expected)
        assert torch.equal(t, torch.randint(1, 51, (8,), generator=noise))
        torch.randn(x0.shape, generator=noise)                           # ε of that step
    assert any((labels == 10).any() and (labels != 10).any() for _, _, labels in seen)
    with pytest.raises(ValueError, match="needs labels y exactly when"):
        trainer.train_step(x0)


def test_cfg_sample_grid_has_one_class_per_row(tmp_path, micro_labelled):
    """With 10 classes and n_samples 25, the grid during training holds 2 samples of each class 0..9, class
    k in row k (θ_ema called with labels 0,0,1,1,…), as a PNG of 10 rows and 2 columns."""
    from PIL import Image
    trainer = train(TrainConfig(**{**CFG_RUN, "sample_every": 2, "n_samples": 25}, steps=2, out_dir=str(tmp_path / "r")))
    assert Image.open(tmp_path / "r" / "samples_00000002.png").size == (2 * 18 + 2, 10 * 18 + 2)
    seen = []
    trainer.ema_model.register_forward_hook(lambda module, args, out: seen.append(args[2]))
    samples, nrow = train_module.training_samples(trainer, trainer.config, (1, 16, 16), torch.device("cpu"))
    assert samples.shape == (20, 1, 16, 16) and nrow == 2 and len(seen) == 50        # one call per step, T = 50
    assert all(torch.equal(labels, torch.arange(10).repeat_interleave(2)) for labels in seen)


def test_cfg_config_and_data_errors(tmp_path, micro_labelled, capsys):
    from ddpm_lib.cli import main
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"p_uncond .* must lie in \[0, 1\)"):
            TrainConfig(p_uncond=bad)
    with pytest.raises(ValueError, match="num_classes must be 0"):
        TrainConfig(num_classes=-1)
    for toy in ("swiss_roll", "two_moons"):
        with pytest.raises(ValueError, match="takes no labels"):
            TrainConfig(data=toy, num_classes=2)
    with pytest.raises(ValueError, match=r"num_classes=5 but 'mnist-5k' has labels 0..9: pass --num-classes 10"):
        train(TrainConfig(**{**CFG_RUN, "num_classes": 5}, steps=1, out_dir=str(tmp_path / "r")))
    assert main(["train", "--data", "two_moons", "--p-uncond", "1", "--out-dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: p_uncond") and "\n" not in err


def test_checkpoints_from_before_cfg_still_resume(tmp_path):
    """A checkpoint whose config lacks num_classes and p_uncond and whose random states lack the label
    generator (written before classifier-free guidance existed) resumes as an unconditional run."""
    train(toy_config(tmp_path, steps=4))
    path = list_checkpoints(tmp_path / "run")[-1]
    ckpt = load_checkpoint(path)
    for key in ("num_classes", "p_uncond"):
        del ckpt["config"][key]
    del ckpt["rng"][0]["labels"]
    torch.save(ckpt, path)
    assert train(toy_config(tmp_path, resume=True)).step == 8


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_the_compiled_step_computes_the_eager_steps_loss_and_gradients(backend):
    """``compile=True`` compiles the step's forward (x_t by eq. 4, ε_θ, L_simple) and, through AOTAutograd, its
    backward. From the same weights, batch, t and ε the compiled function must give the eager loss and
    gradients (float32 on the CPU: equal up to kernel rounding), must really have run, and three whole
    training steps must give the eager losses. ``aot_eager`` traces and differentiates the graph; ``inductor``
    also generates its code (the GPU default; on a CPU it compiles C++ for a micro U-Net). Catches: a graph
    that drops the noise or the labels, a backward that misses a parameter, a compiled path never taken.
    (Weights after AdamW are not compared: for biases that feed a GroupNorm the gradient is 0 up to rounding,
    and Adam turns rounding-level gradients into steps of size lr.)"""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = UNet(**{**MICRO, "dropout": 0.0})
    g = torch.Generator().manual_seed(1)
    x0 = torch.where(torch.rand(8, 1, 16, 16, generator=g) > 0.5, 1.0, -1.0)
    t, eps = torch.randint(1, 51, (8,), generator=g), torch.randn(8, 1, 16, 16, generator=g)
    trainers = [Trainer(copy.deepcopy(model), TrainConfig(T=50, lr=3e-3, warmup=0, compile=compile),
                        torch.device("cpu"), compile_backend=backend) for compile in (False, True)]
    grads = []
    for trainer in trainers:
        loss = trainer.loss_fn(x0, t, eps, None)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in trainer.model.parameters()]))
        trainer.optimizer.zero_grad(set_to_none=True)
    assert counters["stats"]["unique_graphs"] >= 1
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    scale = max(g.abs().max().item() for g in grads[0][1])
    for (name, _), a, b in zip(model.named_parameters(), grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5 * scale, msg=f"gradient of {name}")
    losses = [[trainer.train_step(x0).item() for _ in range(3)] for trainer in trainers]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_the_optimised_step_computes_the_plain_steps_loss_and_gradients_within_bf16_tolerance():
    """Issue 7's equivalence: the step as a recent GPU runs it (bf16 autocast, channels_last weights and batch,
    the loss function compiled; here ``aot_eager`` on the CPU, whose autocast also runs bf16) against the plain
    float32 eager step, from the same weights, batch, t and ε. The loss must agree to bf16 rounding (relative
    1e-2; measured about 1e-4) and the whole gradient to 5 % in norm (measured about 1 %). Catches: an optimised
    path that drops the noise, the schedule or a block (losses and gradients then differ by tens of per cent),
    GroupNorm statistics lost to bf16 rounding."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = UNet(**{**MICRO, "dropout": 0.0, "attn_res": (8,)})
    g = torch.Generator().manual_seed(1)
    x0 = torch.where(torch.rand(8, 1, 16, 16, generator=g) > 0.5, 1.0, -1.0)
    t, eps = torch.randint(1, 51, (8,), generator=g), torch.randn(8, 1, 16, 16, generator=g)
    plain = Trainer(copy.deepcopy(model), TrainConfig(T=50, lr=1e-3, warmup=0), torch.device("cpu"))
    fast = Trainer(copy.deepcopy(model).to(memory_format=torch.channels_last), TrainConfig(T=50, lr=1e-3, warmup=0,
                   compile=True), torch.device("cpu"), compile_backend="aot_eager")
    results = []
    for trainer, amp in ((plain, None), (fast, torch.bfloat16)):
        x, e = (x0, eps) if amp is None else (x0.contiguous(memory_format=torch.channels_last),
                                              eps.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = trainer.loss_fn(x, t, e, None)
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in trainer.model.parameters()])))
    (loss_plain, grad_plain), (loss_fast, grad_fast) = results
    assert loss_fast == pytest.approx(loss_plain, rel=1e-2)
    assert ((grad_fast - grad_plain).norm() / grad_plain.norm()).item() < 0.05


def test_autocast_dtype_is_bf16_from_compute_capability_8_fp16_below_and_none_on_the_cpu(monkeypatch):
    """bf16 where the GPU computes it natively (A100, H100: capability 8 and up), fp16 with the gradient scaler
    on a T4 (7.5) or V100 (7.0), float32 on the CPU. Catches: bf16 asked of a T4, fp16 kept on an H100."""
    from ddpm_lib.training import autocast_dtype
    for capability, expected in (((7, 5), torch.float16), ((7, 0), torch.float16), ((8, 0), torch.bfloat16),
                                 ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert autocast_dtype(torch.device("cuda")) == expected, capability
    assert autocast_dtype(torch.device("cpu")) is None


@pytest.mark.parametrize("device, preset, num_classes", [("cpu", "tiny", 0), ("cpu", "tiny", 10), ("meta", "mnist", 0),
                                                         ("meta", "ddpm-cifar10", 0), ("meta", "mnist", 10)])
def test_the_compiled_steps_forward_is_one_graph_with_no_host_sync(device, preset, num_classes):
    """``compile=True`` must capture x_t, ε_θ and L_simple as one graph: a graph break splits the compiled
    step into pieces with a host sync between them (issue 7: "torch.compile of the whole step, no host syncs").
    Dynamo's ``explain`` traces the step on the CPU and on the meta device, which stands for a GPU (the code
    takes its non-CPU path, and nothing is computed, so the full presets cost nothing). Catches: check_t's
    ``int(t.min())`` inside the compiled step on a CPU (three graph breaks and a page of warnings before
    it checked on the device there too), or any ``.item()`` / ``int(tensor)`` added to the step."""
    torch._dynamo.reset()
    config = TrainConfig(data="mnist-5k", preset=preset, T=1000, num_classes=num_classes, compile=True)
    spec = model_spec((1, 32, 32), preset, num_classes)
    trainer = Trainer(build_model(spec), config, torch.device("cpu"))
    trainer.model.to(device)
    trainer.schedule = trainer.schedule.to(device)
    x0, eps = torch.randn(2, 1, 32, 32, device=device), torch.randn(2, 1, 32, 32, device=device)
    t = torch.tensor([1, 1000], device=device)
    y = torch.tensor([3, num_classes], device=device) if num_classes else None
    report = torch._dynamo.explain(trainer._loss)(x0, t, eps, y)
    assert (report.graph_count, report.graph_break_count) == (1, 0), [b.reason for b in report.break_reasons]
    torch._dynamo.reset()


def test_fp16_steps_clip_the_unscaled_gradient(monkeypatch):
    """With fp16 autocast and its GradScaler (a T4's path, run here with CPU autocast), the optimizer must see
    a gradient of norm grad_clip in true units: the scaled gradient is unscaled before clipping. Recorded by
    wrapping the optimizer's step. Catches: the unscale_ dropped (the clip then acts on the gradient × 65536
    and the step sees a norm of grad_clip/65536), clipping after the step."""
    monkeypatch.setattr(train_module, "autocast_dtype", lambda device: torch.float16)
    config = TrainConfig(data="two_moons", T=50, batch_size=8, lr=1e-2, warmup=1, grad_clip=1e-3, seed=4,
                         device="cpu", progress=False)
    torch.manual_seed(0)
    trainer = Trainer(dl.ToyEpsModel(hidden=16), config, torch.device("cpu"))
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 1000
    norms, real_step = [], trainer.optimizer.step

    def step_and_record(*args, **kwargs):
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                           for p in trainer.model.parameters()])).item())
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", step_and_record)
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    for _ in range(4):                     # the scaler may skip a step that overflowed in fp16 (no call then)
        trainer.train_step(x0)
    assert len(norms) >= 2 and norms == pytest.approx([config.grad_clip] * len(norms), rel=1e-3)


def test_a_nan_at_the_last_step_is_caught_before_the_final_save(tmp_path, monkeypatch):
    """A loss that becomes NaN at the very last step (step = steps) stops the run with FloatingPointError
    naming that step, and the NaN weights are never saved as the final checkpoint. Catches: the check
    ``first_bad < steps`` (off by one), which lets the last step's NaN through into ckpt_<steps>.pt."""
    calls = []

    def nan_at_the_sixth_step(eps, eps_pred):
        calls.append(1)
        loss = dl.l_simple(eps, eps_pred)
        return loss * float("nan") if len(calls) == 6 else loss

    monkeypatch.setattr(train_module, "l_simple", nan_at_the_sixth_step)
    config = toy_config(tmp_path, steps=6, save_every=4, log_every=100)
    with pytest.raises(FloatingPointError, match="at step 6;"):
        train(config)
    assert [p.name for p in list_checkpoints(config.out_dir)] == ["ckpt_00000004.pt"]


def test_a_label_equal_to_num_classes_is_refused(monkeypatch):
    """Labels must lie in 0..num_classes − 1: the value num_classes is the null label of classifier-free
    guidance, so data holding it is refused with ValueError. Catches: the bound checked with ``>`` (a data
    label K would train as the null label)."""
    images = torch.zeros(4, 1, 16, 16)
    monkeypatch.setattr(train_module, "load_images", lambda *a, **k: (images, torch.tensor([0, 1, 2, 3])))
    with pytest.raises(ValueError, match="labels 0..3"):
        train_module.load_training_data(TrainConfig(data="mnist-5k", num_classes=3), "cpu")
    x0, y = train_module.load_training_data(TrainConfig(data="mnist-5k", num_classes=4), "cpu")
    assert torch.equal(y, torch.tensor([0, 1, 2, 3]))


def test_metrics_lines_record_the_warmed_up_learning_rate_of_their_step(tmp_path):
    """Each metrics line's "lr" is the rate of its step, lr·min(1, step/warmup) written out here (warmup 3,
    lines at steps 2, 4, 6, 8). Catches: the configured lr logged during the warm-up."""
    train(toy_config(tmp_path))
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert [r["lr"] for r in records] == pytest.approx([1e-3 * min(1.0, s / 3) for s in (2, 4, 6, 8)], rel=1e-12)


def test_dropout_masks_come_from_torch_seeded_with_seed_plus_1001_on_rank_0(tmp_path, monkeypatch):
    """TrainConfig's contract: on rank r the dropout masks (torch's global CPU stream) start from
    seed + 1000·(r + 1) + 1. Torch's state when the first step begins is compared with a generator seeded
    so. Catches: that seeding dropped (the masks then follow the model's initialisation draws, and change
    whenever the architecture does), another offset (the stream of t and ε)."""
    states, original = [], Trainer.train_step

    def record(self, x0, y=None):
        states.append(torch.get_rng_state())
        return original(self, x0, y)

    monkeypatch.setattr(Trainer, "train_step", record)
    train(toy_config(tmp_path, steps=1, seed=5))
    assert torch.equal(states[0], torch.Generator().manual_seed(5 + 1001).get_state())


def test_unset_steps_batch_lr_and_warmup_follow_the_data_kind_and_set_ones_are_kept():
    """Catches: toy sets given the image rates (the paper's 2e-4 leaves the toy MLP's moons one blurred band),
    an explicit setting overwritten by the kind's default, and the defaults missing from the saved config."""
    keys = ("steps", "batch_size", "lr", "warmup", "n_samples")
    assert [getattr(TrainConfig(), k) for k in keys] == [20_000, 128, 2e-4, 1000, 64]
    for data in dl.TOY_SETS:
        assert [getattr(TrainConfig(data=data), k) for k in keys] == [5_000, 512, 3e-3, 100, 1000]
    config = TrainConfig(data="two_moons", lr=1e-4, warmup=0, steps=7, batch_size=3)
    assert (config.lr, config.warmup, config.steps, config.batch_size) == (1e-4, 0, 7, 3)
    assert TrainConfig(data="cifar10", steps=5).lr == 2e-4
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        TrainConfig(data="two_moons", batch_size=0)


def test_a_toy_set_trained_with_the_default_settings_draws_the_data(tmp_path):
    """``train`` on two_moons with nothing but the data set named: 98.5% of θ_ema's samples lie within 0.1
    of a data point (measured; about 20 s on one core). Catches: defaults that do not fit the toy MLP (the
    image settings reached 73.5%, with points scattered between the moons) or a broken toy training."""
    trainer = train(TrainConfig(data="two_moons", out_dir=str(tmp_path / "run"), sample_every=0, progress=False,
                                device="cpu"))
    samples = dl.sample_ddpm(trainer.ema_model, trainer.schedule, (1000, 2), generator=torch.Generator().manual_seed(1))
    data, _ = dl.make_toy("two_moons", 10_000, generator=torch.Generator().manual_seed(5))
    near = torch.cdist(samples.double(), data).min(dim=1).values < 0.1
    assert near.double().mean() > 0.93, near.double().mean()


def test_write_samples_saves_2d_points_as_a_scatter_plot_and_refuses_a_png_of_other_points(tmp_path):
    """Catches: points of 2-D toy sets refused as a PNG (no picture of a toy run), a 3-D point set drawn
    as if it were 2-D, and a training run of points that writes only one of its two files."""
    from PIL import Image
    points = torch.randn(50, 2)
    train_module.write_samples(points, tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").size == (400, 400)
    with pytest.raises(ValueError, match=r"shape \(50, 3\) are neither images .* nor 2-D points .*: save them as a .pt"):
        train_module.write_samples(torch.randn(50, 3), tmp_path / "q.png")
    train_module.write_samples(torch.randn(50, 3), tmp_path / "q.pt")
    train_module.write_training_samples(points, tmp_path, 12)
    assert sorted(p.name for p in tmp_path.glob("samples_*")) == ["samples_00000012.png", "samples_00000012.pt"]
    assert torch.equal(torch.load(tmp_path / "samples_00000012.pt", weights_only=True), points)


@pytest.mark.parametrize("sample_every, saved", [(4, ["ckpt_00000004.pt"]), (3, ["ckpt_00000003.pt"])])
def test_a_stop_during_a_sample_grid_drops_the_grid_and_stops_at_that_step_saved(tmp_path, monkeypatch, capsys,
                                                                                   sample_every, saved):
    """Ctrl-C arrives in the first of the T = 50 steps of the first grid (step 4, also a save step; or step 3,
    not one): the grid stops there (no PNG), that step is saved (once) and the run stops with ``Stopped``;
    resumed, it ends as an uninterrupted run does. Catches: a stop that waits for the whole grid (minutes of
    T network calls on a CPU, past a sender's SIGKILL); one more step trained after the stop (the README
    promises a stop after the step under way); a step 3 left unsaved; step 4 saved twice."""
    whole = train(toy_config(tmp_path, "whole"))
    calls, saves = [], []
    original, original_save = train_module.sample_ddpm, train_module.save_training

    def ctrl_c_in_the_grid(*args, callback, **kwargs):
        def counted(t, xt):
            calls.append(t)
            if len(calls) == 1:
                os.kill(os.getpid(), signal.SIGINT)
            callback(t, xt)
        return original(*args, callback=counted, **kwargs)

    def counted_save(trainer, *args, **kwargs):
        saves.append(trainer.step)
        return original_save(trainer, *args, **kwargs)

    monkeypatch.setattr(train_module, "sample_ddpm", ctrl_c_in_the_grid)
    monkeypatch.setattr(train_module, "save_training", counted_save)
    with pytest.raises(Stopped, match=f"interrupted at step {sample_every}: saved"):
        train(toy_config(tmp_path, "split", sample_every=sample_every))
    assert calls == [50] and saves == [sample_every]
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == saved
    assert not list((tmp_path / "split").glob("samples_*"))
    assert f"the sample grid of step {sample_every} is not drawn" in capsys.readouterr().out
    monkeypatch.setattr(train_module, "sample_ddpm", original)
    assert_same_training_state(whole, train(toy_config(tmp_path, "split", resume=True)))


def test_a_stop_during_the_last_steps_grid_ends_the_run_as_complete(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the grid of the last step (8 of 8, saved before the grid): the grid is dropped and ``train``
    returns as a finished run does. Catches: ``Stopped`` with "continue with --resume" for a run that has
    nothing left to train."""
    original = train_module.sample_ddpm

    def ctrl_c_in_the_grid(*args, callback, **kwargs):
        def signalled(t, xt):
            os.kill(os.getpid(), signal.SIGINT)
            callback(t, xt)
        return original(*args, callback=signalled, **kwargs)

    monkeypatch.setattr(train_module, "sample_ddpm", ctrl_c_in_the_grid)
    assert train(toy_config(tmp_path, "run", sample_every=8)).step == 8
    assert [p.name for p in list_checkpoints(tmp_path / "run")][-1] == "ckpt_00000008.pt"
    out = capsys.readouterr().out
    assert "the sample grid of step 8 is not drawn" in out and "continue with --resume" not in out


def test_a_sample_grid_that_fails_leaves_the_checkpoint_of_its_step(tmp_path, monkeypatch):
    """The grid of step 4 (a save step) runs out of memory: ckpt_00000004.pt is on disk, and --resume goes on
    from it. Catches: the grid drawn before the save, which loses the save_every steps before it (by
    default grids and saves fall on the same steps)."""
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("can't allocate memory (simulated)")

    monkeypatch.setattr(train_module, "sample_ddpm", out_of_memory)
    with pytest.raises(RuntimeError, match="simulated"):
        train(toy_config(tmp_path, "run", sample_every=4))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt_00000004.pt"]


@pytest.mark.parametrize("name", ["toy_n", "T", "steps", "batch_size", "log_every", "n_samples", "save_every", "keep"])
def test_every_count_setting_must_be_at_least_1(name):
    """Each count of TrainConfig is refused below 1 in one line naming it and the value given, and 1 is taken.
    Catches: a count left out of the check (toy_n = 0 draws no points, keep = 0 deletes every checkpoint,
    n_samples = 0 makes an empty grid), and a message that reports another value than the one given."""
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"^{name} must be at least 1, got {bad}$"):
            TrainConfig(**{name: bad})
    assert getattr(TrainConfig(**{name: 1}), name) == 1


def test_num_classes_is_a_whole_number_and_p_uncond_may_be_0():
    """num_classes is an int ≥ 0 (True and 2.0 are refused, not read as 1 and 2 classes), a toy set takes no
    class at all (not even 1), and p_uncond = 0 (never drop a label: a purely conditional model) is allowed.
    Catches: a bool taken for an int, ``num_classes > 1`` as the toy test, ``0 < p_uncond`` for ``0 <= p_uncond``."""
    for bad in (True, 2.0):
        with pytest.raises(ValueError, match=f"^num_classes must be 0 .*got {bad!r}$"):
            TrainConfig(num_classes=bad)
    with pytest.raises(ValueError, match="takes no labels"):
        TrainConfig(data="two_moons", num_classes=1)
    assert TrainConfig(num_classes=10, p_uncond=0.0).p_uncond == 0.0


@pytest.mark.parametrize("changes, unused", [({}, ("toy_n", "p_uncond")),
                                             ({"num_classes": 10}, ("toy_n",)),
                                             ({"data": "two_moons"}, ("preset", "p_uncond")),
                                             ({"data": "cifar10", "num_classes": 10}, ("toy_n",))])
def test_unused_settings_are_the_ones_the_run_never_reads(changes, unused):
    """An image run never reads toy_n, a toy run never reads the U-Net preset, an unconditional run never
    reads p_uncond; a resume may change exactly these. Catches: toy_n missing for image sets (a resumed
    image run refused over the number of toy points), p_uncond listed for a class-conditional run."""
    assert train_module.unused_settings(TrainConfig(**changes)) == unused


def test_the_defaults_are_the_papers_settings():
    """Unset, a run trains the DDPM paper's model (Ho et al. 2020): T = 1000 steps of the linear schedule,
    gradients clipped to norm 1, Adam without weight decay, θ_ema with decay 0.9999; and with labels, the
    classifier-free guidance paper's label dropout p_uncond = 0.1 (Ho & Salimans 2022).
    Catches: a changed default that silently changes every run and every shipped command's meaning."""
    config = TrainConfig()
    assert (config.T, config.schedule, config.grad_clip, config.weight_decay, config.ema_decay, config.p_uncond) \
        == (1000, "linear", 1.0, 0.0, 0.9999, 0.1)


def test_an_ema_copy_of_another_network_is_refused_by_its_parameter_count():
    """update_ema on an EMA copy made of another network (a checkpoint's θ_ema loaded beside a different
    model) is refused with a ValueError naming both counts, and leaves the copy untouched. Catches: the count
    check dropped, leaving torch's "Tensor lists must have the same number of tensors" RuntimeError."""
    ema = make_ema_model(nn.Linear(3, 2))
    before = [p.clone() for p in ema.parameters()]
    with pytest.raises(ValueError, match="^the EMA copy has 2 parameters but the model has 1$"):
        update_ema(ema, nn.Linear(3, 2, bias=False), 0.9)
    assert all(torch.equal(a, b) for a, b in zip(before, ema.parameters()))
