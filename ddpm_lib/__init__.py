"""ddpm_lib: the tested code behind the diffusion-models course.

Index convention: every schedule tensor has length T + 1 and index = the paper's t (README, "The package").
``plots`` (matplotlib) is not imported here; use ``from ddpm_lib import plots``.
"""
from .checkpoint import load_ema_model
from .classifier import MNISTClassifier, load_classifier, train_classifier
from .data import IMAGE_SETS, load_images, mnist_5k_split, random_hflip, to_model_range, to_pixel_range
from .ddgan import (ToyDiscriminator, ToyGenerator, d_loss, ddgan_schedule, g_loss, posterior_sample,
                    q_sample_pairs, r1_penalty, sample_ddgan, train_ddgan_toy)
from .ddgan_nets import DDGANDiscriminator, DDGANGenerator
from .ddgan_export import export_ddgan, load_ddgan_generator
from .ddgan_train import DDGANConfig, train_ddgan
from .ddim import GRIDS, ddim_invert, ddim_step, sample_ddim, slerp, step_grid
from .elbo import (denoising_term, discretized_gaussian_log_likelihood, elbo_terms, gaussian_log_prob,
                   l_simple, l_simple_weight, normal_kl, prior_term, reconstruction_term)
from .embedding import timestep_embedding
from .export import export_ema_weights, load_pretrained, load_sampling_model
from .forward import q_sample, q_sample_chain, q_step
from .guidance import ConditionalUNet, cfg_eps_model, classifier_grad_fn, drop_labels, exact_mixture_grad_fn
from .indexing import check_t, gather
from .metrics import classifier_confidence, fid_floor_redraws, fid_mnist, frechet_distance, gaussian_stats
from .markov import (gaussian_chain_moments, sample_chain, stationary_by_eigenvector,
                     stationary_by_power_iteration)
from .noisy_classifier import (NoisyClassifier, load_noisy_classifier, noisy_classifier_accuracy,
                               save_noisy_classifier, train_noisy_classifier)
from .oracle import GaussianMixture, gaussian_model_marginal
from .posterior import mu_from_eps, predict_eps_from_x0, predict_x0_from_eps, q_posterior
from .sampling import ddpm_step, p_mean_var, reverse_variance, sample_ddpm
from .schedules import SCHEDULES, Schedule, make_schedule, schedule_from_betas
from .toy_data import TOY_SETS, make_toy, ring_of_gaussians, swiss_roll, two_moons
from .data_folder import course_data
from .toy_model import ToyEpsModel, train_toy
from .train_config import TrainConfig
from .training import train
from .unet import PRESETS, UNet, count_parameters

__version__ = "0.1.0"
