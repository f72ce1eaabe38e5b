# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · DDIM: fast, deterministic sampling
#
# The MNIST model of notebook 06 needs 1,000 network evaluations per sample. DDIM (Song, Meng & Ermon 2021) samples
# from the *same trained network* in 50 or even 10 steps, can make sampling deterministic, and thereby gives every
# image a latent code $x_T$ that can be inverted and interpolated. No retraining: only the sampler changes.
#
# It follows Song, Meng & Ermon (2021), §3–5 (eqs. 7, 12 and 16, Table 1, Fig. 3–6).

# %% [markdown]
# ## Learning objectives
#
# - Derive the non-Markovian forward family $q_\sigma$ and check that every member has DDPM's marginals $q(x_t \mid x_0)$.
# - Read the DDIM update as *predicted $x_0$ + direction to $x_t$ + noise*, and check that $\eta = 1$ is DDPM and
#   $\eta = 0$ deterministic.
# - Sample on respaced grids (uniform, quadratic) and measure quality against the number of steps.
# - Use the deterministic sampler as an encoder: invert images to $x_T$, reconstruct them, interpolate between them.

# %% tags=["parameters"]
quick = False  # CI sets True: tiny data, few steps, CPU-sized
seed = 0  # seed of every random draw in this notebook
results = "../data/laptop"  # the shipped MNIST model and its results: data/laptop (CPU stand-in) or data (GPU run)

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
missing = [f for f in ['ddpm_mnist.pt', 'results/ddim'] if not (results / f).exists()]
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
# ## 1. A family of forward processes with the same marginals
#
# DDPM's loss $L_\text{simple}$ only ever uses the marginals $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$,
# never the joint of the chain. So any forward process with the same marginals has the same training objective,
# and the trained $\varepsilon_\theta$ serves all of them. DDIM builds such a family, indexed by variances $\sigma_t^2$,
# by *choosing* the reverse conditionals ($t' = t-1$ for now; DDIM's $\alpha_t$ is our $\bar\alpha_t$):
#
# $$q_\sigma(x_{t'} \mid x_t, x_0) = \mathcal N\Big(\sqrt{\bar\alpha_{t'}}\,x_0 + \sqrt{1-\bar\alpha_{t'}-\sigma_t^2}\;\frac{x_t - \sqrt{\bar\alpha_t}\,x_0}{\sqrt{1-\bar\alpha_t}},\ \sigma_t^2 I\Big). \tag{7.1}$$
#
# **Claim.** If $x_t \sim \mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t)I)$, then $x_{t'}$ drawn from (7.1) has
# $x_{t'} \sim \mathcal N(\sqrt{\bar\alpha_{t'}}x_0, (1-\bar\alpha_{t'})I)$. Write $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$:
# the fraction in (7.1) is exactly $\varepsilon$, so $x_{t'} = \sqrt{\bar\alpha_{t'}}x_0 + \sqrt{1-\bar\alpha_{t'}-\sigma_t^2}\,\varepsilon + \sigma_t z$,
# a sum of independent Gaussians with variance $(1-\bar\alpha_{t'}-\sigma_t^2) + \sigma_t^2 = 1-\bar\alpha_{t'}$. By induction
# from $t = T$ down, every marginal matches. A Monte-Carlo check for three values of $\sigma$, including a jump $t \to t'$
# of many steps (the argument never used $t' = t-1$):

# %%
s = dl.make_schedule("linear", 1000)
g = torch.Generator().manual_seed(seed)
n, x0, t, t_prev = (20_000 if quick else 400_000), 0.7, 600, 350
a, ap = float(s.alpha_bar[t]), float(s.alpha_bar[t_prev])
eps, z = torch.randn(n, generator=g, dtype=f64), torch.randn(n, generator=g, dtype=f64)
xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
for sigma in (0.0, 0.5 * math.sqrt(1 - ap), math.sqrt(1 - ap)):
    x_prev = math.sqrt(ap) * x0 + math.sqrt(1 - ap - sigma ** 2) * (xt - math.sqrt(a) * x0) / math.sqrt(1 - a) + sigma * z
    m, v = x_prev.mean().item(), x_prev.var().item()
    se_m, se_v = math.sqrt((1 - ap) / n), (1 - ap) * math.sqrt(2 / n)
    assert abs(m - math.sqrt(ap) * x0) < 5 * se_m and abs(v - (1 - ap)) < 5 * se_v
    print(f"σ = {sigma:.3f}: mean {m:.4f} (want {math.sqrt(ap) * x0:.4f}), variance {v:.4f} (want {1 - ap:.4f})")

