"""Throughput of our U-Net side by side with diffusers' ``UNet2DModel`` (``python -m ddpm_lib bench``).

    python -m ddpm_lib bench --preset ddpm-cifar10 --batch-size 128 --sample-batch 256    # on a GPU
    python -m ddpm_lib bench --preset tiny --batch-size 2 --sample-batch 2 --iters 1 --warmup 0 \\
        --ddim-steps 2 --device cpu --compile-backend eager                                 # a smoke test

One run measures these rows, each on a freshly built network (``torch.manual_seed(0)``):

    ddpm_lib eager            our U-Net as it is
    ddpm_lib optimised        channels_last (CUDA), ``torch.compile``; sampling: ``fast_sampling``'s
                              compiled network at the static batch shape, replayed as a CUDA graph
    diffusers eager           ``UNet2DModel`` of the same architecture (``bench_diffusers``)
    diffusers compiled        channels_last (CUDA), ``torch.compile`` (default mode), training and sampling
    diffusers + CUDA graphs   sampling only: diffusers' network through the same ``fast_sampling``

Training images/s time the real ``Trainer.train_step`` for every row — both libraries do the same
work: t ~ U{1..T}, ε ~ N(0, I), L_simple forward and backward under the trainer's autocast (bf16 on
recent GPUs, fp32 on a CPU), gradient clipping, fused AdamW (CUDA) and the EMA update. diffusers'
network enters the trainer through ``DiffusersEps`` (0-based timesteps). Sampling images/s time one
network evaluation at the sampling batch under ``torch.no_grad`` and the same autocast; "DDIM" is the
whole ``sample_ddim`` (η = 0, ``--ddim-steps`` steps) in seconds per 1,000 images. Below the rows,
when a DDGAN preset of the same name exists (``mnist``, ``tiny``), the whole 4-step ``sample_ddgan`` of
that (untrained, freshly built) generator is timed the same way, eager under the same autocast.

Times come from CUDA events after the warm-up steps on a GPU (the wall clock on a CPU). FLOPs of one
forward pass are counted by ``torch.utils.flop_counter`` on the meta device (a training step counts
as three forward passes), so TFLOP/s = FLOPs × images/s. Peak memory is that of the training steps,
CUDA only, above what was allocated before the row began. ``--compile-backend eager`` traces the same compiled paths
without generating code, so that a CPU smoke test finishes in seconds.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from .bench_diffusers import DiffusersEps, diffusers_available, diffusers_config, diffusers_unet
from .bench_table import ratios, row_line
from .ddgan import ddgan_schedule, sample_ddgan
from .ddgan_nets import DDGAN_PRESETS, build_generator, ddgan_spec
from .ddim import sample_ddim
from .devices import pick_device
from .fast_sampling import BACKENDS, compiled_eps_model
from .elbo import l_simple
from .files import write_json
from .training import Trainer, TrainConfig, autocast_dtype
from .unet import PRESETS, UNet, count_parameters

ROWS = ("ddpm_lib eager", "ddpm_lib optimised", "diffusers eager", "diffusers compiled", "diffusers + CUDA graphs")
ROW_KEYS = {"ddpm_lib-eager": ROWS[0], "ddpm_lib-optimised": ROWS[1], "diffusers-eager": ROWS[2],
            "diffusers-compiled": ROWS[3], "diffusers-cuda-graphs": ROWS[4]}     # the command line's names
SAMPLING = {"ddpm_lib eager": "eager", "ddpm_lib optimised": "compiled + CUDA graphs", "diffusers eager": "eager",
            "diffusers compiled": "compiled", "diffusers + CUDA graphs": "compiled + CUDA graphs"}


def _timer(device: torch.device):
    """A function that runs ``fn`` ``n`` times and returns the seconds it took, timed on ``device``."""
    def run(fn, n: int) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
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
    """FLOPs of one forward pass of ``model`` on a batch of ``shape`` (counted, not timed).

    ``bench`` counts on the "meta" device (shapes only, no arithmetic), where attention is counted
    too: the flop counter knows the CUDA attention kernels but not the CPU's fused one.
    """
    x = torch.randn(shape, device=device)
    t = torch.ones(shape[0], dtype=torch.long, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops()


def saved_activation_bytes(loss_fn) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``loss_fn()`` runs its forward
    (``torch.autograd.graph.saved_tensors_hooks``), each storage counted once and the parameters left out:
    the activation memory a training step holds at its peak, besides weights, gradients and optimizer state.
    Run it on the "meta" device for an estimate at any size in a fraction of a second (float32 there:
    autocast does not apply to meta tensors, so bf16/fp16 training holds about half). A parameter may be
    saved as a view of itself (a linear layer saves ``weight.t()``): a view of a parameter is left out too."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        storage = t.untyped_storage()
        if not isinstance(t if t._base is None else t._base, torch.nn.Parameter) and storage._cdata not in seen:
            seen.add(storage._cdata)
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn()
    return total


def _unavailable(preset: str) -> str | None:
    """Why diffusers' rows cannot run for ``preset`` (None when they can)."""
    if not diffusers_available():
        return "not installed"
    try:
        diffusers_config(preset)
    except ValueError:
        return f"no diffusers counterpart of preset {preset!r}"
    return None


