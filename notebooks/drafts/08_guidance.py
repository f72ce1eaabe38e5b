# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Classifier guidance
#
# The MNIST model draws a random digit. To ask for a *particular* digit without retraining it, Dhariwal & Nichol
# (2021) tilt every reverse step towards images that a classifier assigns to the wanted class — and, with a scale
# above one, trade diversity for fidelity. Classifier-free guidance (Ho & Salimans 2021) later obtained the same
# effect without a separate classifier and is what modern text-to-image models use.
#
# It follows Dhariwal & Nichol (2021), §4 (eqs. 3–14, Algorithms 1–2), and Ho & Salimans (2021), §3.

# %% [markdown]
# ## Learning objectives
#
# - Derive the guided reverse step $\mathcal N(\mu + s\Sigma\nabla\log p_\phi(y \mid x_t), \Sigma)$ from Bayes' rule and a
#   first-order Taylor expansion, and its DDIM form $\hat\varepsilon = \varepsilon_\theta - \sqrt{1-\bar\alpha_t}\,s\nabla\log p_\phi$.
# - Check on 2-D mixture data, with the exact classifier, that guided samples land in the chosen class.
# - Explain why the classifier must see noisy inputs, and measure on MNIST the trade-off between class accuracy
#   and diversity as the scale grows.
# - Write classifier-free guidance and relate its weight $w$ to the classifier scale $s$.

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
missing = [f for f in ['noisy_classifier_mnist.pt', 'results/guidance_mnist.json', 'results/cfg_mnist.json'] if not (results / f).exists()]
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
# ## 1. The conditional reverse step
#
# We want samples from $q(x_0 \mid y)$. Dhariwal & Nichol (App. H) show that the conditional reverse process can be
# written with the unconditional one and a classifier of noisy inputs:
#
# $$p_{\theta,\phi}(x_{t-1} \mid x_t, y) = Z\; p_\theta(x_{t-1} \mid x_t)\; p_\phi(y \mid x_{t-1}). \tag{8.1}$$
#
# The first factor is our Gaussian $\mathcal N(\mu, \Sigma)$. The second is not Gaussian, but over the small region
# where the first has its mass, $\log p_\phi$ is nearly linear. Expand it around $x_{t-1} = \mu$ with $g = \nabla_x \log p_\phi(y \mid x)\big|_{x=\mu}$:
#
# $$\log p_\phi(y \mid x_{t-1}) \approx \log p_\phi(y \mid \mu) + (x_{t-1} - \mu)^\top g. \tag{8.2}$$
#
# Then, up to constants in $x_{t-1}$,
#
# $$\log\big[p_\theta(x_{t-1} \mid x_t)\,p_\phi(y \mid x_{t-1})\big] \approx -\tfrac12 (x_{t-1}-\mu)^\top\Sigma^{-1}(x_{t-1}-\mu) + (x_{t-1}-\mu)^\top g
# = -\tfrac12 (x_{t-1}-\mu-\Sigma g)^\top\Sigma^{-1}(x_{t-1}-\mu-\Sigma g) + \text{const}, \tag{8.3}$$
#
# completing the square: the product is $\mathcal N(\mu + \Sigma g, \Sigma)$. A *guidance scale* $s$ multiplies the
# gradient: $\mathcal N(\mu + s\Sigma g, \Sigma)$ (their Algorithm 1; in practice $g$ is taken at $x_t$). A check of
# (8.3) in one dimension against the exact product, normalised on a grid, for a logistic classifier:

# %%
u = torch.linspace(-4, 4, 20_001, dtype=f64)
du = float(u[1] - u[0])
mu, var = 0.3, 0.02                                             # p_θ(x_{t−1} | x_t) = N(0.3, 0.02): a small step
log_cls = lambda x: torch.nn.functional.logsigmoid(3.0 * x - 0.5)     # log p_φ(y | x), a logistic classifier
exact = torch.exp(-0.5 * (u - mu) ** 2 / var + log_cls(u))
exact = exact / (exact.sum() * du)
x_mu = torch.tensor(mu, dtype=f64, requires_grad=True)
g_mu, = torch.autograd.grad(log_cls(x_mu), x_mu)
approx = torch.exp(-0.5 * (u - mu - var * g_mu) ** 2 / var) / math.sqrt(2 * math.pi * var)
mean_exact = float((u * exact).sum() * du)
tv = 0.5 * float((exact - approx).abs().sum() * du)
assert abs(mean_exact - (mu + var * g_mu.item())) < 0.01 and tv < 0.03
print(f"exact product: mean {mean_exact:.4f}; eq. (8.3): mean μ + Σg = {mu + var * g_mu.item():.4f}; TV distance {tv:.4f}")

