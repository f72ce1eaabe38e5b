"""The settings of a diffusion training run (``TrainConfig``) and the defaults each kind of data gives them.

    config = TrainConfig(data="mnist-5k", preset="mnist", steps=20_000)   # the command line's flags, same names
"""
from __future__ import annotations

from dataclasses import dataclass

from .data import IMAGE_SETS, check_hflip
from .toy_data import TOY_SETS
from .unet import PRESETS


# Settings that a TrainConfig left at None takes from its data's kind. Images: the DDPM paper's CIFAR-10
# rate and batch (Ho et al. 2020, App. B) and a 1,000-step warm-up. The toy MLP on 2-D points learns at
# that rate too slowly: after 10,000 steps its two moons are one blurred band, while 5,000 steps at 3e-3
# with batch 512 (about 20 s on 2 CPU cores) draw the moons, the eight modes and the spiral cleanly.
# A toy run's samples are a scatter plot, which needs more points than an image grid.
KIND_DEFAULTS = {"images": {"steps": 20_000, "batch_size": 128, "lr": 2e-4, "warmup": 1000, "n_samples": 64},
                 "toy": {"steps": 5_000, "batch_size": 512, "lr": 3e-3, "warmup": 100, "n_samples": 1000}}


def fill_kind_defaults(config, table: dict) -> None:
    """Give each setting of ``table[kind]`` that ``config`` left at None its value for the kind of
    ``config.data``: "toy" for a 2-D toy set, "images" otherwise."""
    for name, value in table["toy" if config.data in TOY_SETS else "images"].items():
        if getattr(config, name) is None:
            setattr(config, name, value)


@dataclass
class TrainConfig:
    """Every setting of a training run; the command line's flags carry the same names with dashes.

    Seeds: θ's initialisation and the data order use ``seed``; rank r draws t and ε (and, with
    ``hflip``, the mirror coins) from ``seed + 1000·(r + 1)``, its dropout masks from
    ``seed + 1000·(r + 1) + 1`` and (classifier-free guidance) its dropped labels from ``seed + 1000·(r + 1) + 2``.
    """

    data: str = "mnist-5k"        # an image set (data.IMAGE_SETS) or a 2-D toy set (toy_data.TOY_SETS)
    data_root: str | None = None  # cache folder for the torchvision sets (None: data/cache)
    toy_n: int = 10_000           # points drawn once for a toy set
    preset: str = "mnist"         # U-Net preset for images (unet.PRESETS); toy sets use the toy MLP
    schedule: str = "linear"      # noise schedule (schedules.SCHEDULES)
    T: int = 1000                 # diffusion steps
    # The next four (and n_samples) default to None: the data's kind then sets them (KIND_DEFAULTS).
    steps: int | None = None      # optimizer steps in all, counted from step 0 also when resuming
    batch_size: int | None = None # global batch, split evenly over the DDP processes
    lr: float | None = None       # AdamW learning rate after warm-up
    warmup: int | None = None     # steps of linear learning-rate warm-up from 0
    weight_decay: float = 0.0     # AdamW's decoupled weight decay (0: Adam, as in the paper)
    grad_clip: float = 1.0        # the gradient's global norm is clipped to this
    ema_decay: float = 0.9999     # θ_ema decay, reached after a warm-up (ema.py)
    seed: int = 0
    out_dir: str = "runs/ddpm"    # checkpoints, metrics.jsonl and samples
    log_every: int = 100          # steps between metrics lines
    sample_every: int = 1000      # steps between sample grids from θ_ema (0: none)
    n_samples: int | None = None  # samples per grid or scatter plot (None: KIND_DEFAULTS)
    save_every: int = 1000        # steps between checkpoints (the last step is always saved)
    keep: int = 3                 # checkpoints kept; older ones are deleted
    device: str | None = None     # None: "cuda" when available, else "cpu"
    compile: bool = False         # torch.compile the step's forward (x_t, ε_θ, L_simple) and its backward
    resume: bool = False          # continue from the latest checkpoint in out_dir
    progress: bool = True         # tqdm bar on rank 0
    num_classes: int = 0          # 0: an unconditional ε-model; K > 0: ConditionalUNet with K classes (CFG)
    p_uncond: float = 0.1         # classifier-free guidance: probability of replacing a label by the null label
    hflip: bool = False           # mirror each image with probability 1/2 (the paper's CIFAR-10 runs; data.MIRROR_SAFE)

    def __post_init__(self):
        if self.data not in IMAGE_SETS + TOY_SETS:
            raise ValueError(f"unknown data set {self.data!r}: choose one of {', '.join(IMAGE_SETS + TOY_SETS)}")
        fill_kind_defaults(self, KIND_DEFAULTS)
        if self.preset not in PRESETS:
            raise ValueError(f"unknown U-Net preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        for name in ("toy_n", "T", "steps", "batch_size", "log_every", "n_samples", "save_every", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup", "sample_every", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1) (θ_ema ← d·θ_ema + (1 − d)·θ), "
                             f"got {self.ema_decay}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be 0 (unconditional) or a positive number of classes, "
                             f"got {self.num_classes!r}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"p_uncond (the probability of dropping a label) must lie in [0, 1), got {self.p_uncond}")
        if self.num_classes and self.data in TOY_SETS:
            raise ValueError(f"num_classes > 0 (classifier-free guidance) trains the class-conditional U-Net on "
                             f"an image set; the toy set {self.data!r} is trained by the toy MLP, which takes no "
                             f"labels: use --num-classes 0")
        if self.hflip:
            check_hflip(self.data)


def unused_settings(config: TrainConfig) -> tuple:
    """Settings this run never reads, so a resumed run need not repeat them: the U-Net preset of a toy
    set (the toy MLP is used), the point count of an image set, p_uncond of an unconditional model."""
    return (("preset",) if config.data in TOY_SETS else ("toy_n",)) + (() if config.num_classes else ("p_uncond",))
