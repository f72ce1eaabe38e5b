# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Denoising Diffusion GANs
#
# Diffusion models draw excellent, diverse samples but slowly; GANs draw them in one network call but drop modes;
# VAEs are fast and cover modes but blur. Xiao, Kreis & Vahdat (2022) call this the *generative learning trilemma*
# and attack it from the diffusion side: take only four large denoising steps, and model each step — which is no
# longer Gaussian — with a conditional GAN.
#
# It follows Xiao, Kreis & Vahdat (ICLR 2022), §2–4, Algorithm 1 and Table 1.

# %% [markdown]
# ## Learning objectives
#
# - State the trilemma (quality, mode coverage, speed) and place DDPM, DDIM, GANs and DDGAN in it.
# - Show, with an exact computation on 2-D data, why a Gaussian reverse step fails when there are only four steps:
#   the true $q(x_{t-1} \mid x_t)$ becomes multimodal.
# - Write DDGAN's generator step — predict $x_0'$, then draw from the posterior $q(x_{t-1} \mid x_t, x_0')$ — and its
#   losses: non-saturating GAN loss on pairs $(x_{t-1}, x_t)$ with an R1 penalty.
# - Train a DDGAN on 2-D data on a CPU, check that it covers every mode, and compare DDPM, DDIM and DDGAN on MNIST
#   by quality, network evaluations and wall-clock time.

# %% tags=["parameters"]
quick = False  # CI sets True: tiny data, few steps, CPU-sized
seed = 0  # seed of every random draw in this notebook
results = "../data/laptop"  # the shipped models and their results: data/laptop (CPU stand-in) or data (GPU run)

# %%
# Setup: the course package is installed by `make lab`; on Colab the next lines install it.
try:
    import ddpm_lib as dl
except ModuleNotFoundError:
    %pip install --quiet "ddpm_lib @ git+https://github.com/ddpm-course/ddpm-course"
    import ddpm_lib as dl
import json
import math
import time
from pathlib import Path
import torch
import matplotlib.pyplot as plt
from torch.testing import assert_close
from ddpm_lib import plots
from ddpm_lib import checks  # self-checks for the exercises
torch.manual_seed(seed)
device = "cuda" if torch.cuda.is_available() else "cpu"
print(f"torch {torch.__version__} on {device}")
plt.rcParams["figure.dpi"] = 110
results = Path(results)
missing = [f for f in ['ddgan_mnist.pt', 'results/trilemma_mnist.json'] if not (results / f).exists()]
if missing:   # e.g. on Colab, where pip installed the package but not the course's data/ folder
    raise FileNotFoundError(f"{results} lacks {missing}: clone the course and point `results` at its data/ "
                            "folder, or make the files with `make results` (README)")
f64 = torch.float64

# %% [markdown]
# > **Where the shipped files come from.** `results` points at `data/laptop/`: the models and measurements of
# > `make results RESULTS_SCALE=laptop`, made on a 2-core laptop CPU in about two hours with the `tiny` presets
# > (a 1.2M-parameter U-Net, a 0.3M-parameter DDGAN generator), short training runs and a few hundred samples per
# > measurement. They stand in for the GPU run
# > (`make results`: the `mnist` U-Net, 20,000 steps, 10,000 samples per FID), which writes to `data/` and has not
# > been made yet. Expect blurrier digits and larger, noisier FID-MNIST values than a GPU run gives. Every number
# > below is printed from the files, so text and code stay right when `results` points at `data/`.

# %% [markdown]
# ## 1. The trilemma
#
# | model | quality | mode coverage | speed (network calls per sample) |
# |---|---|---|---|
# | GAN | high | often misses modes | 1 |
# | VAE, normalising flow | lower (blur) | good | 1 |
# | DDPM | high | good | 1,000 |
# | DDIM (notebook 07) | high at 50 steps, worse at 4 | good | 10–100 |
# | DDGAN | high | good | 2–8 |
#
# Why can't DDPM simply take four steps? Its reverse step $p_\theta(x_{t-1} \mid x_t)$ is a Gaussian. That is
# justified only when each forward step adds little noise: then $q(x_{t-1} \mid x_t)$ is close to Gaussian (Feller
# 1949; notebook 03 showed it on two-point data). With four steps each $\beta_t$ is large, and we can compute
# exactly what happens.

