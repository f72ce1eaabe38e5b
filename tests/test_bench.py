"""The benchmark command: every row on a CPU at a tiny size, diffusers' U-Net built like ours, and both
networks driven by the same training step with the same timesteps."""
import json
import re

import pytest
import torch
from torch import nn

import ddpm_lib.bench as bench_module
from ddpm_lib.bench import ROWS, bench, forward_flops
from ddpm_lib.bench_table import format_table, ratios
from ddpm_lib.bench_diffusers import DiffusersEps, diffusers_available, diffusers_config, diffusers_unet
from ddpm_lib.cli import main
from ddpm_lib.embedding import timestep_embedding
from ddpm_lib.training import Trainer, TrainConfig
from ddpm_lib.unet import UNet, count_parameters

TINY = ["--preset", "tiny", "--batch-size", "2", "--sample-batch", "2", "--iters", "1", "--warmup", "0",
        "--ddim-steps", "2", "--device", "cpu"]


def test_bench_command_measures_and_prints_every_row(tmp_path, capsys):
    """All five rows, the compiled ones traced by dynamo (backend "eager": no code generation, seconds); each
    measured row is also printed as a line of its own as soon as it is measured (a run cut by a time limit
    keeps them in its output)."""
    out = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--compile-backend", "eager", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "bench: 100%" in captured.err and "5/5" in captured.err      # a bar over the rows (compiling takes minutes)
    r = json.loads(out.read_text())
    assert [row["row"] for row in r["rows"]] == list(ROWS)
    for row in r["rows"]:
        assert row["row"] in printed
    measured = [row for row in r["rows"] if row["status"] == "ok"]
    if diffusers_available():                      # the course extra installs it: then its rows are real
        assert len(measured) == 5
        assert r["parameters"]["diffusers"] == count_parameters(diffusers_unet("tiny"))
    else:
        assert len(measured) == 2 and printed.count("not installed") >= 3
    assert r["parameters"]["ddpm_lib"] == count_parameters(UNet.from_preset("tiny"))
    for row in measured:
        library = row["row"].split()[0]
        flops = r["gflop_per_image_forward"][library] * 1e9
        assert row["sample_img_per_s"] > 0 and row["ddim_s_per_1000"] > 0 and row["peak_train_memory_gib"] is None
        assert row["sample_tflops"] == pytest.approx(flops * row["sample_img_per_s"] / 1e12)
        if row["row"] == "diffusers + CUDA graphs":                # sampling only
            assert row["train_img_per_s"] is None
        else:                                                      # three forward passes per training image
            assert row["train_tflops"] == pytest.approx(3 * flops * row["train_img_per_s"] / 1e12)
    assert "TFLOP/s" in printed and "DDIM-2" in printed
    for row in measured:                              # each row's line, printed when it was measured
        line = next(x for x in printed.splitlines() if x.startswith(row["row"] + ": "))
        assert f"sampling {row['sample_img_per_s']:.1f} img/s" in line and "s per 1,000 images" in line
        if row["train_img_per_s"] is None:                   # sampling only
            assert "training" not in line
        else:
            assert f"training {row['train_img_per_s']:.1f} img/s" in line
    g = r["ddgan"]                                    # the tiny DDGAN generator's whole 4-step sampler
    assert g["status"] == "ok" and g["nfe"] == 4 and g["s_per_1000"] > 0 and "DDGAN-4 sampling" in printed


def test_ddgan_sampling_counts_the_generator_calls_and_names_a_missing_preset(monkeypatch):
    """The DDGAN timing runs the real sampler (T = 4 calls of G per timed draw, one batch of the sampling
    size) and says why it is absent for a U-Net preset without a DDGAN counterpart."""
    from ddpm_lib import bench as bench_module
    from ddpm_lib.ddgan_nets import DDGANGenerator
    calls, real = [], DDGANGenerator.forward
    monkeypatch.setattr(DDGANGenerator, "forward", lambda self, xt, z, t: calls.append(xt.shape) or real(self, xt, z, t))
    timed = bench_module._timer(torch.device("cpu"))
    g = bench_module.ddgan_sampling("tiny", 3, torch.device("cpu"), timed)
    assert g["status"] == "ok" and len(calls) == 2 * 4 and set(calls) == {(3, 1, 32, 32)}   # warm-up + timed
    assert bench_module.ddgan_sampling("ddpm-cifar10", 3, torch.device("cpu"), timed)["status"] == \
        "no DDGAN preset 'ddpm-cifar10'"


def test_the_training_rows_time_the_real_trainer_step(monkeypatch):
    calls = []
    real_step = Trainer.train_step

    def spy(self, x0, *args):
        calls.append((type(self.model).__name__, tuple(x0.shape)))
        return real_step(self, x0, *args)
    monkeypatch.setattr(Trainer, "train_step", spy)
    rows = ("ddpm_lib eager", "diffusers eager") if diffusers_available() else ("ddpm_lib eager",)
    r = bench("tiny", batch_size=3, sample_batch=2, iters=2, warmup=1, device="cpu", rows=rows, ddim_steps=1)
    assert [row["status"] for row in r["rows"]] == ["ok"] * len(rows)
    expected = [("UNet", (3, 1, 32, 32))] * 3 + [("DiffusersEps", (3, 1, 32, 32))] * 3 * (len(rows) - 1)
    assert calls == expected                       # warm-up + timed steps, each a Trainer.train_step