# %% [markdown]
# **Guided DDIM.** DDIM has no $\Sigma$ to shift by. Instead use the score: for the forward marginals,
# $\nabla_{x_t}\log q(x_t) = -\varepsilon(x_t, t)/\sqrt{1-\bar\alpha_t}$ (notebook 04's eq. for the optimal $\varepsilon$). The
# score of $q(x_t)\,p_\phi(y \mid x_t)^s$ adds $s\nabla\log p_\phi$, so the corresponding noise prediction is
#
# $$\hat\varepsilon(x_t) = \varepsilon_\theta(x_t, t) - \sqrt{1-\bar\alpha_t}\;s\,\nabla_{x_t}\log p_\phi(y \mid x_t), \tag{8.4}$$
#
# which DDIM uses in place of $\varepsilon_\theta$ (their Algorithm 2). Both samplers take the gradient through one
# hook, `cond_fn(x_t, t)` $= s\nabla\log p_\phi(y \mid x_t)$.

# %% [markdown]
# ## 2. Exact guidance on 2-D data
#
# On a Gaussian mixture everything is known in closed form: the exact $\varepsilon$, and the exact noise-aware
# classifier $q(y \mid x_t)$, the posterior probability of each component given the noisy point
# (`GaussianMixture.class_posterior`). With $s = 1$, eq. (8.4) is then the exact $\varepsilon$ of $q(x_t \mid y)$, and
# guided sampling must return the chosen component alone — even one with only 10% of the mass.

