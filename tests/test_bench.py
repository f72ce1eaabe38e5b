"""The benchmark command runs on a CPU at a tiny size and reports consistent figures."""
import json

import pytest

from ddpm_lib.bench import bench, forward_flops
from ddpm_lib.cli import main
from ddpm_lib.unet import UNet


def test_bench_reports_throughput_and_flops_that_agree(capsys):
    r = bench("tiny", batch_size=4, sample_batch=4, iters=2, warmup=1, device="cpu")
    assert r["train_img_per_s"] > 0 and r["sample_img_per_s"] > 0 and r["peak_train_memory_gib"] is None
    # TFLOP/s is FLOPs × images/s: three forward passes per training image, one per sampled image
    assert r["train_tflops"] == pytest.approx(3 * r["gflop_per_image_forward"] * 1e9 * r["train_img_per_s"] / 1e12)
    assert r["sample_tflops"] == pytest.approx(r["gflop_per_image_forward"] * 1e9 * r["sample_img_per_s"] / 1e12)


def test_forward_flops_scale_with_the_batch_and_count_the_convolutions():
    model = UNet(image_size=8, in_channels=1, base_width=8, width_mult=(1,), blocks_per_level=1, attn_res=(),
                 heads=1, dropout=0.0)
    one, two = forward_flops(model, (1, 1, 8, 8), "cpu"), forward_flops(model, (2, 1, 8, 8), "cpu")
    assert two == 2 * one
    conv_in = 2 * 1 * 8 * 9 * 64                      # 2·C_in·C_out·k²·H·W multiply-adds for the first conv
    assert one > conv_in


def test_bench_command_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--batch-size", "2", "--sample-batch", "2", "--iters", "1",
                 "--warmup", "0", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "training" in printed and "sampling" in printed and "TFLOP/s" in printed
    assert json.loads(out.read_text())["preset"] == "tiny"
    assert main(["bench", "--preset", "tiny", "--iters", "0", "--device", "cpu"]) == 1