def test_rows_that_cannot_run_say_why(monkeypatch, capsys):
    monkeypatch.setattr(bench_module, "diffusers_available", lambda: False)
    r = bench("tiny", batch_size=2, sample_batch=2, iters=1, warmup=0, device="cpu",
              rows=("ddpm_lib eager", "diffusers eager"), ddim_steps=1)
    assert [row["status"] for row in r["rows"]] == ["ok", "not installed"]
    assert "diffusers" not in r["ratios"].get("sample_img_per_s", {})
    assert re.search(r"^diffusers eager +not installed$", format_table(r), re.M)
    if diffusers_available():
        monkeypatch.undo()
        r = bench("mnist", batch_size=2, sample_batch=2, iters=1, warmup=0, device="cpu",
                  rows=("diffusers eager",), ddim_steps=1)
        assert r["rows"][0]["status"] == "no diffusers counterpart of preset 'mnist'"   # linear attention
    for bad in (dict(iters=0), dict(rows=("ours",)), dict(compile_backend="tvm"), dict(ddim_steps=0),
                dict(ddim_steps=1001)):
        with pytest.raises(ValueError):
            bench("tiny", **{"batch_size": 2, "sample_batch": 2, "device": "cpu", **bad})
    assert main(["bench", "--preset", "tiny", "--iters", "0", "--device", "cpu"]) == 1


def test_ratios_compare_with_diffusers_best_row():
    rows = [{"row": "ddpm_lib eager", "status": "ok", "train_img_per_s": 100.0, "sample_img_per_s": 300.0,
             "ddim_s_per_1000": 6.0},
            {"row": "ddpm_lib optimised", "status": "ok", "train_img_per_s": 200.0, "sample_img_per_s": 900.0,
             "ddim_s_per_1000": 2.0},
            {"row": "diffusers eager", "status": "ok", "train_img_per_s": 50.0, "sample_img_per_s": 200.0,
             "ddim_s_per_1000": 8.0},
            {"row": "diffusers compiled", "status": "ok", "train_img_per_s": 80.0, "sample_img_per_s": 400.0,
             "ddim_s_per_1000": 5.0},
            {"row": "diffusers + CUDA graphs", "status": "ok", "train_img_per_s": None, "sample_img_per_s": 600.0,
             "ddim_s_per_1000": 4.0}]
    r = ratios(rows)
    assert r["train_img_per_s"]["ddpm_lib optimised"] == pytest.approx(200 / 80)
    assert r["sample_img_per_s"]["ddpm_lib eager"] == pytest.approx(300 / 600)
    assert r["ddim_s_per_1000"]["ddpm_lib optimised"] == pytest.approx(4 / 2)      # a speed-up: 2× faster
    assert r["sampling_vs_diffusers_compiled"] == pytest.approx(900 / 400)
    assert r["training_vs_diffusers_best"] == pytest.approx(200 / 80)             # diffusers compiled's 80, not eager's 50
    assert "training_vs_diffusers_best" not in ratios([rows[0], *rows[2:]])    # no optimised row: no target ratio
    assert "diffusers + CUDA graphs" not in r["train_img_per_s"]


def test_format_table_prints_each_figure_against_its_own_diffusers_ratio():
    """The "ddpm_lib eager" line of the table shows training ×diff 100/80 = 1.25, sampling ×diff 300/600 = 0.50
    and DDIM ×diff 4/6 = 0.67 in their own columns. Catches: the sampling column printing the training ratio
    (or any column printing another figure's ratio)."""
    rows = [{"row": "ddpm_lib eager", "status": "ok", "train_img_per_s": 100.0, "train_tflops": 0.5,
             "peak_train_memory_gib": None, "sample_img_per_s": 300.0, "sample_tflops": 0.25, "sampling": "eager",
             "ddim_s_per_1000": 6.0},
            {"row": "diffusers compiled", "status": "ok", "train_img_per_s": 80.0, "train_tflops": 0.4,
             "peak_train_memory_gib": None, "sample_img_per_s": 400.0, "sample_tflops": 0.3, "sampling": "compiled",
             "ddim_s_per_1000": 5.0},
            {"row": "diffusers + CUDA graphs", "status": "ok", "train_img_per_s": None, "train_tflops": None,
             "peak_train_memory_gib": None, "sample_img_per_s": 600.0, "sample_tflops": 0.45,
             "sampling": "compiled + CUDA graphs", "ddim_s_per_1000": 4.0}]
    r = {"preset": "tiny", "device": "cpu", "autocast": "fp32", "batch_size": 2, "sample_batch": 2, "iters": 1,
         "warmup": 0, "ddim_steps": 2, "compile_backend": "eager", "autotune": False, "torch": "x", "diffusers": "y",
         "parameters": {"ddpm_lib": 1}, "gflop_per_image_forward": {"ddpm_lib": 1.0}, "rows": rows,
         "ratios": ratios(rows), "ddgan": None, "activation_gib_fp32_estimate": 0.0, "weights_grads_adam_gib_fp32": 0.0}
    line = next(x for x in format_table(r).splitlines() if x.startswith("ddpm_lib eager"))
    fields = line[len("ddpm_lib eager"):].split()
    #          train img/s  TFLOP/s  ×diff   peak  sample img/s TFLOP/s ×diff  network  s/1000   ×diff
    assert fields == ["100.0", "0.500", "1.25", "—", "300.0", "0.250", "0.50", "eager", "6.000", "0.67"]