def _network(library: str, preset: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet.from_preset(preset) if library == "ddpm_lib" else DiffusersEps(diffusers_unet(preset))


def measure_row(row: str, preset: str, dev: torch.device, batch_size: int, sample_batch: int, iters: int,
                warmup: int, ddim_steps: int, backend: str, autotune: bool = False) -> dict:
    """The figures of one row of the table (see the module docstring)."""
    library, timed = row.split()[0], _timer(dev)
    optimised, sampling_only = row != f"{library} eager", row == "diffusers + CUDA graphs"
    config = PRESETS[preset]
    shape = (config["in_channels"], config["image_size"], config["image_size"])
    baseline = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
    model = _network(library, preset).to(dev)
    channels_last = optimised and dev.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = {"row": row, "status": "ok", "sampling": SAMPLING[row], "train_img_per_s": None,
           "train_warmup_seconds": None, "peak_train_memory_gib": None}
    trainer = Trainer(model, TrainConfig(preset=preset, batch_size=batch_size, warmup=1, progress=False,
                                         compile=optimised), dev, compile_backend=backend)
    if not sampling_only:
        x0 = torch.randn(batch_size, *shape, device=dev).clamp(-1, 1)
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        begin = time.perf_counter()
        timed(lambda: trainer.train_step(x0), warmup)
        out["train_warmup_seconds"] = time.perf_counter() - begin
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        out["train_img_per_s"] = batch_size * iters / timed(lambda: trainer.train_step(x0), iters)
        if dev.type == "cuda":
            out["peak_train_memory_gib"] = (torch.cuda.max_memory_allocated(dev) - baseline) / 2 ** 30
        del x0

    model.eval()
    amp = trainer.amp_dtype
    batch_shape = (sample_batch, *shape)
    begin = time.perf_counter()
    if SAMPLING[row] == "compiled + CUDA graphs":
        eps = compiled_eps_model(model, batch_shape, dev, cuda_graphs=True, amp_dtype=amp, backend=backend,
                                 autotune=autotune)
        if not eps.cuda_graphs:               # on a CPU, with a tracing backend, or when Inductor skipped them
            out["sampling"] = "compiled (no graphs)"
    else:
        net = torch.compile(model, backend=backend, dynamic=False) if optimised else model

        def eps(xt, t):       # the standard layout out, as fast_sampling's: x_t keeps one layout in a sampler
            with torch.no_grad(), (torch.autocast(dev.type, dtype=amp) if amp else contextlib.nullcontext()):
                return net(xt, t).contiguous()
    xt = torch.randn(batch_shape, device=dev)
    t = torch.full((sample_batch,), 500, dtype=torch.long, device=dev)
    timed(lambda: eps(xt, t), max(warmup, 1 if optimised else 0))
    out["sample_warmup_seconds"] = time.perf_counter() - begin
    out["sample_img_per_s"] = sample_batch * iters / timed(lambda: eps(xt, t), iters)

    def ddim():
        sample_ddim(eps, trainer.schedule, batch_shape, steps=ddim_steps, generator=torch.Generator(dev).manual_seed(0))
    timed(ddim, 1)                            # untimed: anything compiled for the sampler's inputs
    out["ddim_s_per_1000"] = timed(ddim, 1) * 1000 / sample_batch
    del trainer, model, eps
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def ddgan_sampling(preset: str, sample_batch: int, dev: torch.device, timed) -> dict:
    """Seconds per 1,000 images of DDGAN's whole sampler (T = 4 generator calls) for the DDGAN preset
    named like the U-Net preset, or the reason it is not measured."""
    if preset not in DDGAN_PRESETS:
        return {"status": f"no DDGAN preset {preset!r}"}
    config = PRESETS[preset]
    torch.manual_seed(0)
    G = build_generator(ddgan_spec(preset, (config["in_channels"], config["image_size"], config["image_size"])))
    G, s, amp = G.to(dev).eval(), ddgan_schedule(4).to(dev), autocast_dtype(dev)
    shape = (sample_batch, config["in_channels"], config["image_size"], config["image_size"])

    def draw():
        with torch.autocast(dev.type, dtype=amp) if amp else contextlib.nullcontext():
            sample_ddgan(G, s, shape, generator=torch.Generator(dev).manual_seed(0))
    timed(draw, 1)                            # untimed: allocations, kernel selection
    return {"status": "ok", "preset": preset, "nfe": s.T, "s_per_1000": timed(draw, 1) * 1000 / sample_batch,
            "parameters": count_parameters(G)}


KEPT_FORMAT = "ddpm_lib-bench-rows-1"


def bench_rows_file(out: str | Path) -> Path:
    """Where ``bench --out OUT`` keeps its measured rows until OUT is written: ``OUT.partial.json``."""
    out = Path(out)
    return out.with_name(out.name + ".partial.json")


def kept_rows(keep: Path | None, settings: dict) -> dict:
    """The rows an earlier, stopped run with the same ``settings`` measured and kept in ``keep``, by name
    (none when there is no such file). A file of other settings is refused in one line."""
    if keep is None or not keep.exists():
        return {}
    try:
        saved = json.loads(keep.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{keep} is not a bench file ({exc}): delete it to start over") from None
    if not isinstance(saved, dict) or saved.get("format") != KEPT_FORMAT:
        raise ValueError(f"{keep} is not a bench file of this version: delete it to start over")
    differ = [f"{k} {saved['settings'].get(k)!r} there, {v!r} here" for k, v in settings.items()
              if saved["settings"].get(k) != v]
    if differ:
        raise ValueError(f"{keep} holds rows measured with other settings ({'; '.join(differ)}): run with those, "
                         f"or delete it to start over")
    return {r["row"]: r for r in saved["rows"]}


def bench(preset: str = "ddpm-cifar10", batch_size: int = 128, sample_batch: int = 256, iters: int = 20,
          warmup: int = 5, device: str | None = None, rows=ROWS, ddim_steps: int = 50,
          compile_backend: str = "inductor", autotune: bool = False, keep: str | Path | None = None) -> dict:
    """Measure the ``rows`` (a subset of ``ROWS``) for a U-Net preset; returns the figures as a dict.

    ``autotune``: the "compiled + CUDA graphs" networks (ours and diffusers') use Inductor's
    "max-autotune" mode (``fast_sampling.compiled_eps_model``).

    ``keep``: a JSON file that holds every measured row as soon as it is measured. A run stopped by a time
    limit loses only the row it was measuring; run again with the same settings (same GPU model, torch and
    diffusers), it measures only the other rows, and the result names the rows it took from the file
    (``rows_from_an_earlier_run``). The caller removes the file once the result is written.

    diffusers' rows get ``status`` "not installed" or "no diffusers counterpart …" when they cannot run.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if min(batch_size, sample_batch, iters) < 1 or warmup < 0:
        raise ValueError("batch sizes and iters must be at least 1, warmup at least 0")
    if not 1 <= ddim_steps <= TrainConfig.T:           # checked before any timing: DDIM runs last in a row
        raise ValueError(f"ddim_steps must lie in 1..{TrainConfig.T} (the benchmark's T), got {ddim_steps}")
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise ValueError(f"unknown bench rows {unknown}: choose among {', '.join(ROWS)}")
    if compile_backend not in BACKENDS:
        raise ValueError(f"unknown compile backend {compile_backend!r}: choose one of {', '.join(BACKENDS)}")
    dev = pick_device(device)
    if diffusers_available():
        import diffusers
    settings = {"preset": preset, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
                "batch_size": batch_size, "sample_batch": sample_batch, "iters": iters, "warmup": warmup,
                "ddim_steps": ddim_steps, "compile_backend": compile_backend, "autotune": autotune,
                "torch": torch.__version__, "diffusers": diffusers.__version__ if diffusers_available() else None}
    keep = Path(keep) if keep is not None else None
    earlier = kept_rows(keep, settings)
    config = PRESETS[preset]
    shape = (1, config["in_channels"], config["image_size"], config["image_size"])
    missing = _unavailable(preset)
    libraries = {"ddpm_lib": None, "diffusers": missing}
    figures = {}
    for library, why_not in libraries.items():
        if why_not is None:
            with torch.device("meta"):
                net = _network(library, preset)
            figures[library] = {"parameters": count_parameters(net), "flops": forward_flops(net, shape, "meta")}
    with torch.device("meta"):                # activations of a training step at this batch, estimated
        net, xt = _network("ddpm_lib", preset), torch.zeros(batch_size, *shape[1:])
        t = torch.ones(batch_size, dtype=torch.long)          # (x_t needs no gradient: eq. 4 saves nothing)
        activations = saved_activation_bytes(lambda: l_simple(xt, net(xt, t)))
    if dev.type == "cpu" and preset != "tiny":
        work = row_flops(figures["ddpm_lib"]["flops"], batch_size, sample_batch, iters, warmup, ddim_steps)
        tqdm.write(f"bench on the CPU: each row computes up to {work / 1e12:,.3g} TFLOP ({work / 0.2e12 / 60:,.1f} "
                   f"min at a laptop's 0.2 TFLOP/s); a quick look: --preset tiny --batch-size 8 --sample-batch 8 "
                   f"--iters 2 --warmup 1 --ddim-steps 2")
    results = []
    bar = tqdm([r for r in ROWS if r in rows], desc="bench", unit="row")    # a compiled row takes minutes
    for row in bar:
        bar.set_postfix_str(row)
        library = row.split()[0]
        if libraries[library] is not None:
            results.append({"row": row, "status": libraries[library]})
            continue
        if row in earlier:
            results.append(earlier[row])
            tqdm.write(f"{row_line(earlier[row], ddim_steps)}  (kept in {keep} by an earlier run)")
            continue
        r = measure_row(row, preset, dev, batch_size, sample_batch, iters, warmup, ddim_steps, compile_backend,
                        autotune)
        flops = figures[library]["flops"]
        r["train_tflops"] = 3 * flops * r["train_img_per_s"] / 1e12 if r["train_img_per_s"] else None
        r["sample_tflops"] = flops * r["sample_img_per_s"] / 1e12
        results.append(r)
        tqdm.write(row_line(r, ddim_steps))   # printed now: a run cut by a time limit still shows its rows
        if keep is not None:                  # and kept: the same command continues from them
            write_json({"format": KEPT_FORMAT, "settings": settings,
                        "rows": [x for x in results if x["status"] == "ok"]}, keep)
    ddgan = ddgan_sampling(preset, sample_batch, dev, _timer(dev)) if "ddpm_lib eager" in rows else None
    amp = autocast_dtype(dev)
    return {**settings, "autocast": str(amp).replace("torch.", "") if amp else "fp32",
            "rows_from_an_earlier_run": [r["row"] for r in results if r["row"] in earlier],
            "parameters": {k: v["parameters"] for k, v in figures.items()},
            "gflop_per_image_forward": {k: v["flops"] / 1e9 for k, v in figures.items()},
            "rows": results, "ratios": ratios(results), "ddgan": ddgan,
            "activation_gib_fp32_estimate": activations / 2 ** 30,
            "weights_grads_adam_gib_fp32": 4 * 4 * figures["ddpm_lib"]["parameters"] / 2 ** 30}


def row_flops(flops: float, batch_size: int, sample_batch: int, iters: int, warmup: int, ddim_steps: int) -> float:
    """The FLOPs one row computes at most, from the FLOPs of one forward pass: training steps (three passes
    per image), sampling evaluations (at least one untimed, which an eager row skips at ``warmup`` 0), and two
    whole DDIM samplings (one untimed)."""
    return flops * (3 * batch_size * (warmup + iters) + sample_batch * (max(warmup, 1) + iters)
                    + 2 * ddim_steps * sample_batch)
