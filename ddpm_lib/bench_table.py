"""What ``python -m ddpm_lib bench`` prints: each measured row as a line, the ratios to diffusers' best row,
and the whole table (``bench.bench`` measures the figures)."""
from __future__ import annotations


def row_line(r: dict, ddim_steps: int) -> str:
    """One measured row as a line of text, printed as soon as it is measured."""
    train = (f"training {r['train_img_per_s']:.1f} img/s ({r['train_tflops']:.3f} TFLOP/s"
             + (f", peak {r['peak_train_memory_gib']:.2f} GiB" if r["peak_train_memory_gib"] is not None else "")
             + "), " if r["train_img_per_s"] is not None else "")
    return (f"{r['row']}: {train}sampling {r['sample_img_per_s']:.1f} img/s ({r['sample_tflops']:.3f} TFLOP/s, "
            f"{r['sampling']}), DDIM-{ddim_steps} {r['ddim_s_per_1000']:.3f} s per 1,000 images")


def ratios(rows: list[dict]) -> dict:
    """Each measured row against diffusers' best measured row, per figure (> 1: faster than diffusers).

    Images/s are divided by diffusers' highest; DDIM seconds divide diffusers' lowest by the row's.
    Also the project's two targets (each at least 1.5): ``training_vs_diffusers_best``, ddpm_lib optimised's
    training images/s over diffusers' best row's, and ``sampling_vs_diffusers_compiled``, ddpm_lib optimised
    over diffusers compiled, one evaluation. Figures without a diffusers counterpart are left out.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    theirs = [r for r in ok if r["row"].startswith("diffusers")]
    out = {}
    for key, higher_is_better in (("train_img_per_s", True), ("sample_img_per_s", True), ("ddim_s_per_1000", False)):
        values = [r[key] for r in theirs if r[key] is not None]
        if not values:
            continue
        best = max(values) if higher_is_better else min(values)
        out[key] = {r["row"]: (r[key] / best if higher_is_better else best / r[key])
                    for r in ok if r[key] is not None}
    by_row = {r["row"]: r for r in ok}
    if "ddpm_lib optimised" in out.get("train_img_per_s", {}):
        out["training_vs_diffusers_best"] = out["train_img_per_s"]["ddpm_lib optimised"]
    if "ddpm_lib optimised" in by_row and "diffusers compiled" in by_row:
        out["sampling_vs_diffusers_compiled"] = (by_row["ddpm_lib optimised"]["sample_img_per_s"]
                                                 / by_row["diffusers compiled"]["sample_img_per_s"])
    return out


def format_table(r: dict) -> str:
    """The figures of ``bench`` as an aligned table with a few lines of context."""
    def num(value, fmt):
        width = int(fmt.split(".")[0])
        return format(value, fmt) if value is not None else f"{'—':>{width}}"

    def ratio(key, row):
        return num(r["ratios"].get(key, {}).get(row), "7.2f")

    params = ", ".join(f"{k} {v:,}" for k, v in r["parameters"].items())
    gflop = ", ".join(f"{k} {v:.3f}" for k, v in r["gflop_per_image_forward"].items())
    lines = [f"{r['preset']} on {r['device']}, autocast {r['autocast']}, training batch {r['batch_size']}, "
             f"sampling batch {r['sample_batch']}, {r['iters']} timed iterations after {r['warmup']} warm-up, "
             f"torch {r['torch']} (compile backend {r['compile_backend']}{', max-autotune' if r['autotune'] else ''}), "
             f"diffusers {r['diffusers'] or 'not installed'}",
             f"parameters: {params}; GFLOP per image forward: {gflop}",
             f"{'':25}{'   training':<36}{'   sampling, one evaluation':<50}{'    DDIM-' + str(r['ddim_steps'])}",
             f"{'row':25}{'img/s':>10}{'TFLOP/s':>9}{'×diff':>7}{'peak GiB':>10}"
             f"{'img/s':>10}{'TFLOP/s':>9}{'×diff':>7}{'':2}{'network':<22}{'s/1000 img':>12}{'×diff':>7}"]
    for row in r["rows"]:
        if row["status"] != "ok":
            lines.append(f"{row['row']:25}{row['status']}")
            continue
        name = row["row"]
        lines.append(f"{name:25}{num(row['train_img_per_s'], '10.1f')}{num(row['train_tflops'], '9.3f')}"
                     f"{ratio('train_img_per_s', name)}{num(row['peak_train_memory_gib'], '10.2f')}"
                     f"{row['sample_img_per_s']:10.1f}{row['sample_tflops']:9.3f}{ratio('sample_img_per_s', name)}"
                     f"{'':2}{row['sampling']:<22}{row['ddim_s_per_1000']:12.3f}{ratio('ddim_s_per_1000', name)}")
    lines.append("×diff: the row over diffusers' best row (DDIM: diffusers' lowest seconds over the row's); "
                 "peak GiB: CUDA only")
    lines.append(f"memory of a training step at batch {r['batch_size']}, estimated on the meta device: activations "
                 f"{r['activation_gib_fp32_estimate']:.2f} GiB in float32 (about half under bf16/fp16 autocast), "
                 f"weights + gradients + AdamW {r['weights_grads_adam_gib_fp32']:.2f} GiB")
    g = r.get("ddgan")
    if g and g["status"] == "ok":
        lines.append(f"DDGAN-{g['nfe']} sampling (generator of DDGAN preset {g['preset']!r}, {g['parameters']:,} "
                     f"parameters, eager): {g['s_per_1000']:.3f} s per 1,000 images")
    elif g:
        lines.append(f"DDGAN-4 sampling: not measured ({g['status']})")
    if "training_vs_diffusers_best" in r["ratios"]:
        lines.append(f"training: ddpm_lib optimised / diffusers' best row = "
                     f"{r['ratios']['training_vs_diffusers_best']:.2f} (target: at least 1.5)")
    if "sampling_vs_diffusers_compiled" in r["ratios"]:
        lines.append(f"sampling, one evaluation: ddpm_lib optimised / diffusers compiled = "
                     f"{r['ratios']['sampling_vs_diffusers_compiled']:.2f} (target: at least 1.5)")
    return "\n".join(lines)