def test_measure_row_turns_the_timed_seconds_into_images_per_second(monkeypatch):
    """With every timed call taking 2 s: training 3 images × 4 iterations / 2 s = 6 img/s, sampling 5 × 4 / 2
    = 10 img/s, DDIM 2 s for 5 images = 400 s per 1,000 images. Catches: iterations left out of images/s,
    the training batch used for sampling (or the reverse), DDIM seconds not scaled to 1,000 images."""
    monkeypatch.setattr(bench_module, "_timer", lambda device: lambda fn, n: 2.0)
    r = bench_module.measure_row("ddpm_lib eager", "tiny", torch.device("cpu"), batch_size=3, sample_batch=5,
                                 iters=4, warmup=1, ddim_steps=1, backend="eager")
    assert r["train_img_per_s"] == pytest.approx(6.0)
    assert r["sample_img_per_s"] == pytest.approx(10.0)
    assert r["ddim_s_per_1000"] == pytest.approx(400.0)


def test_forward_flops_scale_with_the_batch_and_count_the_convolutions():
    model = UNet(image_size=8, in_channels=1, base_width=8, width_mult=(1,), blocks_per_level=1, attn_res=(),
                 heads=1, dropout=0.0)
    one, two = forward_flops(model, (1, 1, 8, 8), "cpu"), forward_flops(model, (2, 1, 8, 8), "cpu")
    assert two == 2 * one
    conv_in = 2 * 1 * 8 * 9 * 64                      # 2·C_in·C_out·k²·H·W multiply-adds for the first conv
    assert one > conv_in


def test_forward_flops_on_the_meta_device_count_attention():
    def flops(attn_res):
        with torch.device("meta"):
            model = UNet(image_size=8, in_channels=1, base_width=8, width_mult=(1,), blocks_per_level=1,
                         attn_res=attn_res, heads=1, dropout=0.0)
        return forward_flops(model, (1, 1, 8, 8), "meta")
    # attention at 8×8 adds three layers (one down, two up), N = 64 positions of C = 8 channels each:
    # 1×1 convs to q, k, v (2·N·C·3C) and out (2·N·C·C), then QKᵀ and AV (2·N·N·C each)
    N, C = 64, 8
    assert flops((8,)) - flops(()) == 3 * (2 * N * C * 3 * C + 2 * N * C * C + 2 * 2 * N * N * C)


# diffusers' side: the same architecture, the same call convention


def test_diffusers_ddpm_cifar10_has_our_parameters_and_flops():
    diffusers = pytest.importorskip("diffusers")
    ours = UNet.from_preset("ddpm-cifar10")
    theirs = DiffusersEps(diffusers.UNet2DModel(**diffusers_config("ddpm-cifar10")))
    assert count_parameters(ours) == count_parameters(theirs) == 35_746_307    # the paper's 35.7M
    assert [type(b).__name__ for b in theirs.unet.down_blocks] == ["DownBlock2D", "AttnDownBlock2D",
                                                                   "DownBlock2D", "DownBlock2D"]
    with torch.device("meta"):                        # FLOPs from shapes alone, no arithmetic
        ours_meta = UNet.from_preset("ddpm-cifar10")
        theirs_meta = DiffusersEps(diffusers.UNet2DModel(**diffusers_config("ddpm-cifar10")))
    assert forward_flops(ours_meta, (1, 3, 32, 32), "meta") == forward_flops(theirs_meta, (1, 3, 32, 32), "meta")


def test_diffusers_tiny_differs_only_by_the_layers_diffusers_lacks():
    diffusers = pytest.importorskip("diffusers")
    ours = count_parameters(UNet.from_preset("tiny"))
    theirs = count_parameters(diffusers.UNet2DModel(**diffusers_config("tiny")))
    # 4×4 versus 3×3 downsampling convolutions at 32 and 64 channels, and the GroupNorm (64 channels)
    # that diffusers leaves out of its middle attention when ResBlocks use scale-shift conditioning.
    assert ours - theirs == 7 * (32 * 32 + 64 * 64) + 2 * 64
    with pytest.raises(ValueError, match="linear attention"):
        diffusers_config("mnist")


def test_diffusers_time_embedding_is_ours_and_the_wrapper_shifts_t_by_one():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**diffusers_config("tiny")).eval()
    t = torch.tensor([1, 17, 500, 1000])
    torch.testing.assert_close(unet.time_proj(t), timestep_embedding(t, 32))
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        wrapped = DiffusersEps(unet)(x, t)
        torch.testing.assert_close(wrapped, unet(x, t - 1).sample)
        assert (wrapped - unet(x, t).sample).abs().max() > 1e-4      # t itself would be another input


