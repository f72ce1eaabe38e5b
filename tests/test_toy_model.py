"""ddpm_lib.toy_model: the 2-D ε-model and its Algorithm-1 training loop."""
import copy
import math

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.embedding import timestep_embedding
from ddpm_lib.toy_model import ToyEpsModel, train_toy, vlb_weights


def small_model(seed=0):
    torch.manual_seed(seed)
    return ToyEpsModel(dim=2, hidden=64, layers=3, emb_dim=16)


def test_output_shape_and_dtype():
    model = small_model()
    t = torch.tensor([1, 5, 50, 100, 7])
    out = model(torch.randn(5, 2, dtype=torch.float64), t)
    assert out.shape == (5, 2) and out.dtype == torch.float64
    assert model(torch.randn(3, 2), torch.tensor([1, 2, 3])).shape == (3, 2)


def test_bad_shapes_raise():
    model = small_model()
    with pytest.raises(ValueError):
        model(torch.randn(4, 2), torch.tensor([1, 2]))         # t does not match the batch
    with pytest.raises(ValueError):
        model(torch.randn(4, 2, 1), torch.tensor([1, 2, 3, 4]))  # not (B, D)


def test_embedding_matches_its_formula():
    t = torch.tensor([1, 3, 100])
    emb = timestep_embedding(t, 8)
    k = torch.arange(4, dtype=torch.float64)
    freqs = 10000.0 ** (-k / 4)                                 # f_k = 10000^(−k/(dim/2))
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb.double(), expected, atol=1e-5, rtol=1e-5)
    assert emb[0, 0].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    with pytest.raises(ValueError):
        timestep_embedding(t, 7)


def test_time_input_changes_the_output():
    model = small_model()
    xt = torch.randn(16, 2)
    out_early = model(xt, torch.full((16,), 1))
    out_late = model(xt, torch.full((16,), 200))
    assert (out_early - out_late).abs().max() > 1e-3


def test_vlb_weights_are_the_bound_weights_over_their_mean():
    s = dl.make_schedule("linear", T=50)
    w = vlb_weights(s)
    lam = s.beta[1:] / (2 * s.alpha[1:] * (1 - s.alpha_bar[1:]))  # β²/(2σ²α(1−ᾱ)) with σ² = β
    assert w.shape == (51,) and w[0] == 0
    torch.testing.assert_close(w[1:], lam / lam.mean())
    assert w[1:].mean().item() == pytest.approx(1.0, abs=1e-12)


def eval_loss(model, s, x0, t, eps):
    with torch.no_grad():
        return dl.l_simple(eps, model(dl.q_sample(s, x0, t, eps), t)).item()


def test_training_on_a_fixed_batch_lowers_the_loss():
    torch.set_num_threads(1)
    s = dl.make_schedule("linear", T=50)
    g = torch.Generator().manual_seed(1)
    x0_data = dl.ring_of_gaussians(k=4).sample(64, g)[0].float()
    # a fixed evaluation set of (x_0, t, ε) triples
    x0 = x0_data.repeat(8, 1)
    t = torch.randint(1, s.T + 1, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    model = small_model()
    before = eval_loss(model, s, x0, t, eps)
    history = train_toy(model, s, x0_data, steps=300, batch=128, lr=3e-3, generator=g)
    after = eval_loss(model, s, x0, t, eps)
    assert len(history) == 300
    assert after < 0.7 * before, (before, after)
    assert sum(history[-30:]) / 30 < 0.7 * sum(history[:30]) / 30


def test_first_step_losses_are_simple_and_vlb_weighted():
    """Rebuild step 1's draws from the same seed: 'simple' is L_simple, 'vlb' weights it by λ_t."""
    s = dl.make_schedule("linear", T=40)
    x0_data = dl.swiss_roll(32, torch.Generator().manual_seed(3)).float()
    model = small_model()
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, 32, (16,), generator=g)
    t = torch.randint(1, s.T + 1, (16,), generator=g)
    eps = torch.randn((16, 2), generator=g)
    with torch.no_grad():
        sq = ((eps - model(dl.q_sample(s, x0_data[idx], t, eps), t)) ** 2).mean(dim=1)
    lam = (s.beta / (2 * s.alpha * (1 - s.alpha_bar)))[1:]
    expected_vlb = ((lam / lam.mean())[t - 1].float() * sq).mean().item()
    runs = {}
    for loss in ("simple", "vlb"):
        runs[loss] = train_toy(copy.deepcopy(model), s, x0_data, steps=3, batch=16, lr=1e-3, loss=loss,
                               generator=torch.Generator().manual_seed(7))
    assert runs["simple"][0] == pytest.approx(sq.mean().item(), rel=1e-5)
    assert runs["vlb"][0] == pytest.approx(expected_vlb, rel=1e-5)
    assert abs(runs["simple"][0] - runs["vlb"][0]) > 1e-3 * runs["simple"][0]