# %% [markdown]
# ## 2. The update: predicted $x_0$, direction to $x_t$, noise
#
# The generative process replaces the unknown $x_0$ in (7.1) by the network's estimate
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta(x_t, t))/\sqrt{\bar\alpha_t}$ (notebook 03), and the fraction by
# $\varepsilon_\theta$ itself. That is DDIM's eq. 12:
#
# $$x_{t'} = \underbrace{\sqrt{\bar\alpha_{t'}}\,\hat x_0}_{\text{predicted } x_0} + \underbrace{\sqrt{1-\bar\alpha_{t'}-\sigma_t^2}\;\varepsilon_\theta(x_t, t)}_{\text{direction pointing to } x_t} + \underbrace{\sigma_t z}_{\text{noise}}. \tag{7.2}$$
#
# With a free parameter $\eta \ge 0$ the paper sets (eq. 16)
#
# $$\sigma_t(\eta) = \eta\,\sqrt{\frac{1-\bar\alpha_{t'}}{1-\bar\alpha_t}}\,\sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_{t'}}}. \tag{7.3}$$
#
# For $t' = t-1$: $\bar\alpha_t/\bar\alpha_{t-1} = \alpha_t$, so $\sigma_t(1)^2 = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t = \tilde\beta_t$,
# DDPM's posterior variance — **$\eta = 1$ is DDPM**. And **$\eta = 0$ is deterministic**: $x_{t'}$ is a function of
# $x_t$ alone. Both checked, with the exact $\varepsilon$ of one-dimensional Gaussian-mixture data (no training needed):

# %%
data = dl.GaussianMixture(means=[-1.5, 1.0], stds=[0.3, 0.5], weights=[0.3, 0.7])   # 1-D, two components
eps_exact = data.eps_model(s)
B = 2_000 if quick else 20_000
x_T = torch.randn(B, 1, generator=g, dtype=f64)
ddpm = dl.sample_ddpm(eps_exact, s, (B, 1), generator=torch.Generator().manual_seed(1), dtype=f64, x_T=x_T)
ddim1 = dl.sample_ddim(eps_exact, s, (B, 1), steps=s.T, eta=1.0, generator=torch.Generator().manual_seed(1),
                       dtype=f64, x_T=x_T)
assert_close(ddim1, ddpm)
print("η = 1 on all 1000 steps reproduces Algorithm 2 draw for draw (same x_T, same noise)")
det = [dl.sample_ddim(eps_exact, s, (B, 1), steps=50, eta=0.0, generator=torch.Generator().manual_seed(k),
                      dtype=f64, x_T=x_T) for k in (1, 2)]
assert torch.equal(det[0], det[1])
print("η = 0: two runs with different generators give identical samples: x_0 depends on x_T only")

# %% [markdown]
# ## 3. Fewer steps: respaced grids
#
# Eq. (7.3) never required $t' = t - 1$: the sampler can walk down any decreasing sub-sequence
# $T = \tau_S > \dots > \tau_1 = 1$ and finish with a step to $t' = 0$ (where $\sigma = 0$ and (7.2) returns $\hat x_0$).
# The paper uses two grids: *uniform* and *quadratic* (denser near $t = 1$, where fine detail is decided).

# %%
fig, ax = plt.subplots(figsize=(7, 2.4))
for k, grid in enumerate(dl.GRIDS):
    taus = dl.step_grid(s.T, 20, grid)
    ax.plot(taus, [k] * len(taus), "|", ms=18, mew=2, label=f"{grid}")
