# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Training a DDPM
#
# Notebooks 01–05 built every piece: the forward process, its posterior, the bound that reduces to $L_\text{simple}$,
# and the U-Net. This notebook puts them together the way a real run does — Algorithm 1 to train, Algorithm 2 to
# sample — first line by line on a CPU, then with the package's training command, whose GPU run made the MNIST model
# that notebooks 07–09 start from.
#
# It follows Ho et al. (2020), §3.4 (Algorithms 1 and 2), §4 and Appendix B (the training details).

# %% [markdown]
# ## Learning objectives
#
# - Match every line of Algorithms 1 and 2 to a line of `ddpm_lib`, and check that they compute the same numbers.
# - Name what a real training loop adds around Algorithm 1 (AdamW and warm-up, clipping, the EMA of the weights,
#   mixed precision, checkpoints that resume bit for bit) and why each is there.
# - Read a GPU run: its loss curve, its sample grids during training, and its loss as a function of $t$.
# - Measure sample quality with a Fréchet distance in the feature space of an MNIST classifier (FID-MNIST), and
#   say why it is not the FID of papers.
# - Write the EMA update and one ancestral sampling step yourself.

# %% tags=["parameters"]
quick = False  # CI sets True: tiny data, few steps, CPU-sized
seed = 0  # seed of every random draw in this notebook
results = "../data"  # folder with the shipped MNIST model and the results of its GPU run (`make results`)

# %%
# Setup: the course package is installed by `make lab`; on Colab the next lines install it.
try:
    import ddpm_lib as dl
except ModuleNotFoundError:
    %pip install --quiet "ddpm_lib @ git+https://github.com/ddpm-course/ddpm-course"
    import ddpm_lib as dl
import json
import math
import tempfile
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
missing = [f for f in ['ddpm_mnist.pt', 'training/ddpm_mnist/metrics.jsonl', 'results/ddpm_mnist_eval.json'] if not (results / f).exists()]
if missing:   # e.g. on Colab, where pip installed the package but not the course's data/ folder
    raise FileNotFoundError(f"{results} lacks {missing}: clone the course and point `results` at its data/ "
                            "folder, or make the files with `make results` on a GPU (README)")

# %% [markdown]
# ## 1. Algorithm 1, line by line
#
# Training repeats four lines (Ho et al. 2020, Algorithm 1):
#
# $$
# \begin{array}{ll}
# 1: & x_0 \sim q(x_0) \\
# 2: & t \sim \mathrm{Uniform}(\{1, \dots, T\}) \\
# 3: & \varepsilon \sim \mathcal N(0, I) \\
# 4: & \text{gradient step on } \nabla_\theta \big\lVert \varepsilon - \varepsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t\big)\big\rVert^2
# \end{array} \tag{6.1}
# $$
#
# Line 4 is $L_\text{simple}$ of notebook 04 at one draw of $(x_0, t, \varepsilon)$, with $x_t$ from the closed form
# of notebook 02. In `ddpm_lib` the data order is `training.EpochBatches` (line 1), `Trainer.train_step` draws
# lines 2–3, and `diffusion_loss` is line 4 before the gradient. We write the four lines by hand for a small U-Net
# and a batch of digits and compare the loss with the library's.

# %%
s = dl.make_schedule("linear", 1000)
digits, labels = dl.load_images("mnist-5k", train=False, pad_to_32=True)   # held-out digits, 32×32, in [−1, 1]
model = dl.UNet.from_preset("tiny").eval()                                    # eval: no dropout, same numbers twice
g = torch.Generator().manual_seed(seed)

x0 = digits[torch.randperm(len(digits), generator=g)[:16]]                   # line 1
t = torch.randint(1, s.T + 1, (16,), generator=g)                             # line 2: t ∈ {1, …, T}
eps = torch.randn(x0.shape, generator=g)                                      # line 3
a_bar = s.alpha_bar[t].float().view(-1, 1, 1, 1)
xt = a_bar.sqrt() * x0 + (1 - a_bar).sqrt() * eps                             # eq. (4) of the paper
loss = ((eps - model(xt, t)) ** 2).mean()                                     # line 4 (before the gradient)

