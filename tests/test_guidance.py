"""Tests of classifier guidance (the samplers' cond_fn hook, classifier_grad_fn, exact_mixture_grad_fn) and of
classifier-free guidance (cfg_eps_model, ConditionalUNet, drop_labels). float64 wherever there is math.

The guided samplers are checked against Dhariwal & Nichol's Algorithms 1 and 2 written out here, and on a 2-D
Gaussian mixture whose ε and p(y | x_t) are exact, so guided sampling must land in the chosen component with
its mean. Each test's docstring names the wrong implementation it catches.
"""
import math

import pytest
import torch
from helpers import hand_schedule
from torch import nn

import ddpm_lib as dl
from ddpm_lib import ddim, guidance
from ddpm_lib.guidance import (ConditionalUNet, cfg_eps_model, classifier_grad_fn, drop_labels,
                               exact_mixture_grad_fn)

F64 = torch.float64
BETAS = torch.linspace(0.02, 0.2, 8, dtype=F64)       # T = 8, large β: every coefficient matters


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def toy_eps_model(xt, t):
    """A deterministic ε-model that depends on x_t and t."""
    return 0.3 * xt + 0.05 * t.to(xt.dtype)[:, None]


def toy_cond_fn(xt, t):
    """A stand-in for s·∇ log p(y | x_t) that depends on x_t and t (a wrong x or t passed would show)."""
    return -0.4 * xt + 0.1 * t.to(xt.dtype)[:, None]


# Three well separated components; the target (k = 2) has weight 0.1, so unguided sampling puts ~10% there.
MIX = dl.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]), torch.tensor([0.4, 0.4, 0.4]),
                         torch.tensor([0.45, 0.45, 0.10]))
TARGET = 2


# ------------------------------------------------------------------ the hook: one step and the samplers by hand

@pytest.mark.parametrize("var", ["beta_tilde", "beta"])
def test_ddpm_step_shift_is_sigma_sq_times_grad(var):
    """Hand check with a constant f: x_{t−1}(guided) − x_{t−1}(unguided) = σ_t²·f, σ_t² = β̃_t (0 at t = 1)
    or β_t. Catches: σ_t for σ_t², β_t for β̃_t, the shift left out, the shift skipped at t = 1 with
    var="beta" or applied at t = 1 as if σ² were not 0 with β̃."""
    s = dl.schedule_from_betas(BETAS)
    beta, alpha, alpha_bar = hand_schedule(BETAS)
    xt, eps_pred, noise = randn(5, 3, seed=0), randn(5, 3, seed=1), randn(5, 3, seed=2)
    f = torch.full((5, 3), 0.7, dtype=F64)
    t = torch.tensor([1, 2, 5, 8, 3])
    shift = dl.ddpm_step(s, xt, eps_pred, t, noise, var=var, cond_grad=f) \
        - dl.ddpm_step(s, xt, eps_pred, t, noise, var=var)
    for i, ti in enumerate(t.tolist()):
        sigma_sq = beta[ti] if var == "beta" else (1 - alpha_bar[ti - 1]) / (1 - alpha_bar[ti]) * beta[ti]
        torch.testing.assert_close(shift[i], torch.full((3,), 0.7 * sigma_sq.item(), dtype=F64), rtol=1e-12, atol=1e-14)
    if var == "beta_tilde":
        assert shift[0].abs().max() == 0                           # σ_1² = β̃_1 = 0: no shift at t = 1
    else:
        assert shift[0].abs().min() > 0


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_step_uses_guided_eps(eta):
    """Hand check with a constant f: the step equals eq. 12 written out with ε̂ = ε − √(1 − ᾱ_t)·f in place of ε
    (both in x̂_0 and in the direction term). Catches: √ᾱ_t or (1 − ᾱ_t) for √(1 − ᾱ_t), a '+' for the '−',
    ε̂ used in only one of the two places, ᾱ_{t'} for ᾱ_t."""
    s = dl.schedule_from_betas(BETAS)
    _, _, alpha_bar = hand_schedule(BETAS)
    xt, eps_pred, noise = randn(4, 3, seed=3), randn(4, 3, seed=4), randn(4, 3, seed=5)
    f = torch.full((4, 3), -1.3, dtype=F64)
    t, t_prev = torch.tensor([8, 5, 2, 3]), torch.tensor([6, 0, 1, 2])
    out = dl.ddim_step(s, xt, eps_pred, t, t_prev, eta, noise, cond_grad=f)
    for i, (ti, tp) in enumerate(zip(t.tolist(), t_prev.tolist())):
        a, ap = alpha_bar[ti].item(), alpha_bar[tp].item()
        eps_hat = eps_pred[i] - math.sqrt(1 - a) * f[i]
        sigma = eta * math.sqrt((1 - ap) / (1 - a)) * math.sqrt(1 - a / ap)
        x0_pred = (xt[i] - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)
        expected = math.sqrt(ap) * x0_pred + math.sqrt(1 - ap - sigma ** 2) * eps_hat + sigma * noise[i]
        torch.testing.assert_close(out[i], expected, rtol=1e-12, atol=1e-12)


