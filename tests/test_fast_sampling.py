"""Compiled (and, on CUDA, CUDA-graph) ε-models give the eager samplers' samples for the same seed."""
import pytest
import torch

from ddpm_lib.ddim import sample_ddim
from ddpm_lib.fast_sampling import compiled_eps_model
from ddpm_lib.sampling import sample_ddpm
from ddpm_lib.schedules import make_schedule
from ddpm_lib.toy_model import ToyEpsModel
from ddpm_lib.unet import UNet

BATCH = (64, 2)


@pytest.fixture(scope="module")
def toy():
    """A small MLP ε-model compiled by Inductor on the CPU (the real compiler: about 20 s the first time).

    Compiled with one thread, as the tests run (conftest): the thread count is part of what a compiled
    graph assumes, and another count would compile it again."""
    torch.manual_seed(0)
    model = ToyEpsModel(hidden=32).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return model, compiled_eps_model(model, BATCH, backend="inductor", cuda_graphs=True)
    finally:
        torch.set_num_threads(threads)


def test_the_eps_model_depends_on_t_so_the_comparisons_below_mean_something(toy):
    model, _ = toy
    x = torch.randn(BATCH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        early, late = model(x, torch.ones(64, dtype=torch.long)), model(x, torch.full((64,), 50))
    assert (early - late).abs().max() > 1e-2


def test_compiled_eps_model_matches_the_eager_network_call_by_call(toy):
    model, eps = toy
    assert not eps.cuda_graphs and eps.compile_seconds > 0          # a CPU compiles only
    x = torch.randn(BATCH, generator=torch.Generator().manual_seed(2))
    t = torch.randint(1, 51, (64,), generator=torch.Generator().manual_seed(3))
    first = eps(x, t)
    second = eps(2 * x, t)                                          # a second call leaves the first result alone
    with torch.no_grad():
        torch.testing.assert_close(first, model(x, t), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(second, model(2 * x, t), atol=1e-5, rtol=1e-5)
    assert first.data_ptr() != second.data_ptr()


def test_fewer_samples_are_padded_to_the_static_batch_and_get_their_own_eps(toy):
    """40 samples through the model compiled for 64: the eager network's ε of those 40 (not of a padded
    batch's first rows computed from other inputs), in a tensor of 40 rows. Catches: the padding rows
    returned, the padded t or x_t placed before the samples."""
    model, eps = toy
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(8))
    t = torch.randint(1, 51, (40,), generator=torch.Generator().manual_seed(9))
    out = eps(x, t)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x, t), atol=1e-5, rtol=1e-5)
    assert out.shape == (40, 2) and out.is_contiguous()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim-eta0", "ddim-eta1"])
def test_samplers_give_the_eager_samples_for_the_same_seed(toy, sampler):
    model, eps = toy
    s = make_schedule("linear", T=50)

    def draw(net, seed):
        g = torch.Generator().manual_seed(seed)
        if sampler == "ddpm":                                       # a fresh noise draw at every step
            return sample_ddpm(net, s, BATCH, generator=g)
        return sample_ddim(net, s, BATCH, steps=10, eta=0.0 if sampler == "ddim-eta0" else 1.0, generator=g)

    eager, compiled = draw(model, 4), draw(eps, 4)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    assert (draw(model, 5) - eager).abs().max() > 1e-1              # another seed: other samples


def test_the_static_shape_and_eval_mode_are_enforced(toy):
    model, eps = toy
    for bad in ((65, 2), (32, 3), (0, 2)):                           # more samples, another shape, none
        with pytest.raises(ValueError, match="static batch shape"):
            eps(torch.zeros(bad), torch.ones(bad[0], dtype=torch.long))
    with pytest.raises(ValueError, match="t must be a long tensor of shape"):
        eps(torch.zeros(BATCH), torch.ones(32, dtype=torch.long))
    with pytest.raises(ValueError, match="eval mode"):
        compiled_eps_model(ToyEpsModel(hidden=8).train(), BATCH, backend="eager")
    with pytest.raises(ValueError, match="backend"):
        compiled_eps_model(model, BATCH, backend="tensorrt")


