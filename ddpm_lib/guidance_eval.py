"""Guidance from the command line: guided ``sample`` and ``evaluate-guidance`` (the classifier that guides
is trained by ``train-noisy-classifier``, in ``cli_noisy_classifier.py``).

    python -m ddpm_lib sample --checkpoint runs/cfg --label 3 --cfg-scale 3 --out three.png         # CFG
    python -m ddpm_lib sample --checkpoint runs/mnist --classifier data/noisy_classifier_mnist.pt \\
        --label all --scale 2 --sampler ddim --steps 50 --out guided.png                 # classifier guidance
    python -m ddpm_lib train-noisy-classifier --data mnist-5k --out data/noisy_classifier_mnist.pt
    python -m ddpm_lib evaluate-guidance --checkpoint runs/mnist --classifier data/noisy_classifier_mnist.pt \\
        --scales 0 1 2 4 8 --n-per-class 100 --sampler ddim --steps 50 --out data/guidance_mnist.json

Two kinds of guidance (``guidance.py`` holds the math):
- classifier guidance of an ε-model with a noise-aware classifier p_φ(y | x_t, t) (``--classifier``,
  ``--scale`` s): every step is tilted by s·∇_{x_t} log p_φ(y | x_t) (``classifier_grad_fn`` as the
  samplers' ``cond_fn``). A class-conditional model guided this way runs with its null label (ε_u).
- classifier-free guidance of a class-conditional model (``--cfg-scale`` w): ε̃ = ε_u + w·(ε_c − ε_u).

``evaluate-guidance`` measures the trade-off of the scale: for each scale it draws ``--n-per-class``
samples of every digit from the same x_T (common random numbers: only the scale changes) and reports
the accuracy and confidence of the SEPARATE clean classifier of FID-MNIST (``classifier.py``) on the
target labels, the diversity within a digit (mean pairwise distance of FID-MNIST features, with the samples
grouped by the digit asked for and by the digit the clean classifier sees), the within-class FID-MNIST where
enough digits exist, and the overall FID-MNIST.
Each scale keeps its samples in ``<out>.row<i>.partial.pt`` as they come (``sample_batches.py``): a stopped
command continues from them when run again, and they go once the results are written.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

from .checkpoint import check_files
from .classifier import classifier_path, load_classifier
from .cli_help import HelpFormatter
from .data import load_images
from .ddim import GRIDS, sample_ddim
from .devices import pick_device
from .export import load_sampling_model
from .files import file_sha256, prepare_output, recorded_path, write_json
from .guidance import cfg_eps_model, classifier_grad_fn
from .metrics import METRIC, classifier_outputs, frechet_distance, gaussian_stats
from .noisy_classifier import NoisyClassifier, load_noisy_classifier
from .sample_batches import draw_batches, kept_on_stop, machine_name, remove_kept, row_output
from .sampling import sample_ddpm
from .training import write_samples

MNIST_DATA = ("mnist-5k", "mnist")
DIVERSITY = ("mean pairwise Euclidean distance between the FID-MNIST features of two samples of the same "
             "class, averaged over the classes (higher: more diverse); 'diversity' groups samples by the digit "
             "asked for (with low accuracy it mostly measures how many different digits a group holds), "
             "'diversity_judged' by the digit the clean classifier sees, over the digits it sees at least twice")


# ----------------------------------------------------------------------------- samplers and flags

DDIM_DEFAULTS = {"steps": 50, "eta": 0.0, "grid": "uniform"}


def add_sampler_arguments(p: argparse.ArgumentParser) -> None:
    """``--sampler`` and DDIM's ``--steps``, ``--eta``, ``--grid``; ``check_sampler_flags`` completes them."""
    p.add_argument("--sampler", default="ddpm", choices=("ddpm", "ddim"),
                   help="ddpm: Algorithm 2 over all T steps; ddim: Song et al. 2021 on a respaced grid")
    p.add_argument("--steps", type=int, default=argparse.SUPPRESS, help="DDIM: network evaluations, 1..T (50)")
    p.add_argument("--eta", type=float, default=argparse.SUPPRESS,
                   help="DDIM: η, 0 deterministic, 1 DDPM-like noise (0)")
    p.add_argument("--grid", default=argparse.SUPPRESS, choices=GRIDS, help="DDIM: spacing of the respaced steps "
                   "(uniform)")


