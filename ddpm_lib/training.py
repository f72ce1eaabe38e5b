"""Training a DDPM ε-model: Algorithm 1 of Ho et al. (2020), with what a GPU run needs around it.

    repeat
        x_0 ~ q(x_0)                       EpochBatches: a seeded permutation of the data per epoch
                                           (``hflip``: each image mirrored with probability 1/2)
        t ~ Uniform({1, …, T}), ε ~ N(0, I)                                     Trainer.train_step
        gradient step on ∇_θ ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²          (L_simple, eq. 14)
    until the step budget is spent

Around it: AdamW with linear warm-up, gradient clipping, θ_ema (``ema.py``; samples come from it),
bf16 autocast on GPUs with native bf16, fp16 autocast + GradScaler on older ones (Colab's T4), fp32 on
CPU, channels_last and optional torch.compile on CUDA, DDP under torchrun, a tqdm bar, metrics.jsonl,
sample grids and atomic, resumable checkpoints (``checkpoint.py``); the settings are ``train_config.TrainConfig``.
No step waits for the GPU: the loss and the first non-finite step stay on the device until a log step or a
checkpoint reads them (except the fp16 GradScaler, which reads its overflow flag every step by design). The
processes of a DDP run agree on a Ctrl-C or SIGTERM (torchrun forwards it, then kills after 30 s) one step
after it reaches any of them, through a CPU all-reduce that never waits for the GPU (``run_folder.StopAgreement``).

With ``num_classes`` K > 0 the same loop trains the class-conditional ε_θ(x_t, t, y) of classifier-free
guidance (Ho & Salimans 2021, Algorithm 1): the labels come with the images, each is replaced by the
null label K with probability ``p_uncond`` (``guidance.drop_labels``, its own checkpointed generator)
and the network is ``guidance.ConditionalUNet``. Sample grids then show classes 0..K−1 in rows (w = 1).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .checkpoint import build_model, checkpoint_to_resume, load_model_state, model_spec, resume_training, save_training
from .data import EpochBatches, load_images, random_hflip, to_pixel_range
from .devices import pick_device
from .elbo import l_simple
from .forward import q_sample
from .guidance import drop_labels
from .ema import ema_decay, make_ema_model, update_ema
from .run_folder import RunLocked, StopAgreement, StopRequest, Stopped, keep_metrics_up_to, run_lock
from .sampling import sample_ddpm
from .schedules import Schedule, make_schedule
from .toy_data import TOY_SETS, make_toy
from .train_config import TrainConfig, unused_settings



def learning_rate(config: TrainConfig, step: int) -> float:
    """The rate of optimizer step ``step`` (1, 2, …): linear warm-up to ``config.lr``, then constant."""
    return config.lr * min(1.0, step / config.warmup) if config.warmup else config.lr


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs with native bf16 (compute capability ≥ 8: A100, H100, RTX 30xx on), fp16 on older
    GPUs (T4, V100; needs a GradScaler), None (fp32, no autocast) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """How a run computes, for its first line: "bfloat16 autocast", "float16 autocast" or "float32"."""
    return "float32" if amp_dtype is None else f"{str(amp_dtype).removeprefix('torch.')} autocast"


def diffusion_loss(eps_model, s: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   y: torch.Tensor | None = None) -> torch.Tensor:
    """L_simple (eq. 14) at x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε (eq. 4): line 5 of Algorithm 1,
    the loss of the gradient step (ε, drawn in line 4, comes as an argument).

    ``s`` lives on x0's device (``Schedule.to``) so that nothing in the step waits for the GPU.
    With labels y (B,) the network is class-conditional and is called as ``eps_model(xt, t, y)``.
    """
    xt = q_sample(s, x0, t, eps)
    eps_pred = eps_model(xt, t) if y is None else eps_model(xt, t, y)
    return l_simple(eps, eps_pred.float())


class Trainer:
    """The state Algorithm 1 changes: θ (``model``), θ_ema, AdamW, the grad scaler, the noise generator.

    ``net`` is what a step calls: ``model``, wrapped in DistributedDataParallel when several processes
    train and in ``torch.compile`` on request. Weights are always saved from ``model`` itself.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, device: torch.device, rank: int = 0, world: int = 1,
                 compile_backend: str = "inductor"):
        self.config, self.device, self.model, self.step = config, device, model, 0
        self.ema_model = make_ema_model(model)
        self.schedule = make_schedule(config.schedule, config.T).to(device)
        self.amp_dtype = autocast_dtype(device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                           fused=device.type == "cuda")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        net = model if world == 1 else DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        self.net = net
        # Line 5 of Algorithm 1 as one function (x_t by eq. 4, ε_θ, L_simple). ``compile`` compiles it
        # whole, so q_sample and the loss fuse into the network's first and last kernels (and its backward).
        self.loss_fn = torch.compile(self._loss, backend=compile_backend) if config.compile else self._loss
        self.noise_generator = torch.Generator(device).manual_seed(config.seed + 1000 * (rank + 1))
        self.label_generator = torch.Generator(device).manual_seed(config.seed + 1000 * (rank + 1) + 2)

    def train_step(self, x0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """One pass of Algorithm 1's loop on the minibatch x0; returns the loss, still on the device.

        With labels y (B,) (a class-conditional model, ``config.num_classes`` > 0) each label becomes
        the null label ``num_classes`` with probability ``config.p_uncond`` first (classifier-free guidance).
        """
        if (y is None) != (self.config.num_classes == 0):
            raise ValueError(f"train_step needs labels y exactly when the model is class-conditional "
                             f"(num_classes = {self.config.num_classes}), got y={'None' if y is None else 'labels'}")
        self.step += 1
        g, B = self.noise_generator, x0.shape[0]
        t = torch.randint(1, self.config.T + 1, (B,), generator=g, device=self.device)   # t ~ U{1..T}
        eps = torch.randn(x0.shape, generator=g, device=self.device)                    # ε ~ N(0, I)
        if y is not None:
            y = drop_labels(y, self.config.p_uncond, self.config.num_classes, self.label_generator)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype \
            else contextlib.nullcontext()
        with autocast:
            loss = self.loss_fn(x0, t, eps, y)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)             # clip the true gradient, not the scaled one
        nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        update_ema(self.ema_model, self.model, ema_decay(self.config.ema_decay, self.step))
        return loss.detach()

    def _loss(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return diffusion_loss(self.net, self.schedule, x0, t, eps, y)

    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "ema": self.ema_model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, ckpt: dict, source: str) -> None:
        load_model_state(self.model, ckpt["model"], source)
        load_model_state(self.ema_model, ckpt["ema"], source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["grad_scaler"]:       # empty when the saving run had no fp16 scaler: this one starts afresh
            self.scaler.load_state_dict(ckpt["grad_scaler"])
        self.step = ckpt["step"]


def load_training_data(config: TrainConfig, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x0, y)``: the whole data set as one float32 tensor on ``device``, images (N, C, 32, 32) in
    [−1, 1] (MNIST padded from 28 to 32) or toy points (N, 2) drawn with ``config.seed``; and, for a
    class-conditional run (``config.num_classes`` > 0), the labels as a long tensor (N,) on ``device``
    (else None). Labels outside 0..num_classes − 1 raise ``ValueError``."""
    if config.data in TOY_SETS:
        x0, y = make_toy(config.data, config.toy_n, generator=torch.Generator().manual_seed(config.seed))
    else:
        x0, y = load_images(config.data, root=config.data_root, train=True, pad_to_32=True)
    if not config.num_classes:
        return x0.to(device=device, dtype=torch.float32), None
    if y is None or int(y.min()) < 0 or int(y.max()) >= config.num_classes:
        found = "no labels" if y is None else f"labels {int(y.min())}..{int(y.max())}"
        raise ValueError(f"num_classes={config.num_classes} but {config.data!r} has {found}: pass --num-classes "
                         f"{int(y.max()) + 1 if y is not None else 0}")
    return x0.to(device=device, dtype=torch.float32), y.to(device=device, dtype=torch.long)


def write_samples(x0: torch.Tensor, path: str | Path, nrow: int | None = None, title: str | None = None) -> Path:
    """Save samples: images (B, C, H, W) in [−1, 1] as a PNG grid of ``nrow`` images per row (default:
    about a square), 2-D points (B, 2) as a PNG scatter plot with ``title`` (default: how many), or any
    tensor as ``.pt``."""
    path = Path(path)
    if path.suffix.lower() != ".pt" and x0.ndim != 4 and x0.shape[1:] != (2,):
        raise ValueError(f"samples of shape {tuple(x0.shape)} are neither images (B, C, H, W) nor 2-D points "
                         f"(B, 2), the two kinds a PNG shows: save them as a .pt file")
    if path.suffix.lower() == ".pt":
        torch.save(x0.cpu(), path)
    elif x0.ndim == 4:
        from torchvision.utils import save_image
        save_image(to_pixel_range(x0), path, nrow=nrow or math.ceil(math.sqrt(x0.shape[0])))
    else:
        from .plots import save_scatter                 # matplotlib only when a scatter plot is asked for
        save_scatter(x0, path, title=title or f"{x0.shape[0]:,} samples")
    return path


def write_training_samples(x0: torch.Tensor, out_dir: Path, step: int, nrow: int | None = None) -> None:
    """A training run's samples at ``step``: ``samples_<step>.png`` (a grid of images, or a scatter plot of
    2-D points), and for points also ``samples_<step>.pt`` with the numbers."""
    stem = out_dir / f"samples_{step:08d}"
    if x0.ndim != 4:
        write_samples(x0, stem.with_suffix(".pt"))
    if x0.ndim == 4 or x0.shape[1:] == (2,):
        write_samples(x0, stem.with_suffix(".png"), nrow, title=f"step {step:,}: {x0.shape[0]:,} samples")


class GridDropped(Exception):
    """A stop was asked for while a training grid was being drawn: the grid is dropped so the run saves now."""


@torch.no_grad()
def training_samples(trainer: Trainer, config: TrainConfig, example_shape: tuple, device,
                     stop: StopRequest | None = None):
    """``(samples, nrow)`` for a grid during training: ``n_samples`` draws of θ_ema (Algorithm 2) from
    the same x_T each time (seed ``config.seed``), with a passing bar of their T steps. A class-conditional
    model draws max(1, n_samples // K) samples of each class 0..K−1 at w = 1 (ε_θ(x_t, t, y)), one class
    per row. ``GridDropped`` as soon as ``stop.requested`` (Ctrl-C or SIGTERM) turns true: a grid of T
    network calls takes minutes on a CPU, and a stop that waited for it could meet a SIGKILL before saving."""
    g = torch.Generator(device).manual_seed(config.seed)     # the same x_T each time: comparable grids

    def callback(t, xt):
        if stop is not None and stop.requested:
            raise GridDropped

    K = config.num_classes
    if not K:
        return sample_ddpm(trainer.ema_model, trainer.schedule, (config.n_samples, *example_shape), generator=g,
                           progress=config.progress, callback=callback), None
    per_class = max(1, config.n_samples // K)
    labels = torch.arange(K, device=device).repeat_interleave(per_class)      # row k: class k

    def eps_model(xt, t):
        return trainer.ema_model(xt, t, labels)

    return sample_ddpm(eps_model, trainer.schedule, (K * per_class, *example_shape), generator=g,
                       progress=config.progress, callback=callback), per_class


def train(config: TrainConfig) -> Trainer:
    """Train an ε-model with Algorithm 1 as ``config`` says (see the module docstring); returns the
    ``Trainer``: ``.model`` is θ, ``.ema_model`` θ_ema (sample with this one), ``.step`` the step reached.

    Under torchrun (WORLD_SIZE > 1): DistributedDataParallel with NCCL on CUDA or gloo on CPU; rank 0
    logs and saves. Raises ``FloatingPointError`` naming the step when the loss becomes NaN or
    infinite, and ``run_folder.Stopped`` (a KeyboardInterrupt) after saving a checkpoint when Ctrl-C asks it to stop.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(config.device)
    if world == 1:
        with run_lock(config.out_dir):
            return _train(config, device, rank=0, world=1)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        with contextlib.ExitStack() as held:             # rank 0 writes, so rank 0 holds the lock
            refusal = [None]
            if dist.get_rank() == 0:
                try:
                    held.enter_context(run_lock(config.out_dir))
                except (RunLocked, ValueError, OSError) as exc:
                    refusal = [exc]
            dist.broadcast_object_list(refusal, src=0)   # every rank stops with rank 0's error
            if refusal[0] is not None:
                raise refusal[0]
            return _train(config, device, rank=dist.get_rank(), world=dist.get_world_size())
    finally:
        if owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, device: torch.device, rank: int, world: int) -> Trainer:
    main, out_dir = rank == 0, Path(config.out_dir)
    resume_from = checkpoint_to_resume(out_dir, config.resume, kind="diffusion")

    def reduce(x: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if world > 1:
            dist.all_reduce(x, op=op)
        return x

    if world > 1 and not main:
        dist.barrier()                                   # rank 0 downloads and caches the data first
    x0_data, y_data = load_training_data(config, device)
    if world > 1 and main:
        dist.barrier()
    spec = model_spec(tuple(x0_data.shape[1:]), config.preset, config.num_classes)
    torch.manual_seed(config.seed)                       # the same θ at step 0 on every rank
    model = build_model(spec).to(device)
    channels_last = device.type == "cuda" and x0_data.ndim == 4
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainer = Trainer(model, config, device, rank, world)
    torch.manual_seed(config.seed + 1000 * (rank + 1) + 1)   # dropout masks: one stream per rank
    batches = EpochBatches(len(x0_data), config.batch_size, config.seed, rank, world, device)
    elapsed, last_saved = 0.0, None
    if resume_from is not None:
        ckpt = resume_training(resume_from, trainer, batches, config, unused_settings(config), rank, world)
        elapsed, last_saved = ckpt["elapsed"], resume_from
    metrics_path = out_dir / "metrics.jsonl"
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        keep_metrics_up_to(metrics_path, trainer.step)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"training {spec['kind']} ({n_params:,} parameters) on {config.data} {tuple(x0_data.shape)}: {device}, "
              f"{precision_name(trainer.amp_dtype)}, {world} process(es), from step {trainer.step}")
        if trainer.step >= config.steps:
            print(f"{resume_from} is already at step {trainer.step} and --steps is {config.steps}: nothing to "
                  f"train (raise --steps to continue the run)")

    def save() -> Path:
        extra = {"config": asdict(config), "model_spec": spec, "example_shape": tuple(x0_data.shape[1:]),
                 "elapsed": elapsed + time.perf_counter() - start}
        return save_training(trainer, batches, extra, out_dir, config.keep, rank, world)

    def check_finite() -> None:
        step = int(reduce(first_bad.clone(), dist.ReduceOp.MIN))
        if step <= config.steps:
            raise FloatingPointError(f"the loss became NaN or infinite at step {step}; training stopped. "
                                     f"Last good checkpoint: {last_saved or 'none was saved yet'}")

    no_bad = config.steps + 1                            # first_bad holds this until a loss is not finite
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), no_bad, dtype=torch.long, device=device)
    start = mark = time.perf_counter()
    step_at_mark, paused = trainer.step, 0.0             # paused: seconds spent sampling and saving
    bar = tqdm(total=config.steps, initial=trainer.step, desc="training", disable=not (config.progress and main))
    agree = StopAgreement(world)
    with StopRequest() as stop, bar:
        while trainer.step < config.steps:
            indices = batches.next_indices()
            x0 = x0_data[indices]
            if config.hflip:                             # drawn from the step's generator: resumes exactly
                x0 = random_hflip(x0, trainer.noise_generator)
            if channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            loss = trainer.train_step(x0, None if y_data is None else y_data[indices])
            step, last = trainer.step, trainer.step == config.steps
            loss_sum += loss
            first_bad = torch.where(torch.isfinite(loss) | (first_bad < no_bad), first_bad, step)
            bar.update(1)
            stopping = agree(stop.requested)             # the same on every rank (StopAgreement)
            if step % config.log_every == 0 or last:
                check_finite()
                now, n = time.perf_counter(), step - step_at_mark
                record = {"step": step, "steps_averaged": n, "loss": float(reduce(loss_sum.clone())) / (world * n),
                          "lr": learning_rate(config, step), "time": elapsed + now - start,
                          "img_per_s": config.batch_size * n / (now - mark - paused)}
                if main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_per_s=f"{record['img_per_s']:.0f}")
                loss_sum.zero_()
                mark, step_at_mark, paused = now, step, 0.0
            side_work = time.perf_counter()
            saved_now = step % config.save_every == 0 or last or stopping
            if saved_now:                                # before the grid: a grid that fails loses no step
                check_finite()
                last_saved = save()
            if not stopping and main and config.sample_every and (step % config.sample_every == 0 or last):
                try:
                    samples, nrow = training_samples(trainer, config, tuple(x0_data.shape[1:]), device, stop)
                    write_training_samples(samples, out_dir, step, nrow)
                except GridDropped:                      # one process stops here; several agree a step or two later
                    tqdm.write(f"stop asked for: the sample grid of step {step} is not drawn")
                    if world == 1 and not last:          # at the last step the run is complete: it just ends
                        stopping = True
                        if not saved_now:
                            check_finite()
                            last_saved = save()
            if stopping:
                agree.finish()
                if main:
                    tqdm.write(f"interrupted at step {step}: saved {last_saved}; continue with --resume")
                raise Stopped(f"interrupted at step {step}: saved {last_saved}")
            paused += time.perf_counter() - side_work
    agree.finish()
    return trainer