class Recorder(nn.Module):
    """A stand-in network that records the timesteps it receives and returns a · x_t."""

    def __init__(self, diffusers_style: bool):
        super().__init__()
        self.a, self.diffusers_style, self.seen = nn.Parameter(torch.tensor(0.5)), diffusers_style, []

    def forward(self, sample, timestep):
        self.seen.append(timestep.clone())
        out = self.a * sample
        return type("Output", (), {"sample": out})() if self.diffusers_style else out


def test_both_networks_get_the_same_l_simple_step_with_0_and_1_based_timesteps():
    ours, theirs = Recorder(diffusers_style=False), Recorder(diffusers_style=True)
    config = TrainConfig(preset="tiny", T=21, batch_size=512, warmup=1, progress=False)
    x0 = torch.rand(512, 1, 2, 2) * 2 - 1
    losses = [Trainer(net, config, torch.device("cpu")).train_step(x0) for net in (ours, DiffusersEps(theirs))]
    t_ours, t_theirs = ours.seen[0], theirs.seen[0]
    # 512 draws from U{1..21} miss a value with probability below 21·(20/21)^512 ≈ 3e-10
    assert set(t_ours.tolist()) == set(range(1, 22))                 # the paper's t ∈ 1..T
    assert set(t_theirs.tolist()) == set(range(0, 21))               # diffusers numbers the steps 0..T−1
    torch.testing.assert_close(t_theirs, t_ours - 1)                 # the same draws, shifted
    torch.testing.assert_close(losses[0], losses[1])                 # the same L_simple on the same draws


def copy_our_weights_into(unet, ours: UNet) -> None:
    """Load our U-Net's weights into diffusers' counterpart, block by block (written from both models' layouts)."""
    c, sd, new = ours.config, ours.state_dict(), {}

    def res(src, dst):
        for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("time_proj", "time_emb_proj"), ("norm2", "norm2"),
                     ("conv2", "conv2"), ("skip", "conv_shortcut")):
            for p in ("weight", "bias"):
                if f"{src}.{a}.{p}" in sd:
                    new[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]

    def attn(src, dst):
        C = sd[f"{src}.out.weight"].shape[0]
        for p in ("weight", "bias"):
            new[f"{dst}.group_norm.{p}"] = sd[f"{src}.norm.{p}"]
            qkv = sd[f"{src}.qkv.{p}"].reshape(3 * C, -1).squeeze(-1)
            for i, name in enumerate(("to_q", "to_k", "to_v")):
                new[f"{dst}.{name}.{p}"] = qkv[i * C:(i + 1) * C]
            new[f"{dst}.to_out.0.{p}"] = sd[f"{src}.out.{p}"].reshape(C, -1).squeeze(-1)

    for p in ("weight", "bias"):
        new[f"conv_in.{p}"], new[f"conv_out.{p}"] = sd[f"conv_in.{p}"], sd[f"out.2.{p}"]
        new[f"conv_norm_out.{p}"] = sd[f"out.0.{p}"]
        new[f"time_embedding.linear_1.{p}"] = sd[f"time_mlp.0.{p}"]
        new[f"time_embedding.linear_2.{p}"] = sd[f"time_mlp.2.{p}"]
    levels, n, k = len(c["width_mult"]), c["blocks_per_level"], 0
    for i in range(levels):
        for j in range(n):
            res(f"down.{k}.0", f"down_blocks.{i}.resnets.{j}")
            if f"down.{k}.1.qkv.weight" in sd:
                attn(f"down.{k}.1", f"down_blocks.{i}.attentions.{j}")
            k += 1
        if i < levels - 1:
            for p in ("weight", "bias"):
                new[f"down_blocks.{i}.downsamplers.0.conv.{p}"] = sd[f"down.{k}.conv.{p}"]
            k += 1
    res("middle.0", "mid_block.resnets.0")
    attn("middle.1", "mid_block.attentions.0")
    res("middle.2", "mid_block.resnets.1")
    k = 0
    for u in range(levels):
        for j in range(n + 1):
            res(f"up.{k}.0", f"up_blocks.{u}.resnets.{j}")
            if f"up.{k}.1.qkv.weight" in sd:
                attn(f"up.{k}.1", f"up_blocks.{u}.attentions.{j}")
            k += 1
        if u < levels - 1:
            for p in ("weight", "bias"):
                new[f"up_blocks.{u}.upsamplers.0.conv.{p}"] = sd[f"up.{k}.conv.{p}"]
            k += 1
    assert len(new) == len(sd) + 4 * sum(key.endswith("qkv.weight") for key in sd)   # q, k, v split: 2 → 6 tensors
    unet.load_state_dict(new, strict=True)