def check_sampler_flags(args: argparse.Namespace) -> None:
    """Refuse DDIM's flags without ``--sampler ddim`` (DDPM would ignore them and take all T steps), and
    give the ones not on the command line their defaults (``DDIM_DEFAULTS``)."""
    given = [f"--{name}" for name in DDIM_DEFAULTS if hasattr(args, name)]
    if args.sampler == "ddpm" and given:
        raise ValueError(f"{', '.join(given)} set the DDIM sampler: add --sampler ddim (DDPM takes all T steps)")
    for name, value in DDIM_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)


def draw_samples(model, schedule, shape, generator, args: argparse.Namespace, progress: bool = False,
                 cond_fn=None):
    """x_0 from ``model`` with the sampler the flags choose (``--sampler``, ``--steps``, ``--eta``,
    ``--grid``), guided by ``cond_fn`` (s·∇ log p_φ(y | x_t)) when given."""
    if args.sampler == "ddim":
        return sample_ddim(model, schedule, shape, steps=args.steps, eta=args.eta, grid=args.grid,
                           generator=generator, progress=progress, cond_fn=cond_fn)
    return sample_ddpm(model, schedule, shape, generator=generator, progress=progress, cond_fn=cond_fn)


def describe_sampler(args: argparse.Namespace, T: int) -> str:
    if args.sampler == "ddim":
        return f"DDIM, {args.steps} {args.grid} steps, eta = {args.eta:g}"
    return f"DDPM ancestral sampling (Algorithm 2), {T} steps"


def add_guidance_arguments(p: argparse.ArgumentParser) -> None:
    """``sample``'s guidance flags: --label, --cfg-scale, --classifier, --scale."""
    p.add_argument("--label", default=None,
                   help="class to draw: 0..K-1, or 'all' (--n samples of each class, one class per row)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance weight w of a class-conditional model (default 1 with --label)")
    p.add_argument("--classifier", default=None, help="noise-aware classifier for classifier guidance "
                   "(python -m ddpm_lib train-noisy-classifier writes one)")
    p.add_argument("--scale", type=float, default=None, help="classifier guidance scale s >= 0 (default 1)")


def is_conditional(info: dict) -> bool:
    return info["model_spec"]["kind"] == "conditional_unet"


def parse_label(text: str | None, num_classes: int) -> list[int] | None:
    """``--label``: None, 'all' (every class 0..K−1) or one class in 0..K−1, as a list of classes."""
    if text is None:
        return None
    if text == "all":
        return list(range(num_classes))
    try:
        label = int(text)
    except ValueError:
        raise ValueError(f"--label must be a class 0..{num_classes - 1} or 'all', got {text!r}") from None
    if not 0 <= label < num_classes:
        raise ValueError(f"--label {label} is outside 0..{num_classes - 1} (the {num_classes} classes)")
    return [label]


def load_guide(path: str, schedule, example_shape: tuple, device) -> NoisyClassifier:
    """The noisy classifier at ``path``, checked against the model: the same T and schedule (β_t for
    every t) and the same image shape; ``ValueError`` naming both otherwise."""
    classifier, classifier_schedule = load_noisy_classifier(path, device)
    if classifier_schedule.T != schedule.T or not torch.allclose(classifier_schedule.beta, schedule.beta.cpu(),
                                                                 rtol=1e-12, atol=0):
        raise ValueError(f"the classifier {path} was trained for the {classifier_schedule.name} schedule with "
                         f"T = {classifier_schedule.T}, the model samples with the {schedule.name} schedule "
                         f"with T = {schedule.T}: train a classifier with --schedule {schedule.name} --T {schedule.T}")
    config = classifier.config
    if (config["in_channels"], config["image_size"], config["image_size"]) != tuple(example_shape):
        raise ValueError(f"the classifier {path} takes images {(config['in_channels'], config['image_size'])} "
                         f"(channels, size), the model draws examples of shape {tuple(example_shape)}")
    return classifier


