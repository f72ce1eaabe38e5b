"""Checks a student runs on their own answer to a notebook exercise.

    from ddpm_lib import checks
    checks.check_q_sample(my_q_sample)   # prints one line, "✓ …" or "✗ … <hint>", and returns True / False

How a check grades. It calls the answer on fresh random inputs, float64 (float32 for the training
step), new at every call (``seed=`` repeats a draw), and compares every result with the library's
reference at a tight tolerance (relative 1e-9 for most: an answer computed in float32 fails). When they agree it also tests a property that
does not use the reference: moments over many draws of ε, a closed form, π P = π. When they disagree it
evaluates the common wrong answers listed with the check (α_t for ᾱ_t, a missing square root, an
off-by-one in t, …) on the same inputs and names the one the answer matches; failing that, it says which
output is wrong, by how much, and whether only t = 1 or t = T is, with a failing property as a clue. An exception raised inside the answer
is not caught, so its traceback points at the line to fix (in a student notebook, the
NotImplementedError of the unsolved exercise).
"""
from .bound import check_denoising_term, check_gaussian_kl, check_training_step
from .ddim import check_ddim_sigma, check_ddim_update, check_gaussian_flow
from .guidance import check_cfg_combine, check_guided_eps, check_windowed
from .ddgan import check_ddgan_step, check_gan_losses, check_reverse_step_mixture
from .chains import check_power_iteration, check_steps_to_unit_variance
from .forward import check_q_sample, check_snr_crossing
from .grading import N_CASES, Mistake
from .posterior import check_q_posterior, check_x0_from_posterior_mean
from .training import check_ancestral_step, check_ema_update, check_linear_denoiser_loss
from .unet import check_interleaved_embedding, check_resblock_forward

# One import line per notebook's checks module; __all__ is every check imported above, so a new check needs one edit.
__all__ = sorted(name for name in dir() if name.startswith("check_")) + ["Mistake"]
