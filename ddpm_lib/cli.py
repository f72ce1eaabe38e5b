"""The command line: ``python -m ddpm_lib train …`` (Algorithm 1) and ``python -m ddpm_lib sample …`` (Algorithm 2).

    python -m ddpm_lib train --data mnist-5k --preset tiny --steps 2000 --out-dir runs/mnist
    python -m ddpm_lib train --out-dir runs/mnist --steps 4000 --resume        # continue that run
    torchrun --nproc_per_node 4 -m ddpm_lib train --data cifar10 --preset ddpm-cifar10 --out-dir runs/c10
    python -m ddpm_lib sample --checkpoint runs/mnist --n 64 --out grid.png    # EMA weights, PNG grid
    python -m ddpm_lib train --data two_moons --T 100 --steps 3000 --out-dir runs/moons
    python -m ddpm_lib sample --checkpoint runs/moons --n 1000 --out moons.pt  # 2-D points as a tensor

A user error (bad flag value, missing or damaged checkpoint, data set not available offline, a loss
that became NaN) ends with a one-line message and exit status 1; Ctrl-C saves a checkpoint first (130).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .checkpoint import load_ema_model
from .data import IMAGE_SETS
from .sampling import sample_ddpm
from .schedules import SCHEDULES
from .toy_data import TOY_SETS
from .training import TrainConfig, train, write_samples
from .unet import PRESETS


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--data", default=d.data, choices=IMAGE_SETS + TOY_SETS,
                   help="image set (mnist-5k works offline) or 2-D toy set (trained with the toy MLP)")
    p.add_argument("--data-root", default=d.data_root, help="cache folder of the torchvision sets (None: data/cache)")
    p.add_argument("--toy-n", type=int, default=d.toy_n, help="points drawn for a toy set")
    p.add_argument("--preset", default=d.preset, choices=list(PRESETS), help="U-Net preset for image data")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="noise schedule β_t")
    p.add_argument("--T", type=int, default=d.T, help="diffusion steps T")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps in all (also when resuming)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (split over DDP processes)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate after warm-up")
    p.add_argument("--warmup", type=int, default=d.warmup, help="steps of linear learning-rate warm-up")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="clip the gradient's global norm to this")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="decay of the weights' EMA")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the weights, data order and noise")
    p.add_argument("--out-dir", default=d.out_dir, help="folder for checkpoints, metrics.jsonl and samples")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics lines")
    p.add_argument("--sample-every", type=int, default=d.sample_every, help="steps between sample grids (0: none)")
    p.add_argument("--n-samples", type=int, default=d.n_samples, help="samples per grid")
    p.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints")
    p.add_argument("--keep", type=int, default=d.keep, help="checkpoints to keep")
    p.add_argument("--device", default=d.device, help="cuda, cuda:1, cpu, … (None: cuda when available)")
    p.add_argument("--compile", action="store_true", help="wrap the network in torch.compile")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out-dir")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lib", description="Train and sample DDPMs (Ho et al. 2020).")
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train an ε-model (Algorithm 1); torchrun for several GPUs",
                                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_train_arguments(train_parser)
    sample_parser = commands.add_parser("sample", help="draw samples with the EMA weights (Algorithm 2)",
                                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sample_parser.add_argument("--checkpoint", required=True, help="a ckpt_*.pt file or a run folder (latest)")
    sample_parser.add_argument("--n", type=int, default=64, help="number of samples")
    sample_parser.add_argument("--out", default="samples.png", help="PNG grid for images; .pt saves the tensor")
    sample_parser.add_argument("--seed", type=int, default=0, help="seed of x_T and the sampler's noise")
    sample_parser.add_argument("--device", default=None, help="None: cuda when available")
    return parser


def run_sample(args: argparse.Namespace) -> Path:
    """Algorithm 2 with θ_ema from a checkpoint; writes ``args.out`` and returns its path."""
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ema_model, schedule, ckpt = load_ema_model(args.checkpoint, device)
    example_shape = tuple(ckpt["example_shape"])
    if len(example_shape) != 3 and Path(args.out).suffix != ".pt":
        raise ValueError(f"this model draws {example_shape[0]}-D points, not images: pass --out with a .pt name")
    generator = torch.Generator(device).manual_seed(args.seed)
    x0 = sample_ddpm(ema_model, schedule, (args.n, *example_shape), generator=generator, progress=True)
    path = write_samples(x0, args.out)
    print(f"wrote {args.n} samples (θ_ema after step {ckpt['step']}, T = {schedule.T}) to {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            train(TrainConfig(**{k: v for k, v in vars(args).items() if k != "command"}))
        else:
            run_sample(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
