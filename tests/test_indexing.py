"""check_t and gather: index = the paper's t, values broadcast against a batch of shape (B, ...)."""
import pytest
import torch

import ddpm_lib as dl

T = 20
# every entry different, so reading values[t ± 1] instead of values[t] shows
VALUES = torch.arange(T + 1, dtype=torch.float64) * 10 + 0.25


def test_gather_per_sample_t_for_images():
    like = torch.zeros(4, 3, 8, 8, dtype=torch.float32)
    t = torch.tensor([1, 2, 19, 20])
    v = dl.gather(VALUES, t, like)
    assert v.shape == (4, 1, 1, 1)
    assert v.dtype == torch.float32 and v.device == like.device
    assert v.flatten().tolist() == [10.25, 20.25, 190.25, 200.25]
    assert (like + v).shape == like.shape


def test_gather_int_t_broadcasts_over_the_batch():
    like = torch.zeros(5, 3, 4, 4, dtype=torch.float64)
    v = dl.gather(VALUES, 7, like)
    assert v.shape == (1, 1, 1, 1) and v.dtype == torch.float64 and v.item() == 70.25
    assert dl.gather(VALUES, 0, like).item() == 0.25, "index 0 is the clean-data pad, reachable as t - 1"


@pytest.mark.parametrize("like_shape, expected_shape", [((3,), (3,)), ((3, 2), (3, 1)), ((3, 2, 5), (3, 1, 1))])
def test_gather_matches_the_rank_of_like(like_shape, expected_shape):
    v = dl.gather(VALUES, torch.tensor([3, 4, 5]), torch.zeros(like_shape))
    assert v.shape == expected_shape
    assert v.flatten().tolist() == [30.25, 40.25, 50.25]


@pytest.mark.parametrize("t", [torch.tensor([6]), torch.tensor(6), torch.tensor([6], dtype=torch.int32)])
def test_gather_single_t_tensor(t):
    v = dl.gather(VALUES, t, torch.zeros(2, 3, 4, 4))
    assert v.shape == (1, 1, 1, 1) and v.item() == 60.25


def test_gather_follows_like_device():
    like = torch.empty(2, 3, device="meta")          # stands in for a GPU tensor on a CPU-only machine
    v = dl.gather(VALUES, torch.tensor([1, 2]), like)
    assert v.device == like.device and v.shape == (2, 1) and v.dtype == like.dtype


def test_gather_of_a_schedule_reads_the_paper_t():
    s = dl.make_schedule("linear", T=1000)
    v = dl.gather(s.beta, torch.tensor([1, 1000]), torch.zeros(2, 1, dtype=torch.float64))
    assert v.flatten().tolist() == pytest.approx([1e-4, 0.02], rel=1e-12)


@pytest.mark.parametrize("t", [1, T, torch.tensor([1, T, 5]), torch.tensor([3]), torch.tensor(3),
                               torch.tensor([2, 3, 4], dtype=torch.int32)])
def test_check_t_accepts_1_to_T(t):
    assert dl.check_t(dl.make_schedule("cosine", T=T), t, batch=3) is None


@pytest.mark.parametrize("t, phrase", [
    (0, r"t must lie in 1\.\.T = 1\.\.20 \(the paper's t; index 0 is the clean data\), got values from 0 to 0"),
    (T + 1, r"t must lie in 1\.\.T = 1\.\.20"),
    (-4, r"t must lie in 1\.\.T = 1\.\.20"),
    (torch.tensor([3, 0, 5]), r"got values from 0 to 5"),
    (torch.tensor([3, 21, 5]), r"got values from 3 to 21"),
    (torch.tensor([1.0, 2.0, 3.0]), r"t must hold integer timesteps 1\.\.20, got a torch.float32 tensor"),
    (torch.tensor([True, True, True]), r"integer timesteps"),
    (True, r"t must be an integer timestep"),
    (2.0, r"t must be an int or a torch tensor of timesteps, got float"),
    ([1, 2, 3], r"t must be an int or a torch tensor of timesteps, got list"),
    (torch.tensor([[1, 2, 3]]), r"shape \(B,\), got shape \(1, 3\)"),
    (torch.tensor([], dtype=torch.long), r"t is empty"),
    (torch.tensor([1, 2]), r"t has 2 timesteps but the batch has 3 samples"),
])
def test_check_t_rejects_with_a_clear_message(t, phrase):
    with pytest.raises(ValueError, match=phrase):
        dl.check_t(dl.make_schedule("cosine", T=T), t, batch=3)