def test_sample_ddpm_hook_is_algorithm_1():
    """The whole guided ancestral sampler against Dhariwal & Nichol's Algorithm 1 written out, with the same
    draws: x_{t−1} = μ_θ(x_t) + σ_t²·f(x_t, t) + σ_t z. f depends on x and t, so it catches: f evaluated at
    x_{t−1} or at t − 1, f called after the step, the guided sampler drawing its noise in another order."""
    s = dl.schedule_from_betas(BETAS)
    beta, alpha, alpha_bar = hand_schedule(BETAS)
    got = dl.sample_ddpm(toy_eps_model, s, (6, 2), generator=torch.Generator().manual_seed(7), dtype=F64,
                         cond_fn=toy_cond_fn)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 2, generator=g, dtype=F64)
    for t in range(8, 0, -1):
        tb = torch.full((6,), t)
        mean = (x - beta[t] / torch.sqrt(1 - alpha_bar[t]) * toy_eps_model(x, tb)) / torch.sqrt(alpha[t])
        sigma_sq = (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * beta[t]
        z = torch.randn(6, 2, generator=g, dtype=F64) if t > 1 else torch.zeros(6, 2, dtype=F64)
        x = mean + sigma_sq * toy_cond_fn(x, tb) + torch.sqrt(sigma_sq) * z
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_sample_ddim_hook_is_algorithm_2():
    """The whole guided DDIM sampler (η = 0) against Algorithm 2 written out on the 8 → 6 → 4 → 2 → 1 → 0 grid:
    ε̂ = ε_θ(x_t) − √(1 − ᾱ_t)·f(x_t, t). Catches: f at the wrong t (e.g. t_prev) or x, guidance skipped on the
    last step to t' = 0, the guided ε̂ not used for x̂_0."""
    s = dl.schedule_from_betas(BETAS)
    _, _, alpha_bar = hand_schedule(BETAS)
    got = dl.sample_ddim(toy_eps_model, s, (6, 2), steps=5, generator=torch.Generator().manual_seed(8), dtype=F64,
                         cond_fn=toy_cond_fn)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    grid = ddim.step_grid(8, 5)
    for t, tp in zip(grid, grid[1:] + [0]):
        tb = torch.full((6,), t)
        a, ap = alpha_bar[t], alpha_bar[tp]
        eps_hat = toy_eps_model(x, tb) - torch.sqrt(1 - a) * toy_cond_fn(x, tb)
        x = torch.sqrt(ap) * (x - torch.sqrt(1 - a) * eps_hat) / torch.sqrt(a) + torch.sqrt(1 - ap) * eps_hat
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_step_rejects_a_gradient_of_the_wrong_shape():
    """A cond_grad that only broadcasts (one row for the batch) is a bug upstream. Catches: silent broadcasting."""
    s = dl.schedule_from_betas(BETAS)
    xt = randn(4, 3, seed=0)
    with pytest.raises(ValueError, match="cond_grad"):
        dl.ddpm_step(s, xt, xt, 3, xt, cond_grad=torch.zeros(1, 3, dtype=F64))
    with pytest.raises(ValueError, match="cond_grad"):
        dl.ddim_step(s, xt, xt, 3, 1, 0.0, xt, cond_grad=torch.zeros(4, dtype=F64))


# ------------------------------------------------------------------ guided sampling on an exact mixture

@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_scale_zero_reproduces_unguided_sampling_draw_for_draw(sampler):
    """s = 0 with the same seed gives the unguided samples bit for bit (DDIM with η = 0.5 so that it draws noise).
    Catches: the hook drawing from the sampler's generator or changing the order of draws, the scale ignored,
    the guided path computing the step differently (e.g. ε converted through μ and back)."""
    s = dl.make_schedule("cosine", 50)
    f = exact_mixture_grad_fn(MIX, s, TARGET, scale=0.0)
    for cond_fn in (f, classifier_grad_fn(lambda xt, t: MIX.class_posterior(s, xt, t).log(), TARGET, 0.0)):
        runs = []
        for fn in (None, cond_fn):
            g = torch.Generator().manual_seed(11)
            if sampler == "ddpm":
                runs.append(dl.sample_ddpm(MIX.eps_model(s), s, (300, 2), generator=g, dtype=F64, cond_fn=fn))
            else:
                runs.append(dl.sample_ddim(MIX.eps_model(s), s, (300, 2), steps=20, eta=0.5, generator=g,
                                           dtype=F64, cond_fn=fn))
        assert torch.equal(runs[0], runs[1])
    g = torch.Generator().manual_seed(11)
    moved = dl.sample_ddpm(MIX.eps_model(s), s, (300, 2), generator=g, dtype=F64,
                           cond_fn=exact_mixture_grad_fn(MIX, s, TARGET, scale=1e-3))
    assert not torch.equal(runs[0], moved)           # the check can fail: a tiny scale already changes draws


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_guided_sampling_lands_in_the_chosen_component(sampler):
    """Exact ε and exact p(y | x_t) of a 3-component mixture, scale 1: ε − √(1 − ᾱ_t)∇log p(y | x_t) is the exact
    ε of component y, so > 97% of samples must be assigned to it (arg-max of p(k | x_0)) although it has weight
    0.1, with its mean and standard deviation 0.4. Tolerances: 4 standard errors plus the bias measured with
    n = 40,000 (DDPM, T = 200 cosine: mean off by 0.01, the first-order Taylor step; DDIM 50 steps η = 0:
    mean off by < 0.002, std 0.384 instead of 0.4). Catches: the gradient's sign, guiding with log p(x_t)
    instead of log p(y | x_t), the wrong label, no guidance at all (10% land there)."""
    s = dl.make_schedule("cosine", 200)
    n = 4000
    g = torch.Generator().manual_seed(2021)
    f = exact_mixture_grad_fn(MIX, s, TARGET, scale=1.0)
    if sampler == "ddpm":
        x = dl.sample_ddpm(MIX.eps_model(s), s, (n, 2), generator=g, dtype=F64, cond_fn=f)
        bias_mean, bias_std = 0.02, 0.015
    else:
        x = dl.sample_ddim(MIX.eps_model(s), s, (n, 2), steps=50, eta=0.0, generator=g, dtype=F64, cond_fn=f)
        bias_mean, bias_std = 0.01, 0.03
    assigned = MIX.class_posterior(s, x, 0).argmax(1)
    frac = (assigned == TARGET).double().mean().item()
    assert frac > 0.97, frac
    target_std = MIX.stds[TARGET].item()
    se_mean, se_std = target_std / math.sqrt(n), target_std / math.sqrt(2 * n)
    err_mean = (x.mean(0) - MIX.means[TARGET]).abs().max().item()
    err_std = (x.std(0) - target_std).abs().max().item()
    assert err_mean < 4 * se_mean + bias_mean, (err_mean, 4 * se_mean + bias_mean)
    assert err_std < 4 * se_std + bias_std, (err_std, 4 * se_std + bias_std)


def test_unguided_sampling_does_not_land_in_the_chosen_component():
    """The control of the test above: without guidance about 10% (its weight) of the samples are in component 2
    (binomial SE 0.0047 for n = 4000), so the > 97% there is the guidance's doing."""
    s = dl.make_schedule("cosine", 200)
    x = dl.sample_ddim(MIX.eps_model(s), s, (4000, 2), steps=50, generator=torch.Generator().manual_seed(2021),
                       dtype=F64)
    frac = (MIX.class_posterior(s, x, 0).argmax(1) == TARGET).double().mean().item()
    assert abs(frac - 0.1) < 5 * math.sqrt(0.1 * 0.9 / 4000), frac


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_larger_scale_raises_the_log_probability_of_the_target(sampler):
    """Two overlapping components: the mean of log p(y | x_0) over the samples grows strictly with the scale
    s = 0, 1, 3, 8 (the same seed for every scale), and at s = 8 beats s = 1 by a clear margin. Catches:
    the scale ignored or inverted, the gradient normalised per sample (then scale would saturate)."""
    mix = dl.GaussianMixture(torch.tensor([[-0.8, 0.0], [0.8, 0.0]]), torch.tensor([0.6, 0.6]),
                             torch.tensor([0.7, 0.3]))
    s = dl.make_schedule("cosine", 100)
    mean_log_prob = []
    for scale in (0.0, 1.0, 3.0, 8.0):
        g = torch.Generator().manual_seed(5)
        f = exact_mixture_grad_fn(mix, s, 1, scale)
        if sampler == "ddpm":
            x = dl.sample_ddpm(mix.eps_model(s), s, (2000, 2), generator=g, dtype=F64, cond_fn=f)
        else:
            x = dl.sample_ddim(mix.eps_model(s), s, (2000, 2), steps=50, generator=g, dtype=F64, cond_fn=f)
        mean_log_prob.append(mix.class_posterior(s, x, 0)[:, 1].log().mean().item())
    assert all(a < b for a, b in zip(mean_log_prob, mean_log_prob[1:])), mean_log_prob
    assert mean_log_prob[3] - mean_log_prob[1] > 0.2, mean_log_prob


# ------------------------------------------------------------------ the gradient functions

def hand_mixture_log_posterior_grad(mix, s, x, t, k):
    """∇ log q(k | x_t) = ∇ log q(x_t | k) − ∇ log q(x_t) = (m_k − x)/v_k − Σ_j q(j | x)(m_j − x)/v_j with
    m_j = √ᾱ_t μ_j and v_j = ᾱ_t s_j² + 1 − ᾱ_t; q(j | x) by Bayes with log-sum-exp, written here."""
    ab = s.alpha_bar[t].item()
    m = math.sqrt(ab) * mix.means
    v = ab * mix.stds ** 2 + 1 - ab
    log_joint = mix.weights.log() - 0.5 * mix.D * torch.log(2 * math.pi * v) \
        - 0.5 * ((x[:, None, :] - m[None]) ** 2).sum(-1) / v
    post = torch.exp(log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True))
    pulls = (m[None] - x[:, None, :]) / v[None, :, None]                  # (B, K, D)
    return pulls[:, k] - (post[:, :, None] * pulls).sum(1)