ax.set(yticks=[0, 1], yticklabels=list(dl.GRIDS), xlabel="t", title="20-step DDIM grids on T = 1000", ylim=(-0.6, 1.6))
plt.tight_layout()
plt.show()
for grid in dl.GRIDS:
    print(f"{grid:9}", dl.step_grid(s.T, 20, grid)[:6], "…", dl.step_grid(s.T, 20, grid)[-3:])

# %% [markdown]
# With the exact $\varepsilon$ the deterministic sampler stays accurate far below 1,000 steps: the share of samples
# in the heavier component (true weight 0.7) and the spread within it, for a few step counts:

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 2.8), sharey=True)
grid_x = torch.linspace(-3, 3, 400, dtype=f64)
density = sum(w * torch.exp(-0.5 * ((grid_x - m[0]) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
              for w, m, sd in zip(data.weights, data.means, data.stds))
for ax, steps in zip(axes, (5, 20, 100)):
    x = dl.sample_ddim(eps_exact, s, (B, 1), steps=steps, eta=0.0, dtype=f64, x_T=x_T)
    share = (x > -0.25).double().mean().item()
    ax.hist(x[:, 0].numpy(), bins=80, range=(-3, 3), density=True, alpha=0.6, label="DDIM samples")
    ax.plot(grid_x, density, "k", lw=1.2, label="data density")
    ax.set(title=f"{steps} steps: weight {share:.3f}", xlabel="x_0")
    if steps >= 20:
        assert abs(share - 0.7) < 5 * math.sqrt(0.21 / B), share
axes[0].set_ylabel("density")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. On MNIST: the same $x_T$, different numbers of steps
#
# The shipped MNIST model was trained once, for DDPM. With $\eta = 0$ the map $x_T \mapsto x_0$ is (approximately) the
# solution of an ODE, and fewer steps are coarser discretisations of the *same* ODE: the same $x_T$ decodes to nearly
# the same digit whether we use 10 steps or 100 — unlike DDPM, where every run draws fresh noise.

# %%
ddpm_model, s_mnist = dl.load_pretrained(results / "ddpm_mnist.pt")
n_show, step_list = (3, (5, 10)) if quick else (8, (10, 20, 50, 100))
x_T_img = torch.randn(n_show, 1, 32, 32, generator=torch.Generator().manual_seed(seed))
rows = [dl.sample_ddim(ddpm_model, s_mnist, x_T_img.shape, steps=k, eta=0.0, x_T=x_T_img, clip_x0=1.0)
        for k in step_list]
fig, axes = plt.subplots(len(step_list), 1, figsize=(1.2 * n_show, 1.35 * len(step_list)))
for ax, k, x in zip(axes, step_list, rows):
    plots.show_images(x, nrow=n_show, ax=ax, title=f"{k} steps")
fig.suptitle("one x_T per column, decoded with η = 0 and more and more steps")
plt.tight_layout()
plt.show()
gap = [(r - rows[-1]).abs().mean().item() for r in rows[:-1]]
print("mean |difference| to the", step_list[-1], "-step images:", [round(v, 3) for v in gap])
assert all(a >= b - 0.02 for a, b in zip(gap, gap[1:])), gap     # more steps: closer to the finest grid

# %% [markdown]
# ## 5. Quality against steps (the DDIM paper's Table 1)
#
# FID-MNIST (notebook 06) of samples from the shipped model for 10 to 1,000 steps, with $\eta = 0$ (DDIM) and
# $\eta = 1$ (DDPM-like noise on the respaced grid). Computed with
# `python -m ddpm_lib evaluate --checkpoint data/ddpm_mnist.pt --sampler ddim --steps S --eta E --n N`
# (`make results-ddim`):

# %%
table = {}
for path in sorted((results / "results" / "ddim").glob("steps*_eta*.json")):
    r = json.loads(path.read_text())
    steps, eta = (int(v) for v in path.stem.replace("steps", "").split("_eta"))
    table[(steps, eta)] = r
step_counts = sorted({k[0] for k in table})
n_samples = {r["n"] for r in table.values()}
print(f"FID-MNIST, {n_samples.pop():,} samples per entry, against {next(iter(table.values()))['reference']['n']:,} held-out digits")
print(f"{'steps':>6}" + "".join(f"{k:>9}" for k in step_counts))
for eta in (0, 1):
    print(f"{'η = ' + str(eta):>6}" + "".join(f"{table[(k, eta)]['samples']['fid_mnist']:9.2f}" for k in step_counts))
fig, ax = plt.subplots(figsize=(6, 3.4))
for eta in (0, 1):
    ax.plot(step_counts, [table[(k, eta)]["samples"]["fid_mnist"] for k in step_counts], "o-", label=f"η = {eta}")
ax.set(xscale="log", yscale="log", xlabel="sampling steps (network evaluations)", ylabel="FID-MNIST (lower is better)",
       title="quality against steps")
ax.legend()
plt.show()
seconds = table[(50, 0)]["sampling_seconds"] / table[(50, 0)]["n"] * 1000 if (50, 0) in table else float("nan")
print(f"50 steps: {seconds:.2f} s per 1,000 digits on {table.get((50, 0), {}).get('device', '?')}")

# %%
winner = {k: min((0, 1), key=lambda e: table[(k, e)]["samples"]["fid_mnist"]) for k in step_counts}
print("lower FID at each step count:", ", ".join(f"{k} steps → η = {e}" for k, e in winner.items()))

# %% [markdown]
# **Reading the table.** On CIFAR-10 the DDIM paper finds $\eta = 0$ far better than $\eta = 1$ with few steps: the
# noise that $\eta = 1$ injects needs many small steps to be removed again, and the two meet at 1,000 steps.
# That finding assumes an accurate $\varepsilon_\theta$. The deterministic sampler has no way to undo an error:
# whatever a poor noise prediction does to $x_t$ is carried to $x_0$. Fresh noise, on the other hand, pulls
# $x_t$ back towards the marginal $q(x_t)$ the network was trained on, so a stochastic sampler partly corrects
# earlier mistakes (Karras et al., 2022, §4, make this argument and measure it). So compare the printed
# winners with the paper: for a well-trained model $\eta = 0$ should win at 10–50 steps. For an under-trained
# one, such as the short CPU run in `data/laptop/`, $\eta = 1$ wins at every step count, and the gap closes as
# the model improves.

# %% [markdown]
# ## 6. Inversion and interpolation
#
# Because the $\eta = 0$ sampler is a discretised ODE, it can be run *forwards*: from a real digit $x_0$ up to a latent
# $x_T$ (`dl.ddim_invert`), and decoding that latent with the same grid gives the digit back (up to the
# discretisation error). Latents are Gaussian, so we interpolate between two of them along the sphere where
# $\mathcal N(0, I)$ puts its mass (`dl.slerp`), not along the straight line, whose midpoint has too small a norm.

# %%
digits, _ = dl.load_images("mnist-5k", train=False, pad_to_32=True)
real = digits[torch.randperm(len(digits), generator=g)[:2 if quick else 6]]
steps = 20 if quick else 100
with torch.no_grad():
    latents = dl.ddim_invert(ddpm_model, s_mnist, real, steps=steps)
    recon = dl.sample_ddim(ddpm_model, s_mnist, real.shape, steps=steps, eta=0.0, x_T=latents)
err = (recon - real).abs().mean().item()
fig, axes = plt.subplots(2, 1, figsize=(1.2 * len(real), 2.8))
plots.show_images(real, nrow=len(real), ax=axes[0], title="held-out digits")
plots.show_images(recon.clamp(-1, 1), nrow=len(real), ax=axes[1], title=f"inverted to x_T and decoded ({steps} steps)")
plt.tight_layout()
plt.show()
print(f"mean |x_0 − reconstruction| = {err:.3f} (pixel range [−1, 1]); latent std {latents.std().item():.2f} (N(0, I): 1)")
assert err < 0.15

# %%
alphas = torch.linspace(0, 1, 5 if quick else 9)
z0, z1 = latents[0:1], latents[1:2]
path = torch.cat([dl.slerp(z0, z1, float(a)) for a in alphas])
with torch.no_grad():
    strip = dl.sample_ddim(ddpm_model, s_mnist, path.shape, steps=steps, eta=0.0, x_T=path, clip_x0=1.0)
fig, ax = plt.subplots(figsize=(1.2 * len(alphas), 1.6))
plots.show_images(strip.clamp(-1, 1), nrow=len(alphas), ax=ax, title="slerp between the latents of two digits")
plt.show()
lin_mid, sph_mid = (0.5 * (z0 + z1)).norm().item(), path[len(path) // 2].norm().item()
print(f"norm of the midpoint: straight line {lin_mid:.1f}, slerp {sph_mid:.1f}, endpoints {z0.norm():.1f} and {z1.norm():.1f}")
assert sph_mid > lin_mid

# %% [markdown]
# ## Exercises
#
# **Exercise 7.1 (σ).** Write `ddim_sigma(s, t, t_prev, eta)`, eq. (7.3), for integers $0 \le t' < t \le T$.
#
# **Exercise 7.2 (the update).** Write `ddim_update(s, xt, eps_pred, t, t_prev, eta, noise)`, eq. (7.2), using your
# `ddim_sigma`.

# %% tags=["solution"]
# Solution: Exercise 7.1 (ddim_sigma)
def ddim_sigma(s, t, t_prev, eta):
    # BEGIN SOLUTION
    a, ap = s.alpha_bar[t], s.alpha_bar[t_prev]
    return eta * ((1 - ap) / (1 - a)).sqrt() * (1 - a / ap).sqrt()
    # END SOLUTION


assert checks.check_ddim_sigma(ddim_sigma)

# %% tags=["solution"]
# Solution: Exercise 7.2 (ddim_update)
def ddim_update(s, xt, eps_pred, t, t_prev, eta, noise):
    # BEGIN SOLUTION
    a, ap = s.alpha_bar[t], s.alpha_bar[t_prev]
    sigma = eta * ((1 - ap) / (1 - a)).sqrt() * (1 - a / ap).sqrt()
    x0_pred = (xt - (1 - a).sqrt() * eps_pred) / a.sqrt()
    return ap.sqrt() * x0_pred + (1 - ap - sigma ** 2).clamp(min=0).sqrt() * eps_pred + sigma * noise
    # END SOLUTION


assert checks.check_ddim_update(ddim_update)

# %% [markdown]
# ## Summary
#
# - DDPM's training only fixes the marginals $q(x_t \mid x_0)$; DDIM's family $q_\sigma$ keeps them and changes the
#   reverse process, so the trained $\varepsilon_\theta$ is reused unchanged.
# - The update is predicted $x_0$ + direction to $x_t$ + noise; $\eta = 1$ is DDPM (checked draw for draw), $\eta = 0$
#   deterministic.
# - Respaced grids trade steps for quality (measured table). With an accurate $\varepsilon_\theta$, $\eta = 0$ wins at
#   few steps, as in the paper. With an under-trained one, the noise of $\eta = 1$ corrects errors that
#   $\eta = 0$ carries to the end.
# - Deterministic sampling gives every image a latent: inversion reconstructs digits, slerp interpolates between them.

# %% [markdown]
# ## Further reading
#
# - J. Song, C. Meng, S. Ermon. *Denoising Diffusion Implicit Models.* ICLR 2021, arXiv:2010.02502.
# - Y. Song et al. *Score-Based Generative Modeling through Stochastic Differential Equations.* ICLR 2021,
#   arXiv:2011.13456 — the probability-flow ODE that DDIM discretises.
# - C. Lu et al. *DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps.*
#   NeurIPS 2022, arXiv:2206.00927.
# - T. Karras et al. *Elucidating the Design Space of Diffusion-Based Generative Models.* NeurIPS 2022,
#   arXiv:2206.00364.
