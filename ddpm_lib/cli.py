"""The command line: ``train`` (Algorithm 1), ``sample`` (Algorithm 2), ``evaluate`` (FID-MNIST), ``train-classifier``.

    python -m ddpm_lib train --data mnist-5k --preset tiny --steps 2000 --out-dir runs/mnist
    python -m ddpm_lib train --out-dir runs/mnist --steps 4000 --resume        # continue it, same settings
    torchrun --nproc_per_node 4 -m ddpm_lib train --data cifar10 --preset ddpm-cifar10 --out-dir runs/c10
    python -m ddpm_lib sample --checkpoint runs/mnist --n 64 --out grid.png    # EMA weights, PNG grid
    python -m ddpm_lib sample --checkpoint runs/mnist --sampler ddim --steps 50 --eta 0 --out ddim.png
    python -m ddpm_lib train --data two_moons --out-dir runs/moons              # toy MLP: about 25 s on a CPU
    python -m ddpm_lib sample --checkpoint runs/moons --n 1000 --out moons.png # a scatter plot (.pt: the points)
    python -m ddpm_lib evaluate --checkpoint runs/mnist --n 10000 --out results.json   # FID-MNIST and more
    python -m ddpm_lib train-classifier --data mnist-5k --out data/mnist_classifier.pt  # FID-MNIST's features
    python -m ddpm_lib export --checkpoint runs/mnist --out data/ddpm_mnist.pt  # fp16 θ_ema + JSON card
    python -m ddpm_lib bench --preset ddpm-cifar10 --batch-size 128              # images/s, TFLOP/s, memory
    python -m ddpm_lib train --num-classes 10 --out-dir runs/cfg                 # class-conditional (CFG) model
    python -m ddpm_lib sample --checkpoint runs/cfg --label all --cfg-scale 3    # one row per digit
    python -m ddpm_lib train-noisy-classifier --data mnist-5k --out data/noisy_classifier_mnist.pt
    python -m ddpm_lib sample --checkpoint runs/mnist --classifier data/noisy_classifier_mnist.pt --label 3 --scale 2
    python -m ddpm_lib evaluate-guidance --checkpoint runs/mnist --classifier data/noisy_classifier_mnist.pt \
        --scales 0 1 2 4 8 --n-per-class 100 --sampler ddim --steps 50 --out data/guidance_mnist.json
    python -m ddpm_lib train-ddgan --data mnist-5k --preset mnist --out-dir runs/ddgan   # DDGAN, T = 4
    python -m ddpm_lib trilemma --ddpm data/ddpm_mnist.pt --ddgan data/ddgan_mnist.pt   # quality, NFE, speed

A user error (bad flag value, missing or damaged checkpoint, data set not available offline, a loss
that became NaN) ends with a one-line message and exit status 1. Ctrl-C (or SIGTERM) ends with status 130;
``train`` and ``train-ddgan`` save a checkpoint first.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import torch

from .bench import bench, bench_rows_file
from .bench_table import format_table
from .checkpoint import BEFORE_RECORDED, checkpoint_to_resume, list_checkpoints, load_checkpoint, recorded_setting
from .classifier import save_classifier, train_classifier
from .cli_ddgan import DDGAN_COMMANDS, add_ddgan_commands, run_ddgan_command
from .cli_evaluate import add_evaluate_parser, run_evaluate
from .cli_help import HelpFormatter
from .cli_noisy_classifier import add_noisy_classifier_parser, run_train_noisy_classifier
from .data import IMAGE_SETS, load_images
from .devices import pick_device
from .export import export_ema_weights
from .files import prepare_output, write_json
from .guidance_eval import (add_evaluate_guidance_parser, add_guidance_arguments, add_sampler_arguments,
                            check_sampler_flags, run_evaluate_guidance, run_sample)
from .run_folder import RunLocked, Stopped, is_locked
from .sample_batches import kept_files
from .schedules import SCHEDULES
from .toy_data import TOY_SETS
from .train_config import KIND_DEFAULTS, TrainConfig
from .training import train
from .trilemma import add_trilemma_parser, run_trilemma
from .unet import PRESETS

CLASSIFIER_DATA = ("mnist-5k", "mnist")          # the data sets FID-MNIST's classifier knows
OUT_OF_MEMORY = {    # what to lower when a command runs out of GPU memory (torch says only what it asked for)
    "train": "→ train with a smaller --batch-size, more processes (torchrun) or a smaller --preset in a new "
             "--out-dir (a run resumes only with its own batch size); if a sample grid ran out, --resume with "
             "fewer --n-samples",
    "train-ddgan": "→ train with a smaller --batch-size or --preset in a new --out-dir (a run resumes only with "
                   "its own batch size); if a sample grid ran out, --resume with fewer --n-samples",
    "sample": "→ draw fewer samples at once (--n)", "sample-ddgan": "→ draw fewer samples at once (--n)",
    "evaluate": "→ a smaller --batch-size (the kept batches stay valid only for the same one)",
    "evaluate-guidance": "→ a smaller --batch-size", "trilemma": "→ a smaller --batch-size",
    "bench": "→ a smaller --batch-size or --sample-batch", "train-noisy-classifier": "→ a smaller --batch-size",
    "train-classifier": "→ a smaller --batch-size",
}
# Errors that every rank of a torchrun job raises alike (settings, files, a NaN loss that the ranks agree on,
# rank 0's lock refusal): only rank 0 prints them. Others (a rank's own failure, a lost peer) name their rank.
SAME_ON_EVERY_RANK = (ValueError, FloatingPointError, FileExistsError, FileNotFoundError, RunLocked)


def torchrun_rank() -> int:
    """This process's rank under torchrun (its RANK variable); 0 for a plain process."""
    return int(os.environ.get("RANK", "0"))