def test_exact_mixture_grad_matches_the_closed_form():
    """Against ∇ log q(k | x_t) in closed form at several t and per-sample labels, including a point deep in
    another component. Far out (q(k | x_t) ≈ 4e-53, 0 in float32, where log of the softmax gives −inf) the
    gradient of float32 input is still finite (log-softmax, in float64) and comes back as float32. Catches: the gradient
    of log q(x_t) or of q(k | x_t) instead of its log, NaN from log(0), the scale not applied."""
    s = dl.make_schedule("cosine", 100)
    x = torch.cat([randn(5, 2, seed=9) * 2, torch.tensor([[-2.0, 0.0]], dtype=F64)])   # last: inside comp. 0
    y = torch.tensor([0, 1, 2, 2, 1, 2])
    for t in (1, 10, 60, 100):
        got = exact_mixture_grad_fn(MIX, s, y, scale=2.5)(x, torch.full((6,), t))
        expected = torch.stack([hand_mixture_log_posterior_grad(MIX, s, x[i:i + 1], t, int(y[i]))[0] for i in range(6)])
        torch.testing.assert_close(got, 2.5 * expected, rtol=1e-10, atol=1e-10)
    far = torch.tensor([[-9.0, 0.0]], dtype=F64)                 # q(2 | x_1) ≈ 4e-53 < float32's smallest 1e-45:
    assert torch.log(MIX.class_posterior(s, far.float(), 1))[0, 2] == -math.inf      # the naive log fails in float32
    got32 = exact_mixture_grad_fn(MIX, s, 2, 1.0)(far.float(), torch.tensor([1]))
    assert got32.dtype == torch.float32 and torch.isfinite(got32).all()
    torch.testing.assert_close(got32.double(), hand_mixture_log_posterior_grad(MIX, s, far, 1, 2), rtol=1e-6, atol=1e-4)
    very_far = torch.tensor([[-80.0, 0.0]], dtype=F64)           # q(2 | x_t) underflows to 0 in float64 too
    for t in (1, 10):
        assert MIX.class_posterior(s, very_far, t)[0, 2] == 0
        torch.testing.assert_close(exact_mixture_grad_fn(MIX, s, 2, 1.0)(very_far, torch.tensor([t])),
                                   hand_mixture_log_posterior_grad(MIX, s, very_far, t, 2), rtol=1e-10, atol=1e-10)
    x32, f = (randn(50, 2, seed=10) * 3).float(), exact_mixture_grad_fn(MIX, s, 2, 1.0)
    for t in (1, 10, 60):                                        # float32 input is computed in float64
        tt = torch.full((50,), t)
        assert torch.equal(f(x32, tt), f(x32.double(), tt).float())