@pytest.mark.parametrize("heads", [1, 2])
def test_diffusers_with_our_weights_computes_our_function(heads):
    """The mapping is the same network, not only the same parameter count: with our weights loaded,
    diffusers' output at its timestep k equals ours at the paper's t = k (so DiffusersEps at t + 1)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ours = UNet(image_size=16, in_channels=3, base_width=32, width_mult=(1, 2, 2), blocks_per_level=2, attn_res=(8,),
                heads=heads, dropout=0.1, time_cond="add", downsample="conv3").eval()
    unet = diffusers.UNet2DModel(**diffusers_config(ours.config)).eval()
    assert count_parameters(unet) == count_parameters(ours)
    copy_our_weights_into(unet, ours)
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([1, 10, 400, 999])
    with torch.no_grad():
        expected = ours(x, t)
        torch.testing.assert_close(unet(x, t).sample, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(DiffusersEps(unet)(x, t + 1), expected, atol=1e-5, rtol=1e-4)


def test_saved_activation_bytes_counts_what_autograd_keeps_for_the_backward():
    """A linear layer saves its input (B × 4 float32) and nothing else that is not a parameter; a ReLU
    after it saves its output once more; a view of a saved tensor is not counted twice; the estimate
    of a U-Net on the meta device grows linearly with the batch. Catches: parameters counted as activations,
    a storage counted once per view, an estimate that ignores the batch."""
    from ddpm_lib.bench import saved_activation_bytes
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    assert saved_activation_bytes(lambda: layer(x).sum()) == 5 * 4 * 4
    assert saved_activation_bytes(lambda: torch.relu(layer(x)).sum()) == 5 * 4 * 4 + 5 * 3 * 4
    y = torch.randn(6, requires_grad=True)
    assert saved_activation_bytes(lambda: (y.view(2, 3) * y.view(3, 2).T).sum()) == 6 * 4
    with torch.device("meta"):
        net = UNet.from_preset("tiny")
        two, four, six = (saved_activation_bytes(lambda: net(torch.zeros(b, 1, 32, 32), torch.ones(b, dtype=torch.long))
                                                 .sum()) for b in (2, 4, 6))
    assert six - four == four - two > 0 and two > 0                  # affine in the batch, growing with it


def test_a_diffusers_that_does_not_import_counts_as_not_installed(monkeypatch):
    """diffusers present but unimportable (a wheel installed without its own dependencies): the bench must say
    "not installed" for its rows rather than die in the middle. Catches: a check that only finds the package."""
    import sys
    monkeypatch.setitem(sys.modules, "diffusers", None)          # import diffusers now raises ImportError
    assert diffusers_available() is False



def test_a_stopped_bench_keeps_its_measured_rows_and_the_same_command_measures_only_the_others(
        tmp_path, monkeypatch, capsys):
    """A stop during the second row keeps the first in OUT.partial.json; the same command then measures only
    the second, writes both (naming the kept one) and removes the file; other settings are refused. Catches:
    rows lost at a time limit, a kept row measured again, a kept file of other settings used, a file left over."""
    out, keep = tmp_path / "b.json", tmp_path / "b.json.partial.json"
    real, measured, stop_at = bench_module.measure_row, [], [2]

    def measure(row, *args, **kwargs):
        measured.append(row)
        if len(measured) == stop_at[0]:
            raise KeyboardInterrupt
        return real(row, *args, **kwargs)
    monkeypatch.setattr(bench_module, "measure_row", measure)
    command = ["bench", *TINY, "--compile-backend", "eager", "--rows", "ddpm_lib-eager", "ddpm_lib-optimised",
               "--out", str(out)]
    assert main(command) == 130
    assert f"the rows measured so far are kept in {keep}" in capsys.readouterr().err
    assert not out.exists() and [r["row"] for r in json.loads(keep.read_text())["rows"]] == ["ddpm_lib eager"]
    first = json.loads(keep.read_text())["rows"][0]
    assert main([*command[:-2], "--iters", "2", "--out", str(out)]) == 1
    assert "other settings (iters 1 there, 2 here)" in capsys.readouterr().err
    measured.clear(), stop_at.clear(), stop_at.append(0)
    assert main(command) == 0
    assert measured == ["ddpm_lib optimised"] and not keep.exists()
    r = json.loads(out.read_text())
    assert [row["row"] for row in r["rows"]] == ["ddpm_lib eager", "ddpm_lib optimised"]
    assert r["rows"][0] == first and r["rows_from_an_earlier_run"] == ["ddpm_lib eager"]
    assert "kept in" in capsys.readouterr().out


def test_a_cpu_bench_of_a_large_preset_first_says_how_much_work_a_row_is(monkeypatch, capsys):
    """mnist preset, batch 2, sampling batch 2, 1 timed step, no warm-up, DDIM-2: a row is at most 3·2·1
    training passes + 2·(1 + 1) sampling passes (the compiled rows' one untimed) + 2·2·2 DDIM passes = 18
    forward passes. Catches: a CPU user left to wait hours without a word, and an estimate that leaves out a
    part of the row."""
    monkeypatch.setattr(bench_module, "measure_row", lambda row, *args, **kwargs: {
        "row": row, "status": "ok", "train_img_per_s": 1.0, "sample_img_per_s": 1.0, "ddim_s_per_1000": 1.0,
        "peak_train_memory_gib": None, "sampling": "eager"})
    r = bench("mnist", batch_size=2, sample_batch=2, iters=1, warmup=0, device="cpu", rows=("ddpm_lib eager",),
              ddim_steps=2)
    tflop = 18 * r["gflop_per_image_forward"]["ddpm_lib"] / 1e3
    assert f"bench on the CPU: each row computes up to {tflop:,.3g} TFLOP" in capsys.readouterr().out
    bench("tiny", batch_size=2, sample_batch=2, iters=1, warmup=0, device="cpu", rows=("ddpm_lib eager",),
          ddim_steps=2)
    assert "bench on the CPU" not in capsys.readouterr().out                # the smoke-test preset: no word


def test_measure_row_warms_up_compiles_and_samples_as_its_row_says(monkeypatch):
    """Timed calls (n per call) with warmup 0 and 4 iterations: an eager row makes [0, 4] training, [0, 4]
    sampling and the DDIM pair [1, 1] (one untimed); a compiled row warms its sampling network once at least
    ([0, 4, 1, 4, 1, 1]) and compiles its training step; "diffusers compiled" samples through
    torch.compile(model, dynamic=False); the "ddpm_lib optimised" network goes through compiled_eps_model
    with autotune passed on and, on a CPU, says "compiled (no graphs)"; the sampling-only row trains nothing;
    DDIM runs with --ddim-steps at the sampling batch. Catches: the first compiled call (compilation) timed,
    the untimed DDIM run left out, a "compiled" row whose trainer or sampler is not compiled, autotune
    dropped, a CPU row reported as replaying CUDA graphs, the DDIM step count ignored."""
    timed, compiled, ddim, configs, fast = [], [], [], [], []

    def timer(device):
        def run(fn, n):
            timed.append(n)
            if fn.__name__ == "ddim":
                fn()
            return 2.0
        return run
    monkeypatch.setattr(bench_module, "_timer", timer)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compiled.append((fn, kwargs)) or fn)
    monkeypatch.setattr(bench_module, "sample_ddim",
                        lambda eps, s, shape, steps, generator: ddim.append((shape, steps)))
    real_trainer, real_fast = bench_module.Trainer, bench_module.compiled_eps_model
    monkeypatch.setattr(bench_module, "Trainer", lambda model, config, dev, **kw:
                        configs.append(config) or real_trainer(model, config, dev, **kw))
    monkeypatch.setattr(bench_module, "compiled_eps_model",
                        lambda *args, **kw: fast.append(kw) or real_fast(*args, **kw))

    def measure(row, autotune=False):
        timed.clear(), compiled.clear(), ddim.clear(), configs.clear(), fast.clear()
        return bench_module.measure_row(row, "tiny", torch.device("cpu"), batch_size=3, sample_batch=5, iters=4,
                                        warmup=0, ddim_steps=3, backend="eager", autotune=autotune)
    r = measure("ddpm_lib eager")
    assert timed == [0, 4, 0, 4, 1, 1] and r["sampling"] == "eager" and not configs[0].compile
    assert compiled == [] and fast == [] and ddim == [((5, 1, 32, 32), 3)] * 2
    r = measure("ddpm_lib optimised", autotune=True)
    assert timed == [0, 4, 1, 4, 1, 1] and configs[0].compile and r["sampling"] == "compiled (no graphs)"
    assert fast[0]["autotune"] is True and fast[0]["backend"] == "eager" and fast[0]["cuda_graphs"] is True
    if diffusers_available():
        measure("diffusers compiled")
        assert timed == [0, 4, 1, 4, 1, 1] and configs[0].compile
        assert [kw for fn, kw in compiled if isinstance(fn, DiffusersEps)] == [{"backend": "eager", "dynamic": False}]
        r = measure("diffusers + CUDA graphs")
        assert timed == [1, 4, 1, 1] and r["train_img_per_s"] is None and len(fast) == 1


def test_ddgan_sampling_reports_seconds_per_1000_images_of_the_sampling_batch():
    """A timed draw of 2 s for a batch of 4 is 500 s per 1,000 images, with the 4 generator calls and the
    generator's parameter count. Catches: seconds per batch reported as per 1,000 images."""
    from ddpm_lib.ddgan_nets import build_generator, ddgan_spec
    g = bench_module.ddgan_sampling("tiny", 4, torch.device("cpu"), lambda fn, n: 2.0)
    assert g["s_per_1000"] == pytest.approx(500.0) and g["nfe"] == 4 and g["preset"] == "tiny"
    assert g["parameters"] == count_parameters(build_generator(ddgan_spec("tiny", (1, 32, 32))))


def fake_row(row, *args, **kwargs):
    """What measure_row returns, without measuring anything."""
    return {"row": row, "status": "ok", "sampling": "eager", "train_img_per_s": 10.0, "train_warmup_seconds": 1.0,
            "peak_train_memory_gib": None, "sample_img_per_s": 20.0, "sample_warmup_seconds": 1.0,
            "ddim_s_per_1000": 5.0}


QUICK = dict(batch_size=2, sample_batch=2, iters=1, warmup=0, device="cpu", rows=("ddpm_lib eager",), ddim_steps=2,
             compile_backend="eager")


@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(sample_batch=0), dict(warmup=-1), dict(rows=())])
def test_bench_refuses_empty_batches_a_negative_warmup_and_no_rows(bad, monkeypatch):
    """A training or sampling batch of 0, a negative warm-up or an empty list of rows is a ValueError before
    anything is measured. Catches: a check of iters alone (a batch of 0 divides by zero seconds), a bound
    that lets warmup −1 through, an empty table written without a word."""
    monkeypatch.setattr(bench_module, "measure_row", fake_row)
    monkeypatch.setattr(bench_module, "ddgan_sampling", lambda *args: {"status": "skipped"})
    with pytest.raises(ValueError, match="must be at least|unknown bench rows"):
        bench("tiny", **{**QUICK, **bad})


