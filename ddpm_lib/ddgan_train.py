"""Training Denoising Diffusion GANs on images or toy points: Algorithm 1 of Xiao, Kreis & Vahdat (2022).

    repeat
        x_0 ~ q(x_0)                                    EpochBatches: a seeded permutation per epoch
        t ~ U{1..T}; (x_{t−1}, x_t) ~ q                 q_sample_pairs
        x_{t−1}′ ~ q(x_{t−1} | x_t, G(x_t, z, t))       posterior_sample, z ~ N(0, I)
        D step: softplus(−D(x_{t−1}, x_t, t)) + softplus(D(x_{t−1}′, x_t, t)) + (γ/2)·R1   (× d_steps)
        G step: on the last x_0, a fresh t, pair and z: softplus(−D(x_{t−1}′, x_t, t))
        θ_ema ← EMA of G's weights
    until the step budget is spent

A step may hold ``d_steps = k`` D updates, each on a fresh minibatch x_0, before its one G update (the
"n_critic" of WGAN training; Algorithm 1 is k = 1). Adam for both networks, D with 4× G's learning rate
(``DDGANConfig`` says why). R1 may be lazy: with ``lazy_r1 = k`` it is computed on every k-th step only,
with weight k·γ/2, so its average pull on D is unchanged (StyleGAN2's lazy regularisation). Training is
in float32: a GAN's losses and R1's double backward are sensitive to rounding, and the networks here are
small, so mixed precision is not worth its risk.

Around it, as the diffusion trainer (``training.py``) does: automatic device, a tqdm bar with the
losses and images/s, metrics.jsonl, sample grids from G_ema, atomic keep-last-k checkpoints that
continue bit for bit with ``resume``, Ctrl-C / SIGTERM save-then-stop, and a stop naming the step
when a loss becomes NaN. ``ddgan_export`` reads and ships the generator it trains.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import (check_same_run, checkpoint_to_resume, load_checkpoint, load_model_state,
                         restore_random_streams, save_checkpoint)
from .data import IMAGE_SETS, EpochBatches, check_hflip, load_images, random_hflip
from .ddgan import _fake_prev, d_loss, ddgan_schedule, g_loss, q_sample_pairs, r1_penalty, sample_ddgan
from .ddgan_nets import DDGAN_PRESETS, build_ddgan, ddgan_spec
from .devices import pick_device
from .ema import ema_decay, make_ema_model, update_ema
from .run_folder import StopRequest, Stopped, keep_metrics_up_to, run_lock
from .toy_data import TOY_SETS, make_toy
from .train_config import fill_kind_defaults
from .training import write_training_samples

WEIGHTS_FORMAT = "ddpm_lib-ddgan-weights-1"


# Settings that a DDGANConfig left at None take from its data's kind (train_config.fill_kind_defaults). Images:
# see DDGANConfig. The toy MLPs at those settings drew a ring for the eight Gaussians after 3,000 steps and a
# smeared band over the two moons after 10,000 (59% of samples within 0.05 of a data point). D ten times
# faster than G, two D updates per step and a larger batch draw the eight modes, the moons (82%) and the
# spiral within 6,000 steps, about 50 s on one CPU core.
KIND_DEFAULTS = {"images": {"steps": 10_000, "batch_size": 64, "d_steps": 1, "lr_g": 1e-4, "lr_d": 4e-4,
                            "r1_gamma": 0.02, "n_samples": 64},
                 "toy": {"steps": 6_000, "batch_size": 256, "d_steps": 2, "lr_g": 2e-4, "lr_d": 2e-3,
                         "r1_gamma": 0.05, "n_samples": 1000}}


@dataclass
class DDGANConfig:
    """Every setting of a DDGAN run; the command line's flags carry the same names with dashes.

    Seeds: G's and D's initialisation and the data order use ``seed``; t, the pairs' noise, z, the posterior
    noise and the hflip coins come from one generator seeded with ``seed + 1000``. T, the β range and γ are the
    paper's CIFAR-10 settings. The optimisers are not: with the paper's (lr_g 1.6e-4, lr_d 1.25e-4, betas 0.5,
    0.9) the ``tiny`` preset's samples on MNIST were still strokes after 1,500 steps (FID-MNIST 475 on 500
    samples). For images D here learns 4× faster than G (the two time-scale update rule of Heusel et al.
    2017) and Adam's β1 is 0, as in StyleGAN2; the same preset then reached FID-MNIST 232–263 from step 2,400
    on. At step 1,500 the ratio alone gave 253 and β1 = 0 alone 396: the ratio
    matters. Two D updates per step (``d_steps = 2``, which the Makefile's recipe passes) gave 145 at step
    1,500 and 75 at step 4,000, for about 1.4× the time per step; for images ``d_steps`` stays 1 by default,
    as in Algorithm 1. 2-D toy sets have their own defaults (KIND_DEFAULTS above).
    """

    data: str = "mnist-5k"        # an image set (data.IMAGE_SETS) or a 2-D toy set (toy_data.TOY_SETS)
    data_root: str | None = None  # cache folder for the torchvision sets (None: data/cache)
    toy_n: int = 10_000           # points drawn once for a toy set
    preset: str = "mnist"         # networks (ddgan_nets.DDGAN_PRESETS); toy sets use the preset's MLPs
    T: int = 4                    # denoising steps
    beta_min: float = 0.1         # the VP SDE's β range (ddgan_schedule)
    beta_max: float = 20.0
    # The next six (and n_samples) default to None: the data's kind then sets them (KIND_DEFAULTS).
    steps: int | None = None      # steps (d_steps D updates, one G update), counted from 0 also when resuming
    batch_size: int | None = None
    d_steps: int | None = None    # D updates per step, each on its own minibatch (1: Algorithm 1)
    lr_g: float | None = None     # Adam's learning rate for G
    lr_d: float | None = None     # and for D
    betas: tuple = (0.0, 0.99)    # Adam's (β1, β2) for both
    r1_gamma: float | None = None # R1 weight γ (the penalty is (γ/2)·R1)
    lazy_r1: int = 1              # compute R1 every k-th step with weight k·γ/2 (1: every step)
    ema_decay: float = 0.999      # G_ema's decay, reached after a warm-up (ema.py)
    hflip: bool = False           # mirror each training image with probability 1/2 (data.MIRROR_SAFE sets only)
    seed: int = 0
    out_dir: str = "runs/ddgan"   # checkpoints, metrics.jsonl and samples
    log_every: int = 100          # steps between metrics lines
    sample_every: int = 1000      # steps between sample grids from G_ema (0: none)
    n_samples: int | None = None  # samples per grid or scatter plot (None: KIND_DEFAULTS)
    save_every: int = 1000        # steps between checkpoints (the last step is always saved)
    keep: int = 3                 # checkpoints kept; older ones are deleted
    device: str | None = None     # None: "cuda" when available, else "cpu"
    progress: bool = True         # tqdm bar
    resume: bool = False          # continue from the latest checkpoint in out_dir

    def __post_init__(self):
        if self.data not in IMAGE_SETS + TOY_SETS:
            raise ValueError(f"unknown data set {self.data!r}: choose one of {', '.join(IMAGE_SETS + TOY_SETS)}")
        fill_kind_defaults(self, KIND_DEFAULTS)
        if self.preset not in DDGAN_PRESETS:
            raise ValueError(f"unknown DDGAN preset {self.preset!r}: choose one of {', '.join(DDGAN_PRESETS)}")
        for name in ("toy_n", "T", "steps", "batch_size", "d_steps", "lazy_r1", "log_every", "n_samples", "save_every",
                     "keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not 0 < self.beta_min < self.beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        self.betas = tuple(float(b) for b in self.betas)
        for ok, why in ((self.lr_g > 0, f"lr_g must be positive, got {self.lr_g}"),          # NaN fails too
                        (self.lr_d > 0, f"lr_d must be positive, got {self.lr_d}"),
                        (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                         f"betas must be two numbers in [0, 1) (Adam's β1, β2), got {self.betas}"),
                        (self.r1_gamma >= 0, f"r1_gamma must be at least 0, got {self.r1_gamma}"),
                        (0 <= self.ema_decay < 1, f"ema_decay must lie in [0, 1), got {self.ema_decay}"),
                        (self.sample_every >= 0, f"sample_every must be at least 0 (0: no grids), got "
                                                 f"{self.sample_every}")):
            if not ok:
                raise ValueError(why)
        if self.hflip:
            check_hflip(self.data)


class DDGANTrainer:
    """The state Algorithm 1 changes: G, D, G_ema, both Adams, the step, and the generator of t, the
    pairs' noise, z, the posterior noise and the hflip coins (``noise_generator``)."""

    def __init__(self, G: nn.Module, D: nn.Module, config: DDGANConfig, device: torch.device):
        self.G, self.D, self.config, self.device, self.step = G, D, config, device, 0
        self.G_ema = make_ema_model(G)
        self.schedule = ddgan_schedule(config.T, config.beta_min, config.beta_max).to(device)
        self.opt_g = torch.optim.Adam(G.parameters(), lr=config.lr_g, betas=config.betas)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=config.betas)
        self.noise_generator = torch.Generator(device).manual_seed(config.seed + 1000)

    def r1_weight(self, step: int) -> float:
        """The factor of R1 in D's loss at ``step``: k·γ/2 on every k-th step (k = lazy_r1), else 0."""
        k = self.config.lazy_r1
        return 0.5 * self.config.r1_gamma * k if self.config.r1_gamma > 0 and step % k == 0 else 0.0

    def d_update(self, x0: torch.Tensor, r1_weight: float):
        """One Adam step of D on the minibatch x0: real pairs up, fake pairs down, ``r1_weight``·R1 on the
        real pairs' x_{t−1}. Returns ``(d_loss, r1)`` (d_loss without the R1 term; r1 None when not computed)."""
        G, D, s, g, B = self.G, self.D, self.schedule, self.noise_generator, x0.shape[0]
        t = torch.randint(1, s.T + 1, (B,), generator=g, device=self.device)
        x_prev, xt = q_sample_pairs(s, x0, t, g)
        with torch.no_grad():
            x_fake = _fake_prev(G, s, xt, t, g)
        loss_d = d_loss(D(x_prev, xt, t), D(x_fake, xt, t))
        r1 = r1_penalty(D, x_prev, xt, t) if r1_weight else None
        total = loss_d if r1 is None else loss_d + r1_weight * r1
        self.opt_d.zero_grad(set_to_none=True)
        total.backward()
        self.opt_d.step()
        return loss_d.detach(), None if r1 is None else r1.detach()

    def g_update(self, x0: torch.Tensor) -> torch.Tensor:
        """One Adam step of G on the minibatch x0 (a fresh t, pair, z and posterior noise), D held fixed."""
        G, D, s, g, B = self.G, self.D, self.schedule, self.noise_generator, x0.shape[0]
        D.requires_grad_(False)
        t = torch.randint(1, s.T + 1, (B,), generator=g, device=self.device)
        _, xt = q_sample_pairs(s, x0, t, g)
        loss_g = g_loss(D(_fake_prev(G, s, xt, t, g), xt, t))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        D.requires_grad_(True)
        return loss_g.detach()

    def train_step(self, *x0s: torch.Tensor):
        """One step: ``d_steps`` D updates, the i-th on minibatch ``x0s[i]``, then one G update on the last
        minibatch and the EMA. Returns ``(d_loss, g_loss, r1)`` as tensors on the device, d_loss and r1
        averaged over the D updates (r1 is None on steps without the penalty)."""
        if len(x0s) != self.config.d_steps:
            raise ValueError(f"train_step takes one minibatch per D update: {self.config.d_steps}, got {len(x0s)}")
        self.step += 1
        weight = self.r1_weight(self.step)
        d_losses, r1s = zip(*(self.d_update(x0, weight) for x0 in x0s))
        loss_g = self.g_update(x0s[-1])
        update_ema(self.G_ema, self.G, ema_decay(self.config.ema_decay, self.step))
        return torch.stack(d_losses).mean(), loss_g, None if r1s[0] is None else torch.stack(r1s).mean()

    def state_dict(self) -> dict:
        return {"step": self.step, "generator": self.G.state_dict(), "discriminator": self.D.state_dict(),
                "generator_ema": self.G_ema.state_dict(), "opt_generator": self.opt_g.state_dict(),
                "opt_discriminator": self.opt_d.state_dict()}

    def load_state_dict(self, ckpt: dict, source: str) -> None:
        for net, key in ((self.G, "generator"), (self.D, "discriminator"), (self.G_ema, "generator_ema")):
            load_model_state(net, ckpt[key], source)
        self.opt_g.load_state_dict(ckpt["opt_generator"])
        self.opt_d.load_state_dict(ckpt["opt_discriminator"])
        self.step = ckpt["step"]


