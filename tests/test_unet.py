"""The U-Net: shapes, the paper's parameter count, time conditioning, attention's cost, bad input."""
import pytest
import torch

from ddpm_lib.unet import Attention, LinearAttention, ResBlock, UNet, count_parameters, timestep_embedding

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
    (s, b) are the two halves of W_t SiLU(t_emb) and h ← GN₂(h)·(1 + s) + b, with add h ← GN₂(h + W_t
    SiLU(t_emb)); out = conv₂(SiLU(h)) + skip(x), skip a 1×1 conv. Catches: ·s for ·(1 + s), the time
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
