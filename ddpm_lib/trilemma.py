"""The generative learning trilemma measured on one data set: quality, mode coverage and speed of DDPM,
DDIM and DDGAN side by side, in the spirit of Table 1 of Xiao, Kreis & Vahdat (ICLR 2022).

    python -m ddpm_lib trilemma --ddpm data/ddpm_mnist.pt --ddgan data/ddgan_mnist.pt --n 5000 \
        --out data/results/trilemma_mnist.json

Each row draws ``n`` digits with one sampler and reports
- FID-MNIST against the held-out digits (quality; ``metrics.py``, not Inception FID),
- the entropy of the predicted-class histogram (mode coverage; ln 10 ≈ 2.303 when every digit is drawn
  equally often) and the classifier's mean confidence,
- the network evaluations per sample, *counted* by wrapping the network (not taken from the sampler's
  name), and the wall-clock seconds per 1,000 samples (each batch timed until it is on the CPU, which
  waits for the GPU; on a GPU each network is called once before, untimed: kernels load on first launch).

The JSON names the two models and the classifier with their sha256; a progress bar shows each row's samples.
Each row keeps its samples in ``<out>.row<i>.partial.pt`` as they come (``sample_batches.py``): a command
stopped by Ctrl-C or a time limit continues from them when run again, and they go once the table is written.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checkpoint import check_files
from .classifier import classifier_path, load_classifier
from .cli_help import HelpFormatter
from .data import load_images
from .ddgan import sample_ddgan
from .ddgan_export import load_ddgan_generator
from .ddim import sample_ddim
from .devices import pick_device
from .export import load_sampling_model
from .files import file_sha256, prepare_output, recorded_path, write_json
from .metrics import METRIC, frechet_distance, image_statistics
from .sample_batches import draw_batches, kept_on_stop, machine_name, remove_kept, row_output, warm_up
from .sampling import sample_ddpm

Draw = Callable[[int, torch.Generator], torch.Tensor]   # (batch, generator) → samples in [−1, 1]


class CallCounter(nn.Module):
    """Wraps a network and counts its forward calls (each call evaluates the whole batch once)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)


