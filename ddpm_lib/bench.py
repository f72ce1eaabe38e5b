"""Throughput of the package's own training step and network evaluation (``python -m ddpm_lib bench``).

    python -m ddpm_lib bench --preset ddpm-cifar10 --batch-size 128            # on a GPU
    python -m ddpm_lib bench --preset tiny --batch-size 8 --iters 3 --device cpu  # a smoke test

Training images/s time ``Trainer.train_step`` (Algorithm 1 with AdamW, clipping, EMA and the autocast
the trainer picks) after warm-up steps; sampling images/s time one network evaluation under
``torch.no_grad`` at the sampling batch. Times come from CUDA events on a GPU and from the wall clock
on a CPU. FLOPs are counted with ``torch.utils.flop_counter`` for one forward pass (a training step
is counted as three forward passes), so TFLOP/s = FLOPs × images/s.
"""
from __future__ import annotations

import contextlib
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .training import Trainer, TrainConfig, autocast_dtype
from .unet import PRESETS, UNet, count_parameters


def _timer(device: torch.device):
    """A function that runs ``fn`` ``n`` times and returns the seconds it took, timed on ``device``."""
    def run(fn, n: int) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1000.0
        begin = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - begin
    return run


def forward_flops(model: torch.nn.Module, shape: tuple, device: torch.device) -> int:
    """FLOPs of one forward pass of ``model`` on a batch of ``shape`` (counted, not timed)."""
    x = torch.randn(shape, device=device)
    t = torch.ones(shape[0], dtype=torch.long, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops()


def bench(preset: str = "ddpm-cifar10", batch_size: int = 128, sample_batch: int = 256, iters: int = 20,
          warmup: int = 5, device: str | None = None, compile: bool = False) -> dict:
    """Measure training and sampling throughput of a U-Net preset; returns a dict of the figures."""
    if preset not in PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if min(batch_size, sample_batch, iters) < 1 or warmup < 0:
        raise ValueError("batch sizes and iters must be at least 1, warmup at least 0")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = UNet.from_preset(preset).to(dev)
    config = PRESETS[preset]
    shape = (config["in_channels"], config["image_size"], config["image_size"])
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(dev)
    trainer = Trainer(model, TrainConfig(preset=preset, batch_size=batch_size, warmup=1, compile=compile,
                                         progress=False), dev)
    x0 = torch.randn(batch_size, *shape, device=dev).clamp(-1, 1)
    timed = _timer(dev)
    timed(lambda: trainer.train_step(x0), warmup)
    train_seconds = timed(lambda: trainer.train_step(x0), iters)
    peak_train = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None

    amp = autocast_dtype(dev)
    net = torch.compile(model) if compile else model
    xt = torch.randn(sample_batch, *shape, device=dev)
    t = torch.full((sample_batch,), 500, dtype=torch.long, device=dev)

    def evaluate():
        with torch.no_grad(), (torch.autocast(dev.type, dtype=amp) if amp else contextlib.nullcontext()):
            net(xt, t)
    model.eval()
    timed(evaluate, warmup)
    sample_seconds = timed(evaluate, iters)
    flops = forward_flops(model, (1, *shape), dev)
    train_ips, sample_ips = batch_size * iters / train_seconds, sample_batch * iters / sample_seconds
    return {"preset": preset, "parameters": count_parameters(model), "device": str(dev),
            "autocast": str(amp).replace("torch.", "") if amp else "fp32", "compile": compile,
            "batch_size": batch_size, "sample_batch": sample_batch, "iters": iters,
            "train_img_per_s": train_ips, "train_tflops": 3 * flops * train_ips / 1e12,
            "sample_img_per_s": sample_ips, "sample_tflops": flops * sample_ips / 1e12,
            "gflop_per_image_forward": flops / 1e9,
            "peak_train_memory_gib": peak_train / 2 ** 30 if peak_train is not None else None}


def format_table(r: dict) -> str:
    """The figures of ``bench`` as a few aligned lines."""
    mem = f"{r['peak_train_memory_gib']:.2f} GiB" if r["peak_train_memory_gib"] is not None else "n/a (CPU)"
    return "\n".join([
        f"{r['preset']} ({r['parameters']:,} parameters, {r['gflop_per_image_forward']:.2f} GFLOP per image forward) "
        f"on {r['device']}, {r['autocast']}{', compiled' if r['compile'] else ''}",
        f"{'':12}{'images/s':>12}{'TFLOP/s':>10}{'batch':>8}",
        f"{'training':12}{r['train_img_per_s']:12.1f}{r['train_tflops']:10.3f}{r['batch_size']:8d}",
        f"{'sampling':12}{r['sample_img_per_s']:12.1f}{r['sample_tflops']:10.3f}{r['sample_batch']:8d}",
        f"peak memory of the training step: {mem}"])
