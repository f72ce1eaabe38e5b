"""``python -m ddpm_lib evaluate``: FID-MNIST, confidence and class spread of a model's samples
(registered by ``cli.build_parser``, run by ``cli.main``).

    python -m ddpm_lib evaluate --checkpoint runs/mnist --n 10000 --out results.json
    python -m ddpm_lib evaluate --checkpoint data/ddpm_mnist.pt --sampler ddim --steps 50 --n 10000 --bf16 --compile

It draws ``--n`` samples with θ_ema (Algorithm 2, or DDIM), compares the classifier features of the
samples with those of held-out real digits (``metrics.frechet_distance``), and puts beside them the
floor: as many real training digits against the same held-out digits.
"""
from __future__ import annotations

import argparse

import torch

from .checkpoint import check_files
from .classifier import classifier_path, load_classifier
from .cli_help import HelpFormatter
from .devices import pick_device
from .export import load_sampling_model
from .fast_sampling import compiled_eps_model
from .files import file_sha256, prepare_output, recorded_path, write_json
from .guidance_eval import add_sampler_arguments, describe_sampler, draw_samples, guided_model, mnist_digits
from .metrics import METRIC, frechet_distance, image_statistics
from .sample_batches import draw_batches, kept_count, kept_until_written, machine_name, warm_up


def add_evaluate_parser(commands) -> None:
    """Add ``evaluate`` to the ``add_subparsers()`` object."""
    p = commands.add_parser(
        "evaluate", help=f"FID-MNIST, confidence and class spread of EMA samples: {METRIC}",
        description=f"Draw --n samples with θ_ema (Algorithm 2; --sampler ddim for DDIM, --weights raw for a "
                    f"checkpoint's raw θ) and measure them against held-out real digits "
                    f"(mnist-5k's 1,000 held-out digits, or the MNIST test set for a model of 'mnist'): {METRIC}. "
                    f"Also the classifier's mean confidence and the predicted-class histogram with its entropy, "
                    f"for the samples and for the real digits. Prints a table and writes JSON. A class-conditional "
                    f"model is sampled unconditionally (its null label): evaluate-guidance measures it guided. "
                    f"Finished batches are kept in OUT.partial.pt until the end: after Ctrl-C or SIGTERM the same "
                    f"command continues from them.",
        formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="a ckpt_*.pt file, a run folder (latest) or an exported weights file")
    p.add_argument("--n", type=int, default=10_000,
                   help="number of samples (a GPU's job; on a CPU start with a few hundred)")
    p.add_argument("--classifier", default=None, help="the MNIST classifier whose features FID-MNIST uses "
                   "(default: the course's data/mnist_classifier.pt)")
    p.add_argument("--batch-size", type=int, default=500, help="samples drawn (and classified) at once")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and the sampler's noise")
    p.add_argument("--device", default=None, help="None: cuda when available")
    p.add_argument("--out", default="results.json", help="JSON file for the results")
    p.add_argument("--weights", default="ema", choices=("ema", "raw"),
                   help="θ_ema (what the course samples with) or a checkpoint's raw θ, to compare")
    p.add_argument("--bf16", action="store_true",
                   help="run the network in bf16 autocast while sampling (CUDA only; about 2× faster)")
    p.add_argument("--compile", action="store_true",
                   help="sample with the network compiled for the batch shape (a GPU replays it as a CUDA graph; "
                        "compiling takes a while first: worth it for many batches)")
    add_sampler_arguments(p)


def real_digits(info: dict):
    """``(held-out digits, training digits)`` of the data a model was trained on, 32×32 in [−1, 1]
    (mnist-5k: its 1,000 held-out and 4,000 training digits; mnist: the test and training sets)."""
    return mnist_digits(info, train=False)[0], mnist_digits(info, train=True)[0]