def add_run_arguments(p: argparse.ArgumentParser, d, kinds: dict) -> None:
    """The flags every training command shares (seed, output folder, logging, grids, checkpoints, device,
    resume, progress bar), with the defaults of the config ``d`` (``TrainConfig`` or ``DDGANConfig``) and
    its module's KIND_DEFAULTS ``kinds``."""
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the weights, data order and noise")
    p.add_argument("--out-dir", default=d.out_dir, help="folder for checkpoints, metrics.jsonl and samples")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics lines")
    p.add_argument("--sample-every", type=int, default=d.sample_every, help="steps between sample grids (0: none)")
    p.add_argument("--n-samples", type=int, help="samples per grid or scatter plot" + by_kind("n_samples", kinds))
    p.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints")
    p.add_argument("--keep", type=int, default=d.keep, help="checkpoints to keep")
    p.add_argument("--device", default=d.device, help="cuda, cuda:1, cpu, … (None: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out-dir with "
                   "the run's settings (its device too, when this machine has one); only steps, logging, grids, saving "
                   "and device may be given anew")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bar")


def config_from_args(config_class, args: argparse.Namespace, argv: list[str], kind: str):
    """The ``config_class`` (``TrainConfig`` or ``DDGANConfig``) of a training command of runs of ``kind``
    (``"diffusion"`` or ``"ddgan"``: a folder of the other kind is refused, naming its command). With ``--resume``
    every setting not on the command line ``argv`` (the progress bar aside) takes the resumed run's value
    (a device this machine lacks: this machine's default, said in one line),
    not the flag's default, so ``train --out-dir D --steps N --resume`` continues the run as it was set
    up; a flag that contradicts the run is refused by the trainer (``checkpoint.check_same_run``). The
    training parsers set ``allow_abbrev=False``, so every flag on ``argv`` is spelled out as ``--name``.
    ``train`` without ``--compile`` or ``--no-compile`` (a new run) compiles its step when it computes on a CUDA
    GPU: the default command is the fast one (TrainConfig itself, for the notebooks, keeps compile off)."""
    values = {f.name: getattr(args, f.name) for f in fields(config_class)}
    if args.resume:
        given = {token[2:].split("=")[0].replace("-", "_").removeprefix("no_") for token in argv
                 if token.startswith("--")}                                   # --no-compile gives compile
        try:
            found = checkpoint_to_resume(args.out_dir, resume=True, kind=kind)
        except FileNotFoundError:                       # none yet: is a run still writing its first one?
            if is_locked(args.out_dir):
                raise RunLocked(f"another training run is writing into {args.out_dir} and has saved no checkpoint "
                                f"yet: wait for it to end, then --resume") from None
            raise
        saved = load_checkpoint(found, mmap=True)["config"]                           # weights unread
        kept = {f.name: recorded_setting(saved, f) for f in fields(config_class)
                if (f.name in saved or f.name in BEFORE_RECORDED) and f.name not in given | {"resume", "progress"}}
        if kept.get("device") is not None:              # the run's --device: kept, if this machine has one
            try:
                pick_device(kept["device"])
            except ValueError:
                if torchrun_rank() == 0:
                    print(f"the run was trained with --device {kept['device']}, which this machine lacks: it "
                          f"continues on {pick_device(None)} (give --device to choose)")
                kept["device"] = None
        values.update(kept)
    if values.get("compile", False) is None:            # train's --compile not given: compiled on a CUDA GPU
        device = values["device"]
        values["compile"] = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    return config_class(**values)


