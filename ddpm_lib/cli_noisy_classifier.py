"""``python -m ddpm_lib train-noisy-classifier``: the noise-aware classifier p_φ(y | x_t, t) that classifier
guidance differentiates (``noisy_classifier.py`` holds the network and its training loop).

    python -m ddpm_lib train-noisy-classifier --data mnist-5k --out data/noisy_classifier_mnist.pt

It trains on the train split noised at t ~ U{1..T} of the schedule of the models it will guide, measures
the held-out accuracy at a few t, and writes the weights with a JSON card (sha256, accuracy, command).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .cli_help import HelpFormatter
from .data import IMAGE_SETS, load_images
from .devices import pick_device
from .files import prepare_output
from .noisy_classifier import NoisyClassifier, noisy_classifier_accuracy, save_noisy_classifier, train_noisy_classifier
from .schedules import SCHEDULES, make_schedule
from .unet import PRESETS


def default_eval_t(T: int) -> list[int]:
    """Noise levels for the held-out accuracy: 1, T/4, T/2, 3T/4, T (1, 250, 500, 750, 1000 for T = 1000)."""
    return sorted({max(1, round(T * f)) for f in (0.0, 0.25, 0.5, 0.75, 1.0)})


def add_noisy_classifier_parser(commands) -> None:
    p = commands.add_parser("train-noisy-classifier",
                            help="train the noise-aware classifier p(y | x_t, t) of classifier guidance",
                            formatter_class=HelpFormatter)
    p.add_argument("--data", default="mnist-5k", choices=IMAGE_SETS, help="labelled image set (train split)")
    p.add_argument("--data-root", default=None, help="cache folder of the torchvision sets (None: data/cache)")
    p.add_argument("--out", default="data/noisy_classifier_mnist.pt", help="weights file (card: .json beside it)")
    p.add_argument("--steps", type=int, default=3000, help="AdamW steps")
    p.add_argument("--batch-size", type=int, default=128,
                   help="minibatch, drawn with replacement (at most the number of training images)")
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--schedule", default="linear", choices=SCHEDULES, help="the schedule of the models it will guide")
    p.add_argument("--T", type=int, default=1000, help="diffusion steps T of the models it will guide")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="the U-Net whose encoder it is")
    p.add_argument("--eval-t", type=int, nargs="+", default=None, help="noise levels of the held-out accuracy "
                   "(default 1, T/4, T/2, 3T/4, T)")
    p.add_argument("--device", default=None, help="None: cuda when available")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of every draw")


def run_train_noisy_classifier(args: argparse.Namespace, command: str) -> dict:
    """Train a ``NoisyClassifier`` on the train split noised at t ~ U{1..T}, measure it on the held-out
    split at a few t, write the weights and the JSON card; returns the card."""
    for ok, why in ((args.steps >= 1, f"--steps must be at least 1, got {args.steps}"),
                    (args.batch_size >= 1, f"--batch-size must be at least 1, got {args.batch_size}"),
                    (args.lr > 0, f"--lr must be positive, got {args.lr}"),                    # NaN fails too
                    (args.weight_decay >= 0, f"--weight-decay must be at least 0, got {args.weight_decay}")):
        if not ok:
            raise ValueError(why)
    prepare_output(args.out, (".pt",))
    s = make_schedule(args.schedule, args.T)
    eval_t = args.eval_t or default_eval_t(args.T)
    if min(eval_t) < 1 or max(eval_t) > args.T:
        raise ValueError(f"--eval-t values must lie in 1..{args.T} (T), got {eval_t}")
    device = pick_device(args.device)
    x_train, y_train = load_images(args.data, root=args.data_root, train=True, pad_to_32=True)
    x_held, y_held = load_images(args.data, root=args.data_root, train=False, pad_to_32=True)
    if args.batch_size > len(x_train):
        raise ValueError(f"--batch-size {args.batch_size} is larger than the {len(x_train)} training digits")
    torch.manual_seed(args.seed)
    model = NoisyClassifier.from_preset(args.preset, num_classes=int(y_train.max()) + 1,
                                        in_channels=x_train.shape[1], image_size=x_train.shape[-1]).to(device)
    start = time.perf_counter()
    history = train_noisy_classifier(model, s.to(device), x_train.to(device), y_train.to(device), args.steps,
                                     args.batch_size, args.lr,
                                     torch.Generator(device).manual_seed(args.seed), args.weight_decay, progress=True)
    seconds = time.perf_counter() - start
    accuracy = {str(t): noisy_classifier_accuracy(model, s.to(device), x_held, y_held, t,
                                                  torch.Generator(device).manual_seed(args.seed + 1))
                for t in eval_t}
    tail = history[-min(100, len(history)):]
    card = {"data": args.data, "n_train": len(x_train), "n_heldout": len(x_held), "preset": args.preset,
            "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
            "seed": args.seed, "heldout_accuracy_at_t": accuracy, "final_loss": sum(tail) / len(tail),
            "device": str(device), "train_seconds": round(seconds, 1), "torch": torch.__version__,
            "command": command}
    card = save_noisy_classifier(model, s, args.out, card)
    print("held-out accuracy at t = " + ", ".join(f"{t}: {a:.3f}" for t, a in accuracy.items())
          + f" after {seconds:.0f} s; wrote {args.out} (sha256 {card['sha256'][:12]}…) and "
          f"{Path(args.out).with_suffix('.json')}")
    return card