def measure_sampler(draw: Draw, counter: CallCounter, n: int, batch_size: int, device, seed: int = 0,
                    desc: str | None = None, out: str | Path | None = None, key: dict | None = None):
    """``(samples, seconds, nfe)``: ``n`` samples clamped to [−1, 1], drawn in batches of ``batch_size`` on
    ``device`` from one generator seeded with ``seed``; the seconds spent drawing them; the network
    evaluations per sample (calls per batch, which must be the same for every batch). ``out`` and ``key``:
    keep the batches in ``<out>.partial.pt`` as they come, and continue from it (``draw_batches``).
    ``desc``: show a progress bar over the samples with this name."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be at least 1, got {n} and {batch_size}")
    device = torch.device(device)
    generator = torch.Generator(device).manual_seed(seed)
    drawn = draw_batches(lambda start, b: draw(b, generator).clamp(-1, 1), n, batch_size, generator, out, key,
                         count_calls=lambda: counter.calls, desc=desc)
    if len(set(drawn.calls)) != 1:
        raise RuntimeError(f"the sampler made a different number of network calls per batch: "
                           f"{sorted(set(drawn.calls))}")
    return drawn.samples, drawn.seconds, drawn.calls[0]


def ddpm_draw(eps_model: nn.Module, s, example_shape: tuple, progress: bool = False) -> Draw:
    """Algorithm 2 over all T steps (one network evaluation per step); ``progress``: a bar over the steps."""
    return lambda b, g: sample_ddpm(eps_model, s, (b, *example_shape), generator=g, progress=progress)


def ddim_draw(eps_model: nn.Module, s, example_shape: tuple, steps: int, eta: float = 0.0,
              progress: bool = False) -> Draw:
    """DDIM on a uniform grid of ``steps`` steps (one network evaluation per step)."""
    return lambda b, g: sample_ddim(eps_model, s, (b, *example_shape), steps=steps, eta=eta, generator=g,
                                    progress=progress)


def _in_bf16(draw: Draw) -> Draw:
    def bf16_draw(b, g):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return draw(b, g).float()
    return bf16_draw


def trilemma_rows(samplers: dict[str, tuple[Draw, CallCounter]], real: torch.Tensor, classifier: nn.Module,
                  n: int, batch_size: int, device, seed: int = 0, progress: bool = False,
                  out: str | Path | None = None, key: dict | None = None) -> list[dict]:
    """One row per sampler (name → (draw, the counter wrapping its network)): FID-MNIST against
    ``real``, class entropy, confidence, network evaluations per sample and seconds per 1,000 samples.
    A line is printed as each row is done, and with ``progress`` a bar shows each row's samples: the slow
    rows take minutes on a CPU. ``out``: each row keeps its samples in ``partial_path(row_output(out, i))``
    (with ``key`` and the row's name as its settings), so that a stopped command continues where it was."""
    ref = image_statistics(real, classifier, batch_size)
    rows = []
    for i, (name, (draw, counter)) in enumerate(samplers.items()):
        row_out = row_output(out, i) if out is not None else None
        samples, seconds, nfe = measure_sampler(draw, counter, n, batch_size, device, seed,
                                                desc=name if progress else None, out=row_out,
                                                key={**(key or {}), "row": name})
        with kept_on_stop(row_out, n) if row_out else contextlib.nullcontext():
            stats = image_statistics(samples, classifier, batch_size)
        rows.append({"sampler": name, "nfe": nfe, "n": n,
                     "fid_mnist": frechet_distance(stats["mu"], stats["sigma"], ref["mu"], ref["sigma"]),
                     "class_entropy": stats["class_entropy"], "confidence": stats["confidence"],
                     "seconds_per_1000": 1000 * seconds / n})
        print(f"{name}: {n} samples in {seconds:.1f} s, FID-MNIST {rows[-1]['fid_mnist']:.2f}", flush=True)
    return rows


def format_rows(rows: list[dict]) -> str:
    """The table as text: one line per sampler."""
    lines = [f"{'sampler':<22}{'NFE':>6}{'FID-MNIST':>11}{'class entropy':>15}{'confidence':>12}{'s / 1000':>10}"]
    for r in rows:
        lines.append(f"{r['sampler']:<22}{r['nfe']:>6}{r['fid_mnist']:>11.2f}{r['class_entropy']:>15.3f}"
                     f"{r['confidence']:>12.3f}{r['seconds_per_1000']:>10.2f}")
    lines.append(f"(class entropy of a uniform spread over the ten digits: ln 10 = {math.log(10):.3f})")
    return "\n".join(lines)


def add_trilemma_parser(commands) -> None:
    """The ``trilemma`` subcommand of ``python -m ddpm_lib``."""
    p = commands.add_parser("trilemma", help="FID-MNIST, NFE and seconds per 1,000 samples of DDPM, DDIM and DDGAN",
                            description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--ddpm", required=True, help="the ε-model: exported weights, checkpoint or run folder")
    p.add_argument("--ddgan", required=True, help="the DDGAN generator: exported file, checkpoint or run folder")
    p.add_argument("--ddim-steps", type=int, nargs="+", default=[50, 4], help="DDIM rows (η = 0)")
    p.add_argument("--n", type=int, default=5000, help="samples per row")
    p.add_argument("--batch-size", type=int, default=500, help="samples drawn at once")
    p.add_argument("--classifier", default=None,
                   help="the classifier behind FID-MNIST (default: the course's data/mnist_classifier.pt)")
    p.add_argument("--seed", type=int, default=0, help="seed of every row's draws")
    p.add_argument("--device", default=None, help="None: cuda when available")
    p.add_argument("--bf16", action="store_true", help="every row's network in bf16 autocast (CUDA only)")
    p.add_argument("--out", default="trilemma.json", help="JSON file for the table")


def run_trilemma(args) -> dict:
    """Measure the rows and write the JSON table (the command's work)."""
    if args.n < 2 or args.batch_size < 1:
        raise ValueError(f"--n must be at least 2 (a covariance needs two samples) and --batch-size at least 1, "
                         f"got {args.n} and {args.batch_size}")
    args.classifier = classifier_path(args.classifier)
    check_files({"--ddpm": args.ddpm, "--ddgan": args.ddgan, "--classifier": args.classifier}, args.out)
    prepare_output(args.out, (".json",))
    device = pick_device(args.device)
    if args.bf16 and device.type != "cuda":
        raise ValueError("--bf16 needs a CUDA device (on a CPU every row runs in float32)")
    eps_model, s, info = load_sampling_model(args.ddpm, device)
    G, s_gan, gan_info = load_ddgan_generator(args.ddgan, device)
    s_gan = s_gan.to(device)
    shape = tuple(info["example_shape"])
    if tuple(gan_info["example_shape"]) != shape:
        raise ValueError(f"the DDPM draws {shape} images and the DDGAN {tuple(gan_info['example_shape'])}: "
                         f"compare models of the same data")
    bad = [k for k in args.ddim_steps if not 1 <= k <= s.T]
    if bad or len(set(args.ddim_steps)) != len(args.ddim_steps):
        raise ValueError(f"--ddim-steps must be distinct whole numbers in 1..T = 1..{s.T}, got {args.ddim_steps}")
    eps_counter, g_counter = CallCounter(eps_model), CallCounter(G)
    s = s.to(device)
    samplers = {f"DDPM ({s.T} steps)": (ddpm_draw(eps_counter, s, shape, progress=True), eps_counter)}
    for steps in args.ddim_steps:
        samplers[f"DDIM ({steps} steps, η = 0)"] = (ddim_draw(eps_counter, s, shape, steps, progress=True),
                                                     eps_counter)
    samplers[f"DDGAN ({s_gan.T} steps)"] = (
        lambda b, g: sample_ddgan(g_counter, s_gan, (b, *shape), z_dim=G.z_dim, generator=g), g_counter)
    real, _ = load_images(info["config"].get("data", "mnist-5k"), train=False, pad_to_32=True)
    if args.bf16:                          # the networks in bf16; the classifier's features stay float32
        samplers = {name: (_in_bf16(draw), counter) for name, (draw, counter) in samplers.items()}
    batch_shape = (min(args.batch_size, args.n), *shape)          # kernels load on first launch: not in a row
    warm_up(eps_model, batch_shape, device, args.bf16)
    warm_up(lambda x, t: G(x, torch.zeros(len(x), G.z_dim, device=device), t), batch_shape, device, args.bf16)
    models = {"ddpm": recorded_path(info["path"]), "ddpm_sha256": file_sha256(info["path"]),
              "ddgan": recorded_path(gan_info["source"]), "ddgan_sha256": file_sha256(gan_info["source"])}
    key = {**models, "n": args.n, "batch_size": args.batch_size, "seed": args.seed, "bf16": args.bf16,
           "machine": machine_name(device), "torch": str(torch.__version__)}     # what decides the samples
    rows = trilemma_rows(samplers, real, load_classifier(args.classifier, device), args.n, args.batch_size,
                         device, args.seed, progress=True, out=args.out, key=key)
    table = {"metric": METRIC, "n": args.n, "device": machine_name(device), **models,
             "classifier": recorded_path(args.classifier), "classifier_sha256": file_sha256(args.classifier),
             "reference": {"n": len(real), "split": "held-out"}, "seed": args.seed,
             "precision": "bf16 autocast" if args.bf16 else "float32", "rows": rows}
    write_json(table, args.out)
    remove_kept(args.out)                              # the table is written: the kept samples can go
    print(format_rows(rows))
    print(f"wrote {args.out}")
    return table