# %% [markdown]
# ## 2. Four Gaussian steps are not enough: an exact computation
#
# Take data from a ring of eight Gaussians. Every marginal $q(x_{t-1})$ is then a Gaussian mixture in closed form
# (`GaussianMixture.log_prob`), and by Bayes
#
# $$q(x_{t-1} \mid x_t) \propto q(x_t \mid x_{t-1})\, q(x_{t-1}) = \mathcal N(x_t; \sqrt{\alpha_t}\,x_{t-1}, \beta_t I)\; q(x_{t-1}), \tag{9.1}$$
#
# which we evaluate on a grid of $x_{t-1}$ for one fixed $x_t$: with DDGAN's $T = 4$ schedule at its last two steps
# ($t = 1$: the step that lands on the data; $t = 2$), and with $T = 1000$ at the step whose $\bar\alpha_t$ equals the
# short chain's $\bar\alpha_1$. The number under each panel is the total-variation distance between the density and
# the Gaussian with its mean and covariance: 0 for a Gaussian, 1 for no overlap at all.

# %%
ring = dl.ring_of_gaussians(k=8, radius=2.0, std=0.1)
s4, s1000 = dl.ddgan_schedule(4), dl.make_schedule("linear", 1000)
t1000 = int((s1000.alpha_bar - s4.alpha_bar[1]).abs().argmin())          # the same ᾱ as t = 1 of the short chain
n_grid = 150 if quick else 300
u = torch.linspace(-3, 3, n_grid, dtype=f64)
grid = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 2)
cell = float(u[1] - u[0]) ** 2
x_t = torch.tensor([[0.4, 0.3]], dtype=f64)


def reverse_density(s, t):
    """q(x_{t−1} | x_t) of eq. (9.1) on the grid, normalised."""
    log_lik = -0.5 * ((x_t - s.alpha[t].sqrt() * grid) ** 2).sum(1) / s.beta[t]
    return torch.softmax(log_lik + ring.log_prob(s, grid, t - 1), 0) / cell


def gaussian_fit_tv(p):
    """Total-variation distance between p and the Gaussian with p's mean and covariance."""
    w = p * cell
    mean = (w[:, None] * grid).sum(0)
    cov = ((w[:, None] * (grid - mean))[:, :, None] * (grid - mean)[:, None, :]).sum(0)
    diff = grid - mean
    q = torch.exp(-0.5 * (diff @ torch.linalg.inv(cov) * diff).sum(1)) / (2 * math.pi * torch.linalg.det(cov).sqrt())
    return 0.5 * ((p - q).abs() * cell).sum().item()


fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
tv = {}
for ax, (name, s, t) in zip(axes, (("T = 4", s4, 1), ("T = 4", s4, 2), ("T = 1000", s1000, t1000))):
    p = reverse_density(s, t)
    tv[(name, t)] = gaussian_fit_tv(p)
    ax.imshow(p.reshape(n_grid, n_grid), origin="lower", extent=(-3, 3, -3, 3), cmap="magma")
    ax.plot(*x_t[0], "o", ms=12, mfc="none", mec="c", mew=1.5, label="x_t")
    ax.set(title=f"q(x_t−1 | x_t), {name}, t = {t}, β_t = {s.beta[t]:.3f}\nTV to the best Gaussian: {tv[(name, t)]:.2f}",
           xlabel="x_t−1[0]", ylabel="x_t−1[1]")
    ax.legend(loc="lower right")
plt.tight_layout()
plt.show()
assert tv[("T = 4", 1)] > 0.5 and tv[("T = 1000", t1000)] < 0.01, tv
print("total-variation distance to the best Gaussian:", {f"{k[0]}, t = {k[1]}": round(v, 4) for k, v in tv.items()})

# %% [markdown]
# With $T = 1000$ one step moves $x$ by a tiny $\beta_t$, the likelihood in (9.1) is a narrow Gaussian that sees only
# one small patch of $q(x_{t-1})$, and the product is nearly Gaussian. With $T = 4$ the likelihood is wide, several
# modes of $q(x_{t-1})$ fit under it, and the reverse step is **multimodal**: no Gaussian $p_\theta$ can match it.
# What a Gaussian sampler makes of this, even with the *exact* $\varepsilon$: four steps on a ring of four Gaussians
# (the data set we train DDGAN on below; four modes keep the CPU training short):

