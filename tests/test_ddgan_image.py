"""DDGAN on images: the networks (ddgan_nets.py), the trainer with checkpoints (ddgan_train.py) and the
``train-ddgan`` / ``sample-ddgan`` / ``export-ddgan`` commands. Every test names the bug it catches."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm_lib as dl
from helpers import assert_d_and_g_steps_lower_their_losses, command_env
from ddpm_lib import checkpoint, files
from ddpm_lib import ddgan_train as ddgan_train_module
from ddpm_lib.checkpoint import list_checkpoints, load_checkpoint
from ddpm_lib.cli import main
from ddpm_lib.data import EpochBatches
from ddpm_lib.ddgan import ddgan_schedule, g_loss, q_sample_pairs, r1_penalty, sample_ddgan
from ddpm_lib.ddgan_nets import DDGAN_PRESETS, DDGANDiscriminator, DDGANGenerator, build_ddgan, ddgan_spec
from ddpm_lib.ddgan_export import load_ddgan_generator
from ddpm_lib.ddgan_train import DDGANConfig, DDGANTrainer, train_ddgan
from ddpm_lib.embedding import timestep_embedding
from ddpm_lib.run_folder import Stopped

ROOT = Path(__file__).resolve().parent.parent
TINY_G = dict(DDGAN_PRESETS["tiny"]["generator"])
TINY_D = dict(DDGAN_PRESETS["tiny"]["discriminator"])


def tiny_nets(channels=1, size=16, seed=0):
    torch.manual_seed(seed)
    return build_ddgan(ddgan_spec("tiny", (channels, size, size)))


@pytest.fixture
def micro_images(monkeypatch):
    """Replace the image loader of the DDGAN trainer by 32 fixed 1×16×16 pictures in {−1, 1}."""
    g = torch.Generator().manual_seed(7)
    images = torch.where(torch.rand(32, 1, 16, 16, generator=g) > 0.7, 1.0, -1.0)
    monkeypatch.setattr(ddgan_train_module, "load_images", lambda *args, **kwargs: (images, torch.zeros(32).long()))
    return images


def image_config(tmp_path, name="run", **changes) -> DDGANConfig:
    settings = dict(data="mnist-5k", preset="tiny", steps=4, batch_size=8, log_every=1, save_every=100,
                    sample_every=0, keep=10, lr_g=1e-3, lr_d=1e-3, out_dir=str(tmp_path / name), device="cpu",
                    progress=False)
    return DDGANConfig(**{**settings, **changes})


def toy_config(tmp_path, name="run", **changes) -> DDGANConfig:
    settings = dict(data="two_moons", toy_n=256, preset="tiny", steps=8, batch_size=16, d_steps=1, log_every=2,
                    save_every=4, sample_every=0, keep=10, out_dir=str(tmp_path / name), device="cpu", progress=False)
    return DDGANConfig(**{**settings, **changes})


def assert_same_state(a: DDGANTrainer, b: DDGANTrainer):
    assert a.step == b.step
    for net in ("G", "D", "G_ema"):
        sa, sb = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (net, k)
    for opt in ("opt_g", "opt_d"):
        sa, sb = getattr(a, opt).state_dict()["state"], getattr(b, opt).state_dict()["state"]
        assert sa.keys() == sb.keys()
        for k in sa:
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(sa[k][key], sb[k][key]), (opt, k, key)


# ---------------------------------------------------------------- networks

@pytest.mark.parametrize("channels,size", [(1, 16), (3, 16), (1, 32), (3, 32)])
def test_shapes_and_output_range(gen, channels, size):
    """Catches: channels or sizes hard-coded to MNIST's, a G output outside [−1, 1] (no tanh)."""
    G, D = tiny_nets(channels, size)
    xt = 3 * torch.randn(5, channels, size, size, generator=gen)
    x0_pred = G(xt, torch.randn(5, G.z_dim, generator=gen), torch.tensor([1, 2, 3, 4, 4]))
    assert x0_pred.shape == xt.shape and x0_pred.abs().max() <= 1
    logits = D(x0_pred, xt, 2)
    assert logits.shape == (5,) and torch.isfinite(logits).all()


def test_generator_depends_on_z_and_t_and_discriminator_on_t_and_both_inputs(gen):
    """Catches: z or t not wired into G (the mapping output dropped), t or one image of the pair ignored by D."""
    G, D = tiny_nets()
    xt = torch.randn(4, 1, 16, 16, generator=gen)
    z1, z2 = torch.randn(4, G.z_dim, generator=gen), torch.randn(4, G.z_dim, generator=gen)
    out = G(xt, z1, 2)
    assert (out - G(xt, z2, 2)).abs().max() > 1e-3
    assert (out - G(xt, z1, 3)).abs().max() > 1e-3
    x_prev = torch.randn(4, 1, 16, 16, generator=gen)
    logit = D(x_prev, xt, 2)
    assert (logit - D(x_prev, xt, 4)).abs().max() > 1e-4
    assert (logit - D(-x_prev, xt, 2)).abs().max() > 1e-4 and (logit - D(x_prev, -xt, 2)).abs().max() > 1e-4