class LinearClassifier(nn.Module):
    """logits = W x + b + c·t: ∇_x log softmax(logits)_y = W_y − Σ_k p_k W_k in closed form."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(randn(3, 2, seed=20))
        self.b, self.c = nn.Parameter(randn(3, seed=21)), nn.Parameter(randn(3, seed=22))

    def forward(self, xt, t):
        return xt @ self.W.T + self.b + 0.01 * t.to(xt.dtype)[:, None] * self.c


def test_classifier_grad_matches_the_closed_form():
    """A linear classifier: s·(W_y − Σ_k p_k W_k) per sample, with per-sample labels and a single int label.
    Also runs inside torch.no_grad (as in the samplers). Catches: the gradient of the logit instead of the
    log-softmax, of p instead of log p, of another class, the scale missing, a broken no_grad context."""
    clf = LinearClassifier().eval()
    x, t, y = randn(5, 2, seed=23), torch.tensor([1, 5, 9, 3, 7]), torch.tensor([0, 2, 1, 1, 0])
    with torch.no_grad():
        got = classifier_grad_fn(clf, y, 1.7)(x, t)
        got_int = classifier_grad_fn(clf, 2, 1.7)(x, t)
        p = torch.softmax(clf(x, t), dim=1)
    W = clf.W.detach()
    torch.testing.assert_close(got, 1.7 * (W[y] - p @ W), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_int, 1.7 * (W[2] - p @ W), rtol=1e-12, atol=1e-12)


class BatchNormClassifier(nn.Module):
    """A small time-conditioned MLP with a BatchNorm: per-sample in eval mode, batch-coupled in train mode."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(30)
        self.lin1, self.bn, self.lin2 = nn.Linear(3, 16), nn.BatchNorm1d(16), nn.Linear(16, 4)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)
        self.bn.running_mean.normal_(generator=g)
        self.bn.running_var.uniform_(0.5, 2.0, generator=g)
        self.double()

    def forward(self, xt, t):
        h = torch.cat([xt, 0.1 * t.to(xt.dtype)[:, None]], dim=1)
        return self.lin2(torch.tanh(self.bn(self.lin1(h))))