def test_a_kept_file_is_refused_when_any_setting_that_decides_the_rows_differs(tmp_path, monkeypatch):
    """bench(keep=…) with each setting changed in turn (preset, batch sizes, iterations, warm-up, DDIM steps,
    backend, autotune) refuses the file in one line naming that setting; with the same settings it takes the
    row from the file; DDIM-1000 (T itself) is a valid setting. Catches: a setting left out of those
    compared (rows of another DDIM step count or sampling batch passed off as this run's), T refused."""
    monkeypatch.setattr(bench_module, "measure_row", fake_row)
    monkeypatch.setattr(bench_module, "ddgan_sampling", lambda *args: {"status": "skipped"})
    keep = tmp_path / "b.json.partial.json"
    base = {**QUICK, "ddim_steps": 1000}
    assert bench("tiny", **base, keep=keep)["ddim_steps"] == 1000
    for change in (dict(batch_size=3), dict(sample_batch=3), dict(iters=2), dict(warmup=1), dict(ddim_steps=2),
                   dict(compile_backend="aot_eager"), dict(autotune=True)):
        (name, value), = change.items()
        there = base.get(name, False)
        with pytest.raises(ValueError, match=rf"other settings \({name} {there!r} there, {value!r} here\)"):
            bench("tiny", **{**base, **change}, keep=keep)
    with pytest.raises(ValueError, match="preset 'tiny' there, 'mnist' here"):
        bench("mnist", **base, keep=keep)
    assert bench("tiny", **base, keep=keep)["rows_from_an_earlier_run"] == ["ddpm_lib eager"]