class WithNullLabel(nn.Module):
    """ε_u(x_t, t) = ε_θ(x_t, t, ∅): a class-conditional model sampled unconditionally, with its null label
    (a module, so that ``fast_sampling.compiled_eps_model`` can compile it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(xt, t, self.model.null_label)


def guided_model(model, info: dict, labels: torch.Tensor | None, cfg_scale: float | None = None,
                 classifier=None, scale: float = 0.0):
    """``(eps_model, cond_fn, words)`` for the samplers.

    No labels: the model unguided (a class-conditional model with its null label, ε_u). With
    ``classifier``: ε_θ (or ε_u) and ``cond_fn`` = s·∇ log p_φ(y | x_t) (``classifier_grad_fn``). With a
    class-conditional model: ε̃ = ε_u + w·(ε_c − ε_u) (``cfg_eps_model``; w = 1 calls ε_c alone).
    ``labels``: long (B,), one per sample.
    """
    conditional = is_conditional(info)
    base = WithNullLabel(model) if conditional else model
    if labels is None:
        return base, None, "unguided" + (" (the null label: unconditional)" if conditional else "")
    if classifier is not None:
        return base, classifier_grad_fn(classifier, labels, scale), f"classifier guidance, scale {scale:g}"
    w = 1.0 if cfg_scale is None else cfg_scale
    if w == 1.0:
        return (lambda xt, t: model(xt, t, labels)), None, "class-conditional (w = 1)"
    return cfg_eps_model(model, labels, w, model.null_label), None, f"classifier-free guidance, w = {w:g}"


def check_guidance_flags(info: dict, label, cfg_scale, classifier, scale) -> None:
    """One-line ``ValueError`` for a combination of guidance flags that means nothing."""
    if scale is not None and scale < 0:
        raise ValueError(f"--scale must be >= 0 (0: unguided), got {scale:g}")
    if cfg_scale is not None and cfg_scale < 0:
        raise ValueError(f"--cfg-scale must be >= 0 (0: unconditional, 1: conditional), got {cfg_scale:g}")
    if cfg_scale is not None and not is_conditional(info):
        raise ValueError("--cfg-scale needs a class-conditional model (trained with --num-classes); this one is "
                         "unconditional: guide it with --classifier and --scale")
    if cfg_scale is not None and classifier is not None:
        raise ValueError("pass either --cfg-scale (classifier-free guidance) or --classifier (classifier guidance)")
    if scale is not None and classifier is None:
        raise ValueError("--scale is the classifier guidance scale: pass --classifier too")
    if (classifier is not None or cfg_scale is not None) and label is None:
        raise ValueError("guidance needs a target class: pass --label (0..K-1 or 'all')")
    if label is not None and classifier is None and not is_conditional(info):
        raise ValueError("--label needs a class-conditional model or a --classifier to guide this unconditional one")


def run_sample(args: argparse.Namespace) -> Path:
    """``sample``: draw with θ_ema of a checkpoint, run folder or exported weights file, guided or not;
    writes ``args.out`` and returns its path."""
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    check_files({"--checkpoint": args.checkpoint, "--classifier": args.classifier}, args.out)
    prepare_output(args.out, (".png", ".pt"))
    device = pick_device(args.device)
    model, schedule, info = load_sampling_model(args.checkpoint, device)
    schedule = schedule.to(device)                     # a CPU schedule would cost host copies at every step
    check_guidance_flags(info, args.label, args.cfg_scale, args.classifier, args.scale)
    example_shape = info["example_shape"]
    classifier = load_guide(args.classifier, schedule, example_shape, device) if args.classifier else None
    num_classes = classifier.num_classes if classifier is not None else getattr(model, "num_classes", 0)
    classes = parse_label(args.label, num_classes)
    labels = None if classes is None else torch.tensor(classes, device=device).repeat_interleave(args.n)
    eps_model, cond_fn, words = guided_model(model, info, labels, args.cfg_scale, classifier,
                                             1.0 if args.scale is None else args.scale)
    generator = torch.Generator(device).manual_seed(args.seed)
    n = args.n * (len(classes) if classes else 1)
    x0 = draw_samples(eps_model, schedule, (n, *example_shape), generator, args, progress=True, cond_fn=cond_fn)
    path = write_samples(x0, args.out, nrow=args.n if classes and len(classes) > 1 else None)
    target = "" if classes is None else f" of class {classes[0]}" if len(classes) == 1 else \
        f" ({args.n} of each class 0..{len(classes) - 1}, one class per row)"
    print(f"wrote {n} samples{target} (θ_ema after step {info['step']}; {describe_sampler(args, schedule.T)}; "
          f"{words}) to {path}")
    return path


# ----------------------------------------------------------------------------- evaluate-guidance

def add_evaluate_guidance_parser(commands) -> None:
    p = commands.add_parser(
        "evaluate-guidance", help="accuracy, confidence, diversity and FID-MNIST of guided samples per scale",
        description="For each guidance scale draw --n-per-class samples of every digit (the same x_T for "
                    "every scale) and measure them with the clean MNIST classifier (--fid-classifier, not the "
                    f"noisy one that guides): accuracy on the target digit, confidence, {DIVERSITY}, "
                    f"within-class and overall {METRIC}. Prints a table and writes JSON.",
        formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a ckpt_*.pt file, a run folder or an exported weights file")
    p.add_argument("--classifier", default=None, help="noisy classifier for --scales (classifier guidance)")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="classifier guidance scales s")
    p.add_argument("--cfg-scales", type=float, nargs="+", default=None,
                   help="classifier-free guidance weights w (a class-conditional model)")
    p.add_argument("--n-per-class", type=int, default=100, help="samples of each digit per scale")
    p.add_argument("--fid-classifier", default=None,
                   help="the clean MNIST classifier (default: the course's data/mnist_classifier.pt)")
    p.add_argument("--batch-size", type=int, default=500, help="samples drawn at once")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T (the same for every scale)")
    p.add_argument("--device", default=None, help="None: cuda when available")
    p.add_argument("--out", default="guidance.json", help="JSON file for the results")
    add_sampler_arguments(p)


def mnist_digits(info: dict, train: bool):
    """``(images, labels)`` of the split (``train``) of the MNIST data a model was trained on."""
    data = info["config"].get("data")
    if data not in MNIST_DATA or tuple(info["example_shape"]) != (1, 32, 32):
        raise ValueError(f"FID-MNIST measures models of MNIST digits (data mnist-5k or mnist); this model "
                         f"was trained on {data!r} with examples of shape {tuple(info['example_shape'])}")
    return load_images(data, root=info["config"].get("data_root"), train=train, pad_to_32=True)


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean Euclidean distance ‖f_i − f_j‖ over the ordered pairs i ≠ j of the rows of ``features`` (N, D)."""
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"a pairwise distance needs at least 2 rows, got {n}")
    f = features.to(torch.float64)
    return float(torch.cdist(f, f).sum() / (n * (n - 1)))