# %%
mix = dl.GaussianMixture(means=[[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], stds=[0.35, 0.35, 0.35], weights=[0.45, 0.45, 0.10])
s = dl.make_schedule("linear", 1000)
n = 1_000 if quick else 4_000
target = 2                                                       # the rare component
g = torch.Generator().manual_seed(seed)
x_T = torch.randn(n, 2, generator=g, dtype=f64)
samples = {}
for scale in (0.0, 1.0, 4.0):
    f = dl.exact_mixture_grad_fn(mix, s, target, scale)
    samples[scale] = dl.sample_ddim(mix.eps_model(s), s, (n, 2), steps=100, eta=0.0, dtype=f64, x_T=x_T, cond_fn=f)
fig, axes = plt.subplots(1, 3, figsize=(12, 3.9))
for ax, (scale, x) in zip(axes, samples.items()):
    k = mix.class_posterior(s, x, 0).argmax(1)
    plots.scatter2d(x, ax=ax, c=k, title=f"scale s = {scale:g}: {(k == target).double().mean():.1%} in component {target}", lim=4)
plt.tight_layout()
plt.show()
in_target = (mix.class_posterior(s, samples[1.0], 0).argmax(1) == target).double().mean().item()
assert in_target > 0.98
spread = {sc: samples[sc][mix.class_posterior(s, samples[sc], 0).argmax(1) == target].std(0).mean().item() for sc in (1.0, 4.0)}
assert spread[4.0] < spread[1.0]
print(f"s = 1: {in_target:.1%} in the target component; spread within it: s = 1 {spread[1.0]:.3f} (data 0.35), s = 4 {spread[4.0]:.3f}")

# %% [markdown]
# At $s = 1$ the samples are the target component, with its own spread. At $s = 4$ they are drawn from (roughly)
# $q(x \mid y)\,q(y \mid x)^{3}$: the points most typical of the class, bunched away from the others — more
# "fidelity", less diversity. That is the trade-off guidance buys, the diffusion cousin of a GAN's truncation trick.
# The guided field at one noise level shows the mechanism: the classifier's gradient bends the flow towards the class.

# %%
t_show = 300
uu = torch.linspace(-4, 4, 17, dtype=f64)
pts = torch.stack(torch.meshgrid(uu, uu, indexing="xy"), -1).reshape(-1, 2)
tt = torch.full((len(pts),), t_show)
score = mix.score(s, pts, tt)
grad = dl.exact_mixture_grad_fn(mix, s, target, 1.0)(pts, tt)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
for ax, (field, title) in zip(axes, ((score, "∇ log q(x_t)"), (score + grad, "∇ log q(x_t) + ∇ log q(y | x_t)"))):
    ax.quiver(pts[:, 0], pts[:, 1], field[:, 0], field[:, 1], color="tab:blue")
    ax.scatter(*(s.alpha_bar[t_show].sqrt() * mix.means).T, c="k", marker="x", s=60, label="component means at t")
    ax.set(title=f"{title}, t = {t_show}", xlim=(-4.4, 4.4), ylim=(-4.4, 4.4), aspect="equal")
axes[0].legend(loc="lower left", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. A classifier of noisy images
#
# A classifier trained on clean digits has never seen $x_t$ at large $t$; its gradients there are meaningless. The
# guide is therefore trained on $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\varepsilon$ at uniformly drawn $t$, and
# takes $t$ as input: `dl.NoisyClassifier`, the U-Net's encoder half with a pooled head, trained by
# `python -m ddpm_lib train-noisy-classifier`. Its accuracy falls with $t$, as it must — at $t = T$ nothing of the
# digit is left:

# %%
card = json.loads((results / "noisy_classifier_mnist.json").read_text())
acc = {int(k): v for k, v in card["heldout_accuracy_at_t"].items()}
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(list(acc), list(acc.values()), "o-")
ax.axhline(0.1, color="gray", ls="--", label="chance (10 classes)")
ax.set(xlabel="t", ylabel="held-out accuracy", title="the noise-aware classifier p_φ(y | x_t)", ylim=(0, 1.02))
ax.legend()
plt.show()
print(f"trained with: {card['command']}")
assert acc[min(acc)] > 0.9 and acc[max(acc)] < 0.3

# %% [markdown]
# ## 4. Guided MNIST samples
#
# The shipped unconditional model, guided towards each digit by the noisy classifier (DDIM, 50 steps; rows are the
# target classes 0–9). Made with `python -m ddpm_lib sample --checkpoint data/ddpm_mnist.pt --classifier
# data/noisy_classifier_mnist.pt --label all --scale S --sampler ddim --steps 50`:

# %%
scales_shown = [p for p in sorted((results / "results").glob("guided_s*.png"))]
fig, axes = plt.subplots(1, len(scales_shown), figsize=(3.3 * len(scales_shown), 3.6))
for ax, path in zip(axes, scales_shown):
    ax.imshow(plt.imread(path), cmap="gray")
    ax.set(title=f"scale s = {path.stem.split('_s')[1]}", xticks=[], yticks=[])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. The fidelity–diversity trade-off, measured
#
# For each scale, `python -m ddpm_lib evaluate-guidance` draws the same number of samples of every digit and
# measures them with the *separate* clean classifier of notebook 06 (never the guide itself, which guidance
# optimises): **accuracy**, the share classified as the target digit; **diversity**, the mean distance between the
# classifier features of two samples of the same target digit; and FID-MNIST against all held-out digits.

# %%
gd = json.loads((results / "results" / "guidance_mnist.json").read_text())
rows = gd["results"]
print(f"{gd['n_per_class']} samples per digit; {gd['sampler']}; diversity: {gd['diversity_measure']}")
print(f"{'scale':>6}{'accuracy':>10}{'confidence':>12}{'diversity':>11}{'FID-MNIST':>11}")
for r in rows:
    print(f"{r['scale']:>6g}{r['accuracy']:>10.3f}{r['confidence']:>12.3f}{r['diversity']:>11.3f}{r['fid_mnist']:>11.2f}")
print(f"{'real':>6}{gd['real_heldout']['accuracy']:>10.3f}{gd['real_heldout']['confidence']:>12.3f}{gd['real_heldout']['diversity']:>11.3f}")
fig, ax1 = plt.subplots(figsize=(6.5, 3.6))
sc = [r["scale"] for r in rows]
ax1.plot(sc, [r["accuracy"] for r in rows], "o-", color="tab:blue", label="accuracy (clean classifier)")
ax1.set(xlabel="guidance scale s", ylabel="accuracy", ylim=(0, 1.02), title="fidelity against diversity")
ax2 = ax1.twinx()
ax2.plot(sc, [r["diversity"] for r in rows], "s--", color="tab:orange", label="within-class diversity")
ax2.set_ylabel("mean feature distance within class")
fig.legend(loc="lower center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, -0.02))
plt.tight_layout()
plt.show()
assert rows[0]["accuracy"] < rows[-1]["accuracy"] and rows[-1]["diversity"] < rows[0]["diversity"]

# %% [markdown]
# ## 6. Classifier-free guidance
#
# A separate classifier is a second network to train on noisy data, and its gradients can be adversarial rather than
# semantic. Ho & Salimans (2021) drop it. Train *one* network $\varepsilon_\theta(x_t, t, y)$ whose label is replaced by
# a null label $\varnothing$ with probability $p_\text{uncond} = 0.1$, so it learns both the conditional and the
# unconditional $\varepsilon$; sample with
#
# $$\tilde\varepsilon = \varepsilon_\theta(x_t, t, \varnothing) + w\,\big(\varepsilon_\theta(x_t, t, y) - \varepsilon_\theta(x_t, t, \varnothing)\big). \tag{8.5}$$
#
# For exact models, $\varepsilon(x_t \mid y) - \varepsilon(x_t) = -\sqrt{1-\bar\alpha_t}\,\nabla\log q(y \mid x_t)$ by Bayes, so (8.5) is
# (8.4) with scale $s = w - 1$ on top of the conditional model — guidance by an *implicit* classifier. ($w = 0$:
# unconditional; $w = 1$: conditional; Ho & Salimans write $(1+w)\varepsilon_c - w\varepsilon_u$, their $w$ is our $w - 1$.)
# A check of that identity with the exact mixture:

# %%
xt_pts = torch.randn(64, 2, generator=g, dtype=f64) * 2
tt = torch.full((64,), 250)
eps_u = mix.eps(s, xt_pts, tt)
cond = dl.GaussianMixture(means=mix.means[target:target + 1], stds=mix.stds[target:target + 1], weights=[1.0])
eps_c = cond.eps(s, xt_pts, tt)
implicit = -(1 - s.alpha_bar[250]).sqrt() * dl.exact_mixture_grad_fn(mix, s, target, 1.0)(xt_pts, tt)
assert_close(eps_c - eps_u, implicit)
print("ε(x_t | y) − ε(x_t) = −√(1 − ᾱ_t)·∇ log q(y | x_t) at 64 points: the 'implicit classifier' identity holds")

# %%
cfg = json.loads((results / "results" / "cfg_mnist.json").read_text())
print(f"classifier-free guidance, {cfg['n_per_class']} samples per digit ({cfg['sampler']})")
print(f"{'w':>6}{'accuracy':>10}{'diversity':>11}{'FID-MNIST':>11}")
for r in cfg["results"]:
    print(f"{r['scale']:>6g}{r['accuracy']:>10.3f}{r['diversity']:>11.3f}{r['fid_mnist']:>11.2f}")
cfg_grids = sorted((results / "results").glob("cfg_w*.png"))
fig, axes = plt.subplots(1, len(cfg_grids), figsize=(3.3 * len(cfg_grids), 3.6))
for ax, path in zip(axes, cfg_grids):
    ax.imshow(plt.imread(path), cmap="gray")
    ax.set(title=f"w = {path.stem.split('_w')[1]}", xticks=[], yticks=[])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Exercises
#
# **Exercise 8.1 (guided ε).** Write `guided_eps(s, eps_pred, t, grad, scale)`, eq. (8.4), for a batch of images and a
# tensor `t` of shape (B,).
#
# **Exercise 8.2 (classifier-free guidance).** Write `cfg_combine(eps_uncond, eps_cond, w)`, eq. (8.5).

# %% tags=["solution"]
# Solution: Exercise 8.1 (guided_eps)
def guided_eps(s, eps_pred, t, grad, scale):
    # BEGIN SOLUTION
    sqrt_one_minus = (1 - s.alpha_bar[t]).sqrt().view(-1, *([1] * (eps_pred.ndim - 1))).to(eps_pred.dtype)
    return eps_pred - sqrt_one_minus * scale * grad
    # END SOLUTION


assert checks.check_guided_eps(guided_eps)

# %% tags=["solution"]
# Solution: Exercise 8.2 (cfg_combine)
def cfg_combine(eps_uncond, eps_cond, w):
    # BEGIN SOLUTION
    return eps_uncond + w * (eps_cond - eps_uncond)
    # END SOLUTION


assert checks.check_cfg_combine(cfg_combine)

# %% [markdown]
# ## Summary
#
# - Bayes plus a first-order Taylor expansion turn the conditional reverse step into the unconditional Gaussian with
#   its mean shifted by $s\Sigma\nabla\log p_\phi$; DDIM's version shifts $\varepsilon$ by $-\sqrt{1-\bar\alpha_t}\,s\nabla\log p_\phi$.
# - With the exact classifier and $s = 1$ the samples are exactly the chosen class; $s > 1$ sharpens towards its most
#   typical members (fidelity up, diversity down), measured on MNIST with a separate classifier.
# - Classifier-free guidance gets the same effect from one conditional network trained with label dropout.

# %% [markdown]
# ## Further reading
#
# - P. Dhariwal, A. Nichol. *Diffusion Models Beat GANs on Image Synthesis.* NeurIPS 2021, arXiv:2105.05233.
# - J. Ho, T. Salimans. *Classifier-Free Diffusion Guidance.* NeurIPS 2021 workshop, arXiv:2207.12598.
# - Y. Song et al. *Score-Based Generative Modeling through Stochastic Differential Equations.* ICLR 2021,
#   arXiv:2011.13456 — conditional generation with the score of a classifier.
# - A. Brock, J. Donahue, K. Simonyan. *Large Scale GAN Training for High Fidelity Natural Image Synthesis.* ICLR 2019,
#   arXiv:1809.11096 — the truncation trick.