def run_evaluate(args: argparse.Namespace) -> dict:
    """Sample ``args.n`` digits with θ_ema (or θ: ``--weights raw``), compare them with held-out real digits,
    print and write the results."""
    if args.n < 2 or args.batch_size < 1:
        raise ValueError(f"--n must be at least 2 (a covariance needs two samples) and --batch-size at least 1, "
                         f"got {args.n} and {args.batch_size}")
    args.classifier = classifier_path(args.classifier)
    check_files({"--checkpoint": args.checkpoint, "--classifier": args.classifier}, args.out)
    prepare_output(args.out, (".json",))
    device = pick_device(args.device)
    classifier = load_classifier(args.classifier, device)
    if args.bf16 and device.type != "cuda":
        raise ValueError("--bf16 needs a CUDA device (on a CPU the sampler runs in float32)")
    ema_model, schedule, ckpt = load_sampling_model(args.checkpoint, device, weights=args.weights)
    ema_model = guided_model(ema_model, ckpt, None)[0]     # a class-conditional model: its null label (unconditional)
    compile_seconds, batch_shape = None, (min(args.batch_size, args.n), *ckpt["example_shape"])
    if args.compile and kept_count(args.out) < args.n:    # one static batch shape; a smaller last one is padded
        ema_model = compiled_eps_model(ema_model, batch_shape, device, amp_dtype=torch.bfloat16 if args.bf16 else None)
        compile_seconds = round(ema_model.compile_seconds, 1)
    path = ckpt["path"]
    heldout, train_digits = real_digits(ckpt)
    schedule = schedule.to(device)
    generator = torch.Generator(device).manual_seed(args.seed)

    def draw(start: int, b: int) -> torch.Tensor:        # a batch can take minutes: it has a bar of its own
        # A compiled network runs under its own autocast (amp_dtype above); an outer one would recompile it.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16 and not args.compile):
            x0 = draw_samples(ema_model, schedule, (b, *ckpt["example_shape"]), generator, args, progress=True)
        return x0.float().clamp(-1, 1)

    key = {"checkpoint": recorded_path(path), "checkpoint_sha256": file_sha256(path), "weights": args.weights,
           "sampler": describe_sampler(args, schedule.T), "n": args.n, "batch_size": args.batch_size,
           "seed": args.seed, "bf16": args.bf16, "compiled": args.compile, "machine": machine_name(device),
           "torch": str(torch.__version__)}
    if not args.compile:            # kernels load on their first launch: one untimed call (compiling warmed it up)
        warm_up(ema_model, batch_shape, device, args.bf16)
    samples, sampling_seconds, _ = draw_batches(draw, args.n, args.batch_size, generator, args.out, key)
    with kept_until_written(args.out, args.n):         # a Ctrl-C from here on keeps the samples
        fake = image_statistics(samples, classifier, args.batch_size)
        real = image_statistics(heldout, classifier, args.batch_size)
        # The floor: FID-MNIST of as many real training digits as samples (a random subset; all of them when
        # there are fewer), which a model drawing exactly the data distribution would score, up to noise.
        pick = torch.randperm(len(train_digits), generator=torch.Generator().manual_seed(args.seed))[:args.n]
        floor = image_statistics(train_digits[pick], classifier, args.batch_size)

        def summary(stats: dict) -> dict:
            return {k: stats[k] for k in ("n", "confidence", "class_counts", "class_entropy")}

        results = {
            "metric": METRIC,
            "checkpoint": recorded_path(path), "step": ckpt["step"], "data": ckpt["config"]["data"], "T": schedule.T,
            "sampler": f"{describe_sampler(args, schedule.T)}, {'θ_ema' if args.weights == 'ema' else 'raw θ'}, "
                       f"samples clamped to [-1, 1]", "weights": args.weights,
            "precision": "bf16 autocast" if args.bf16 else "float32",
            "compiled": args.compile, "compile_seconds": compile_seconds,
            "n": args.n, "seed": args.seed, "device": str(device), "sampling_seconds": round(sampling_seconds, 2),
            "classifier": recorded_path(args.classifier), "classifier_sha256": file_sha256(args.classifier),
            "reference": {"data": ckpt["config"]["data"], "split": "held-out (load_images(..., train=False))",
                          "n": real["n"]},
            "samples": {"fid_mnist": frechet_distance(fake["mu"], fake["sigma"], real["mu"], real["sigma"]),
                        **summary(fake)},
            "real_heldout": {**summary(real),
                             "fid_mnist_train_vs_heldout": frechet_distance(floor["mu"], floor["sigma"],
                                                                             real["mu"], real["sigma"]),
                             "n_train_digits": floor["n"]},
            "max_class_entropy": fake["max_class_entropy"],
        }
        write_json(results, args.out)
    print_results(results)
    print(f"wrote {args.out}")
    return results


def print_results(r: dict) -> None:
    s, h = r["samples"], r["real_heldout"]
    ref = r["reference"]
    weights = "θ_ema" if r.get("weights", "ema") == "ema" else "raw θ"
    print(f"{r['metric']}\n{r['n']} samples ({weights} after step {r['step']}, T = {r['T']}) "
          f"vs {ref['n']} held-out {ref['data']} digits")
    print(f"{'':24}{'samples':>12}{'held-out real':>16}")
    print(f"{'FID-MNIST':24}{s['fid_mnist']:12.3f}{h['fid_mnist_train_vs_heldout']:16.3f}"
          f"   (real: {h['n_train_digits']} training digits vs held-out: the floor)")
    print(f"{'mean confidence':24}{s['confidence']:12.4f}{h['confidence']:16.4f}")
    print(f"{'class entropy (nats)':24}{s['class_entropy']:12.4f}{h['class_entropy']:16.4f}"
          f"   (max ln 10 = {r['max_class_entropy']:.4f})")
    print(f"{'predicted classes 0..9':24}{' '.join(map(str, s['class_counts']))}")
    print(f"{'':24}{' '.join(map(str, h['class_counts']))}   (held-out real)")