def first_sample_grad(fn, x_first, others, t_first=4):
    """The gradient fn returns for sample 0 when it is batched with ``others``."""
    x = torch.cat([x_first, others])
    t = torch.cat([torch.tensor([t_first]), torch.arange(len(others)) % 7 + 1])
    y = torch.cat([torch.tensor([3]), torch.arange(len(others)) % 4])
    return fn(y)(x, t)[0]


def test_one_samples_gradient_ignores_the_rest_of_the_batch():
    """Sample 0's gradient is the same alone, with one other sample and with six others, for a classifier with
    a BatchNorm in eval mode, and equals finite differences of its own log p(y | x). The same check applied to
    two batch-coupled variants fails, so it can fail: BatchNorm in train mode (batch statistics) and a mean over
    the batch instead of the sum (gradient divided by B). A classifier left in train mode is refused."""
    clf = BatchNormClassifier().eval()
    x0, small, big = randn(1, 2, seed=31), randn(1, 2, seed=32), randn(6, 2, seed=33)
    ours = lambda y: classifier_grad_fn(clf, y, 1.0)                          # noqa: E731
    g_alone = first_sample_grad(ours, x0, randn(0, 2, seed=0))
    g_small, g_big = first_sample_grad(ours, x0, small), first_sample_grad(ours, x0, big)
    torch.testing.assert_close(g_small, g_alone, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_big, g_alone, rtol=1e-12, atol=1e-12)
    h = 1e-6                                                                   # central differences, alone
    logp = lambda x: torch.log_softmax(clf(x, torch.tensor([4])), 1)[0, 3]    # noqa: E731
    fd = torch.stack([(logp(x0 + h * e) - logp(x0 - h * e)) / (2 * h) for e in torch.eye(2, dtype=F64)[:, None]])
    torch.testing.assert_close(g_alone, fd.detach(), rtol=1e-6, atol=1e-8)

    def coupled(train_mode: bool, reduce):
        def make(y):
            def f(xt, t):
                clf.train(train_mode)
                x = xt.detach().requires_grad_(True)
                lp = torch.log_softmax(clf(x, t), 1).gather(1, y[:, None])
                out, = torch.autograd.grad(reduce(lp), x)
                clf.eval()
                return out
            return f
        return make

    for bad in (coupled(True, torch.sum), coupled(False, torch.mean)):
        assert not torch.allclose(first_sample_grad(bad, x0, small), first_sample_grad(bad, x0, big), rtol=1e-3)
    clf.train()
    with pytest.raises(ValueError, match="eval"):
        classifier_grad_fn(clf, 0, 1.0)(x0, torch.tensor([3]))