def test_each_sample_is_independent_of_the_rest_of_the_batch(gen):
    """D's logit (and G's output) for sample 0 is the same alone and beside any other samples.

    Catches: BatchNorm, minibatch standard deviation or any statistic over the batch (R1 and the
    per-sample losses assume none)."""
    G, D = tiny_nets()
    x_prev, xt = torch.randn(6, 1, 16, 16, generator=gen), torch.randn(6, 1, 16, 16, generator=gen)
    z, t = torch.randn(6, G.z_dim, generator=gen), torch.tensor([3, 1, 2, 4, 1, 2])
    other = 5 * torch.randn(6, 1, 16, 16, generator=gen)
    for net in (D, G):
        net.train()
    alone = D(x_prev[:1], xt[:1], t[:1])
    mixed = D(torch.cat([x_prev[:1], other[1:]]), torch.cat([xt[:1], -other[1:]]), t)
    torch.testing.assert_close(mixed[:1], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(G(torch.cat([xt[:1], other[1:]]), z, t)[:1], G(xt[:1], z[:1], t[:1]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny", "mnist"])
def test_discriminator_keeps_the_scale_of_its_activations_at_initialisation(preset):
    """Bug caught: PyTorch's default conv init in a discriminator without normalisation (each block shrank
    the activations; the mnist preset's last block came out 0.024 for inputs of std 1, and its logit
    hardly moved in training). He init for LeakyReLU keeps every block's output std near 1."""
    torch.manual_seed(0)
    _, D = build_ddgan(ddgan_spec(preset, (1, 32, 32)))
    g = torch.Generator().manual_seed(0)
    x_prev, xt = torch.randn(64, 1, 32, 32, generator=g), torch.randn(64, 1, 32, 32, generator=g)
    t = torch.randint(1, 5, (64,), generator=g)
    with torch.no_grad():
        temb = D.time_mlp(timestep_embedding(t, D.base_width))
        h = D.conv_in(torch.cat([x_prev, xt], dim=1))
        stds = [h.std().item()]
        for block in D.blocks:
            h = block(h, temb)
            stds.append(h.std().item())
    assert all(0.4 < v < 2.5 for v in stds), stds


def test_networks_refuse_sizes_they_cannot_halve():
    """Catches: a silent crop or a shape error deep inside the network instead of a clear message."""
    with pytest.raises(ValueError, match="cannot be halved"):
        DDGANGenerator(image_size=18, in_channels=1, **TINY_G)              # 3 levels: multiples of 4
    with pytest.raises(ValueError, match="multiple of 8"):
        DDGANDiscriminator(image_size=20, in_channels=1, **TINY_D)          # 3 halvings: multiples of 8
    G, _ = tiny_nets()
    with pytest.raises(ValueError, match="multiples of 4"):
        G(torch.randn(2, 1, 18, 18), torch.randn(2, G.z_dim), 1)
    with pytest.raises(ValueError, match="z of shape"):
        G(torch.randn(2, 1, 16, 16), torch.randn(2, G.z_dim + 1), 1)
    with pytest.raises(ValueError, match="unknown DDGAN preset"):
        ddgan_spec("huge", (1, 32, 32))


def test_discriminator_init_is_he_for_leaky_relu_with_zero_biases():
    """"mnist" preset: each 3×3 conv of ≥ 2¹⁸ weights (four layers, 295k–590k each, so the sample std is
    within ±0.13% per σ) has std √(2 / ((1 + 0.2²)·fan_in)) to 0.5%, fan_in = in_channels·3·3; every
    conv bias is exactly 0 (the module docstring's promise). Catches: He init for ReLU (a = 0: 2% too
    large), PyTorch's default init, fan_out mode, biases left at PyTorch's uniform default."""
    torch.manual_seed(0)
    _, D = build_ddgan(ddgan_spec("mnist", (1, 32, 32)))
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    big = [m for m in convs if m.weight.numel() >= 2 ** 18]
    assert len(big) == 4
    for m in big:
        fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        expected = (2 / ((1 + 0.2 ** 2) * fan_in)) ** 0.5
        assert m.weight.double().std().item() == pytest.approx(expected, rel=0.005), m
    biased = [m for m in convs if m.bias is not None]
    assert len(biased) == 1 + 2 * len(D.blocks)                            # conv_in, conv1 and conv2 of each block
    assert all(torch.count_nonzero(m.bias) == 0 for m in biased)


def test_discriminator_head_sees_the_sum_over_positions_of_leaky_relu(gen):
    """In float64, the head's input is Σ_{h,w} LeakyReLU_0.2(last block's output) (written out here with
    torch.where) and the logit is the head of it. Catches: a mean over positions instead of the sum
    (the paper's D sums), a ReLU or no activation before the pooling."""
    _, D = tiny_nets()
    D.double()
    seen = {}
    D.blocks[-1].register_forward_hook(lambda module, args, out: seen.__setitem__("h", out))
    D.head.register_forward_pre_hook(lambda module, args: seen.__setitem__("pooled", args[0]))
    x_prev, xt = torch.randn(2, 3, 1, 16, 16, generator=gen, dtype=torch.float64)
    logits = D(x_prev, xt, torch.tensor([1, 3, 4]))
    h = seen["h"]
    assert h.shape[-2:] == (2, 2)
    expected = torch.where(h > 0, h, 0.2 * h).sum(dim=(2, 3))
    torch.testing.assert_close(seen["pooled"], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, expected @ D.head.weight[0] + D.head.bias[0], rtol=1e-12, atol=1e-12)


def test_mapping_network_is_pixel_norm_then_an_mlp_with_a_linear_last_layer(gen):
    """In float64, G.style(z) equals z / √(mean z² + 1e-8) through the mapping's Linear layers with SiLU
    (x·σ(x), written out here) between them and none after the last; style(3z) = style(z). Catches: an
    activation after the last layer (a SiLU output never goes below −0.28), z not normalised, the wrong
    number of mapping layers."""
    G, _ = tiny_nets()
    G.double()
    z = torch.randn(64, G.z_dim, generator=gen, dtype=torch.float64)
    linears = [m for m in G.mapping if isinstance(m, torch.nn.Linear)]
    assert len(linears) == TINY_G["mapping_layers"] == 2
    h = z / torch.sqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
    for i, lin in enumerate(linears):
        h = h @ lin.weight.T + lin.bias
        if i < len(linears) - 1:
            h = h / (1 + torch.exp(-h))
    with torch.no_grad():
        w = G.style(z)
        torch.testing.assert_close(w, h.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(G.style(3 * z), w, rtol=1e-6, atol=1e-7)        # the same up to the 1e-8
    assert w.min() < -0.28


def test_d_and_g_steps_lower_their_losses_on_images(gen):
    """Adam steps on a fixed batch of image pairs lower d_loss (D) and g_loss (G with D fixed).

    Catches: gradients of the wrong sign, losses detached from the networks, the posterior draw detached from G."""
    G, D = tiny_nets(seed=1)
    s = ddgan_schedule(4)
    x0 = torch.where(torch.rand(16, 1, 16, 16, generator=gen) > 0.7, 1.0, -1.0)
    t = torch.randint(1, 5, (16,), generator=gen)
    x_prev, xt = q_sample_pairs(s, x0, t, gen)
    z, noise = torch.randn(16, G.z_dim, generator=gen), torch.randn(16, 1, 16, 16, generator=gen)

    assert_d_and_g_steps_lower_their_losses(G, D, s, x_prev, xt, t, z, noise, steps=8)


def test_r1_on_images(gen):
    """R1 = 0 for a D blind to x_{t−1}; = ‖w‖² for D = ⟨w, x_{t−1}⟩ (computed here); > 0 for the image D.

    Catches: the gradient taken w.r.t. x_t, a norm over the wrong axes (per pixel instead of per image)."""
    _, D = tiny_nets()
    x_prev, xt = torch.randn(4, 1, 16, 16, generator=gen), torch.randn(4, 1, 16, 16, generator=gen)
    t = torch.tensor([1, 2, 3, 4])
    assert r1_penalty(lambda a, b, tt: D(b, b, tt), x_prev, xt, t).item() == 0.0
    w = torch.randn(1, 1, 16, 16, generator=gen)
    linear = r1_penalty(lambda a, b, tt: (a * w).sum(dim=(1, 2, 3)) + (b * 3).sum(dim=(1, 2, 3)), x_prev, xt, t)
    assert linear.item() == pytest.approx((w.double() ** 2).sum().item(), rel=1e-5)
    assert r1_penalty(D, x_prev, xt, t).item() > 0


@pytest.mark.parametrize("lazy_r1,gamma,expected_steps", [(3, 0.5, [3, 6]), (1, 0.2, [1, 2, 3, 4, 5, 6, 7]),
                                                          (2, 0.0, [])])
def test_lazy_r1_applies_the_penalty_every_kth_step_scaled_by_k(tmp_path, monkeypatch, lazy_r1, gamma, expected_steps):
    """The trainer computes R1 only on steps k, 2k, … and D's loss holds it with weight k·γ/2 (read from
    the gradient that reaches R1 in the backward pass). Catches: R1 every step, an unscaled lazy penalty,
    R1 computed although γ = 0."""
    seen = []
    real_r1 = ddgan_train_module.r1_penalty

    def recording_r1(*args):
        r1 = real_r1(*args)
        step = len(seen)
        seen.append(None)
        r1.register_hook(lambda grad: seen.__setitem__(step, grad.item()))
        return r1

    monkeypatch.setattr(ddgan_train_module, "r1_penalty", recording_r1)
    original = DDGANTrainer.train_step
    steps_called = []

    def step_and_record(self, x0):
        before = len(seen)
        out = original(self, x0)
        if len(seen) > before:
            steps_called.append(self.step)
            assert out[2] is not None
        else:
            assert out[2] is None
        return out

    monkeypatch.setattr(DDGANTrainer, "train_step", step_and_record)
    train_ddgan(toy_config(tmp_path, steps=7, lazy_r1=lazy_r1, r1_gamma=gamma, save_every=100))
    assert steps_called == expected_steps
    assert seen == pytest.approx([lazy_r1 * gamma / 2] * len(expected_steps))


# ---------------------------------------------------------------- sampler on images

class _Counting(torch.nn.Module):
    def __init__(self, G):
        super().__init__()
        self.G, self.z_dim, self.calls, self.zs = G, G.z_dim, [], []

    def forward(self, xt, z, t):
        self.calls.append(int(t[0]))
        self.zs.append(z.clone())
        return self.G(xt, z, t)


def test_sample_ddgan_on_images_calls_g_T_times_with_fresh_z(gen):
    """Catches: a sampler limited to (B, D) points, extra or missing steps, t not running T..1, z reused."""
    G, _ = tiny_nets(channels=3)
    for T in (1, 4):
        counting = _Counting(G)
        x = sample_ddgan(counting, ddgan_schedule(T), (3, 3, 16, 16), generator=gen)
        assert x.shape == (3, 3, 16, 16) and x.abs().max() <= 1          # t = 1 returns G's tanh output
        assert counting.calls == list(range(T, 0, -1))
        assert all(not torch.equal(a, b) for a, b in zip(counting.zs, counting.zs[1:]))


# ---------------------------------------------------------------- the trainer

def test_ctrl_c_saves_and_resume_is_bit_exact_on_images(tmp_path, monkeypatch, micro_images):
    """SIGINT after step 3 saves ckpt 3 and stops; resuming to step 5 gives exactly the uninterrupted
    run's G, D, G_ema and both Adam states. Catches: an RNG stream, the data order, an optimizer or
    G_ema not restored, R1's lazy phase lost (lazy_r1 = 2)."""
    whole = train_ddgan(image_config(tmp_path, "whole", steps=5, lazy_r1=2))
    original = DDGANTrainer.train_step

    def step_then_ctrl_c(self, x0):
        out = original(self, x0)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(DDGANTrainer, "train_step", step_then_ctrl_c)
    with pytest.raises(Stopped, match="interrupted at step 3: saved"):       # saved, and said so
        train_ddgan(image_config(tmp_path, "split", steps=5, lazy_r1=2))
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["ckpt_00000003.pt"]
    monkeypatch.setattr(DDGANTrainer, "train_step", original)
    resumed = train_ddgan(image_config(tmp_path, "split", steps=5, lazy_r1=2, resume=True))
    assert_same_state(whole, resumed)
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_a_ddgan_grid_that_fails_leaves_the_checkpoint_of_its_step(tmp_path, monkeypatch, micro_images):
    """The grid of step 2 (a save step) fails: ckpt_00000002.pt is on disk. Catches: the grid drawn before the
    save, which loses the steps since the last save."""
    monkeypatch.setattr(ddgan_train_module, "sample_ddgan",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("can't allocate memory (simulated)")))
    with pytest.raises(RuntimeError, match="simulated"):
        train_ddgan(image_config(tmp_path, "run", steps=4, save_every=2, sample_every=2))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt_00000002.pt"]


@pytest.mark.parametrize("d_steps", [1, 2])
def test_killed_run_resumes_from_an_older_checkpoint_exactly(tmp_path, d_steps):
    """As if killed after step 6 (its checkpoint lost): resume from step 4 repeats steps 5..8 exactly
    and logs each step once, also with two D updates per step. Catches: metrics lines written twice,
    state from the lost steps leaking, the data order of the extra D minibatches not restored."""
    whole = train_ddgan(toy_config(tmp_path, "whole", d_steps=d_steps))
    split = tmp_path / "split"
    train_ddgan(toy_config(tmp_path, "split", steps=6, save_every=2, d_steps=d_steps))       # saves 2, 4, 6
    (split / "ckpt_00000006.pt").unlink()
    resumed = train_ddgan(toy_config(tmp_path, "split", resume=True, d_steps=d_steps))
    assert_same_state(whole, resumed)
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]


def test_d_steps_gives_each_d_update_its_own_minibatch_and_g_the_last(tmp_path, monkeypatch):
    """With d_steps = 3, a step makes three D updates on the next three minibatches of the data order
    (rebuilt here from the seed) and one G update on the third; D's Adam counts 3 steps per G step, and
    the logged d_loss is the mean of the three. Catches: D updates reusing one minibatch, G trained on
    the first minibatch, an extra D update missing, only the last D loss reported."""
    d_batches, g_batches, d_losses = [], [], []
    real_d, real_g = DDGANTrainer.d_update, DDGANTrainer.g_update

    def record_d(self, x0, weight):
        d_batches.append(x0.clone())
        out = real_d(self, x0, weight)
        d_losses.append(out[0].item())
        return out

    def record_g(self, x0):
        g_batches.append(x0.clone())
        return real_g(self, x0)

    monkeypatch.setattr(DDGANTrainer, "d_update", record_d)
    monkeypatch.setattr(DDGANTrainer, "g_update", record_g)
    config = toy_config(tmp_path, steps=2, d_steps=3, log_every=1)
    trainer = train_ddgan(config)
    data = ddgan_train_module.load_ddgan_data(config, "cpu")
    order = EpochBatches(len(data), config.batch_size, config.seed)
    expected = [data[order.next_indices()] for _ in range(6)]
    assert len(d_batches) == 6 and all(torch.equal(a, b) for a, b in zip(d_batches, expected))
    assert len(g_batches) == 2 and torch.equal(g_batches[0], expected[2]) and torch.equal(g_batches[1], expected[5])
    assert trainer.opt_d.state_dict()["state"][0]["step"].item() == 6
    assert trainer.opt_g.state_dict()["state"][0]["step"].item() == 2
    logged = [json.loads(line)["d_loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([np.mean(d_losses[:3]), np.mean(d_losses[3:])], rel=1e-6)
    with pytest.raises(ValueError, match="one minibatch per D update: 3, got 1"):
        trainer.train_step(expected[0])


def test_a_save_cut_off_midway_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    """A crash while writing checkpoint 4 leaves checkpoint 2 as the latest, loadable and resumable.
    Catches: a checkpoint written in place (a half file named ckpt_*.pt)."""
    whole = train_ddgan(toy_config(tmp_path, "whole", steps=4, save_every=2))
    real_save, calls = torch.save, []

    def second_save_crashes(obj, f):
        calls.append(1)
        real_save(obj, f)
        if len(calls) == 2:
            f.seek(f.tell() // 2)
            f.truncate()
            raise RuntimeError("killed while writing (simulated)")

    monkeypatch.setattr(checkpoint.torch, "save", second_save_crashes)
    with pytest.raises(RuntimeError, match="simulated"):
        train_ddgan(toy_config(tmp_path, "split", steps=4, save_every=2))
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == [".lock", "ckpt_00000002.pt",
                                                                          "metrics.jsonl"]
    _, _, info = load_ddgan_generator(tmp_path / "split")
    assert info["step"] == 2
    assert_same_state(whole, train_ddgan(toy_config(tmp_path, "split", steps=4, save_every=2, resume=True)))


def test_nan_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Catches: training on through NaNs, a NaN checkpoint saved, a message without the step."""
    calls = []

    def nan_from_the_fifth_call(fake_logits):
        calls.append(1)
        loss = g_loss(fake_logits)
        return loss * float("nan") if len(calls) >= 5 else loss

    monkeypatch.setattr(ddgan_train_module, "g_loss", nan_from_the_fifth_call)
    config = toy_config(tmp_path, steps=20, save_every=2, log_every=100)
    with pytest.raises(FloatingPointError) as err:
        train_ddgan(config)
    message = str(err.value)
    assert "\n" not in message and "at step 5;" in message and "ckpt_00000004.pt" in message
    assert [p.name for p in list_checkpoints(config.out_dir)] == ["ckpt_00000002.pt", "ckpt_00000004.pt"]
    ckpt = load_checkpoint(list_checkpoints(config.out_dir)[-1])
    assert all(torch.isfinite(v).all() for v in ckpt["generator"].values())


def test_resuming_a_gpu_checkpoint_on_the_cpu_restarts_the_noise_stream_and_says_so(tmp_path, capsys):
    """Random streams drawn on a GPU (16-byte CUDA generator states) resumed on the CPU: a warning, the noise from
    the seed, and training goes on. Catches: "RNG state is wrong size" when a run moves between devices."""
    train_ddgan(toy_config(tmp_path, steps=4))
    path = list_checkpoints(tmp_path / "run")[-1]
    ckpt = torch.load(path, weights_only=True)
    ckpt["rng"]["noise"] = ckpt["rng"]["torch_cuda"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(ckpt, path)
    capsys.readouterr()
    assert train_ddgan(toy_config(tmp_path, steps=6, resume=True)).step == 6
    assert "was written on another kind of device" in capsys.readouterr().out


def test_a_run_folder_is_never_overwritten_and_resume_checks_the_run(tmp_path):
    """Catches: a new run silently mixing with old checkpoints, resuming with another T or seed."""
    with pytest.raises(FileNotFoundError, match="--resume"):
        train_ddgan(toy_config(tmp_path, resume=True))
    train_ddgan(toy_config(tmp_path, steps=2))
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train_ddgan(toy_config(tmp_path, steps=4))
    with pytest.raises(ValueError, match="T=4 there, 2 here"):
        train_ddgan(toy_config(tmp_path, steps=4, T=2, resume=True))


def test_hflip_mirrors_each_minibatch_by_coins_of_the_noise_generator_and_resumes_exactly(tmp_path, monkeypatch,
                                                                                        micro_images):
    """With hflip and two D updates per step, every minibatch D and G see is the data order's batch with
    each image mirrored or not, some of each; a run killed after step 3 resumes to step 5 exactly as the
    uninterrupted run (the coins come from the trainer's checkpointed noise generator). Catches: the flag
    ignored, a whole minibatch flipped at once, coins from a stream that a resume restarts or from torch's
    global generator."""
    seen = []
    real_d = DDGANTrainer.d_update

    def record_d(self, x0, weight):
        seen.append(x0.clone())
        return real_d(self, x0, weight)

    monkeypatch.setattr(DDGANTrainer, "d_update", record_d)
    coin_streams, real_flip = [], ddgan_train_module.random_hflip
    monkeypatch.setattr(ddgan_train_module, "random_hflip", lambda x0, g: coin_streams.append(g) or real_flip(x0, g))
    whole = train_ddgan(image_config(tmp_path, "whole", steps=5, d_steps=2, hflip=True, data="cifar10"))
    assert len(coin_streams) == 10 and all(g is whole.noise_generator for g in coin_streams)
    order = EpochBatches(32, 8, seed=0)
    n_mirrored = 0
    for x0 in seen:
        batch = micro_images[order.next_indices()]
        same = (x0 == batch).flatten(1).all(1)
        mirrored = (x0 == batch.flip(-1)).flatten(1).all(1)
        assert bool((same | mirrored).all())
        n_mirrored += int((mirrored & ~same).sum())
    assert len(seen) == 10 and 0 < n_mirrored < 80
    train_ddgan(image_config(tmp_path, "split", steps=3, d_steps=2, hflip=True, data="cifar10"))
    resumed = train_ddgan(image_config(tmp_path, "split", steps=5, d_steps=2, hflip=True, data="cifar10", resume=True))
    assert_same_state(whole, resumed)
    for data in ("two_moons", "mnist-5k"):
        with pytest.raises(ValueError, match=f"a mirrored example of '{data}' is not one"):
            DDGANConfig(data=data, hflip=True)


@pytest.mark.parametrize("changes,message", [
    ({"preset": "huge"}, "unknown DDGAN preset 'huge'"), ({"T": 0}, "T must be a whole number >= 1"),
    ({"data": "imagenet"}, "unknown data set"), ({"lazy_r1": 0}, "lazy_r1 must be"),
    ({"betas": (0.5, 1.5)}, "betas must be two numbers"), ({"beta_min": 30.0}, "0 < beta_min < beta_max"),
    ({"r1_gamma": -1.0}, "^r1_gamma must be at least 0, got -1.0$"), ({"T": 2.5}, "T must be a whole number"),
    ({"d_steps": 0}, "d_steps must be a whole number >= 1"), ({"lr_d": float("nan")}, "^lr_d must be positive, got nan$"),
    ({"lr_g": 0.0}, "^lr_g must be positive, got 0.0$"), ({"ema_decay": 1.0}, r"^ema_decay must lie in \[0, 1\), got 1.0$"),
    ({"sample_every": -1}, r"^sample_every must be at least 0 \(0: no grids\), got -1$")])
def test_config_rejects_bad_settings(changes, message):
    """Catches: a run that starts with settings it cannot honour, or a message that lists several settings
    (and their values) where one is wrong."""
    with pytest.raises(ValueError, match=message):
        DDGANConfig(**changes)


# ---------------------------------------------------------------- command line

def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_cli_on_mnist_5k_train_sample_export_reload(tmp_path, capsys):
    """``python -m ddpm_lib train-ddgan`` on the shipped digits (tiny preset, 2 steps), then sample-ddgan,
    export-ddgan and a reload of the exported file. Catches: the commands not registered, a grid that is
    not the samples, an export that is not G_ema in fp16 or does not load back."""
    env = command_env()
    result = subprocess.run([sys.executable, "-m", "ddpm_lib", "train-ddgan", "--data", "mnist-5k", "--preset", "tiny",
                             "--steps", "2", "--batch-size", "4", "--log-every", "1", "--sample-every", "2",
                             "--n-samples", "4", "--out-dir", "run", "--device", "cpu", "--no-progress"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and set(records[0]) == {"step", "steps_averaged", "d_loss", "g_loss",
                                                                         "r1", "time", "img_per_s"}
    assert (tmp_path / "run" / "samples_00000002.png").exists()
    run = str(tmp_path / "run")
    assert main(["sample-ddgan", "--checkpoint", run, "--n", "4", "--out", str(tmp_path / "grid.png"),
                 "--device", "cpu", "--seed", "5"]) == 0
    G, s, info = load_ddgan_generator(run)
    assert info["example_shape"] == (1, 32, 32) and info["step"] == 2 and s.T == 4
    expected = sample_ddgan(G, s, (4, 1, 32, 32), generator=torch.Generator().manual_seed(5))
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("L"), dtype=np.float32)
    assert grid.shape == (2 * (32 + 2) + 2,) * 2
    first = ((expected[0, 0].clamp(-1, 1) + 1) / 2 * 255).numpy()
    assert np.abs(grid[2:34, 2:34] - first).max() <= 1.0                 # the grid shows these samples
    out = tmp_path / "export" / "ddgan.pt"
    assert main(["export-ddgan", "--checkpoint", run, "--out", str(out), "--training-command", "python -m x"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == files.file_sha256(out) and card["command"] == "python -m x" and card["step"] == 2
    assert card["training_seconds"] > 0 and card["config"]["preset"] == "tiny"
    blob = torch.load(out, weights_only=True)
    assert all(v.dtype == torch.float16 for v in blob["generator_ema"].values() if v.is_floating_point())
    G_exported, s_exported, info_exported = load_ddgan_generator(out)
    assert info_exported["format"] == "export" and s_exported.T == 4
    for k, v in G_exported.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, G.state_dict()[k].half().float()), k
    assert main(["sample-ddgan", "--checkpoint", str(out), "--n", "2", "--out", str(tmp_path / "e.png"),
                 "--device", "cpu"]) == 0
    out.write_bytes(out.read_bytes() + b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        load_ddgan_generator(out)
    out.write_bytes(out.read_bytes()[:-len(b"tampered")])              # the file as exported, with a damaged card:
    card_path = out.with_suffix(".json")
    card_path.write_text(json.dumps({k: v for k, v in card.items() if k != "sha256"}))
    with pytest.raises(ValueError, match="the card holds none"):        # no sha256 (was a KeyError traceback)
        load_ddgan_generator(out)
    card_path.write_text("{not json")
    capsys.readouterr()
    assert main(["sample-ddgan", "--checkpoint", str(out), "--n", "2", "--out", str(tmp_path / "f.png"),
                 "--device", "cpu"]) == 1
    assert "ddgan.json is not valid JSON" in one_error_line(capsys)
    card_path.write_text(json.dumps(card))
    with pytest.raises(Exception) as bad_device:                        # read onto the CPU, then moved:
        load_ddgan_generator(out, device="cuda:99")                     # the device is named, not the file
    assert "truncated" not in str(bad_device.value)


def test_cli_on_a_toy_set_and_its_errors(tmp_path, capsys):
    """Toy points end to end (samples as .pt and as a scatter plot), and one-line errors with status 1 for
    an unknown preset, T < 1, and a diffusion checkpoint given to sample-ddgan / export-ddgan.
    Catches: errors escaping as tracebacks, a diffusion run sampled as a GAN."""
    run = str(tmp_path / "run")
    assert main(["train-ddgan", "--data", "eight_gaussians", "--toy-n", "500", "--steps", "6", "--batch-size", "32",
                 "--log-every", "3", "--save-every", "3", "--sample-every", "6", "--n-samples", "10", "--keep", "1",
                 "--preset", "tiny", "--d-steps", "2", "--out-dir", run, "--device", "cpu", "--no-progress"]) == 0
    assert [p.name for p in list_checkpoints(run)] == ["ckpt_00000006.pt"]
    ckpt = load_checkpoint(list_checkpoints(run)[0])
    assert ckpt["config"]["d_steps"] == 2 and ckpt["opt_discriminator"]["state"][0]["step"].item() == 12
    assert main(["train-ddgan", "--out-dir", run, "--steps", "8", "--resume", "--no-progress"]) == 0
    assert [p.name for p in list_checkpoints(run)] == ["ckpt_00000008.pt"]      # the run's --keep 1 and --d-steps 2
    ckpt = load_checkpoint(list_checkpoints(run)[0])
    assert ckpt["config"]["d_steps"] == 2 and ckpt["opt_discriminator"]["state"][0]["step"].item() == 16
    assert torch.load(tmp_path / "run" / "samples_00000006.pt", weights_only=True).shape == (10, 2)
    assert Image.open(tmp_path / "run" / "samples_00000006.png").size == (400, 400)
    capsys.readouterr()
    assert main(["train-ddgan", "--out-dir", run, "--steps", "10", "--resume", "--lr-d", "0.5", "--device", "cpu"]) == 1
    assert "lr_d=0.002 there, 0.5 here" in one_error_line(capsys)                # a toy set's default lr_d
    assert main(["sample-ddgan", "--checkpoint", run, "--n", "50", "--out", str(tmp_path / "p.pt"), "--device", "cpu"]) == 0
    points = torch.load(tmp_path / "p.pt", weights_only=True)
    assert points.shape == (50, 2) and torch.isfinite(points).all()
    assert main(["export-ddgan", "--checkpoint", run, "--out", str(tmp_path / "toy.pt")]) == 0
    G, _, info = load_ddgan_generator(tmp_path / "toy.pt")
    assert info["example_shape"] == (2,) and G.z_dim == DDGAN_PRESETS["tiny"]["toy"]["z_dim"]
    capsys.readouterr()
    assert main(["sample-ddgan", "--checkpoint", run, "--out", str(tmp_path / "p.png"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "p.png").size == (400, 400)                  # 2-D points: a scatter plot
    assert main(["train-ddgan", "--preset", "huge", "--out-dir", str(tmp_path / "x")]) == 1
    assert "unknown DDGAN preset 'huge'" in one_error_line(capsys)
    assert main(["train-ddgan", "--T", "0", "--out-dir", str(tmp_path / "x")]) == 1
    assert "T must be a whole number >= 1" in one_error_line(capsys)
    assert main(["train-ddgan", "--d-steps", "0", "--out-dir", str(tmp_path / "x")]) == 1
    assert "d_steps must be a whole number >= 1" in one_error_line(capsys)
    dl.train(dl.TrainConfig(data="two_moons", toy_n=64, T=30, steps=1, batch_size=8, sample_every=0,
                            out_dir=str(tmp_path / "ddpm"), device="cpu", progress=False))
    capsys.readouterr()
    for command in ("sample-ddgan", "export-ddgan"):
        assert main([command, "--checkpoint", str(tmp_path / "ddpm"), "--out", str(tmp_path / "d.pt")]) == 1
        assert "diffusion run" in one_error_line(capsys)
    assert main(["sample-ddgan", "--checkpoint", str(tmp_path / "nowhere")]) == 1
    one_error_line(capsys)
    assert main(["export", "--checkpoint", run, "--out", str(tmp_path / "e.pt")]) == 1   # the other way round
    assert "export-ddgan" in one_error_line(capsys)


def test_discriminator_sees_x_prev_then_x_t_on_channels(gen):
    """D(x_{t−1}, x_t, t) concatenates the pair as [x_{t−1}, x_t] on channels before its first conv
    (recorded with a forward hook on conv_in). Catches: [x_t, x_{t−1}] (same shapes, so only what the
    input channels of a trained D mean changes: shipped weights would judge the pair backwards)."""
    from ddpm_lib.ddgan_nets import DDGANDiscriminator
    torch.manual_seed(0)
    D = DDGANDiscriminator(image_size=16, in_channels=2, base_width=8, width_mult=(1, 2))
    seen = []
    D.conv_in.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x_prev, xt = torch.randn(3, 2, 16, 16, generator=gen), torch.randn(3, 2, 16, 16, generator=gen)
    with torch.no_grad():
        D(x_prev, xt, torch.tensor([1, 2, 3]))
    assert torch.equal(seen[0], torch.cat([x_prev, xt], dim=1))


def test_a_t_of_the_wrong_length_gets_a_value_error(gen):
    """t must be one int or a long tensor of shape (B,): a tensor of 3 entries for a batch of 2 is refused
    with ValueError naming the expected shape by both networks' shared check. Catches: a check that lets any
    number of entries through (then a RuntimeError from expand, or a silent broadcast)."""
    from ddpm_lib.ddgan_nets import DDGANDiscriminator
    torch.manual_seed(0)
    D = DDGANDiscriminator(image_size=16, in_channels=1, base_width=8, width_mult=(1, 2))
    x = torch.randn(2, 1, 16, 16, generator=gen)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        D(x, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        D(x, x, torch.tensor([[1, 2]]))
    assert D(x, x, torch.tensor([4])).shape == (2,) and D(x, x, 4).shape == (2,)


def test_d_update_scores_the_real_pair_as_real_and_takes_r1_on_the_real_x_prev(gen, monkeypatch):
    """In one D update, d_loss's first argument (the logits pushed up, softplus(−·)) is D on the real pair
    (x_{t−1}, x_t) that q_sample_pairs drew, recomputed here; its second is D on another (the fake) pair;
    R1 is taken at that real x_{t−1}. Recorded by wrapping q_sample_pairs, d_loss and r1_penalty in the
    trainer's module. Catches: the real and fake logits swapped (D learns to call real pairs fake, which
    still lowers its loss), R1 taken on the fake pair."""
    G, D = tiny_nets(size=16)
    trainer = DDGANTrainer(G, D, DDGANConfig(batch_size=8, device="cpu", progress=False), torch.device("cpu"))
    seen = {}
    real_pairs, real_d_loss, real_r1 = (ddgan_train_module.q_sample_pairs, ddgan_train_module.d_loss,
                                        ddgan_train_module.r1_penalty)

    def pairs(s, x0, t, g):
        x_prev, xt = real_pairs(s, x0, t, g)
        seen["pair"] = (x_prev.clone(), xt.clone(), t.clone())
        return x_prev, xt

    def d_loss(real_logits, fake_logits):
        with torch.no_grad():
            seen["expected_real"] = D(*seen["pair"])
        seen["logits"] = (real_logits.detach().clone(), fake_logits.detach().clone())
        return real_d_loss(real_logits, fake_logits)

    def r1(d_fn, x_real, xt, t):
        seen["r1_x"] = x_real.detach().clone()
        return real_r1(d_fn, x_real, xt, t)

    monkeypatch.setattr(ddgan_train_module, "q_sample_pairs", pairs)
    monkeypatch.setattr(ddgan_train_module, "d_loss", d_loss)
    monkeypatch.setattr(ddgan_train_module, "r1_penalty", r1)
    x0 = torch.where(torch.rand(8, 1, 16, 16, generator=gen) > 0.7, 1.0, -1.0)
    trainer.d_update(x0, r1_weight=0.01)
    real_logits, fake_logits = seen["logits"]
    torch.testing.assert_close(real_logits, seen["expected_real"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fake_logits, seen["expected_real"], rtol=1e-3, atol=1e-4)
    assert torch.equal(seen["r1_x"], seen["pair"][0])


def test_g_ema_after_the_first_step_uses_the_ramped_decay(gen):
    """θ_ema after step 1 is d₁·θ₀ + (1 − d₁)·θ₁ with d₁ = min(0.999, (1 + 1)/(10 + 1)) = 2/11 (θ₀ the
    initial G, θ₁ G after the step), written out here. Catches: the full decay 0.999 from the first step
    (G_ema stuck at the random initial G for thousands of steps), the decay used as the weight of θ."""
    G, D = tiny_nets(size=16)
    trainer = DDGANTrainer(G, D, DDGANConfig(batch_size=8, device="cpu", progress=False), torch.device("cpu"))
    theta0 = [p.detach().clone() for p in G.parameters()]
    trainer.train_step(torch.where(torch.rand(8, 1, 16, 16, generator=gen) > 0.7, 1.0, -1.0))
    d1 = 2 / 11
    for ema, p, p0 in zip(trainer.G_ema.parameters(), G.parameters(), theta0):
        torch.testing.assert_close(ema, d1 * p0 + (1 - d1) * p.detach(), rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(p0, p) for p0, p in zip(theta0, G.parameters()))


def test_optimisers_and_the_noise_stream_follow_the_config(gen, monkeypatch):
    """Adam over D's parameters with lr_d and over G's with lr_g, both with the config's betas; the first D
    update draws t from a generator seeded with seed + 1000 (t ~ U{1..T}, recomputed here). Catches: D
    given G's learning rate (the 4× ratio the config documents lost), the noise generator seeded with the
    bare seed (the data order's and the weights' seed)."""
    G, D = tiny_nets(size=16)
    config = DDGANConfig(batch_size=8, lr_g=1e-4, lr_d=3e-4, betas=(0.1, 0.95), seed=9, device="cpu", progress=False)
    trainer = DDGANTrainer(G, D, config, torch.device("cpu"))
    for opt, net, lr in ((trainer.opt_d, D, 3e-4), (trainer.opt_g, G, 1e-4)):
        group, = opt.param_groups
        assert group["lr"] == lr and group["betas"] == (0.1, 0.95)
        assert [id(p) for p in group["params"]] == [id(p) for p in net.parameters()]
    ts, real_pairs = [], ddgan_train_module.q_sample_pairs
    monkeypatch.setattr(ddgan_train_module, "q_sample_pairs", lambda s, x0, t, g: ts.append(t) or real_pairs(s, x0, t, g))
    trainer.d_update(torch.zeros(8, 1, 16, 16), 0.0)
    assert torch.equal(ts[0], torch.randint(1, config.T + 1, (8,), generator=torch.Generator().manual_seed(9 + 1000)))


def test_metrics_average_r1_over_the_steps_that_computed_it(tmp_path, monkeypatch):
    """With lazy R1 every 2nd step and a log line every 4 steps, the line's "r1" is the mean over the 2 steps
    that computed it: R1 is replaced here by a constant 0.25 (its gradient kept), so the mean is 0.25.
    Catches: the sum divided by all 4 steps of the window (0.125: R1 looks half as large as it is)."""
    real_r1 = ddgan_train_module.r1_penalty
    monkeypatch.setattr(ddgan_train_module, "r1_penalty", lambda *a: real_r1(*a) * 0 + 0.25)
    train_ddgan(toy_config(tmp_path, steps=8, lazy_r1=2, log_every=4, save_every=100))
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in records] == [4, 8]
    assert [r["r1"] for r in records] == pytest.approx([0.25, 0.25], rel=1e-6)


def test_a_nan_r1_alone_stops_the_run_naming_its_step(tmp_path, monkeypatch):
    """R1 whose value is NaN at step 3 while its gradient stays finite (so D, both losses and G stay finite):
    the run stops with FloatingPointError naming step 3. Catches: R1 left out of the finiteness check (the
    run trains on and logs r1 = NaN)."""
    real_r1, calls = ddgan_train_module.r1_penalty, []

    def nan_value_at_the_third_call(*args):
        calls.append(1)
        r1 = real_r1(*args)
        return r1 + float("nan") if len(calls) == 3 else r1

    monkeypatch.setattr(ddgan_train_module, "r1_penalty", nan_value_at_the_third_call)
    with pytest.raises(FloatingPointError, match="at step 3;"):
        train_ddgan(toy_config(tmp_path, steps=6, save_every=100, log_every=100))


def test_discriminator_time_embedding_is_linear_leaky_linear_leaky(gen):
    """D's conditioning vector for t, written out: LeakyReLU₀.₂(W₂·LeakyReLU₀.₂(W₁·emb(t) + b₁) + b₂) with
    emb(t) = [sin(t·ω_k), cos(t·ω_k)], ω_k = 10000^(−k/(d/2)), d = base_width (as the DDGAN code's
    discriminator applies its activation to the embedding MLP's output). Catches: the last activation
    dropped, the embedding of another t."""
    D = DDGANDiscriminator(image_size=16, in_channels=1, base_width=8, width_mult=(1, 2))
    t = torch.tensor([1, 3, 4])
    freqs = torch.tensor([10_000 ** (-k / 4) for k in range(4)])
    emb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
    l1, l2 = D.time_mlp[0], D.time_mlp[2]
    leaky = lambda v: torch.nn.functional.leaky_relu(v, 0.2)
    expected = leaky(leaky(emb @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)
    with torch.no_grad():
        torch.testing.assert_close(D.time_mlp(timestep_embedding(t, 8)), expected, rtol=1e-5, atol=1e-6)


def test_unset_ddgan_settings_follow_the_data_kind_and_set_ones_are_kept():
    """Catches: toy sets given the image settings, an explicit setting overwritten, and a kind default that is
    not what --help says (the help text is built from the same table)."""
    keys = ("steps", "batch_size", "d_steps", "lr_g", "lr_d", "r1_gamma", "n_samples")
    assert [getattr(DDGANConfig(), k) for k in keys] == [10_000, 64, 1, 1e-4, 4e-4, 0.02, 64]
    assert [getattr(DDGANConfig(data="swiss_roll"), k) for k in keys] == [6_000, 256, 2, 2e-4, 2e-3, 0.05, 1000]
    config = DDGANConfig(data="two_moons", steps=3, batch_size=5, d_steps=1, lr_g=1e-5, lr_d=1e-5, r1_gamma=0.0,
                         n_samples=7)
    assert [getattr(config, k) for k in keys] == [3, 5, 1, 1e-5, 1e-5, 0.0, 7]
    with pytest.raises(ValueError, match="d_steps must be a whole number >= 1"):
        DDGANConfig(data="two_moons", d_steps=0)


def test_a_ddgan_trained_on_two_moons_with_the_default_settings_draws_the_moons(tmp_path):
    """``train_ddgan`` on two_moons with nothing but the data set named: 82% of G_ema's samples lie within
    0.05 of a data point (measured; about 45 s on one core), and each moon holds more than 35 % of those (fair
    share 50 %). Catches: toy defaults that leave G a smeared band over the moons (the image settings: 59% after
    their 10,000 steps), a generator that draws one moon only (it would pass the first check)."""
    trainer = train_ddgan(DDGANConfig(data="two_moons", preset="tiny", out_dir=str(tmp_path / "run"),
                                      sample_every=0, device="cpu", progress=False))
    samples = sample_ddgan(trainer.G_ema, trainer.schedule, (2000, 2), generator=torch.Generator().manual_seed(1))
    data, moon = dl.make_toy("two_moons", 10_000, generator=torch.Generator().manual_seed(5))
    distance, nearest = torch.cdist(samples.double(), data).min(dim=1)
    near = distance < 0.05
    assert near.double().mean() > 0.75, near.double().mean()
    share = torch.bincount(moon[nearest[near]], minlength=2).double() / near.sum()    # each moon's share
    assert (share > 0.35).all(), share                                   # both moons drawn (measured 0.50, 0.50)


def test_a_run_saved_before_d_steps_existed_resumes_with_one_d_update_per_step(tmp_path, capsys):
    """A checkpoint whose config lacks d_steps (saved before the setting existed, when every run made one D
    update per step) resumes through the command line with d_steps = 1, on a toy set (whose default is now 2)
    as on images. Catches: the missing setting compared as None, or filled from today's toy default."""
    run = tmp_path / "run"
    assert main(["train-ddgan", "--data", "two_moons", "--toy-n", "200", "--preset", "tiny", "--steps", "2",
                 "--batch-size", "16", "--d-steps", "1", "--sample-every", "0", "--out-dir", str(run),
                 "--device", "cpu", "--no-progress"]) == 0
    path = list_checkpoints(run)[-1]
    ckpt = load_checkpoint(path)
    del ckpt["config"]["d_steps"]
    files.save_atomic(ckpt, path)
    assert main(["train-ddgan", "--out-dir", str(run), "--steps", "3", "--resume", "--no-progress"]) == 0, \
        capsys.readouterr().err
    resumed = load_checkpoint(list_checkpoints(run)[-1])
    assert resumed["config"]["d_steps"] == 1 and resumed["opt_discriminator"]["state"][0]["step"].item() == 3
    image_run = {f.name: getattr(DDGANConfig(), f.name) for f in dataclasses.fields(DDGANConfig)}
    del image_run["d_steps"]
    checkpoint.check_same_run(path, image_run, DDGANConfig())       # an image run of d_steps 1: the same run
    with pytest.raises(ValueError, match="d_steps=1 there, 2 here"):
        checkpoint.check_same_run(path, image_run, DDGANConfig(d_steps=2))