def by_kind(name: str, table: dict = KIND_DEFAULTS) -> str:
    """Help text naming a training setting's defaults in ``table`` for images and for 2-D toy sets."""
    return f" (default: {table['images'][name]:g} for images, {table['toy'][name]:g} for 2-D toy sets)"


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--data", default=d.data, choices=IMAGE_SETS + TOY_SETS,
                   help="image set (mnist-5k works offline) or 2-D toy set (trained with the toy MLP)")
    p.add_argument("--data-root", default=d.data_root, help="cache folder of the torchvision sets (None: data/cache)")
    p.add_argument("--toy-n", type=int, default=d.toy_n, help="points drawn for a toy set")
    p.add_argument("--preset", default=d.preset, choices=list(PRESETS), help="U-Net preset for image data")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="noise schedule β_t")
    p.add_argument("--T", type=int, default=d.T, help="diffusion steps T")
    p.add_argument("--steps", type=int, help=f"optimizer steps in all (also when resuming){by_kind('steps')}")
    p.add_argument("--batch-size", type=int, help=f"global batch (split over DDP processes){by_kind('batch_size')}")
    p.add_argument("--lr", type=float, help=f"AdamW learning rate after warm-up{by_kind('lr')}")
    p.add_argument("--warmup", type=int, help=f"steps of linear learning-rate warm-up{by_kind('warmup')}")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="clip the gradient's global norm to this")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="decay of the weights' EMA")
    p.add_argument("--hflip", action="store_true", help="mirror each training image with probability 1/2, as "
                   "the DDPM paper's CIFAR-10 runs did (cifar10 and fashion_mnist only: a mirrored digit is none)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the forward (x_t, ε_θ, L_simple) and backward: on by default when the run "
                        "computes on a CUDA GPU (the fast training command), off elsewhere")
    add_run_arguments(p, d, KIND_DEFAULTS)
    p.add_argument("--num-classes", type=int, default=d.num_classes, help="0: unconditional; K: class-conditional "
                   "U-Net for classifier-free guidance (10 for MNIST)")
    p.add_argument("--p-uncond", type=float, default=d.p_uncond, help="CFG: probability of dropping a label")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lib",
                                     description="Train, sample and evaluate DDPMs (Ho et al. 2020).")
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train an ε-model (Algorithm 1); torchrun for several GPUs",
                                       formatter_class=HelpFormatter, allow_abbrev=False)
    _add_train_arguments(train_parser)
    sample_parser = commands.add_parser("sample", help="draw samples with the EMA weights (Algorithm 2), guided or not",
                                        formatter_class=HelpFormatter)
    sample_parser.add_argument("--checkpoint", required=True,
                               help="a ckpt_*.pt file, a run folder (latest) or an exported weights file")
    sample_parser.add_argument("--n", type=int, default=64, help="number of samples (of each class with --label all)")
    sample_parser.add_argument("--out", default="samples.png", help="PNG grid for images; .pt saves the tensor")
    sample_parser.add_argument("--seed", type=int, default=0, help="seed of x_T and the sampler's noise")
    sample_parser.add_argument("--device", default=None, help="None: cuda when available")
    add_sampler_arguments(sample_parser)
    add_guidance_arguments(sample_parser)
    add_evaluate_parser(commands)
    classifier_parser = commands.add_parser(
        "train-classifier", help="train the MNIST classifier behind FID-MNIST (weights + JSON card)",
        formatter_class=HelpFormatter)
    classifier_parser.add_argument("--data", default="mnist-5k", choices=CLASSIFIER_DATA,
                                   help="train split for training; held-out/test split for the accuracy")
    classifier_parser.add_argument("--data-root", default=None,
                                   help="cache folder of torchvision's MNIST (None: data/cache)")
    classifier_parser.add_argument("--out", default="data/mnist_classifier.pt",
                                   help="weights file; the JSON card goes beside it (.json)")
    classifier_parser.add_argument("--epochs", type=int, default=12, help="passes over the training digits")
    classifier_parser.add_argument("--batch-size", type=int, default=64, help="minibatch size")
    classifier_parser.add_argument("--lr", type=float, default=3e-3, help="AdamW's peak learning rate")
    classifier_parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's weight decay")
    classifier_parser.add_argument("--max-shift", type=int, default=2, help="random shifts of up to this many pixels")
    classifier_parser.add_argument("--seed", type=int, default=0, help="seed of weights, data order and shifts")
    classifier_parser.add_argument("--device", default="cpu", help="cpu, cuda, …")
    classifier_parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (reproducible timing)")
    export_parser = commands.add_parser(
        "export", help="write θ_ema in half precision with a JSON card (config, sha256, command) for shipping",
        formatter_class=HelpFormatter)
    export_parser.add_argument("--checkpoint", required=True, help="a ckpt_*.pt file or a run folder (latest)")
    export_parser.add_argument("--out", required=True, help="weights file, e.g. data/ddpm_mnist.pt (card: .json)")
    export_parser.add_argument("--training-command", default=None,
                               help="the training command to record in the card (default: this export command)")
    from .bench import BACKENDS, ROW_KEYS
    bench_parser = commands.add_parser(
        "bench", help="training and sampling images/s, TFLOP/s and peak memory of a U-Net preset, eager and "
                      "compiled, side by side with diffusers' UNet2DModel of the same architecture",
        formatter_class=HelpFormatter)
    bench_parser.add_argument("--preset", default="ddpm-cifar10", choices=list(PRESETS), help="U-Net preset")
    bench_parser.add_argument("--batch-size", type=int, default=128, help="training batch")
    bench_parser.add_argument("--sample-batch", type=int, default=256, help="batch of one sampling network evaluation")
    bench_parser.add_argument("--iters", type=int, default=20, help="timed steps (after --warmup untimed ones)")
    bench_parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, caches)")
    bench_parser.add_argument("--device", default=None, help="None: cuda when available")
    bench_parser.add_argument("--rows", nargs="+", default=list(ROW_KEYS), choices=list(ROW_KEYS),
                              help="the rows to measure (diffusers' rows need the diffusers package)")
    bench_parser.add_argument("--ddim-steps", type=int, default=50, help="steps of the timed whole DDIM sampling")
    bench_parser.add_argument("--compile-backend", default="inductor", choices=BACKENDS,
                              help="torch.compile backend of the compiled rows ('eager': trace only, a quick smoke test)")
    bench_parser.add_argument("--autotune", action="store_true",
                              help="CUDA-graph sampling rows: Inductor's max-autotune mode (minutes more compiling)")
    bench_parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    add_noisy_classifier_parser(commands)
    add_evaluate_guidance_parser(commands)
    add_ddgan_commands(commands)
    add_trilemma_parser(commands)
    return parser