def test_same_generator_same_history():
    s = dl.make_schedule("cosine", T=20)
    x0_data = dl.swiss_roll(32, torch.Generator().manual_seed(0)).float()
    runs = [train_toy(small_model(), s, x0_data, steps=5, batch=8, generator=torch.Generator().manual_seed(2))
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_unknown_loss_raises():
    s = dl.make_schedule("linear", T=30)
    with pytest.raises(ValueError, match="unknown loss"):
        train_toy(small_model(), s, torch.zeros(4, 2), steps=1, batch=2, loss="l1")


def test_forward_feeds_the_time_embedding_to_every_hidden_layer():
    """The forward pass written out from the model's own layers, in float64: emb = time_mlp(embedding(t)),
    h = silu(inp(x) + emb), then h = silu(layer(h) + time_proj(emb)) for each hidden layer, out(h). Catches: the
    time embedding added only at the input (a hidden layer without its time projection)."""
    torch.manual_seed(3)
    model = ToyEpsModel(dim=2, hidden=32, layers=3, emb_dim=16).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor([1, 7, 50, 300, 1000])
    silu = lambda v: v * torch.sigmoid(v)
    with torch.no_grad():
        emb = model.time_mlp(timestep_embedding(t, 16).double())
        h = silu(model.inp(x) + emb)
        for layer, proj in zip(model.hidden, model.time_proj):
            h = silu(layer(h) + proj(emb))
        expected = model.out(h)
        torch.testing.assert_close(model(x, t), expected, rtol=1e-13, atol=1e-13)
        for proj in model.time_proj:                         # and each projection matters
            proj.bias.add_(1.0)
        assert (model(x, t) - expected).abs().max() > 1e-3


def test_an_int_t_is_every_samples_step_like_the_unets():
    """``model(xt, 5)`` as for the U-Net. Catches: AttributeError "'int' object has no attribute 'ndim'", or an int
    t embedded otherwise than the same t for every sample."""
    model = small_model()
    xt = torch.randn(4, 2)
    torch.testing.assert_close(model(xt, 5), model(xt, torch.full((4,), 5)), rtol=0, atol=0)


def test_points_of_another_dimension_or_shape_are_named():
    """Catches: torch's "mat1 and mat2 shapes cannot be multiplied (256x3 and 2x128)" from inside the first layer
    for 3-D points given to a 2-D model, and IndexError for 1-D data of shape (N,)."""
    s = dl.make_schedule("cosine", T=20)
    with pytest.raises(ValueError, match=r"expected points xt \(B, 2\) for this model \(dim=2\), got \(4, 3\)"):
        small_model()(torch.randn(4, 3), 5)
    with pytest.raises(ValueError, match=r"got \(10, 3\)"):
        dl.sample_ddpm(small_model(), s, (10, 3))
    with pytest.raises(ValueError, match=r"x0_data must be \(N, D\) points .*x.unsqueeze\(1\)\), got shape \(100,\)"):
        train_toy(ToyEpsModel(dim=1), s, torch.randn(100), steps=1)


@pytest.mark.parametrize("data, kwargs, words", [
    (torch.randn(0, 2), {}, r"x0_data must be \(N, D\) points with N >= 1"),
    (torch.full((8, 2), float("nan")), {}, "x0_data holds NaN or infinite values"),
    (torch.randn(8, 2), {"batch": 0}, "need steps >= 0 and batch >= 1, got steps=3, batch=0"),
    (torch.randn(8, 2), {"steps": -1}, "need steps >= 0 and batch >= 1, got steps=-1")])
def test_training_input_that_cannot_train_is_refused_by_name(data, kwargs, words):
    """Catches: "random_ expects 'from' to be less than 'to'" for no data, "t is empty" for batch 0, and NaN data
    trained on to a NaN loss history without a word."""
    with pytest.raises(ValueError, match=words):
        train_toy(small_model(), dl.make_schedule("cosine", T=20), data, **{"steps": 3, **kwargs})


def test_a_loss_that_stops_being_finite_stops_training_at_its_step():
    """A student's learning rate too large for their data. Catches: a history of NaN returned as if trained."""
    model = small_model()
    with torch.no_grad():
        model.out.bias.fill_(float("inf"))                       # ε_θ = inf from the first step on
    with pytest.raises(FloatingPointError, match=r"the loss became (inf|nan) at step 1: lower lr \(it is 0.001\)"):
        train_toy(model, dl.make_schedule("cosine", T=20), torch.randn(64, 2), steps=5, batch=8)