def test_bad_labels_raise_clear_errors():
    """Labels outside 0..K − 1 (K from the logits or the mixture), a label batch of the wrong length, float or
    2-D labels and a non-finite scale raise ValueError saying what is wrong. Catches: silent gather with an
    out-of-range index (a crash or garbage), broadcasting 3 labels over 4 samples."""
    clf = LinearClassifier().eval()
    x, t = randn(4, 2, seed=40), torch.tensor([1, 2, 3, 4])
    s = dl.make_schedule("cosine", 10)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        classifier_grad_fn(clf, torch.tensor([0, 1, 3, 0]), 1.0)(x, t)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        classifier_grad_fn(clf, -1, 1.0)(x, t)
    with pytest.raises(ValueError, match="3 labels for a batch of 4"):
        classifier_grad_fn(clf, torch.tensor([0, 1, 2]), 1.0)(x, t)
    with pytest.raises(ValueError, match="integer"):
        classifier_grad_fn(clf, torch.tensor([0.0, 1.0, 2.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="shape"):
        classifier_grad_fn(clf, torch.zeros(2, 2, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="scale"):
        classifier_grad_fn(clf, 0, float("nan"))
    with pytest.raises(ValueError, match=r"0\.\.2"):
        exact_mixture_grad_fn(MIX, s, 3, 1.0)
    with pytest.raises(ValueError, match="2 labels for a batch of 4"):
        exact_mixture_grad_fn(MIX, s, torch.tensor([0, 1]), 1.0)(x, t)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        exact_mixture_grad_fn(MIX, s, 0, 1.0)(randn(4, 3, seed=41), t)
    with pytest.raises(ValueError, match=r"0\.\.10"):
        cfg_eps_model(lambda xt, t, y: xt, torch.tensor([11]), 2.0, null_label=10)


# ------------------------------------------------------------------ classifier-free guidance

def toy_cond_model(xt, t, y):
    """A class-conditional ε-model that depends on x_t, t and y (the null label 3 among classes 0..2)."""
    return torch.sin(xt * (1 + y.to(xt.dtype)[:, None])) + 0.01 * t.to(xt.dtype)[:, None] * y.to(xt.dtype)[:, None]


def test_cfg_weights_zero_and_one_are_exact_and_three_follows_the_formula():
    """w = 0 returns ε_u and w = 1 returns ε_c bit for bit; w = 3 equals ε_u + 3(ε_c − ε_u) (Ho & Salimans with
    their w = 2). Catches: the two predictions swapped, Ho & Salimans' (1 + w)ε_c − wε_u read with our w, the
    null label not used for ε_u, labels not reaching the model."""
    x, t, y = randn(5, 2, seed=50), torch.tensor([3, 1, 4, 1, 5]), torch.tensor([0, 1, 2, 2, 0])
    null = torch.full((5,), 3)
    eps_c, eps_u = toy_cond_model(x, t, y), toy_cond_model(x, t, null)
    assert torch.equal(cfg_eps_model(toy_cond_model, y, 1.0, 3)(x, t), eps_c)
    assert torch.equal(cfg_eps_model(toy_cond_model, y, 0.0, 3)(x, t), eps_u)
    torch.testing.assert_close(cfg_eps_model(toy_cond_model, y, 3.0, 3)(x, t), eps_u + 3 * (eps_c - eps_u),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cfg_eps_model(toy_cond_model, 2, 1.0, 3)(x, t),
                               toy_cond_model(x, t, torch.full((5,), 2)))


def test_cfg_with_exact_models_equals_classifier_guidance_with_the_exact_classifier():
    """With the exact conditional ε (component y's own Gaussian) and the exact unconditional ε (the mixture),
    ε_c − ε_u = −√(1 − ᾱ_t)∇log q(y | x_t), so CFG with weight w and classifier guidance with scale w give the
    same DDIM samples (η = 0.5, same seed). Catches: a CFG formula that is not ε_u + w(ε_c − ε_u), classifier
    guidance's √(1 − ᾱ_t) or sign, both checked against a relation neither implementation uses."""
    s = dl.make_schedule("cosine", 100)
    null = MIX.K
    components = [dl.GaussianMixture.gaussian(MIX.means[k], MIX.stds[k].item()) for k in range(MIX.K)]

    def cond_model(xt, t, y):
        out = MIX.eps(s, xt, t)
        for k in range(MIX.K):
            out = torch.where((y == k)[:, None], components[k].eps(s, xt, t), out)
        return out

    y = torch.tensor([0, 1, 2, 2] * 50)
    for w in (0.0, 1.0, 2.5):
        a = dl.sample_ddim(cfg_eps_model(cond_model, y, w, null), s, (200, 2), steps=30, eta=0.5,
                           generator=torch.Generator().manual_seed(3), dtype=F64)
        b = dl.sample_ddim(MIX.eps_model(s), s, (200, 2), steps=30, eta=0.5, generator=torch.Generator().manual_seed(3),
                           dtype=F64, cond_fn=exact_mixture_grad_fn(MIX, s, y, w))
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def small_conditional_unet(**kw):
    return ConditionalUNet.from_preset("tiny", num_classes=3, image_size=8, base_width=16, attn_res=(), **kw)


def test_conditional_unet_is_the_unet_plus_a_class_embedding():
    """With the class embedding set to zero, ConditionalUNet gives exactly the UNet's output (same weights), so
    the class enters only through the time embedding; with the embedding as initialised, the class changes the
    output, and the null label (3) is a valid input. Catches: a class embedding that goes elsewhere or is
    ignored, num_classes embeddings without the null one."""
    torch.manual_seed(0)
    model = small_conditional_unet().double().eval()
    assert model.null_label == 3 and model.class_emb.num_embeddings == 4
    x, t = randn(4, 1, 8, 8, seed=60), torch.tensor([1, 50, 200, 999])
    y = torch.tensor([0, 1, 2, 3])
    out = model(x, t, y)
    assert out.shape == x.shape
    other = model(x, t, torch.tensor([1, 2, 3, 0]))
    assert ((out - other).abs().flatten(1).max(1).values > 1e-4).all()
    plain = dl.UNet.from_preset("tiny", image_size=8, base_width=16, attn_res=()).double().eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and unexpected == ["class_emb.weight"]
    with torch.no_grad():
        model.class_emb.weight.zero_()
    torch.testing.assert_close(model(x, t, y), plain(x, t), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        model(x, t, torch.tensor([0, 1, 2, 4]))


def test_one_int_label_is_every_samples_label_and_is_checked():
    """model(x, t, 2) equals model(x, t, [2, 2, 2, 2]) (the int is made into labels on x's device, with no copy
    from the host), and an int outside 0..num_classes is refused. Catches: an int label broadcast wrongly or
    let through unchecked into the embedding table."""
    torch.manual_seed(0)
    model = small_conditional_unet().double().eval()
    x, t = randn(4, 1, 8, 8, seed=61), torch.tensor([1, 50, 200, 999])
    torch.testing.assert_close(model(x, t, 2), model(x, t, torch.full((4,), 2)), rtol=0, atol=0)
    torch.testing.assert_close(model(x, t, model.null_label), model(x, t, torch.full((4,), 3)), rtol=0, atol=0)
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=r"0\.\.3"):
            model(x, t, bad)


def test_guidance_places_its_labels_once_per_batch_shape(monkeypatch):
    """A sampler calls cond_fn and the CFG ε-model once per step: the labels are checked and moved to the
    device on the first call for a batch size, then reused (on a GPU each move would be a copy from the host
    every step). Catches: the labels placed anew at every step."""
    from ddpm_lib import guidance
    calls, real = [], guidance._labels_for
    monkeypatch.setattr(guidance, "_labels_for", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    clf, x, t = LinearClassifier().eval(), randn(4, 2, seed=42), torch.tensor([1, 2, 3, 4])
    cond_fn = classifier_grad_fn(clf, torch.tensor([0, 1, 2, 0]), 1.0)
    first = cond_fn(x, t)
    torch.testing.assert_close(cond_fn(x, t), first)
    assert calls == [4]
    eps = cfg_eps_model(toy_cond_model, 1, 2.0, null_label=3)
    calls.clear()
    for _ in range(3):
        eps(x, t)
    eps(x[:2], t[:2])
    assert calls == [4, 2]


def test_class_embedding_starts_small_beside_the_time_embedding():
    """At initialisation every class row (the null one too) is at most a third of the smallest time-embedding
    norm over t = 1..T, for the tiny and mnist presets. Catches: nn.Embedding's default N(0, 1) rows (norm
    about 11 at width 128), which drowned t in the laptop CFG model and made its samples diverge."""
    for preset in ("tiny", "mnist"):
        torch.manual_seed(0)
        model = ConditionalUNet.from_preset(preset, num_classes=10)
        t = torch.arange(1, 1001)
        with torch.no_grad():
            temb = model.embed_time(torch.zeros(t.numel(), 1, 32, 32), t).norm(dim=1)
            rows = model.class_emb.weight.norm(dim=1)
        assert rows.max() < temb.min() / 3, (preset, rows.max().item(), temb.min().item())


def test_drop_labels_drops_about_p_and_only_to_the_null_label():
    """n = 20,000 labels, p = 0.15: the dropped fraction is within 5 binomial standard errors of p; dropped
    entries become the null label, kept ones are unchanged; p = 0 and p = 1 drop none and all; the generator
    fixes the result. Catches: dropping to 0 or to a random class, p read as the keep probability."""
    y = torch.arange(20_000) % 10
    out = drop_labels(y, 0.15, null_label=10, generator=torch.Generator().manual_seed(1))
    dropped = out != y
    assert (out[dropped] == 10).all() and torch.equal(out[~dropped], y[~dropped])
    frac = dropped.double().mean().item()
    assert abs(frac - 0.15) < 5 * math.sqrt(0.15 * 0.85 / 20_000), frac
    assert torch.equal(out, drop_labels(y, 0.15, 10, torch.Generator().manual_seed(1)))
    assert torch.equal(drop_labels(y, 0.0, 10), y)
    assert (drop_labels(y, 1.0, 10) == 10).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_labels(y, 1.5, 10)


def test_placed_labels_are_kept_per_device_and_per_class_count():
    """GU2: a second device gets its own copy; GU3: the range check is redone for another class count."""
    labels = guidance._placed_labels(torch.tensor(5))
    assert labels(4, 10, "cpu").device.type == "cpu"
    assert labels(4, 10, "meta").device.type == "meta"
    with pytest.raises(ValueError, match=r"0\.\.2"):
        labels(4, 3, "cpu")


def test_a_bool_label_is_refused():
    """GU7: True is not label 1."""
    model = small_conditional_unet().double().eval()
    x, t = randn(2, 1, 8, 8, seed=61), torch.tensor([1, 50])
    with pytest.raises(ValueError, match="integer class label"):
        model(x, t, True)


def test_an_int_label_is_made_on_the_models_device():
    """GU9: on the meta device (shapes only) the int label must be made where x lives."""
    model = small_conditional_unet().to("meta").eval()
    x, t = torch.empty(2, 1, 8, 8, device="meta"), torch.tensor([1, 50], device="meta")
    assert model(x, t, 2).device.type == "meta"


def test_drop_labels_accepts_null_label_zero():
    """The null label may be any non-negative int, 0 included (the docstring's rule): p = 1 turns every label
    into 0, p = 0 keeps them all. Catches: a check that refuses null_label = 0 (e.g. `null_label < 1`)."""
    y = torch.tensor([3, 1, 2, 5])
    assert drop_labels(y, 1.0, null_label=0).tolist() == [0, 0, 0, 0]
    assert torch.equal(drop_labels(y, 0.0, null_label=0), y)
    with pytest.raises(ValueError, match="non-negative"):
        drop_labels(y, 0.5, null_label=-1)


def test_guidance_given_the_wrong_kind_of_network_says_which_is_needed():
    """The two mix-ups a student makes with the shipped files: the FID-MNIST classifier (clean digits, no t) as
    the guiding classifier, and the unconditional U-Net for classifier-free guidance. Catches: TypeError
    "forward() takes 2 positional arguments but 3 were given" from inside the first sampling step."""
    from ddpm_lib.classifier import MNISTClassifier
    with pytest.raises(ValueError, match=r"MNIST classifier of FID-MNIST.*dl.load_noisy_classifier"):
        dl.classifier_grad_fn(MNISTClassifier(width=8, feature_dim=16).eval(), 3, 1.0)
    unet = dl.UNet.from_preset("tiny")
    with pytest.raises(ValueError, match=r"this UNet takes no class label: .* ConditionalUNet"):
        dl.cfg_eps_model(unet, 3, 2.0, null_label=10)
    cond = dl.ConditionalUNet.from_preset("tiny", num_classes=10).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert dl.cfg_eps_model(cond, 3, 2.0, null_label=10)(x, torch.tensor([5, 9])).shape == x.shape