def _check_ddgan_checkpoint(ckpt: dict, path) -> None:
    kind = ckpt.get("model_spec", {}).get("kind")
    if kind != "ddgan":
        raise ValueError(f"{path} is a checkpoint of a diffusion run (model kind {kind!r}), not of a DDGAN run: "
                         f"use `python -m ddpm_lib train --resume`, `sample` or `export` for it")


def load_ddgan_data(config: DDGANConfig, device) -> torch.Tensor:
    """The whole training set as one float32 tensor on ``device``: images (N, C, 32, 32) in [−1, 1]
    (MNIST padded from 28 to 32) or ``toy_n`` toy points (N, 2) drawn with ``config.seed``."""
    if config.data in TOY_SETS:
        x0, _ = make_toy(config.data, config.toy_n, generator=torch.Generator().manual_seed(config.seed))
    else:
        x0, _ = load_images(config.data, root=config.data_root, train=True, pad_to_32=True)
    return x0.to(device=device, dtype=torch.float32)


def _rng_state(trainer: DDGANTrainer) -> dict:
    """The random streams a step reads: torch's CPU (and CUDA) generator and the trainer's noise generator."""
    cuda = trainer.device.type == "cuda"
    return {"torch_cpu": torch.get_rng_state(), "noise": trainer.noise_generator.get_state(),
            "torch_cuda": torch.cuda.get_rng_state(trainer.device) if cuda else None}


