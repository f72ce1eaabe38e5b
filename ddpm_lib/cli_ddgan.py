"""The DDGAN subcommands of ``python -m ddpm_lib`` (registered by ``cli.build_parser``, run by ``cli.main``).

    python -m ddpm_lib train-ddgan --data mnist-5k --preset mnist --steps 6000 --d-steps 2 --out-dir runs/ddgan
    python -m ddpm_lib train-ddgan --out-dir runs/ddgan --steps 8000 --resume       # continue it, same settings
    python -m ddpm_lib train-ddgan --data eight_gaussians --preset tiny --out-dir runs/gan8   # about 40 s on a CPU
    python -m ddpm_lib sample-ddgan --checkpoint runs/ddgan --n 64 --out ddgan.png   # T calls of G_ema
    python -m ddpm_lib sample-ddgan --checkpoint runs/gan8 --n 2000 --out gan8.png # a scatter plot (.pt: the points)
    python -m ddpm_lib export-ddgan --checkpoint runs/ddgan --out data/ddgan_mnist.pt --training-command "…"

Errors are raised as ValueError / OSError / RuntimeError / FloatingPointError, which ``cli.main`` turns
into one line and exit status 1 (an unknown preset or data set included, so they are not argparse choices).
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import torch

from .checkpoint import check_files
from .cli_help import HelpFormatter
from .data import IMAGE_SETS
from .ddgan import sample_ddgan
from .ddgan_nets import DDGAN_PRESETS
from .ddgan_export import export_ddgan, load_ddgan_generator
from .ddgan_train import KIND_DEFAULTS, DDGANConfig, train_ddgan
from .devices import pick_device
from .files import prepare_output
from .toy_data import TOY_SETS
from .training import write_samples

DDGAN_COMMANDS = ("train-ddgan", "sample-ddgan", "export-ddgan")


def add_ddgan_commands(subparsers) -> None:
    """Add ``train-ddgan``, ``sample-ddgan`` and ``export-ddgan`` to the ``add_subparsers()`` object."""
    from .cli import add_run_arguments, by_kind         # cli imports this module: import at call time
    fmt = HelpFormatter
    d = DDGANConfig()
    p = subparsers.add_parser("train-ddgan", formatter_class=fmt, allow_abbrev=False,
                              help="train a Denoising Diffusion GAN (Xiao et al. 2022): T = 4 GAN-learned steps")
    p.add_argument("--data", default=d.data, help=f"one of {', '.join(IMAGE_SETS + TOY_SETS)}")
    p.add_argument("--data-root", default=d.data_root, help="cache folder of the torchvision sets (None: data/cache)")
    p.add_argument("--toy-n", type=int, default=d.toy_n, help="points drawn for a toy set")
    p.add_argument("--preset", default=d.preset, help=f"networks: one of {', '.join(DDGAN_PRESETS)}")
    p.add_argument("--T", type=int, default=d.T, help="denoising steps")
    p.add_argument("--beta-min", type=float, default=d.beta_min, help="β_min of the VP SDE schedule")
    p.add_argument("--beta-max", type=float, default=d.beta_max, help="β_max of the VP SDE schedule")
    p.add_argument("--steps", type=int,
                   help="steps (d_steps D updates, one G update) in all" + by_kind("steps", KIND_DEFAULTS))
    p.add_argument("--batch-size", type=int, help="minibatch size" + by_kind("batch_size", KIND_DEFAULTS))
    p.add_argument("--d-steps", type=int,
                   help="D updates per step, each on its own minibatch" + by_kind("d_steps", KIND_DEFAULTS))
    p.add_argument("--lr-g", type=float, help="Adam's learning rate for G" + by_kind("lr_g", KIND_DEFAULTS))
    p.add_argument("--lr-d", type=float, help="Adam's learning rate for D" + by_kind("lr_d", KIND_DEFAULTS))
    p.add_argument("--betas", type=float, nargs=2, default=d.betas, metavar=("BETA1", "BETA2"), help="Adam's betas")
    p.add_argument("--r1-gamma", type=float,
                   help="R1 weight γ (penalty (γ/2)·R1; 0: none)" + by_kind("r1_gamma", KIND_DEFAULTS))
    p.add_argument("--lazy-r1", type=int, default=d.lazy_r1, help="R1 every k-th step with weight k·γ/2")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="decay of G's weight average G_ema")
    p.add_argument("--hflip", action="store_true", help="mirror each training image with probability 1/2 "
                   "(cifar10 and fashion_mnist only: a mirrored digit is none)")
    add_run_arguments(p, d, KIND_DEFAULTS)
    s = subparsers.add_parser("sample-ddgan", formatter_class=fmt,
                              help="draw samples with G_ema of a DDGAN run or exported file (T generator calls)")
    s.add_argument("--checkpoint", required=True, help="a DDGAN run folder (latest), ckpt_*.pt or exported file")
    s.add_argument("--n", type=int, default=64, help="number of samples")
    s.add_argument("--out", default="ddgan.png", help="PNG grid for images; .pt saves the tensor")
    s.add_argument("--seed", type=int, default=0, help="seed of x_T, z and the posterior noise")
    s.add_argument("--device", default=None, help="None: cuda when available")
    e = subparsers.add_parser("export-ddgan", formatter_class=fmt,
                              help="write G_ema in half precision with a JSON card (config, sha256, command)")
    e.add_argument("--checkpoint", required=True, help="a DDGAN run folder (latest) or ckpt_*.pt file")
    e.add_argument("--out", required=True, help="weights file, e.g. data/ddgan_mnist.pt (card: .json)")
    e.add_argument("--training-command", default=None,
                   help="the training command to record in the card (default: this export command)")


def run_sample_ddgan(args: argparse.Namespace) -> Path:
    """Sample ``args.n`` examples with G_ema and write them to ``args.out``; returns the path."""
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    check_files({"--checkpoint": args.checkpoint}, args.out)
    prepare_output(args.out, (".png", ".pt"))
    device = pick_device(args.device)
    G, schedule, info = load_ddgan_generator(args.checkpoint, device)
    schedule = schedule.to(device)
    shape = info["example_shape"]
    x0 = sample_ddgan(G, schedule, (args.n, *shape), generator=torch.Generator(device).manual_seed(args.seed))
    path = write_samples(x0, args.out)
    print(f"wrote {args.n} samples (G_ema after step {info['step']}, {schedule.T} generator calls) to {path}")
    return path


def run_ddgan_command(args: argparse.Namespace, argv: list[str]) -> None:
    """Run one of ``DDGAN_COMMANDS``; ``argv`` is the command line (recorded by export-ddgan)."""
    if args.command == "train-ddgan":
        from .cli import config_from_args              # cli imports this module: import at call time
        train_ddgan(config_from_args(DDGANConfig, args, argv, kind="ddgan"))
    elif args.command == "sample-ddgan":
        run_sample_ddgan(args)
    elif args.command == "export-ddgan":
        command = args.training_command or shlex.join(["python", "-m", "ddpm_lib", *argv])
        prepare_output(args.out, (".pt",))
        card = export_ddgan(args.checkpoint, args.out, command=command)
        print(f"wrote {args.out} (step {card['step']}, sha256 {card['sha256'][:12]}…) and its card "
              f"{Path(args.out).with_suffix('.json')}")
    else:
        raise ValueError(f"not a DDGAN command: {args.command!r}")