def test_amp_dtype_runs_the_network_under_autocast_and_warmup_calls_it_that_often(monkeypatch):
    """amp_dtype=bf16 gives exactly the network's output under CPU bf16 autocast (visibly off the fp32
    one), and the warm-up calls the network ``warmup`` times (torch.compile made the identity, so the
    calls are counted in Python). Catches: amp_dtype ignored; a warm-up one call short, which leaves
    CUDA-graph recording to the first timed sampler step."""
    torch.manual_seed(0)
    model = ToyEpsModel(hidden=32).eval()
    x, t = torch.randn(BATCH, generator=torch.Generator().manual_seed(7)), torch.full((64,), 20)
    eps = compiled_eps_model(model, BATCH, backend="eager", amp_dtype=torch.bfloat16, warmup=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x, t)
    with torch.no_grad():
        fp32 = model(x, t)
    assert torch.equal(eps(x, t), expected) and (eps(x, t) - fp32).abs().max() > 1e-4
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(model, "forward", lambda xt, t: calls.append(1) or xt)
    for warmup in (0, 1, 3):
        calls.clear()
        compiled_eps_model(model, BATCH, backend="eager", warmup=warmup)
        assert len(calls) == warmup


def test_images_through_the_same_path_traced_without_code_generation():
    """The U-Net's image path through ``compiled_eps_model`` (aot_eager: the traced graph, run eagerly)."""
    torch.manual_seed(0)
    model = UNet(image_size=8, in_channels=1, base_width=8, width_mult=(1, 2), blocks_per_level=1, attn_res=(4,),
                 heads=1, dropout=0.1).eval()
    eps = compiled_eps_model(model, (3, 1, 8, 8), backend="aot_eager", warmup=1)
    s = make_schedule("linear", T=25)
    samples = [sample_ddim(net, s, (3, 1, 8, 8), steps=5, eta=1.0, generator=torch.Generator().manual_seed(6))
               for net in (model, eps)]
    torch.testing.assert_close(samples[1], samples[0], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_sampling_equals_eager_on_the_gpu():
    dev = torch.device("cuda")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False   # compare in true fp32
    try:
        torch.manual_seed(0)
        model = UNet.from_preset("tiny").to(dev).eval()
        shape = (16, 1, 32, 32)
        eps = compiled_eps_model(model, shape, dev, cuda_graphs=True)
        assert eps.cuda_graphs
        x1, x2 = torch.randn(shape, device=dev), torch.randn(shape, device=dev)
        t = torch.full((16,), 300, device=dev)
        first, second = eps(x1, t), eps(x2, t)                      # the second replay must not overwrite the first
        with torch.no_grad():
            torch.testing.assert_close(first, model(x1, t), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(second, model(x2, t), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(eps(x1[:5], t[:5]), model(x1[:5], t[:5]), atol=1e-4, rtol=1e-4)   # padded
        s = make_schedule("linear", T=100).to(dev)
        for draw in (lambda net, g: sample_ddim(net, s, shape, steps=20, eta=1.0, generator=g),
                     lambda net, g: sample_ddpm(net, s, shape, generator=g)):
            eager = draw(model, torch.Generator(dev).manual_seed(7))
            graphed = draw(eps, torch.Generator(dev).manual_seed(7))
            # An untrained network's samples grow to about 10³ over the chain, and compiled kernels add in another
            # order: compare to the samples' own scale (a wrong replay is off by O(1) of it).
            assert (graphed - eager).abs().max() <= 1e-5 * eager.abs().max()
        bf16 = compiled_eps_model(model, shape, dev, cuda_graphs=True, amp_dtype=torch.bfloat16)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            reference = model(x1, t).float()
        assert (bf16(x1, t).float() - reference).abs().max() <= 0.05 * reference.abs().max()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


class ChannelsLastDouble(torch.nn.Module):
    """ε(x, t) = 2·x + w, returned in the channels_last layout (as a channels_last U-Net's output is)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, xt, t):
        return (2 * xt + self.w).contiguous(memory_format=torch.channels_last)


def test_calls_return_standard_layout_tensors_that_record_no_gradient():
    """A network whose output is channels_last and whose parameter requires grad, compiled with the
    "eager" backend: each call returns 2x + w in the standard (contiguous) layout, with requires_grad False
    and no graph. Catches: the network's output returned as it is (a channels_last x_t for the sampler, a
    recompilation at the next call's layout), calls made outside no_grad (a graph kept alive per step)."""
    model = ChannelsLastDouble().eval()
    eps = compiled_eps_model(model, (2, 3, 4, 4), backend="eager", warmup=1)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = eps(x, torch.ones(2, dtype=torch.long))
    assert out.is_contiguous() and not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, 2 * x + 0.5, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [-1, -3, 1.5, True])
def test_a_negative_or_fractional_warmup_is_refused(bad):
    """warmup counts calls: a negative number, a fraction or a bool gives ValueError before compiling.
    Catches: a bound that lets −1 through (range(−1) makes no warm-up call and compile time lands inside
    the first timed sampler step)."""
    with pytest.raises(ValueError, match="warmup"):
        compiled_eps_model(ToyEpsModel(hidden=8).eval(), BATCH, backend="eager", warmup=bad)


@pytest.mark.parametrize("preset, num_classes", [("mnist", 0), ("ddpm-cifar10", 0), ("mnist", 10)])
def test_each_presets_network_is_one_graph_on_a_gpu(preset, num_classes):
    """A CUDA graph can only replay a network that ``torch.compile`` captures whole: a graph break (an
    ``.item()``, a Python branch on a tensor) would split it and sync with the host at every sampler step.
    Traced by Dynamo's ``explain`` on the meta device, which takes the code's GPU path and computes nothing
    (so the 35.7M-parameter preset costs no time). Catches: any host read added to the networks' forward,
    such as a label range check by ``int(y.max())`` in the class-conditional U-Net."""
    from ddpm_lib.checkpoint import build_model, model_spec
    torch._dynamo.reset()
    channels = 3 if preset == "ddpm-cifar10" else 1
    model = build_model(model_spec((channels, 32, 32), preset, num_classes)).to("meta").eval()
    xt, t = torch.randn(2, channels, 32, 32, device="meta"), torch.tensor([1, 1000], device="meta")
    inputs = (xt, t, torch.tensor([0, num_classes], device="meta")) if num_classes else (xt, t)
    report = torch._dynamo.explain(model)(*inputs)
    assert (report.graph_count, report.graph_break_count) == (1, 0), [b.reason for b in report.break_reasons]
    torch._dynamo.reset()


def test_torch_compile_gets_the_mode_that_cuda_graphs_autotune_and_backend_ask_for(monkeypatch):
    """torch.compile is called with the backend asked for, dynamic=False and the mode: "reduce-overhead" for
    CUDA graphs, none without them, "max-autotune" / "max-autotune-no-cudagraphs" with autotune, and none
    for a tracing backend; on a CPU ``cuda_graphs`` stays False whatever was asked (torch.compile made the
    identity here, so no Inductor warning says graphs were skipped). Catches: the two autotune modes
    swapped, CUDA graphs asked for without cuda_graphs, a mode given to aot_eager, autotune not passed on,
    dynamic shapes (a recompilation per batch size), a CPU run reported as replaying CUDA graphs."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    model = ToyEpsModel(hidden=8).eval()
    for backend, cuda_graphs, autotune, mode in (("inductor", True, False, "reduce-overhead"),
                                                 ("inductor", False, False, None),
                                                 ("inductor", True, True, "max-autotune"),
                                                 ("inductor", False, True, "max-autotune-no-cudagraphs"),
                                                 ("aot_eager", True, True, None), ("eager", True, False, None)):
        eps = compiled_eps_model(model, BATCH, backend=backend, cuda_graphs=cuda_graphs, autotune=autotune, warmup=1)
        assert seen[-1] == {"backend": backend, "mode": mode, "dynamic": False}, (backend, cuda_graphs, autotune)
        assert eps.cuda_graphs is False


def test_amp_dtype_float16_is_the_dtype_the_network_runs_in():
    """amp_dtype=float16 on a CPU gives exactly the network's output under float16 autocast, which differs
    from its output under bfloat16 (the dtype CPU autocast picks by itself). Catches: the dtype not passed
    to torch.autocast (bf16 whatever was asked)."""
    torch.manual_seed(0)
    model = ToyEpsModel(hidden=32).eval()
    x, t = torch.randn(BATCH, generator=torch.Generator().manual_seed(7)), torch.full((64,), 20)
    eps = compiled_eps_model(model, BATCH, backend="eager", amp_dtype=torch.float16, warmup=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        expected = model(x, t)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(x, t)
    assert torch.equal(eps(x, t), expected) and (expected - bf16).abs().max() > 1e-4


def test_the_padding_rows_are_zeros_at_t_1_and_t_must_be_one_dimensional(monkeypatch):
    """3 samples through a model built for 5 reach the network as those 3 followed by two rows of zeros at
    t = 1 (a valid timestep of 1..T); t of shape (5, 1) is refused. Catches: padding at t = 0 (outside the
    paper's 1..T: a network indexing a table at t − 1 reads its last entry, a range check fails), a t check
    that looks only at the length."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, xt, t):
            seen.append((xt.clone(), t.clone()))
            return 2 * xt
    eps = compiled_eps_model(Recorder().eval(), (5, 2), backend="eager", warmup=0)
    x = torch.arange(6.0).reshape(3, 2) + 1
    torch.testing.assert_close(eps(x, torch.tensor([4, 5, 6])), 2 * x, rtol=0, atol=0)
    xt, t = seen[-1]
    assert torch.equal(xt, torch.cat([x, torch.zeros(2, 2)])) and t.tolist() == [4, 5, 6, 1, 1]
    with pytest.raises(ValueError, match="t must be a long tensor of shape"):
        eps(torch.zeros(5, 2), torch.ones(5, 1, dtype=torch.long))


@pytest.mark.parametrize("bad", [(64,), (0, 2), (4, 0), (4, 1, -1, 8)])
def test_a_batch_shape_without_a_batch_or_with_an_empty_size_is_refused(bad):
    """batch_shape must be (B, ...) with every size at least 1: (64,) (no example shape), a zero batch or an
    empty image size give a ValueError before compiling. Catches: the length check or the size check
    dropped (a failure deep inside the warm-up, or a model built for no samples)."""
    with pytest.raises(ValueError, match="batch_shape must be"):
        compiled_eps_model(ToyEpsModel(hidden=8).eval(), bad, backend="eager")


def test_the_device_defaults_to_the_models_and_a_model_without_parameters_runs_on_the_cpu():
    """Without ``device`` the inputs live where the model's parameters are (a model on the meta device is
    warmed up on meta inputs), and a model without parameters runs on the CPU. Catches: the CPU assumed
    for every model (a GPU model fed CPU tensors), a model without parameters failing (StopIteration)."""
    with torch.device("meta"):
        meta_model = ToyEpsModel(hidden=8).eval()
    eps = compiled_eps_model(meta_model, BATCH, backend="eager", warmup=1)
    assert eps.device == torch.device("meta")

    class Half(torch.nn.Module):
        def forward(self, xt, t):
            return xt / 2
    eps = compiled_eps_model(Half().eval(), BATCH, backend="eager", warmup=1)
    x = torch.randn(BATCH, generator=torch.Generator().manual_seed(0))
    assert eps.device == torch.device("cpu") and torch.equal(eps(x, torch.ones(64, dtype=torch.long)), x / 2)


def test_a_zero_dimensional_x_t_is_refused_with_the_static_shape_message(toy):
    """A scalar x_t (no batch axis) gets the static-shape ValueError, not a TypeError from len(). Catches:
    len(xt) taken without looking at xt.dim()."""
    _, eps = toy
    with pytest.raises(ValueError, match="static batch shape"):
        eps(torch.tensor(1.0), torch.ones(1, dtype=torch.long))
