"""The U-Net: shapes, the paper's parameter count, time conditioning, attention's cost, bad input."""
import pytest
import torch

from ddpm_lib.unet import PRESETS, Attention, LinearAttention, ResBlock, UNet, count_parameters, timestep_embedding

SMALL = dict(base_width=16, width_mult=(1, 2, 2), blocks_per_level=1, attn_res=(8,), linear_attn_res=(16,),
             heads=2, dropout=0.0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_output_shape_equals_input_shape(size, channels):
    torch.manual_seed(0)
    model = UNet(image_size=32, in_channels=channels, **SMALL).eval()
    x = torch.randn(2, channels, size, size)
    assert model(x, torch.tensor([1, 1000])).shape == x.shape


def test_ddpm_cifar10_preset_has_the_papers_parameter_count():
    # Ho et al. 2020 report 35.7M parameters for CIFAR-10; the reference implementation has 35,746,307.
    assert count_parameters(UNet.from_preset("ddpm-cifar10")) == 35_746_307


def test_mnist_preset_has_a_few_million_parameters():
    assert 2e6 < count_parameters(UNet.from_preset("mnist")) < 10e6


def test_a_training_step_of_the_mnist_preset_at_batch_128_fits_a_16_gb_t4_by_a_wide_margin():
    """A Colab T4 has 16 GB. Estimated on the meta device (no memory used): the activations autograd keeps
    for the backward pass, in float32 (fp16 autocast, the T4's path, holds about half), plus θ, its
    gradient and AdamW's two moments (16 bytes a parameter) stay under half of it, leaving room for the
    EMA copy, cuDNN workspaces and the allocator. Catches: a preset that grows past a T4. (Today: about
    3.6 GiB of activations and 0.1 GiB of weights and optimizer state.)"""
    from ddpm_lib.bench import saved_activation_bytes
    from ddpm_lib.elbo import l_simple
    with torch.device("meta"):
        model = UNet.from_preset("mnist")
        x, t = torch.randn(128, 1, 32, 32), torch.ones(128, dtype=torch.long)
        activations = saved_activation_bytes(lambda: l_simple(x, model(x, t)))
    weights_grads_adam = 16 * count_parameters(model)
    assert 1 * 2 ** 30 < activations and activations + weights_grads_adam < 8 * 2 ** 30


def test_time_input_changes_the_output():
    torch.manual_seed(0)
    model = UNet(image_size=32, in_channels=1, **SMALL).eval()
    x = torch.randn(1, 1, 32, 32)
    out_early, out_late = model(x, torch.tensor([10])), model(x, torch.tensor([900]))
    assert (out_early - out_late).abs().mean() > 1e-3 * out_early.abs().mean()


@pytest.mark.parametrize("time_cond", ["scale_shift", "add"])
def test_resblock_uses_time_and_keeps_spatial_size(time_cond):
    torch.manual_seed(0)
    block = ResBlock(8, 16, temb_dim=12, time_cond=time_cond)
    x = torch.randn(2, 8, 6, 6)
    a, b = block(x, torch.zeros(2, 12)), block(x, torch.ones(2, 12))
    assert a.shape == (2, 16, 6, 6) and not torch.allclose(a, b)


def hand_group_norm(x, norm):
    """GroupNorm written out: standardise each sample's channel groups, then the per-channel affine map."""
    B, C, H, W = x.shape
    g = x.reshape(B, norm.num_groups, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + norm.eps)
    return g.reshape(B, C, H, W) * norm.weight[:, None, None] + norm.bias[:, None, None]


@pytest.mark.parametrize("time_cond", ["scale_shift", "add"])
def test_resblock_matches_its_equations_written_out(time_cond):
    """In float64, eval mode (dropout off), 8 → 16 channels: h = conv₁(SiLU(GN₁(x))); with scale_shift
    (a, b) are the two halves of W_t SiLU(t_emb) and h ← GN₂(h)·(1 + a) + b, with add h ← GN₂(h + W_t
    SiLU(t_emb)); out = conv₂(SiLU(h)) + skip(x), skip a 1×1 conv. Catches: ·a for ·(1 + a), the time
    added after GN₂, a norm or the residual dropped, SiLU missing before the time projection."""
    torch.manual_seed(0)
    block = ResBlock(8, 16, temb_dim=12, dropout=0.5, time_cond=time_cond).double().eval()
    with torch.no_grad():
        for p in block.parameters():                      # GroupNorm's affine off its (1, 0) start
            p.add_(0.3 * torch.randn_like(p))
    x, temb = torch.randn(2, 8, 5, 5, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    silu = torch.nn.functional.silu
    h = block.conv1(silu(hand_group_norm(x, block.norm1)))
    tp = (silu(temb) @ block.time_proj.weight.T + block.time_proj.bias)[:, :, None, None]
    if time_cond == "scale_shift":
        h = hand_group_norm(h, block.norm2) * (1 + tp[:, :16]) + tp[:, 16:]
    else:
        h = hand_group_norm(h + tp, block.norm2)
    expected = block.conv2(silu(h)) + block.skip(x)
    with torch.no_grad():
        torch.testing.assert_close(block(x, temb), expected, rtol=1e-12, atol=1e-12)


def test_timestep_embedding_matches_its_formula():
    t = torch.tensor([1, 7, 1000])
    emb = timestep_embedding(t, 8)
    freqs = torch.tensor([10_000 ** (-i / 4) for i in range(4)])
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb, expected)
    torch.testing.assert_close(timestep_embedding(7, 8), expected[1:2])        # one int: a batch of one


def test_attention_matches_a_hand_written_softmax_attention():
    torch.manual_seed(0)
    attn = Attention(8, heads=2).eval()
    x = torch.randn(2, 8, 4, 4)
    B, C, N = 2, 8, 16
    q, k, v = attn.qkv(attn.norm(x)).reshape(B, 3, 2, C // 2, N).unbind(1)       # (B, heads, d, N)
    weights = torch.softmax(q.transpose(-1, -2) @ k / (C // 2) ** 0.5, dim=-1)     # (B, heads, N, N)
    h = (weights @ v.transpose(-1, -2)).transpose(-1, -2).reshape(B, C, 4, 4)
    torch.testing.assert_close(attn(x), x + attn.out(h), atol=1e-5, rtol=1e-5)


def test_linear_attention_normalises_q_over_features_and_k_over_positions():
    torch.manual_seed(0)
    attn = LinearAttention(8, heads=2, dim_head=4).eval()
    x = torch.randn(1, 8, 4, 4)
    q, k, v = attn.qkv(attn.norm(x)).reshape(1, 3, 2, 4, 16).unbind(1)
    q, k = q.softmax(dim=-2) * 4 ** -0.5, k.softmax(dim=-1)
    h = torch.stack([(k[0, i] @ v[0, i].T).T @ q[0, i] for i in range(2)])           # per head: (KVᵀ)ᵀ Q
    torch.testing.assert_close(attn(x), x + attn.out(h.reshape(1, 8, 4, 4)), atol=1e-5, rtol=1e-5)


def test_linear_attention_flops_grow_linearly_full_attention_quadratically():
    from torch.utils.flop_counter import FlopCounterMode

    def flops(module, side):   # on the meta device SDPA takes its math path, which the counter sees
        with FlopCounterMode(display=False) as counter:
            module(torch.randn(1, 32, side, side, device="meta"))
        return counter.get_total_flops()

    full, linear = Attention(32, heads=1).to("meta"), LinearAttention(32, heads=1, dim_head=32).to("meta")
    # quadrupling the positions (side ×2): linear ×4, full ≥ ×12 (its N² term dominates at this size)
    assert flops(linear, 32) / flops(linear, 16) == pytest.approx(4.0, rel=0.05)
    assert flops(full, 32) / flops(full, 16) > 12


def test_bad_input_gets_a_clear_error():
    model = UNet(image_size=32, in_channels=1, **SMALL)
    with pytest.raises(ValueError, match="cannot be halved"):
        model(torch.randn(1, 1, 30, 30), torch.tensor([5]))
    with pytest.raises(ValueError, match=r"expected images \(B, 1, H, W\)"):
        model(torch.randn(1, 3, 32, 32), torch.tensor([5]))
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        UNet.from_preset("cifar")
    with pytest.raises(ValueError, match="cannot be halved"):
        UNet(image_size=36, width_mult=(1, 2, 2, 2))


# ------------------------------------------------------------------ blocks against their definitions

def test_group_norm_has_32_groups_or_the_largest_power_of_two_dividing_the_channels():
    """GroupNorm written out with the group count the paper uses (32), or for fewer channels the largest
    power of two dividing them: 64 → 32, 96 → 32, 48 → 16, 8 → 8, 24 → 8. Catches: 16 groups, one group
    (LayerNorm), one group per channel (InstanceNorm)."""
    from ddpm_lib.unet import group_norm
    torch.manual_seed(0)
    for channels, groups in ((64, 32), (96, 32), (48, 16), (8, 8), (24, 8)):
        norm = group_norm(channels).double()
        x = torch.randn(2, channels, 3, 3, dtype=torch.float64) * torch.linspace(0.5, 3.0, channels,
                                                                                dtype=torch.float64)[:, None, None]
        g = x.reshape(2, groups, -1)
        expected = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5))
        with torch.no_grad():
            torch.testing.assert_close(norm(x), expected.reshape(x.shape), rtol=1e-10, atol=1e-10)


def test_resblock_dropout_acts_between_the_silu_and_the_second_conv():
    """In train mode with p = 0.5, float64: out = conv₂(dropout(SiLU(h))) + skip(x), the mask drawn from the
    same seed as torch's own F.dropout (one draw per call). Catches: dropout after conv₂ or before the
    SiLU, dropout on the residual, no dropout in train mode."""
    torch.manual_seed(0)
    block = ResBlock(8, 16, temb_dim=12, dropout=0.5, time_cond="scale_shift").double().train()
    x, temb = torch.randn(2, 8, 5, 5, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    silu = torch.nn.functional.silu
    with torch.no_grad():
        h = block.conv1(silu(hand_group_norm(x, block.norm1)))
        tp = (silu(temb) @ block.time_proj.weight.T + block.time_proj.bias)[:, :, None, None]
        h = silu(hand_group_norm(h, block.norm2) * (1 + tp[:, :16]) + tp[:, 16:])
        torch.manual_seed(123)
        expected = block.conv2(torch.nn.functional.dropout(h, 0.5, training=True)) + block.skip(x)
        torch.manual_seed(123)
        got = block(x, temb)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():                                          # and the mask did something
        assert not torch.allclose(got, block.conv2(h) + block.skip(x))


@pytest.mark.parametrize("kind, kernel", [("conv4", 4), ("conv3", 3)])
def test_downsample_is_a_strided_conv_with_the_named_kernel(kind, kernel):
    """Downsample = conv with a kernel×kernel weight, stride 2, padding 1 (conv4: 4×4; conv3: the paper's
    3×3), 8×8 → 4×4, against F.conv2d with those numbers written here. Catches: a 3×3 kernel for conv4
    (same output shape), another stride or padding, a pooling layer."""
    from ddpm_lib.unet import Downsample
    torch.manual_seed(0)
    down = Downsample(6, kind).double()
    assert tuple(down.conv.weight.shape) == (6, 6, kernel, kernel)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(x, down.conv.weight, down.conv.bias, stride=2, padding=1)
    with torch.no_grad():
        got = down(x)
    assert got.shape == (2, 6, 4, 4)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_upsample_repeats_each_pixel_2x2_then_applies_a_3x3_conv():
    """Upsample = 3×3 conv (padding 1) of the image with every pixel repeated into a 2×2 block (nearest ×2),
    the repetition written with repeat_interleave. Catches: bilinear interpolation, the conv dropped,
    the conv before the upsampling."""
    from ddpm_lib.unet import Upsample
    torch.manual_seed(0)
    up = Upsample(4).double()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    doubled = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    expected = torch.nn.functional.conv2d(doubled, up.conv.weight, up.conv.bias, padding=1)
    assert tuple(up.conv.weight.shape) == (4, 4, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(up(x), expected, rtol=1e-12, atol=1e-12)


def test_linear_attention_output_is_a_1x1_conv_then_a_one_group_groupnorm():
    """LinearAttention's output map, written out: 1×1 conv from heads·dim_head to ch channels, then
    GroupNorm with one group (standardise each sample over all its channels and positions, then the
    per-channel affine), then the residual. Catches: the norm dropped or given more groups."""
    torch.manual_seed(0)
    attn = LinearAttention(8, heads=2, dim_head=4).double().eval()
    with torch.no_grad():
        for p in attn.out.parameters():                           # GroupNorm's affine off its (1, 0) start
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    q, k, v = attn.qkv(attn.norm(x)).reshape(2, 3, 2, 4, 16).unbind(1)
    q, k = q.softmax(dim=-2) * 4 ** -0.5, k.softmax(dim=-1)
    h = torch.einsum("bhde,bhdn->bhen", torch.einsum("bhdn,bhen->bhde", k, v), q).reshape(2, 8, 4, 4)
    conv, norm = attn.out[0], attn.out[1]
    c = torch.nn.functional.conv2d(h, conv.weight, conv.bias)
    flat = c.reshape(2, -1)
    standard = (flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + 1e-5)
    expected = x + standard.reshape(c.shape) * norm.weight[:, None, None] + norm.bias[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, rtol=1e-10, atol=1e-10)


def test_time_embedding_is_the_sinusoid_of_the_papers_t_through_linear_silu_linear():
    """UNet.embed_time(x, t) = W₂·SiLU(W₁·emb(t) + b₁) + b₂ with emb(t) = [sin(t·ω_k), cos(t·ω_k)],
    ω_k = 10000^(−k/(d/2)), d = base_width, t the paper's t as given (float64, written out here).
    Catches: the SiLU between the two linear maps dropped, t − 1 (0-based) embedded instead of t."""
    torch.manual_seed(0)
    model = UNet(image_size=32, in_channels=1, **SMALL).double().eval()
    x, t = torch.zeros(3, 1, 32, 32, dtype=torch.float64), torch.tensor([1, 17, 1000])
    d = SMALL["base_width"]
    freqs = torch.tensor([10_000 ** (-k / (d // 2)) for k in range(d // 2)], dtype=torch.float64)
    emb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
    l1, l2 = model.time_mlp[0], model.time_mlp[2]
    expected = torch.nn.functional.silu(emb @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias
    with torch.no_grad():
        torch.testing.assert_close(model.embed_time(x, t), expected, rtol=1e-4, atol=1e-4)   # emb is float32


def test_each_up_block_takes_h_then_the_matching_skip_on_channels():
    """The up path's first ResBlock receives cat([h, skip]) on channels: h the middle block's output first,
    then the last down block's output (the deepest skip); the last up block gets conv_in's output as its
    skip. Recorded with forward hooks. Catches: cat([skip, h]) (the same shapes, so only the order of the
    input channels of the conv changes: weights of a trained U-Net stop meaning what they did), skips
    popped from the wrong end."""
    from ddpm_lib.unet import Upsample
    torch.manual_seed(0)
    model = UNet(image_size=32, in_channels=1, **SMALL).eval()
    seen = {}
    model.middle.register_forward_hook(lambda m, args, out: seen.__setitem__("middle", out))
    model.down[-1].register_forward_hook(lambda m, args, out: seen.__setitem__("down_last", out))
    model.conv_in.register_forward_hook(lambda m, args, out: seen.__setitem__("conv_in", out))
    model.up[0].register_forward_hook(lambda m, args, out: seen.__setitem__("up_first_in", args[0]))
    model.up[-1].register_forward_hook(lambda m, args, out: seen.__setitem__("up_last_in", args[0]))
    prev = {}
    ups = [b for b in model.up]
    ups[-2].register_forward_hook(lambda m, args, out: prev.__setitem__("h", out))
    assert not isinstance(ups[-1], Upsample)
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32), torch.tensor([3, 700]))
    torch.testing.assert_close(seen["up_first_in"], torch.cat([seen["middle"], seen["down_last"]], dim=1),
                               rtol=0, atol=0)
    torch.testing.assert_close(seen["up_last_in"], torch.cat([prev["h"], seen["conv_in"]], dim=1), rtol=0, atol=0)


def test_the_tiny_preset_is_the_architecture_of_the_shipped_ddpm():
    """The card of data/laptop/ddpm_mnist.pt records the command (``--preset tiny``) and the architecture it
    trained; PRESETS["tiny"] (with the data's image_size and channels) must still be that architecture, or
    the notebooks' quick retraining ("tiny") no longer reproduces the shipped model. Catches: a changed width,
    depth, attention resolution or head count of the tiny preset."""
    import json
    from pathlib import Path
    card = json.loads((Path(__file__).resolve().parent.parent / "data" / "laptop" / "ddpm_mnist.json").read_text())
    assert "--preset tiny" in card["command"]
    shipped = {k: tuple(v) if isinstance(v, list) else v for k, v in card["model_spec"]["config"].items()}
    assert {**PRESETS["tiny"], "image_size": 32, "in_channels": 1} == shipped


def test_the_head_count_and_dropout_reach_every_block():
    """UNet(heads=h, dropout=p): every full-attention layer (at attn_res and in the middle) splits into h
    heads and every ResBlock drops with probability p (the ddpm-cifar10 preset's 0.1). Neither changes a
    parameter count, so the count test cannot see them. Catches: the middle's or the levels' attention
    built with one head, the dropout not passed on to the ResBlocks."""
    from ddpm_lib.unet import Attention as Full
    model = UNet(image_size=32, in_channels=1, **{**SMALL, "heads": 4, "dropout": 0.3})
    attn = [m for m in model.modules() if isinstance(m, Full)]
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(attn) == 1 + 1 + 2 and all(m.heads == 4 for m in attn)       # middle, 8×8: down (1) and up (2)
    assert len(blocks) > 5 and all(m.dropout.p == 0.3 for m in blocks)
    assert all(m.dropout.p == 0.1 for m in UNet.from_preset("ddpm-cifar10").modules() if isinstance(m, ResBlock))


def test_the_unet_refuses_a_time_input_that_is_not_integer_timesteps_for_the_batch():
    """model(xt, t) takes t as one int or an integer tensor (B,) (the paper's t). A float t (t/T by
    mistake), a bool, three entries for a batch of two or a (1, 2) tensor is a ValueError naming the shape.
    Catches: t silently broadcast or embedded as given (t = 0.5 runs and gives noise-level nonsense), or a bare
    RuntimeError from expand."""
    torch.manual_seed(0)
    m = UNet(image_size=16, base_width=8, width_mult=(1, 2), blocks_per_level=1, attn_res=(), heads=1).eval()
    x = torch.zeros(2, 1, 16, 16)
    for bad in (torch.tensor([0.5, 0.5]), torch.tensor([True, False]), torch.tensor([1, 2, 3]), torch.tensor([[1, 2]])):
        with pytest.raises(ValueError, match=r"integer tensor of shape \(2,\)"):
            m(x, bad)
    with torch.no_grad():
        assert torch.equal(m(x, 7), m(x, torch.tensor([7, 7])))
        assert torch.equal(m(x, torch.tensor([7])), m(x, torch.tensor([7, 7])))


@pytest.mark.parametrize("preset", ["mnist", "ddpm-cifar10", "tiny"])
def test_each_attention_kind_sits_at_the_resolutions_its_preset_names(preset):
    """Forward hooks record the side of the feature map each attention layer sees: full attention exactly at
    ``attn_res`` (and in the middle block, at the lowest resolution), linear attention exactly at
    ``linear_attn_res``, after each ResBlock of those levels (blocks_per_level down, one more up). Catches:
    the mnist preset's 16×16 linear attention silently dropped or swapped for full attention, attention at the
    wrong level."""
    config = PRESETS[preset]
    model = UNet(**config).eval()
    seen = {"full": [], "linear": []}
    for module in model.modules():
        kind = "full" if isinstance(module, Attention) else "linear" if isinstance(module, LinearAttention) else None
        if kind:
            module.register_forward_hook(lambda m, args, out, kind=kind: seen[kind].append(args[0].shape[-1]))
    with torch.no_grad():
        model(torch.zeros(1, config["in_channels"], 32, 32), torch.tensor([10]))
    per_res = 2 * config["blocks_per_level"] + 1                       # down blocks, then one more up
    lowest = 32 // 2 ** (len(config["width_mult"]) - 1)
    assert sorted(seen["full"]) == sorted([r for r in config["attn_res"] for _ in range(per_res)] + [lowest])
    assert sorted(seen["linear"]) == sorted(r for r in config["linear_attn_res"] for _ in range(per_res))
    if preset == "mnist":
        assert seen["linear"] and set(seen["linear"]) == {16}