def judged_diversity(features: torch.Tensor, probs: torch.Tensor) -> float:
    """Diversity within a digit, the digit being the one the classifier sees (arg-max of ``probs``): the mean
    pairwise feature distance within each digit seen at least twice, averaged over those digits."""
    judged = probs.argmax(1)
    seen = [k for k in judged.unique() if int((judged == k).sum()) >= 2]
    if not seen:
        raise ValueError("no digit is seen twice: a within-digit distance needs two samples of one digit")
    return sum(mean_pairwise_distance(features[judged == k]) for k in seen) / len(seen)


def class_statistics(features: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     real_features: torch.Tensor | None = None, real_labels: torch.Tensor | None = None) -> dict:
    """Accuracy (arg-max = label), mean confidence (max softmax), mean p(label), per-class accuracy, the
    within-class diversity and, given real features with at least D + 1 rows per class on both sides,
    the within-class FID-MNIST (mean over classes; else None).

    Two diversities: ``diversity`` groups the samples by ``labels`` (the digit asked for), so a group of
    unguided samples holds all ten digits and scores the spread between digits; ``diversity_judged``
    (``judged_diversity``) groups them by the digit the classifier sees (with two samples of each of K
    digits, some digit is seen twice), so it measures the variety within one digit at any accuracy."""
    hit = probs.argmax(1) == labels
    classes = range(num_classes)
    result = {"accuracy": float(hit.double().mean()),
              "per_class_accuracy": [float(hit[labels == k].double().mean()) for k in classes],
              "confidence": float(probs.max(1).values.double().mean()),
              "target_probability": float(probs.gather(1, labels[:, None]).double().mean()),
              "diversity": sum(mean_pairwise_distance(features[labels == k]) for k in classes) / num_classes,
              "diversity_judged": judged_diversity(features, probs)}
    if real_features is not None:
        D = features.shape[1]
        counts = [min(int((labels == k).sum()), int((real_labels == k).sum())) for k in classes]
        result["fid_mnist_within_class"] = None if min(counts) <= D else sum(
            frechet_distance(*gaussian_stats(features[labels == k]), *gaussian_stats(real_features[real_labels == k]))
            for k in classes) / num_classes
    return result