# %%
ring4 = dl.ring_of_gaussians(k=4, radius=2.0, std=0.15)
n = 2_000 if quick else 8_000
g = torch.Generator().manual_seed(seed)
x_gauss = dl.sample_ddpm(ring4.eps_model(s4), s4, (n, 2), generator=g, dtype=f64)


def within_3_sigma(x, mix=ring4):
    """Share of samples within 3σ of their nearest mode, and each mode's share of all samples."""
    k = mix.class_posterior(s4, x, 0).argmax(1)
    near = (x - mix.means[k]).norm(dim=1) < 3 * float(mix.stds[0])
    return near.double().mean().item(), torch.bincount(k[near], minlength=mix.K).double() / len(x)


near_gauss, _ = within_3_sigma(x_gauss)
print(f"Gaussian reverse steps with the exact ε, T = 4: {near_gauss:.1%} of samples within 3σ of a mode "
      f"(the data: 98.9%)")

# %% [markdown]
# ## 3. DDGAN: a conditional GAN for each large step
#
# DDGAN keeps the forward process and replaces the Gaussian $p_\theta(x_{t-1} \mid x_t)$ by an implicit model. A
# generator $G_\theta(x_t, z, t)$ with a latent $z \sim \mathcal N(0, I)$ predicts a clean sample $x_0'$, and the step
# is drawn from the *forward posterior* at that prediction (notebook 03):
#
# $$x_0' = G_\theta(x_t, z, t), \qquad x_{t-1} \sim q(x_{t-1} \mid x_t, x_0') = \mathcal N(\tilde\mu_t(x_t, x_0'), \tilde\beta_t I). \tag{9.2}$$
#
# The randomness of $z$ lets $p_\theta(x_{t-1} \mid x_t) = \int q(x_{t-1} \mid x_t, G(x_t, z, t))\,p(z)\,dz$ be multimodal.
# A time-conditioned discriminator $D_\phi(x_{t-1}, x_t, t)$ tells real pairs — $x_{t-1} \sim q(x_{t-1} \mid x_0)$, then
# one forward step to $x_t$ — from pairs whose $x_{t-1}$ came from (9.2). The losses are the non-saturating GAN
# losses (Goodfellow et al. 2014) plus an R1 penalty on real data (Mescheder et al. 2018):
#
# $$\mathcal L_D = \mathbb E\,\mathrm{softplus}(-D(x_{t-1}, x_t, t)) + \mathbb E\,\mathrm{softplus}(D(x_{t-1}', x_t, t)) + \tfrac{\gamma}{2}\,\mathbb E\,\lVert\nabla_{x_{t-1}} D(x_{t-1}, x_t, t)\rVert^2, \qquad
# \mathcal L_G = \mathbb E\,\mathrm{softplus}(-D(x_{t-1}', x_t, t)). \tag{9.3}$$
#
# One step of (9.2) by hand against `dl.posterior_sample`, and the moments of the real pairs against the forward
# process:

# %%
x0_pred = torch.randn(5, 2, generator=g, dtype=f64)
xt_ = torch.randn(5, 2, generator=g, dtype=f64)
noise = torch.randn(5, 2, generator=g, dtype=f64)
t_ = 3
a, ab, ab_prev, b = s4.alpha[t_], s4.alpha_bar[t_], s4.alpha_bar[t_ - 1], s4.beta[t_]
mu = ab_prev.sqrt() * b / (1 - ab) * x0_pred + a.sqrt() * (1 - ab_prev) / (1 - ab) * xt_
by_hand = mu + ((1 - ab_prev) / (1 - ab) * b).sqrt() * noise
assert_close(by_hand, dl.posterior_sample(s4, x0_pred, xt_, t_, noise))
x0_one = torch.full((100_000 if not quick else 20_000, 1), 0.8, dtype=f64)
x_prev, x_t_pairs = dl.q_sample_pairs(s4, x0_one, t_, g)
m, v = x_t_pairs.mean().item(), x_t_pairs.var().item()
assert abs(m - ab.sqrt().item() * 0.8) < 5 * math.sqrt((1 - ab.item()) / len(x0_one))
print(f"posterior draw (9.2) by hand = library; real x_t: mean {m:.4f} (√ᾱ_t·0.8 = {ab.sqrt().item() * 0.8:.4f}), "
      f"variance {v:.4f} (1 − ᾱ_t = {1 - ab.item():.4f})")