def test_kept_rows_refuse_another_format_a_damaged_file_and_another_gpu(tmp_path):
    """A kept file of an older format or cut off mid-write is refused with a line saying to delete it; one
    measured on another GPU model is refused naming both; a matching one gives its rows by name; no file
    gives none. Catches: the format not checked (rows of another layout read as this version's), a setting
    (the GPU) left out of the comparison."""
    from ddpm_lib.bench import KEPT_FORMAT, kept_rows
    keep = tmp_path / "k.json"
    settings = {"device": "NVIDIA H100 80GB HBM3", "iters": 20}
    row = {"row": "ddpm_lib eager", "status": "ok"}
    keep.write_text(json.dumps({"format": "ddpm_lib-bench-rows-0", "settings": settings, "rows": [row]}))
    with pytest.raises(ValueError, match="not a bench file of this version: delete it"):
        kept_rows(keep, settings)
    keep.write_text('{"format": "ddpm_lib-bench-ro')
    with pytest.raises(ValueError, match="is not a bench file .*: delete it"):
        kept_rows(keep, settings)
    keep.write_text(json.dumps({"format": KEPT_FORMAT, "settings": settings, "rows": [row]}))
    assert kept_rows(keep, settings) == {"ddpm_lib eager": row}
    with pytest.raises(ValueError, match="device 'NVIDIA H100 80GB HBM3' there, 'NVIDIA A100-SXM4-80GB' here"):
        kept_rows(keep, {**settings, "device": "NVIDIA A100-SXM4-80GB"})
    assert kept_rows(tmp_path / "none.json", settings) == {} and kept_rows(None, settings) == {}


def test_the_kept_file_holds_every_row_measured_before_a_stop(tmp_path, monkeypatch):
    """Three rows, stopped while measuring the third: the kept file holds the first two, in order. Catches:
    only the latest row kept (a stop loses all the others)."""
    monkeypatch.setattr(bench_module, "ddgan_sampling", lambda *args: {"status": "skipped"})
    measured = []

    def measure(row, *args, **kwargs):
        if len(measured) == 2:
            raise KeyboardInterrupt
        measured.append(row)
        return fake_row(row)
    monkeypatch.setattr(bench_module, "measure_row", measure)
    keep = tmp_path / "b.json.partial.json"
    with pytest.raises(KeyboardInterrupt):
        bench("tiny", **{**QUICK, "rows": ROWS[:3]}, keep=keep)
    assert [r["row"] for r in json.loads(keep.read_text())["rows"]] == list(ROWS[:2])


def test_the_memory_figures_are_float32_bytes_in_gib(monkeypatch):
    """Weights, gradients and AdamW's two moments take 4 × 4 bytes per parameter; the activation estimate is
    saved_activation_bytes of one L_simple forward at the training batch on the meta device; both in GiB
    (2³⁰ bytes). Catches: three tensors per parameter instead of four, GB (10⁹) for GiB."""
    from ddpm_lib.bench import saved_activation_bytes
    from ddpm_lib.elbo import l_simple
    monkeypatch.setattr(bench_module, "measure_row", fake_row)
    monkeypatch.setattr(bench_module, "ddgan_sampling", lambda *args: {"status": "skipped"})
    r = bench("tiny", **{**QUICK, "batch_size": 3})
    assert r["weights_grads_adam_gib_fp32"] == 16 * count_parameters(UNet.from_preset("tiny")) / 2 ** 30
    with torch.device("meta"):
        net, xt = UNet.from_preset("tiny"), torch.zeros(3, 1, 32, 32)
        activations = saved_activation_bytes(lambda: l_simple(xt, net(xt, torch.ones(3, dtype=torch.long))))
    assert r["activation_gib_fp32_estimate"] == activations / 2 ** 30 > 0