def run_train_classifier(args: argparse.Namespace, command: str) -> dict:
    """Train the FID-MNIST classifier on the train split, measure it on the held-out split, and write the
    weights and their JSON card (config, accuracy, sha256, ``command``); returns the card."""
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    prepare_output(args.out, (".pt",))
    x_train, y_train = load_images(args.data, root=args.data_root, train=True, pad_to_32=True)
    x_heldout, y_heldout = load_images(args.data, root=args.data_root, train=False, pad_to_32=True)
    threads, start = torch.get_num_threads(), time.perf_counter()
    torch.set_num_threads(args.threads)
    try:
        model, accuracy = train_classifier(x_train, y_train, x_heldout, y_heldout, epochs=args.epochs,
                                           batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                                           max_shift=args.max_shift, seed=args.seed, device=args.device,
                                           progress=True)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    card = {"data": args.data, "n_train": len(x_train), "n_heldout": len(x_heldout), "heldout_accuracy": accuracy,
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
            "max_shift": args.max_shift, "seed": args.seed,
            "device": args.device, "threads": args.threads, "train_seconds": round(seconds, 1),
            "torch": torch.__version__, "command": command}
    card = save_classifier(model, args.out, card)
    print(f"held-out accuracy {accuracy:.4f} on {len(x_heldout)} digits after {seconds:.0f} s; "
          f"wrote {args.out} (sha256 {card['sha256'][:12]}…) and {Path(args.out).with_suffix('.json')}")
    return card