# %% [markdown]
# ## 4. DDGAN on 2-D data
#
# Training alternates a discriminator step and a generator step (Algorithm 1), with Adam at $(\beta_1, \beta_2) = (0.5, 0.9)$
# and an EMA of the generator's weights, as for the diffusion model. On the ring of four Gaussians:

# %%
x0_data, _ = ring4.sample(10_000, g)
torch.manual_seed(seed)
G, D = dl.ToyGenerator(hidden=64), dl.ToyDiscriminator(hidden=64)
steps = 1500 if quick else 3000
start = time.perf_counter()
G_ema, history = dl.train_ddgan_toy(G, D, s4, x0_data, steps=steps, batch=256, lr_g=1e-3, lr_d=1e-3,
                                    r1_gamma=0.05, ema_decay=0.999, generator=g)
print(f"{steps} steps in {time.perf_counter() - start:.0f} s")
x_gan = dl.sample_ddgan(G_ema, s4, (n, 2), generator=g).double()
near_gan, share = within_3_sigma(x_gan)
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
for ax, (x, title) in zip(axes, ((x0_data[:n], "data"), (x_gauss, f"Gaussian steps, exact ε, T = 4 ({near_gauss:.0%} near a mode)"),
                                 (x_gan, f"DDGAN, T = 4 ({near_gan:.0%} near a mode)"))):
    plots.scatter2d(x, ax=ax, title=title)
plt.tight_layout()
plt.show()
print("per-mode share of DDGAN samples within 3σ:", share.numpy().round(3), f"(fair share {1 / ring4.K})")
assert near_gan > 0.7 and (share >= 0.5 / ring4.K).all(), (near_gan, share)     # every mode covered
assert near_gan > near_gauss

# %% [markdown]
# ## 5. MNIST: the trilemma measured
#
# The shipped MNIST DDGAN (`data/ddgan_mnist.pt`) has a U-Net generator conditioned on $t$ and on $z$ (through a
# mapping network and adaptive group normalisation) and a convolutional discriminator of pairs; it was trained
# with `python -m ddpm_lib train-ddgan` (its card holds the command). Four generator calls per digit:

# %%
G_mnist, s_gan, info = dl.load_ddgan_generator(results / "ddgan_mnist.pt")
x = dl.sample_ddgan(G_mnist, s_gan, (16 if quick else 64, 1, 32, 32), generator=torch.Generator().manual_seed(seed))
fig, ax = plt.subplots(figsize=(5, 5))
plots.show_images(x.clamp(-1, 1), nrow=8, ax=ax, title=f"DDGAN samples, {s_gan.T} generator calls each")
plt.show()

# %% [markdown]
# The table in the spirit of the paper's Table 1, made by
# `python -m ddpm_lib trilemma --ddpm data/ddpm_mnist.pt --ddgan data/ddgan_mnist.pt` (`make results-ddgan`): the
# same held-out digits, the same FID-MNIST (notebook 06), network evaluations counted by wrapping the networks,
# and wall-clock time per 1,000 samples.

# %%
tri = json.loads((results / "results" / "trilemma_mnist.json").read_text())
rows = tri["rows"]
print(f"{tri['n']:,} samples per row on {tri['device']} (networks in {tri['precision']}); {tri['metric']}")
print(f"{'sampler':<22}{'NFE':>6}{'FID-MNIST':>11}{'class entropy':>15}{'s / 1000':>10}")
for r in rows:
    print(f"{r['sampler']:<22}{r['nfe']:>6}{r['fid_mnist']:>11.2f}{r['class_entropy']:>15.3f}{r['seconds_per_1000']:>10.2f}")
fig, ax = plt.subplots(figsize=(6, 3.6))
for i, r in enumerate(rows):                     # labels alternate above and below: close points stay legible
    ax.scatter(r["seconds_per_1000"], r["fid_mnist"], s=60)
    ax.annotate(r["sampler"], (r["seconds_per_1000"], r["fid_mnist"]), textcoords="offset points",
                xytext=(6, 6 if i % 2 == 0 else -14), fontsize=8)