def run_evaluate_guidance(args: argparse.Namespace) -> dict:
    """``evaluate-guidance``: the table and JSON described in the module docstring; returns the results."""
    sweep = "classifier" if args.scales is not None else "classifier-free"
    scales = args.scales if args.scales is not None else args.cfg_scales
    if (args.scales is None) == (args.cfg_scales is None):
        raise ValueError("pass exactly one of --scales (classifier guidance, with --classifier) and --cfg-scales "
                         "(classifier-free guidance of a class-conditional model)")
    if args.n_per_class < 2 or args.batch_size < 1:
        raise ValueError(f"--n-per-class must be at least 2 (a within-class distance needs two samples) and "
                         f"--batch-size at least 1, got {args.n_per_class} and {args.batch_size}")
    if sweep == "classifier" and args.classifier is None:
        raise ValueError("--scales are classifier guidance scales: pass --classifier (a noisy classifier)")
    if sweep == "classifier-free" and args.classifier is not None:
        raise ValueError("--cfg-scales guide without a classifier: drop --classifier (or use --scales)")
    if not all(math.isfinite(v) and v >= 0 for v in scales):
        raise ValueError(f"{'--scales' if sweep == 'classifier' else '--cfg-scales'} must all be finite and >= 0, got {scales}")
    args.fid_classifier = classifier_path(args.fid_classifier)
    check_files({"--checkpoint": args.checkpoint, "--classifier": args.classifier,
                 "--fid-classifier": args.fid_classifier}, args.out)
    prepare_output(args.out, (".json",))
    device = pick_device(args.device)
    clean = load_classifier(args.fid_classifier, device)
    model, schedule, info = load_sampling_model(args.checkpoint, device)
    if sweep == "classifier-free" and not is_conditional(info):
        raise ValueError("--cfg-scales needs a class-conditional model (trained with --num-classes); this one is "
                         "unconditional: use --classifier with --scales")
    real_x, real_y = mnist_digits(info, train=False)
    guide = load_guide(args.classifier, schedule, info["example_shape"], device) if args.classifier else None
    K = guide.num_classes if guide is not None else model.num_classes
    if K != clean.config["num_classes"]:
        raise ValueError(f"the guided model has {K} classes, the clean classifier {clean.config['num_classes']}")
    schedule = schedule.to(device)
    real_features, real_probs = classifier_outputs(real_x, clean, args.batch_size)
    real = class_statistics(real_features, real_probs, real_y, K)
    real_mu_sigma = gaussian_stats(real_features)
    labels = torch.arange(K).repeat_interleave(args.n_per_class)
    key = {"checkpoint": recorded_path(info["path"]), "checkpoint_sha256": file_sha256(info["path"]),
           "noisy_classifier_sha256": file_sha256(args.classifier) if guide else None, "guidance": sweep,
           "sampler": describe_sampler(args, schedule.T), "n_per_class": args.n_per_class,
           "batch_size": args.batch_size, "seed": args.seed, "machine": machine_name(device),
           "torch": str(torch.__version__)}                                  # what decides the samples
    rows = []
    for i, scale in enumerate(scales):
        generator = torch.Generator(device).manual_seed(args.seed)        # the same x_T for every scale

        def draw(start: int, b: int, scale: float = scale) -> torch.Tensor:   # minutes a batch: a bar of its own
            y = labels[start:start + b].to(device)
            eps_model, cond_fn, _ = guided_model(model, info, y, scale if guide is None else None, guide, scale)
            return draw_samples(eps_model, schedule, (b, *info["example_shape"]), generator, args, progress=True,
                                cond_fn=cond_fn).clamp(-1, 1)

        samples, seconds, _ = draw_batches(draw, len(labels), args.batch_size, generator, row_output(args.out, i),
                                           {**key, "scale": scale}, desc=f"scale {scale:g}")
        with kept_on_stop(row_output(args.out, i), len(labels)):
            features, probs = classifier_outputs(samples, clean, args.batch_size)
        stats = class_statistics(features, probs, labels, K, real_features, real_y)
        rows.append({"scale": scale, **stats, "fid_mnist": frechet_distance(*gaussian_stats(features), *real_mu_sigma),
                     "sampling_seconds": round(seconds, 2)})
    results = {
        "metric": METRIC, "guidance": sweep, "scales": list(scales),
        "scale_meaning": "classifier guidance scale s" if sweep == "classifier" else
                         "classifier-free weight w: eps_u + w (eps_c - eps_u)",
        "checkpoint": recorded_path(info["path"]), "step": info["step"], "data": info["config"]["data"], "T": schedule.T,
        "sampler": f"{describe_sampler(args, schedule.T)}, θ_ema, samples clamped to [-1, 1], the same x_T per scale",
        "n_per_class": args.n_per_class, "num_classes": K, "seed": args.seed, "device": str(device),
        "noisy_classifier": recorded_path(args.classifier) if guide else None,
        "noisy_classifier_sha256": file_sha256(args.classifier) if guide else None,
        "classifier": recorded_path(args.fid_classifier), "classifier_sha256": file_sha256(args.fid_classifier),
        "diversity_measure": DIVERSITY,
        "fid_within_class_note": f"within-class FID-MNIST needs more than {real_features.shape[1]} (the feature "
                                 f"dimension) samples and held-out digits of every class; null otherwise",
        "real_heldout": {"n": len(real_y), **{k: real[k] for k in ("accuracy", "confidence", "diversity",
                                                                    "diversity_judged")}},
        "results": rows,
    }
    write_json(results, args.out)
    remove_kept(args.out)                              # the results are written: the kept samples can go
    print_guidance_table(results)
    print(f"wrote {args.out}")
    return results


def print_guidance_table(r: dict) -> None:
    name = "s" if r["guidance"] == "classifier" else "w"
    print(f"{r['guidance']} guidance: {r['n_per_class']} samples per class, {r['sampler']}; measured by the clean "
          f"classifier ({r['metric']})")
    print(f"{name:>6}{'accuracy':>10}{'confidence':>12}{'p(target)':>11}{'diversity':>11}{'(judged)':>10}"
          f"{'FID in-class':>14}{'FID':>10}{'seconds':>10}")
    for row in r["results"]:
        within = row["fid_mnist_within_class"]
        print(f"{row['scale']:6g}{row['accuracy']:10.3f}{row['confidence']:12.3f}{row['target_probability']:11.3f}"
              f"{row['diversity']:11.3f}{row['diversity_judged']:10.3f}{'n/a' if within is None else f'{within:.3f}':>14}"
              f"{row['fid_mnist']:10.3f}{row['sampling_seconds']:10.1f}")
    h = r["real_heldout"]
    print(f"{'real':>6}{h['accuracy']:10.3f}{h['confidence']:12.3f}{'':>11}{h['diversity']:11.3f}"
          f"{h['diversity_judged']:10.3f}   ({h['n']} held-out digits)")