def stopped_line(args: argparse.Namespace, reason: str = "") -> str:
    """What a command stopped before its output was written says, naming any samples or checkpoint it keeps
    (``reason``: the stop's own words, e.g. a trainer's second Ctrl-C)."""
    if args.command in ("train", "train-ddgan"):         # stopped before its first save, or by a second Ctrl-C
        kept = list_checkpoints(args.out_dir)
        return (f"interrupted{' (' + reason + ')' if reason else ''}: {args.command} stopped; " +
                (f"the latest checkpoint is {kept[-1]} (--resume continues from it)" if kept
                 else f"no checkpoint is in {args.out_dir} yet"))
    kept = kept_files(args.out) if args.command in ("evaluate", "trilemma", "evaluate-guidance") else []
    if kept:
        return (f"interrupted: the samples kept in {', '.join(map(str, kept))} stay there; the same command "
                f"continues from them")
    if args.command == "bench" and args.out and bench_rows_file(args.out).exists():
        return (f"interrupted: the rows measured so far are kept in {bench_rows_file(args.out)}; the same command "
                f"measures only the others")
    return f"interrupted: {args.command} stopped before finishing (it writes its output at the end)"


def _interrupt(signum, frame):
    """SIGTERM ends a command as Ctrl-C does, once: the copies that make or torchrun pass on to a process its
    process group has already signalled are ignored, so they cannot cut short the stop's own message."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    # SIGTERM (a scheduler's stop, `kill`) ends a command as Ctrl-C does; the trainers put their own handler
    # on top while they train (save, then stop). Handlers can be set from the main thread only.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        if hasattr(args, "sampler"):
            check_sampler_flags(args)
        if getattr(args, "device", None):
            pick_device(args.device, "--device")
        if args.command in DDGAN_COMMANDS:
            run_ddgan_command(args, argv)
        elif args.command == "train":
            train(config_from_args(TrainConfig, args, argv, kind="diffusion"))
        elif args.command == "sample":
            run_sample(args)
        elif args.command == "evaluate":
            run_evaluate(args)
        elif args.command == "bench":
            from .bench import ROW_KEYS
            if min(args.batch_size, args.sample_batch, args.iters, args.ddim_steps) < 1 or args.warmup < 0:
                raise ValueError(f"--batch-size, --sample-batch, --iters and --ddim-steps must be at least 1 and "
                                 f"--warmup at least 0, got {args.batch_size}, {args.sample_batch}, {args.iters}, "
                                 f"{args.ddim_steps} and {args.warmup}")
            if args.out:
                prepare_output(args.out, (".json",))
            figures = bench(args.preset, args.batch_size, args.sample_batch, args.iters, args.warmup, args.device,
                            rows=[ROW_KEYS[key] for key in args.rows], ddim_steps=args.ddim_steps,
                            compile_backend=args.compile_backend, autotune=args.autotune,
                            keep=bench_rows_file(args.out) if args.out else None)
            print(format_table(figures))
            if args.out:
                write_json(figures, args.out)
                bench_rows_file(args.out).unlink(missing_ok=True)
        elif args.command == "export":
            prepare_output(args.out, (".pt",))
            card = export_ema_weights(args.checkpoint, args.out, command=args.training_command
                                      or shlex.join(["python", "-m", "ddpm_lib", *argv]))
            print(f"wrote {args.out} (step {card['step']}, sha256 {card['sha256'][:12]}…) and its card "
                  f"{Path(args.out).with_suffix('.json')}")
        elif args.command == "train-noisy-classifier":
            run_train_noisy_classifier(args, command=shlex.join(["python", "-m", "ddpm_lib", *argv]))
        elif args.command == "trilemma":
            run_trilemma(args)
        elif args.command == "evaluate-guidance":
            run_evaluate_guidance(args)
        else:
            run_train_classifier(args, command=shlex.join(["python", "-m", "ddpm_lib", *argv]))
    except KeyboardInterrupt as exc:
        if not isinstance(exc, Stopped) and torchrun_rank() == 0:   # Stopped: saved, and said so
            trains = args.command in ("train", "train-ddgan")
            print(stopped_line(args, str(exc)) if trains else str(exc) or stopped_line(args), file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, FloatingPointError) as exc:
        rank = torchrun_rank()                           # under torchrun every rank gets here
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(exc):   # GPU or CPU
            exc = f"{str(exc).strip().splitlines()[0]} {OUT_OF_MEMORY.get(args.command, '')}".strip()
        if rank == 0 or not isinstance(exc, SAME_ON_EVERY_RANK):
            print(f"error: {exc}" if rank == 0 else f"error (rank {rank}): {exc}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0