assert_close(loss, dl.training.diffusion_loss(model, s.to("cpu"), x0, t, eps))
print(f"L_simple by hand {loss.item():.5f} = library {dl.training.diffusion_loss(model, s, x0, t, eps).item():.5f}")

# %% [markdown]
# ## 2. Algorithm 2, line by line
#
# Sampling starts from $x_T \sim \mathcal N(0, I)$ and applies, for $t = T, \dots, 1$,
#
# $$x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon_\theta(x_t, t)\Big) + \sigma_t z,
# \qquad z \sim \mathcal N(0, I) \text{ if } t > 1, \text{ else } z = 0, \tag{6.2}$$
#
# the posterior mean $\tilde\mu_t$ of notebook 03 with $x_0$ replaced by the network's estimate, plus noise of variance
# $\sigma_t^2$: either $\beta_t$ or $\tilde\beta_t$ (the paper found both work; the library's default is
# $\tilde\beta_t$). One step by hand against `dl.ddpm_step`, at a middle $t$ and at $t = 1$, where no noise is added:

# %%
def step_by_hand(xt, t, eps_pred, z, var):
    mean = (xt - s.beta[t] / (1 - s.alpha_bar[t]).sqrt() * eps_pred) / s.alpha[t].sqrt()
    sigma = getattr(s, var)[t].sqrt()
    return mean + (sigma * z if t > 1 else 0 * z)                              # z = 0 at t = 1


xt = torch.randn(4, 1, 32, 32, generator=g, dtype=torch.float64)
eps_pred, z = torch.randn(xt.shape, generator=g, dtype=torch.float64), torch.randn(xt.shape, generator=g, dtype=torch.float64)
for t_ in (500, 1):
    for var in ("beta", "beta_tilde"):
        assert_close(step_by_hand(xt, t_, eps_pred, z, var), dl.ddpm_step(s, xt, eps_pred, t_, z, var=var))
print("eq. (6.2) by hand = dl.ddpm_step at t = 500 and t = 1, for σ_t² = β_t and σ_t² = β̃_t")

# %% [markdown]
# ## 3. The package's training loop
#
# Algorithm 1 is four lines; a run that trains for hours on a GPU needs more around them. Each addition, and the
# `TrainConfig` field (command-line flag) that controls it:
#
# | addition | why | field |
# |---|---|---|
# | data scaled to $[-1, 1]$, MNIST padded to 32×32 | the prior $x_T \sim \mathcal N(0, I)$ matches data of unit scale; 32 halves cleanly | `data` |
# | AdamW, learning rate $2\cdot10^{-4}$ | the paper's optimiser and rate | `lr`, `weight_decay` |
# | linear warm-up | Adam's first steps use poor second-moment estimates; small steps keep them harmless | `warmup` |
# | gradient clipping to norm 1 | one unlucky batch cannot throw the weights far | `grad_clip` |
# | EMA of the weights, decay 0.9999 | samples come from a smoothed $\theta$ (section 6) | `ema_decay` |
# | bf16 autocast (fp16 + gradient scaler on a T4) | twice the matrix throughput; fp32 master weights | automatic |
# | checkpoints, atomic, last $k$ kept; `--resume` | a crash or a time limit loses nothing, and resuming is bit-exact | `save_every`, `keep`, `resume` |
# | a sample grid every $N$ steps, metrics as JSON lines | watch the run while it trains | `sample_every`, `log_every` |
#
# A short run on this machine with the tiny U-Net shows the files a run leaves behind:

# %%
run_dir = Path(tempfile.mkdtemp())
steps = 4 if quick else 40
config = dl.TrainConfig(data="mnist-5k", preset="tiny", T=1000, steps=steps, batch_size=16, warmup=10,
                        log_every=steps // 2, save_every=steps // 2, sample_every=0, device="cpu",
                        out_dir=str(run_dir / "a"), progress=False, seed=seed)