ax.margins(x=0.35, y=0.2)
ax.set(xscale="log", yscale="log", xlabel="seconds per 1,000 samples", ylabel="FID-MNIST (lower is better)",
       title="quality against speed")
plt.show()

# %% [markdown]
# **Reading the table.** The trilemma asks for three things at once: quality (low FID), coverage (class entropy
# near $\log 10 = 2.30$, every digit drawn) and speed (few seconds). DDPM has the first two and not the third;
# DDIM with 4 steps is fast but blurred, because four Gaussian steps cannot carry a multimodal $q(x_{t-1} \mid x_t)$
# (section 2). The paper's claim, on CIFAR-10, is that DDGAN's 4 steps reach near-DDPM quality at DDIM-4's speed.
# Whether this table confirms it depends on the GAN having been trained long enough. GANs need many more updates
# than a diffusion model to draw clean digits. The laptop stand-in (`data/laptop/`) gave its `tiny` DDGAN
# only 1,500 steps, and it draws strokes, not digits. Its row shows the speed (the fewest seconds per 1,000)
# but not the quality. Only the GPU run (`make results-ddgan`, 20,000 steps of the `mnist` preset) tests the
# quality claim on MNIST.

# %% [markdown]
# ## Exercises
#
# **Exercise 9.1 (the generator's step).** Write `ddgan_step(s, x0_pred, xt, t, noise)`: a draw of
# $x_{t-1} \sim q(x_{t-1} \mid x_t, x_0')$, eq. (9.2), for an integer $t$, with no noise at $t = 1$.
#
# **Exercise 9.2 (the losses).** Write `gan_losses(real_logits, fake_logits)` returning the discriminator's and the
# generator's non-saturating losses of eq. (9.3) without the R1 term.

# %% tags=["solution"]
# Solution: Exercise 9.1 (ddgan_step)
def ddgan_step(s, x0_pred, xt, t, noise):
    # BEGIN SOLUTION
    a, ab, ab_prev, b = s.alpha[t], s.alpha_bar[t], s.alpha_bar[t - 1], s.beta[t]
    mean = ab_prev.sqrt() * b / (1 - ab) * x0_pred + a.sqrt() * (1 - ab_prev) / (1 - ab) * xt
    return mean + ((1 - ab_prev) / (1 - ab) * b).sqrt() * noise
    # END SOLUTION


assert checks.check_ddgan_step(ddgan_step)

# %% tags=["solution"]
# Solution: Exercise 9.2 (gan_losses)
def gan_losses(real_logits, fake_logits):
    # BEGIN SOLUTION
    softplus = torch.nn.functional.softplus
    loss_d = softplus(-real_logits).mean() + softplus(fake_logits).mean()
    loss_g = softplus(-fake_logits).mean()
    return loss_d, loss_g
    # END SOLUTION


assert checks.check_gan_losses(gan_losses)

# %% [markdown]
# ## Summary
#
# - A Gaussian reverse step is right only for small steps; with $T = 4$ the true $q(x_{t-1} \mid x_t)$ is multimodal
#   (computed exactly), and even the exact $\varepsilon$ cannot fix a Gaussian sampler.
# - DDGAN predicts $x_0'$ with a generator that takes a latent $z$ and draws $x_{t-1}$ from the forward posterior;
#   a discriminator of pairs $(x_{t-1}, x_t)$ trains it with the non-saturating loss and R1.
# - On 2-D data DDGAN covers every mode in four steps (at least 70% of samples within 3σ of a mode, every mode at
#   least half its fair share); on MNIST the measured table places DDPM, DDIM and DDGAN in the
#   trilemma.

# %% [markdown]
# ## Further reading
#
# - Z. Xiao, K. Kreis, A. Vahdat. *Tackling the Generative Learning Trilemma with Denoising Diffusion GANs.* ICLR
#   2022, arXiv:2112.07804.
# - I. Goodfellow et al. *Generative Adversarial Nets.* NeurIPS 2014, arXiv:1406.2661.
# - L. Mescheder, A. Geiger, S. Nowozin. *Which Training Methods for GANs do actually Converge?* ICML 2018,
#   arXiv:1801.04406 — the R1 penalty.
# - T. Karras, S. Laine, T. Aila. *A Style-Based Generator Architecture for GANs.* CVPR 2019, arXiv:1812.04948 —
#   mapping network and adaptive normalisation.