def _resume(path: Path, trainer: DDGANTrainer, batches: EpochBatches, config: DDGANConfig) -> dict:
    """Load a checkpoint into ``trainer`` and ``batches`` and restore the random streams, so that the
    next step repeats the interrupted run's bit for bit; ``config`` must match the checkpoint's
    (``check_same_run``). Returns the checkpoint dict."""
    ckpt = load_checkpoint(path)                   # a DDGAN run's: checkpoint_to_resume checked its kind
    check_same_run(path, ckpt["config"], config, unused=() if config.data in TOY_SETS else ("toy_n",))
    trainer.load_state_dict(ckpt, source=str(path))
    batches.load_state_dict(ckpt["batches"])
    if not restore_random_streams(ckpt["rng"], trainer):
        print(f"warning: {path} was written on another kind of device: the noise draws fresh random streams "
              f"from the seed")
    return ckpt


def train_ddgan(config: DDGANConfig) -> DDGANTrainer:
    """Train a DDGAN as ``config`` says (see the module docstring); returns the ``DDGANTrainer``:
    ``.G_ema`` is the generator to sample with, ``.step`` the step reached.

    One process only: under torchrun (WORLD_SIZE > 1) it raises ``ValueError``. Raises
    ``FileExistsError`` over an existing run without ``resume``, ``FloatingPointError`` naming
    the step (and the last good checkpoint) when a loss becomes NaN or infinite, and
    ``run_folder.Stopped`` (a KeyboardInterrupt) after saving a checkpoint when Ctrl-C or SIGTERM asks it to stop.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:      # every process would train alone on the full batch and race for out_dir's lock
        raise ValueError(f"train-ddgan trains in one process, but this is one of {world} (WORLD_SIZE={world}, "
                         f"torchrun?): run it as `python -m ddpm_lib train-ddgan ...`")
    device = pick_device(config.device)
    with run_lock(config.out_dir):                            # one run at a time writes into out_dir
        return _train_ddgan(config, device)


def _train_ddgan(config: DDGANConfig, device: torch.device) -> DDGANTrainer:
    out_dir = Path(config.out_dir)
    resume_from = checkpoint_to_resume(out_dir, config.resume, kind="ddgan")
    x0_data = load_ddgan_data(config, device)
    example_shape = tuple(x0_data.shape[1:])
    spec = ddgan_spec(config.preset, example_shape)
    torch.manual_seed(config.seed)                            # G's and D's weights at step 0
    G, D = build_ddgan(spec)
    trainer = DDGANTrainer(G.to(device), D.to(device), config, device)
    batches = EpochBatches(len(x0_data), config.batch_size, config.seed, device=device)
    elapsed, last_saved = 0.0, None
    if resume_from is not None:
        ckpt = _resume(resume_from, trainer, batches, config)
        elapsed, last_saved = ckpt["elapsed"], resume_from
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    keep_metrics_up_to(metrics_path, trainer.step)
    n_g, n_d = (sum(p.numel() for p in net.parameters()) for net in (G, D))
    print(f"training DDGAN ({spec['config']['type']} networks: G {n_g:,}, D {n_d:,} parameters) on {config.data} "
          f"{tuple(x0_data.shape)}: {device}, float32, T = {config.T}, from step {trainer.step}")
    if trainer.step >= config.steps:
        print(f"{resume_from} is already at step {trainer.step} and --steps is {config.steps}: nothing to train "
              f"(raise --steps to continue the run)")

    def save() -> Path:
        return save_checkpoint({**trainer.state_dict(), "batches": batches.state_dict(), "rng": _rng_state(trainer),
                                "config": asdict(config), "model_spec": spec, "example_shape": example_shape,
                                "elapsed": elapsed + time.perf_counter() - start}, out_dir, config.keep)

    def check_finite() -> None:
        step = int(first_bad)
        if step <= config.steps:
            raise FloatingPointError(f"a GAN loss became NaN or infinite at step {step}; training stopped. "
                                     f"Last good checkpoint: {last_saved or 'none was saved yet'}")

    no_bad = config.steps + 1
    first_bad = torch.full((), no_bad, dtype=torch.long, device=device)
    sums = torch.zeros(3, device=device)                      # d_loss, g_loss, r1 since the last log line
    r1_count = 0
    start = mark = time.perf_counter()
    step_at_mark, paused = trainer.step, 0.0
    bar = tqdm(total=config.steps, initial=trainer.step, desc="ddgan", disable=not config.progress)

    def minibatch() -> torch.Tensor:                # x_0 ~ q(x_0), mirrored by the step's generator with hflip
        x0 = x0_data[batches.next_indices()]
        return random_hflip(x0, trainer.noise_generator) if config.hflip else x0

    with StopRequest() as stop, bar:
        while trainer.step < config.steps:
            loss_d, loss_g, r1 = trainer.train_step(*(minibatch() for _ in range(config.d_steps)))
            step, last = trainer.step, trainer.step == config.steps
            sums[0] += loss_d
            sums[1] += loss_g
            if r1 is not None:
                sums[2] += r1
                r1_count += 1
            finite = torch.isfinite(loss_d) & torch.isfinite(loss_g)
            if r1 is not None:
                finite &= torch.isfinite(r1)
            first_bad = torch.where(finite | (first_bad < no_bad), first_bad, step)
            bar.update(1)
            if step % config.log_every == 0 or last:
                check_finite()
                now, n = time.perf_counter(), step - step_at_mark
                d_sum, g_sum, r1_sum = sums.tolist()
                d_mean, g_mean = d_sum / n, g_sum / n
                record = {"step": step, "steps_averaged": n, "d_loss": d_mean, "g_loss": g_mean,
                          "r1": r1_sum / r1_count if r1_count else None, "time": elapsed + now - start,
                          "img_per_s": config.batch_size * config.d_steps * n / (now - mark - paused)}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(d=f"{d_mean:.3f}", g=f"{g_mean:.3f}", img_per_s=f"{record['img_per_s']:.0f}")
                sums.zero_()
                r1_count, mark, step_at_mark, paused = 0, now, step, 0.0
            side_work = time.perf_counter()
            stopping = stop.requested
            if step % config.save_every == 0 or last or stopping:    # before the grid: a failing grid loses no step
                check_finite()
                last_saved = save()
            if stopping:
                tqdm.write(f"interrupted at step {step}: saved {last_saved}; continue with --resume")
                raise Stopped(f"interrupted at step {step}: saved {last_saved}")
            if config.sample_every and (step % config.sample_every == 0 or last):
                check_finite()
                g = torch.Generator(device).manual_seed(config.seed)    # the same x_T and z: comparable grids
                samples = sample_ddgan(trainer.G_ema, trainer.schedule, (config.n_samples, *example_shape), generator=g)
                write_training_samples(samples, out_dir, step)
            paused += time.perf_counter() - side_work
    return trainer