def test_format_table_and_row_line_print_the_ddgan_the_target_and_the_peak_memory():
    """The table ends with "DDGAN-4 sampling: not measured (why)" when the DDGAN was not timed and with the
    two targets of 1.5: ddpm_lib optimised's training over diffusers' best row, its sampling over diffusers
    compiled; a row's line shows its peak training memory when there is one. Catches: a missing DDGAN left
    unexplained, a target line dropped or with another target, the peak memory never printed."""
    from ddpm_lib.bench_table import row_line
    rows = [{**fake_row("ddpm_lib optimised"), "train_img_per_s": 25.0, "sample_img_per_s": 30.0},
            {**fake_row("diffusers compiled"), "sample_img_per_s": 20.0}]
    for row in rows:
        row.update(train_tflops=0.5, sample_tflops=0.25)
    r = {"preset": "tiny", "device": "cpu", "autocast": "fp32", "batch_size": 2, "sample_batch": 2, "iters": 1,
         "warmup": 0, "ddim_steps": 2, "compile_backend": "eager", "autotune": False, "torch": "x", "diffusers": "y",
         "parameters": {"ddpm_lib": 1}, "gflop_per_image_forward": {"ddpm_lib": 1.0}, "rows": rows,
         "ratios": ratios(rows), "ddgan": {"status": "no DDGAN preset 'ddpm-cifar10'"},
         "activation_gib_fp32_estimate": 0.0, "weights_grads_adam_gib_fp32": 0.0}
    lines = format_table(r).splitlines()
    assert "DDGAN-4 sampling: not measured (no DDGAN preset 'ddpm-cifar10')" in lines
    assert lines[-2:] == ["training: ddpm_lib optimised / diffusers' best row = 2.50 (target: at least 1.5)",
                          "sampling, one evaluation: ddpm_lib optimised / diffusers compiled = 1.50 "
                          "(target: at least 1.5)"]
    assert ", peak 1.25 GiB)" in row_line({**rows[0], "peak_train_memory_gib": 1.25}, 2)
    assert "peak" not in row_line(rows[0], 2)


def test_the_cpu_warning_gives_the_minutes_at_a_laptops_speed(monkeypatch, capsys):
    """The CPU warning turns a row's TFLOP into minutes at 0.2 TFLOP/s (the mnist preset at the default
    sizes: minutes of work). Catches: seconds printed as minutes."""
    monkeypatch.setattr(bench_module, "measure_row", fake_row)
    monkeypatch.setattr(bench_module, "ddgan_sampling", lambda *args: {"status": "skipped"})
    sizes = dict(batch_size=64, sample_batch=64, iters=20, warmup=5, ddim_steps=50)
    r = bench("mnist", **{**QUICK, **sizes})
    work = bench_module.row_flops(r["gflop_per_image_forward"]["ddpm_lib"] * 1e9, *sizes.values())
    assert work / 0.2e12 / 60 > 1                                      # minutes, not seconds, tell apart
    assert f"({work / 0.2e12 / 60:,.1f} min at a laptop's 0.2 TFLOP/s)" in capsys.readouterr().out


def test_saved_activation_bytes_leaves_out_a_convolutions_weight():
    """A convolution whose input requires grad (as inside a network) saves that input and its weight, a
    Parameter: only the input's 2·8·8 float32 values count. Catches: the parameters counted as activations
    (the linear layer above saves no weight, since its input needs no gradient)."""
    from ddpm_lib.bench import saved_activation_bytes
    conv = torch.nn.Conv2d(2, 3, 3)
    y = torch.randn(1, 2, 8, 8, requires_grad=True)
    assert saved_activation_bytes(lambda: conv(y).sum()) == 2 * 8 * 8 * 4


def test_saved_activation_bytes_leaves_out_a_linear_layers_weight_saved_as_a_view():
    """Two linear layers, 4 → 3 → 1000, on 5 inputs: the second one's input needs a gradient, so autograd
    saves its weight as weight.t(), a view of the parameter. Only x (5·4 values) and the ReLU's output (5·3,
    saved by the ReLU and the second layer: one storage) count, 140 bytes, not the weight's 12,000 more.
    Catches: a parameter saved as a view counted as an activation (the U-Net's linear time-embedding layers:
    a constant 11 MB in ddpm-cifar10's estimate)."""
    from ddpm_lib.bench import saved_activation_bytes
    first, second = torch.nn.Linear(4, 3), torch.nn.Linear(3, 1000)
    x = torch.randn(5, 4)
    assert saved_activation_bytes(lambda: second(torch.relu(first(x))).sum()) == (5 * 4 + 5 * 3) * 4