def test_check_operands_names_every_tensor_when_any_one_differs():
    """check_operands raises as soon as one shape differs from the others, for two tensors and for three of
    which two agree, and names every tensor with its shape; equal shapes pass. Catches: a test that only fires
    when all the shapes differ (e.g. counting more than two distinct shapes)."""
    from ddpm_lib.indexing import check_operands
    a, b = torch.zeros(3, 2), torch.zeros(3, 1)
    assert check_operands(x=a, y=a.clone(), z=torch.ones(3, 2)) is None
    with pytest.raises(ValueError, match=r"shapes must match: x \(3, 2\), y \(3, 1\)"):
        check_operands(x=a, y=b)
    with pytest.raises(ValueError, match=r"shapes must match: xt \(3, 2\), eps \(3, 2\), noise \(3, 1\)"):
        check_operands(xt=a, eps=a, noise=b)


def test_integer_data_is_refused_not_rounded():
    """A student's 2-D point typed as ``torch.tensor([[2, 1]])`` is int64; raw MNIST pixels are uint8. Every
    formula casts the schedule's values to the data's dtype, so √ᾱ_t and √(1 − ᾱ_t) became 0 and x_t came back
    as zeros, silently. Catches: any of the public steps accepting an integer tensor."""
    from ddpm_lib.forward import q_step
    s = dl.make_schedule("cosine", T=10)
    x_int = torch.tensor([[2, 1], [0, 3]])
    x = x_int.double()
    calls = {"q_sample": lambda a: dl.q_sample(s, a, 5, x),
             "q_step": lambda a: q_step(s, a, 5, x),
             "q_posterior": lambda a: dl.q_posterior(s, a, x, 5)[0],
             "ddpm_step": lambda a: dl.ddpm_step(s, a, x, 5, x),
             "ddim_step": lambda a: dl.ddim_step(s, a, x, 5, 2, 0.0, x),
             "predict_x0_from_eps": lambda a: dl.predict_x0_from_eps(s, a, 5, x),
             "prior_term": lambda a: dl.prior_term(s, a)}
    for name, call in calls.items():
        assert torch.isfinite(call(x)).all(), name
        with pytest.raises(ValueError, match=r"is a torch.int64 tensor: the formulas need real numbers"):
            call(x_int)
        with pytest.raises(ValueError, match=r"is a torch.uint8 tensor"):
            call(x_int.to(torch.uint8))


def test_a_numpy_integer_t_is_refused_with_the_conversion():
    """``t = np.random.randint(1, T + 1)`` is a numpy.int64, which the samplers' ``isinstance(t, int)`` branches
    would not recognise. Catches: a message that does not say what to pass instead."""
    import numpy as np
    s = dl.make_schedule("cosine", T=10)
    with pytest.raises(ValueError, match=r"got int64: pass int\(t\)$"):
        dl.check_t(s, np.int64(3))
    with pytest.raises(ValueError, match=r"got list$"):
        dl.check_t(s, [3])


def test_the_range_check_on_the_device_is_1_to_T(monkeypatch):
    """Inside torch.compile (and on a GPU) check_t checks 1 <= t <= T with torch._assert_async instead of
    reading t back; on a CPU tensor that assert fires at once, so the device-side check is tested here by
    making check_t believe it is being compiled. Catches: a device-side range of 0..T or 1..T+1 (t = 0 would
    read the clean-data pad of every schedule, t = T + 1 past its end), and the check left out."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    s = dl.make_schedule("cosine", T=T)
    assert dl.check_t(s, torch.tensor([1, T, 7]), batch=3) is None
    for bad in ([0, 5, 7], [1, T + 1, 7], [-3, 2, 2]):
        with pytest.raises(RuntimeError, match=r"t must lie in 1\.\.T = 1\.\.20"):
            dl.check_t(s, torch.tensor(bad), batch=3)
    with pytest.raises(ValueError, match="t has 2 timesteps"):           # the host checks still come first
        dl.check_t(s, torch.tensor([1, 2]), batch=3)


def test_a_complex_t_is_refused_by_its_dtype():
    """Catches: a complex tensor of timesteps let through the dtype check to fail in ``t.min()`` with torch's
    "min is not supported for complex" (or to index a schedule by its real part)."""
    with pytest.raises(ValueError, match=r"^t must hold integer timesteps 1\.\.20, got a torch.complex64 tensor$"):
        dl.check_t(dl.make_schedule("cosine", T=T), torch.tensor([1, 2], dtype=torch.complex64))