start = time.perf_counter()
trainer = dl.train(config)
print(f"{steps} steps in {time.perf_counter() - start:.1f} s; files: {sorted(p.name for p in (run_dir / 'a').iterdir())}")
for line in (run_dir / "a" / "metrics.jsonl").read_text().splitlines():
    print(line)

# %% [markdown]
# **Resuming is exact.** A run stopped after half its steps and continued with `resume=True` must end with the same
# weights as the uninterrupted run — same data order, same $t$ and $\varepsilon$, same dropout masks — because the
# checkpoint holds every random stream, not only the weights. We stop a second run at the half-way checkpoint and
# resume it:

# %%
from dataclasses import replace

half = replace(config, steps=steps // 2, out_dir=str(run_dir / "b"))
dl.train(half)                                                   # stops after half the steps, saves
resumed = dl.train(replace(config, out_dir=str(run_dir / "b"), resume=True))
same = all(torch.equal(p, q) for p, q in zip(trainer.model.parameters(), resumed.model.parameters()))
assert same and resumed.step == trainer.step == steps
print(f"uninterrupted and stopped-then-resumed runs agree bit for bit after step {steps}: {same}")

# %% [markdown]
# **On a GPU.** The shipped model was trained with the same code through the command line, on one H100:
#
# ```
# python -m ddpm_lib train --data mnist-5k --preset mnist --steps 20000 --batch-size 128 --compile --out-dir runs/ddpm_mnist
# ```
#
# and on several GPUs the same command runs under `torchrun --nproc_per_node 4 -m ddpm_lib train …` (one process
# per GPU, `DistributedDataParallel`, each process seeing its own slice of every batch). Its card records the
# exact command, the training time and the file's sha256:

# %%
card = json.loads((results / "ddpm_mnist.json").read_text())
ddpm, s = dl.load_pretrained(results / "ddpm_mnist.pt")      # θ_ema in float32, eval mode, and its schedule
print(f"command: {card['command']}")
print(f"steps {card['step']:,}, training time {card['training_seconds'] / 60:.1f} min, "
      f"{dl.count_parameters(ddpm):,} parameters, sha256 {card['sha256'][:16]}…")

# %% [markdown]
# ## 4. Reading the GPU run
#
# The run appended a line of metrics every 100 steps and saved a grid of 64 samples from $\theta_\text{ema}$ every
# 1,000 steps, always from the same $x_T$, so the grids are comparable.

# %%
log = [json.loads(line) for line in (results / "training" / "ddpm_mnist" / "metrics.jsonl").read_text().splitlines()]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
ax1.plot([r["step"] for r in log], [r["loss"] for r in log])
ax1.set(xlabel="optimizer step", ylabel="L_simple (mean of 100 steps)", yscale="log", title="training loss")
ax2.plot([r["step"] for r in log], [r["img_per_s"] for r in log])
ax2.set(xlabel="optimizer step", ylabel="images / s", title="throughput on the GPU")
plt.tight_layout()
plt.show()
print(f"final loss {log[-1]['loss']:.4f}; median {sorted(r['img_per_s'] for r in log)[len(log) // 2]:,.0f} images/s")

# %%
grids = sorted((results / "training" / "ddpm_mnist").glob("samples_*.png"))
show = [grids[i] for i in sorted({0, 1, 4, len(grids) // 2, len(grids) - 1}) if i < len(grids)]
fig, axes = plt.subplots(1, len(show), figsize=(3.2 * len(show), 3.4))
for ax, path in zip(axes, show):
    ax.imshow(plt.imread(path), cmap="gray")
    ax.set(title=f"step {int(path.stem.split('_')[1]):,}", xticks=[], yticks=[])
fig.suptitle("samples from θ_ema during training (same x_T in every grid)")
plt.tight_layout()
plt.show()

# %% [markdown]
# **The loss as a function of $t$.** The mean loss hides how hard the task is at each noise level. At large $t$,
# $x_t \approx \varepsilon$ and the noise is easy to read off; at small $t$ the noise is a faint perturbation of a
# digit and hard to separate from it. Predicting $\hat\varepsilon = 0$ scores exactly $\mathbb E\lVert\varepsilon\rVert^2/D = 1$
# at every $t$, so a trained network must stay below 1 everywhere:

# %%
n_t, n_img = (6, 16) if quick else (20, 128)
ts = torch.linspace(1, s.T, n_t).round().long()
x0 = digits[torch.randperm(len(digits), generator=g)[:n_img]]
with torch.no_grad():
    loss_t = torch.stack([dl.training.diffusion_loss(ddpm, s, x0, torch.full((n_img,), int(t_)),
                                                      torch.randn(x0.shape, generator=g)) for t_ in ts])
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(ts, loss_t, "o-", label="shipped model (θ_ema)")
ax.axhline(1.0, color="gray", ls="--", label="predict ε̂ = 0")
ax.set(xlabel="t", ylabel="E‖ε − ε_θ(x_t, t)‖² / D", yscale="log", title="L_simple by noise level")
ax.legend()
plt.show()
assert (loss_t < 1).all(), loss_t
print("loss at t =", [int(v) for v in ts[[0, n_t // 2, -1]]], "→", [round(float(v), 4) for v in loss_t[[0, n_t // 2, -1]]])

# %% [markdown]
# ## 5. The reverse trajectory
#
# Algorithm 2 as a strip: $x_t$ at a few steps of one chain, and beneath it the network's current guess of the
# clean digit, $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta(x_t, t))/\sqrt{\bar\alpha_t}$ (notebook 03).
# The coarse shape is decided early, at large $t$; the last few hundred steps only sharpen strokes. A full chain is
# 1,000 network evaluations, a few minutes on a laptop CPU; quick mode starts from a noised held-out digit at
# $t = 50$ instead.

# %%
t_start = min(50, s.T) if quick else s.T
keep = torch.linspace(t_start, 1, 8).round().long().tolist()
frames, guesses = [], []

def record(t_, xt_, x0_pred):
    if t_ in keep:
        frames.append(xt_[0].clone())
        guesses.append(x0_pred[0].clamp(-1, 1).clone())

gen = torch.Generator().manual_seed(seed + 1)
x_start = None
if quick:
    x_start = dl.q_sample(s, digits[:1], torch.tensor([t_start]), torch.randn((1, 1, 32, 32), generator=gen))
with torch.no_grad():
    x = x_start if x_start is not None else torch.randn((1, 1, 32, 32), generator=gen)
    for t_ in range(t_start, 0, -1):
        tt = torch.full((1,), t_)
        eps_pred = ddpm(x, tt)
        record(t_, x, dl.predict_x0_from_eps(s, x, tt, eps_pred))
        x = dl.ddpm_step(s, x, eps_pred, t_, torch.randn(x.shape, generator=gen))
fig, axes = plt.subplots(2, len(keep), figsize=(1.3 * len(keep), 2.9))
for k, t_ in enumerate(keep):
    axes[0, k].imshow(frames[k][0], cmap="gray", vmin=-1, vmax=1)
    axes[1, k].imshow(guesses[k][0], cmap="gray", vmin=-1, vmax=1)
    axes[0, k].set_title(f"t = {t_}", fontsize=9)
for ax in axes.flat:
    ax.set(xticks=[], yticks=[])
axes[0, 0].set_ylabel("x_t")
axes[1, 0].set_ylabel("x̂_0")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Why sample from an average of the weights
#
# SGD does not settle at a minimum: with a fixed learning rate the weights keep jittering around it, driven by the
# noise of the minibatches (and diffusion training is noisy: every step draws fresh $t$ and $\varepsilon$). The
# exponential moving average
#
# $$\theta_\text{ema} \leftarrow d\,\theta_\text{ema} + (1-d)\,\theta, \qquad d = 0.9999, \tag{6.3}$$
#
# averages the last $\approx 1/(1-d) = 10{,}000$ iterates: the jitter shrinks, the drift towards the minimum stays.
# A one-dimensional picture: noisy gradient steps on $f(\theta) = \theta^2/2$.

# %%
gen = torch.Generator().manual_seed(seed)
theta, ema, lr, d = torch.tensor(4.0), torch.tensor(4.0), 0.02, 0.99
path_theta, path_ema = [], []
for k in range(1500):
    theta = theta - lr * (theta + 3.0 * torch.randn((), generator=gen))     # gradient θ plus minibatch noise
    ema = d * ema + (1 - d) * theta
    path_theta.append(float(theta))
    path_ema.append(float(ema))
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(path_theta, lw=0.7, alpha=0.7, label="θ (SGD iterate)")
ax.plot(path_ema, lw=2, label=f"θ_ema (d = {d})")
ax.axhline(0, color="gray", ls="--", lw=1, label="minimum")
ax.set(xlabel="step", ylabel="θ", title="the EMA keeps the drift and removes the jitter")
ax.legend()
plt.show()
tail = slice(700, None)
std_theta, std_ema = torch.tensor(path_theta[tail]).std(), torch.tensor(path_ema[tail]).std()
assert std_ema < 0.5 * std_theta
print(f"spread around the minimum after step 700: θ {std_theta:.3f}, θ_ema {std_ema:.3f}")

# %% [markdown]
# On the real run the EMA matters just as much: the GPU run measured FID-MNIST (next section) for samples from the
# raw weights $\theta$ and from $\theta_\text{ema}$ at the end of training.

# %%
ema_eval = json.loads((results / "results" / "ddpm_mnist_eval.json").read_text())
raw_eval = json.loads((results / "results" / "ddpm_mnist_raw_eval.json").read_text())
for name, r in (("θ (raw)", raw_eval), ("θ_ema", ema_eval)):
    print(f"{name:8} FID-MNIST {r['samples']['fid_mnist']:7.2f} on {r['n']:,} samples; "
          f"mean confidence {r['samples']['confidence']:.3f}")

# %% [markdown]
# ## 7. Measuring quality: FID-MNIST
#
# The Fréchet Inception Distance (Heusel et al. 2017) fits a Gaussian to features of real images and another to
# features of samples and measures
#
# $$d^2 = \lVert\mu_r - \mu_g\rVert^2 + \operatorname{tr}\big(\Sigma_r + \Sigma_g - 2(\Sigma_r^{1/2}\Sigma_g\Sigma_r^{1/2})^{1/2}\big). \tag{6.4}$$
#
# Papers use the 2,048 features of an Inception-v3 network trained on ImageNet. For digits we use the 128
# penultimate features of a small MNIST classifier that this project trains (`data/mnist_classifier.pt`, 98.6%
# held-out accuracy), so **our numbers are comparable with each other, never with FIDs in papers**; we call them
# FID-MNIST. A check of eq. (6.4) against `scipy.linalg.sqrtm` (an independent square root), on the features of two
# halves of the held-out digits:

# %%
import scipy.linalg

classifier = dl.load_classifier()
with torch.no_grad():
    feats = classifier.features(digits[:400 if quick else 1000]).double()
a, b = feats[::2], feats[1::2]
mu_a, sig_a = dl.gaussian_stats(a)
mu_b, sig_b = dl.gaussian_stats(b)
covmean = scipy.linalg.sqrtm(sig_a.numpy() @ sig_b.numpy()).real
by_scipy = float(((mu_a - mu_b) ** 2).sum() + torch.trace(sig_a + sig_b) - 2 * covmean.trace())
ours = dl.frechet_distance(mu_a, sig_a, mu_b, sig_b)
assert abs(ours - by_scipy) < 1e-6 * max(1.0, by_scipy)
print(f"FID-MNIST between two halves of the held-out digits: {ours:.3f} (scipy: {by_scipy:.3f})")

# %% [markdown]
# Two sets of *real* digits already differ by a few units: a finite sample's mean and covariance are noisy, so
# FID-MNIST has a floor that depends on the number of images. The evaluation command reports it beside the model's
# score (`python -m ddpm_lib evaluate --checkpoint data/ddpm_mnist.pt --n 10000`), computed on the GPU:

# %%
r = ema_eval
print(r["metric"])
print(f"{r['n']:,} samples ({r['sampler']}) against {r['reference']['n']:,} held-out digits, "
      f"{r['sampling_seconds']:.0f} s of sampling on {r['device']}")
print(f"  FID-MNIST of the samples        {r['samples']['fid_mnist']:8.2f}")
print(f"  FID-MNIST of real training digits {r['real_heldout']['fid_mnist_train_vs_heldout']:6.2f}   (the floor)")
print(f"  class entropy {r['samples']['class_entropy']:.3f} nats (ln 10 = {math.log(10):.3f}); "
      f"predicted classes {r['samples']['class_counts']}")

# %% [markdown]
# ## Exercises
#
# **Exercise 6.1 (EMA update).** Write `ema_update(ema, theta, decay)` that returns the new average of one weight
# tensor, eq. (6.3). (The library updates all tensors at once with `torch._foreach_lerp_`; see `ddpm_lib/ema.py`.)
#
# **Exercise 6.2 (ancestral step).** Write `ancestral_step(s, xt, eps_pred, t, z)`: one step of Algorithm 2,
# eq. (6.2), with $\sigma_t^2 = \beta_t$, for a batch `xt` of shape (B, C, H, W) and a tensor `t` of shape (B,)
# that may hold different steps, including $t = 1$, where no noise is added.
#
# <details><summary>Hint</summary>
#
# Index the schedule with the tensor `t` and reshape to (B, 1, 1, 1) so that it broadcasts over the image:
# `s.beta[t].view(-1, 1, 1, 1)`. The mask `(t > 1)` does the "z = 0 if t = 1" for the whole batch.
# </details>

# %% tags=["solution"]
# Solution: Exercise 6.1 (ema_update)
def ema_update(ema, theta, decay):
    # BEGIN SOLUTION
    return decay * ema + (1 - decay) * theta
    # END SOLUTION


assert checks.check_ema_update(ema_update)

# %% tags=["solution"]
# Solution: Exercise 6.2 (ancestral_step)
def ancestral_step(s, xt, eps_pred, t, z):
    # BEGIN SOLUTION
    at = lambda v: v[t].view(-1, *([1] * (xt.ndim - 1))).to(xt.dtype)
    mean = (xt - at(s.beta) / (1 - at(s.alpha_bar)).sqrt() * eps_pred) / at(s.alpha).sqrt()
    return mean + at(s.beta).sqrt() * (t > 1).view(-1, *([1] * (xt.ndim - 1))) * z
    # END SOLUTION


assert checks.check_ancestral_step(ancestral_step)

# %% [markdown]
# ## Summary
#
# - Algorithm 1 is `diffusion_loss` plus a gradient step; Algorithm 2 is `ddpm_step` in a loop from $t = T$ to 1.
#   Both were checked line by line.
# - A real run adds AdamW with warm-up, clipping, the EMA of the weights, mixed precision, and checkpoints that
#   resume bit for bit — checked here by stopping and resuming a run.
# - The loss is not uniform in $t$: small $t$ is where the network works hardest. Coarse structure appears early in
#   the reverse chain, detail late.
# - FID-MNIST compares feature statistics of samples and held-out digits; it has a finite-sample floor and is
#   comparable only with itself.
# - Next: notebook 07 samples from the same model in 50 steps instead of 1,000 (DDIM).

# %% [markdown]
# ## Further reading
#
# - J. Ho, A. Jain, P. Abbeel. *Denoising Diffusion Probabilistic Models.* NeurIPS 2020, arXiv:2006.11239 —
#   Algorithms 1–2, §4 and Appendix B.
# - M. Heusel et al. *GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium.*
#   NeurIPS 2017, arXiv:1706.08500 — the FID.
# - A. Nichol, P. Dhariwal. *Improved Denoising Diffusion Probabilistic Models.* ICML 2021, arXiv:2102.09672 —
#   the loss by $t$ and learned variances.
# - B. T. Polyak, A. B. Juditsky. *Acceleration of Stochastic Approximation by Averaging.* SIAM J. Control Optim.
#   1992 — why averaging iterates helps.
