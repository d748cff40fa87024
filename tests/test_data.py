"""nlinit.data: IDX parsing, the datasets, deterministic augmentation, subsets and error messages.

Covers: IDX round trips and corrupt files (wrong magic, truncated gzip, sizes that disagree), Fashion-MNIST
from tiny IDX files and from the Debian package when installed, CIFAR-10's conversion (torchvision's class
stubbed: no download), ImageFolder trees, the synthetic set being learnable, augmentation as a function of
(seed, epoch, index) only (also across DataLoader workers), stratified subsets, and one-line errors.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from torch.utils.data import DataLoader

from nlinit.data import (
    FASHION_MNIST_DIR,
    TensorImageDataset,
    build_datasets,
    read_idx,
    stratified_subset,
)

_CODES = {np.dtype(">u1"): 0x08, np.dtype(">i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C}
_CODES |= {np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
_MISSING = (
    r"^Fashion-MNIST not found in {}; install it with `sudo apt-get install dataset-fashion-mnist` or pass "
    r"--data-dir DIR with the four IDX \.gz files$"
)


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes: magic (0, 0, type code, ndim), big-endian int32 sizes, big-endian data."""
    big = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, _CODES[big.dtype], array.ndim]) + np.array(array.shape, ">i4").tobytes()
    return header + big.tobytes()


def _write_idx(path: Path, array: np.ndarray) -> Path:
    path.write_bytes(gzip.compress(_idx_bytes(array)))
    return path


def _write_fashion_mnist(
    root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.arange(n_test, dtype=np.uint8) % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        _write_idx(root / name, array)
    return arrays


# ---------------------------------------------------------------------------------------------------------
# IDX files


@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5),
    )
)
def test_read_idx_round_trip(tmp_path_factory, array):
    path = _write_idx(tmp_path_factory.mktemp("idx") / "a.gz", array)
    out = read_idx(path)
    assert out.shape == array.shape and out.dtype == array.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)  # exact, NaNs included


def test_read_idx_corrupt_files(tmp_path):
    good = _idx_bytes(np.zeros((3, 4, 4), np.uint8))
    cases = {
        "magic": (gzip.compress(b"\x01" + good[1:]), r"bad magic number 01000803"),
        "type": (gzip.compress(good[:2] + b"\x07" + good[3:]), r"bad magic number 00000703"),
        "truncated gzip": (gzip.compress(good)[:-12], r"EOFError"),
        "not gzip": (good, r"BadGzipFile"),
        "short data": (gzip.compress(good[:-1]), r"63 bytes, 64 expected for shape \(3, 4, 4\)"),
        "long data": (gzip.compress(good + b"\x00"), r"65 bytes, 64 expected"),
        "short header": (gzip.compress(good[:10]), r"header ends after 10 of 16 bytes"),
        "empty": (gzip.compress(b""), r"bad magic number none"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.gz"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=rf"^corrupt IDX file {path}: .*{message}"):
            read_idx(path)
    path = _write_idx(tmp_path / "labels.gz", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"1 dimensions, expected 3$"):
        read_idx(path, ndim=3)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nothing.gz")


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST


def test_fashion_mnist_from_idx_files(tmp_path):
    arrays = _write_fashion_mnist(tmp_path)
    spec = build_datasets("fashion-mnist", tmp_path, augment=False)
    assert (len(spec.train), len(spec.test), spec.num_classes, spec.in_channels, spec.image_size) == (
        20,
        10,
        10,
        1,
        28,
    )
    for ds, images, labels in [
        (spec.train, arrays["train-images-idx3-ubyte.gz"], arrays["train-labels-idx1-ubyte.gz"]),
        (spec.test, arrays["t10k-images-idx3-ubyte.gz"], arrays["t10k-labels-idx1-ubyte.gz"]),
    ]:
        x, y = ds[3]
        expected = (torch.from_numpy(images[3]).float() / 255 - 0.2860) / 0.3530
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == labels[3]
        torch.testing.assert_close(x[0], expected, rtol=0, atol=1e-6)  # float32 rounding of the same formula


def test_fashion_mnist_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match=_MISSING.format(tmp_path / "none")):
        build_datasets("fashion-mnist", tmp_path / "none")
    arrays = _write_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=_MISSING.format(tmp_path)):
        build_datasets("fashion-mnist", tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(9, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"images \(10, 28, 28\) and labels \(9,\)"):
        build_datasets("fashion-mnist", tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", arrays["t10k-labels-idx1-ubyte.gz"] + 1)
    with pytest.raises(ValueError, match=r"labels outside 0\.\.9 in t10k-labels-idx1-ubyte\.gz$"):
        build_datasets("fashion-mnist", tmp_path)
    data = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"^corrupt IDX file .*train-images-idx3-ubyte\.gz: EOFError"):
        build_datasets("fashion-mnist", tmp_path)


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    spec = build_datasets("fashion-mnist", augment=False)
    assert (len(spec.train), len(spec.test)) == (60000, 10000)
    for ds, per_class in [(spec.train, 6000), (spec.test, 1000)]:
        assert isinstance(ds, TensorImageDataset)
        assert ds.labels.bincount().tolist() == [per_class] * 10
    # The normalization constants are the train set's pixel mean and std, to the 4 digits written.
    std, mean = torch.std_mean(spec.train.images.float() / 255)
    assert round(mean.item(), 4) == 0.2860 and round(std.item(), 4) == 0.3530


# ---------------------------------------------------------------------------------------------------------
# Augmentation


def _shifts_of(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every crop-with-zero-padding of ``image`` (C, H, W) with offsets in [0, 2 pad], flipped or not."""
    h, w = image.shape[1:]
    padded = F.pad(image, (pad,) * 4)
    crops = [padded[:, t : t + h, s : s + w] for t in range(2 * pad + 1) for s in range(2 * pad + 1)]
    return crops + [c.flip(-1) for c in crops]


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    spec = build_datasets("synthetic", seed=5, train_size=64)
    other = build_datasets("synthetic", seed=5, train_size=64)
    train = spec.train
    assert isinstance(train, TensorImageDataset)
    train.set_epoch(3)
    other.train.set_epoch(3)
    reversed_order = {i: other.train[i][0] for i in reversed(range(64))}  # access order must not matter
    assert all(torch.equal(train[i][0], reversed_order[i]) for i in range(64))
    epoch3 = [train[i][0] for i in range(64)]
    train.set_epoch(4)
    assert sum(not torch.equal(train[i][0], epoch3[i]) for i in range(64)) > 32  # 50 crops x 2 flips
    train.set_epoch(3)
    assert all(torch.equal(train[i][0], epoch3[i]) for i in range(64))
    reseeded = build_datasets("synthetic", seed=6, train_size=64).train
    reseeded.set_epoch(3)
    assert sum(not torch.equal(reseeded[i][0], epoch3[i]) for i in range(64)) > 32
    # Each item is a crop of the zero-padded image, maybe flipped; the test set is not augmented.
    for i in range(8):
        raw = train.images[i]
        candidates = [(c.float() / 255 - train.mean) / train.std for c in _shifts_of(raw, 2)]
        assert any(torch.equal(train[i][0], c) for c in candidates)
    test = spec.test
    assert isinstance(test, TensorImageDataset)
    test.set_epoch(7)
    assert torch.equal(test[0][0], (test.images[0].float() / 255 - test.mean) / test.std)


def test_augmentation_is_the_same_with_dataloader_workers():
    train = build_datasets("synthetic", train_size=48, image_size=8).train
    train.set_epoch(2)
    batches = [
        torch.cat([x for x, _ in DataLoader(train, batch_size=16, num_workers=workers)]) for workers in (0, 2)
    ]
    assert torch.equal(*batches)


def test_epoch_must_be_non_negative_int():
    train = build_datasets("synthetic", train_size=16).train
    with pytest.raises(ValueError, match=r"^epoch must be an int >= 0, got -1$"):
        train.set_epoch(-1)


# ---------------------------------------------------------------------------------------------------------
# Subsets, synthetic data, CIFAR-10, ImageFolder


@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=60),
    data=st.data(),
)
def test_stratified_subset_keeps_class_shares(labels, data):
    size = data.draw(st.integers(1, len(labels)))
    seed = data.draw(st.integers(0, 2**32))
    keep = stratified_subset(labels, size, seed)
    assert len(keep) == size == len(set(keep.tolist())) and (np.diff(keep) > 0).all()
    y = np.array(labels)
    for k in set(labels):
        share = size * (y == k).sum() / len(y)
        assert abs((y[keep] == k).sum() - share) <= 1  # each class within 1 of its proportional share
    assert np.array_equal(keep, stratified_subset(labels, size, seed))


def test_subsets(tmp_path):
    spec = build_datasets("synthetic", subset=100, test_subset=50, seed=1)
    assert (len(spec.train), len(spec.test)) == (100, 50)
    counts = spec.train.labels.bincount()  # type: ignore[attr-defined]
    assert counts.max() - counts.min() <= 1  # balanced labels stay balanced
    again = build_datasets("synthetic", subset=100, seed=1).train
    moved = build_datasets("synthetic", subset=100, seed=2).train
    assert torch.equal(again.images, spec.train.images)  # type: ignore[attr-defined]
    assert not torch.equal(moved.images, spec.train.images)  # type: ignore[attr-defined]
    _write_fashion_mnist(tmp_path)
    assert len(build_datasets("fashion-mnist", tmp_path, subset=10).train) == 10
    with pytest.raises(ValueError, match=r"^subset must be an int in \[1, 20\], got 21$"):
        build_datasets("fashion-mnist", tmp_path, subset=21)
    with pytest.raises(ValueError, match=r"^test_subset must be an int >= 1, got 0$"):
        build_datasets("fashion-mnist", tmp_path, test_subset=0)


def test_synthetic_is_learnable_and_deterministic():
    spec = build_datasets("synthetic", augment=False)
    assert (len(spec.train), len(spec.test), spec.num_classes, spec.in_channels, spec.image_size) == (
        1024,
        256,
        10,
        1,
        28,
    )
    x_train = torch.stack([spec.train[i][0] for i in range(len(spec.train))])
    y_train = torch.tensor([spec.train[i][1] for i in range(len(spec.train))])
    x_test = torch.stack([spec.test[i][0] for i in range(len(spec.test))])
    y_test = torch.tensor([spec.test[i][1] for i in range(len(spec.test))])
    # Normalized with the train set's own statistics.
    assert abs(x_train.mean().item()) < 1e-5 and abs(x_train.std().item() - 1) < 1e-5
    means = torch.stack([x_train[y_train == k].mean(0) for k in range(10)]).flatten(1)
    accuracy = (torch.cdist(x_test.flatten(1), means).argmin(1) == y_test).float().mean().item()
    # Templates 9 RMS apart (unit RMS each, 784 pixels) against noise 3: nearest class mean is ~100% right.
    assert accuracy > 0.9
    again = build_datasets("synthetic", augment=False, seed=9)
    assert torch.equal(again.test[5][0], spec.test[5][0])  # seed moves augmentation and subsets, not data
    small = build_datasets(
        "synthetic", train_size=30, test_size=6, num_classes=3, image_size=8, in_channels=3
    )
    assert (len(small.train), small.num_classes, small.in_channels, small.image_size) == (30, 3, 3, 8)
    assert small.train[0][0].shape == (3, 8, 8)


def test_cifar10_conversion(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            assert (root, download) == (str(tmp_path), False)
            n = 12 if train else 6
            self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(n)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    spec = build_datasets("cifar10", tmp_path, augment=False)
    assert (len(spec.train), len(spec.test), spec.in_channels, spec.image_size) == (12, 6, 3, 32)
    x, y = spec.train[4]
    assert y == 4 and x.shape == (3, 32, 32)
    train = spec.train
    assert isinstance(train, TensorImageDataset)
    raw = torch.from_numpy(train.images[4].numpy().transpose(1, 2, 0))  # back to (32, 32, 3)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    torch.testing.assert_close(x.permute(1, 2, 0), (raw.float() / 255 - mean) / std, rtol=0, atol=1e-6)
    augmented = build_datasets("cifar10", tmp_path).train
    assert isinstance(augmented, TensorImageDataset) and augmented.pad == 4


def test_cifar10_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^dataset 'cifar10' needs --data-dir DIR holding cifar-10"):
        build_datasets("cifar10")
    with pytest.raises(FileNotFoundError, match=rf"^CIFAR-10 not found \(or corrupt\) in {tmp_path}; pass"):
        build_datasets("cifar10", tmp_path)


def _write_imagefolder(root: Path, classes: tuple[str, ...] = ("cat", "dog")) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_imagefolder(tmp_path):
    _write_imagefolder(tmp_path)
    spec = build_datasets("imagefolder", tmp_path, subset=4, seed=3)
    assert (len(spec.train), len(spec.test), spec.num_classes, spec.in_channels, spec.image_size) == (
        4,
        6,
        2,
        3,
        224,
    )
    state = torch.get_rng_state()
    spec.train.set_epoch(1)
    first = spec.train[0][0]
    assert first.shape == (3, 224, 224)
    assert torch.equal(spec.train[0][0], first)  # seeded by (seed, epoch, index)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is restored
    spec.train.set_epoch(2)
    assert not torch.equal(spec.train[0][0], first)
    assert torch.equal(spec.test[0][0], spec.test[0][0])
    assert spec.test[0][1] == 0 and spec.test[5][1] == 1


def test_imagefolder_missing_and_mismatched(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^dataset 'imagefolder' needs --data-dir DIR with train/"):
        build_datasets("imagefolder")
    (tmp_path / "train").mkdir()
    with pytest.raises(
        FileNotFoundError, match=rf"^ImageFolder data not found in {tmp_path}: no val folder; "
    ):
        build_datasets("imagefolder", tmp_path)
    _write_imagefolder(tmp_path / "b")
    (tmp_path / "b" / "val" / "dog").rename(tmp_path / "b" / "val" / "cow")
    with pytest.raises(
        ValueError, match=r"have different classes \(2 and 2; first differences: \['cow', 'dog'\]\)"
    ):
        build_datasets("imagefolder", tmp_path / "b")


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (
            ("mnist",),
            {},
            ValueError,
            r"^unknown dataset 'mnist'; available: cifar10, fashion-mnist, imagefolder, ",
        ),
        (("synthetic",), {"seed": -1}, ValueError, r"^seed must be an int >= 0, got -1$"),
        (
            ("fashion-mnist",),
            {"train_size": 5},
            ValueError,
            r"^options train_size apply to the synthetic dataset",
        ),
        (
            ("fashion-mnist",),
            {"download": True},
            ValueError,
            r"^download=True works for cifar10 only, not 'fashion",
        ),
        (("synthetic",), {"noise": -1.0}, ValueError, r"^noise must be a finite number >= 0, got -1.0$"),
        (("synthetic",), {"num_classes": 1}, ValueError, r"^num_classes must be an int >= 2, got 1$"),
        (
            ("synthetic",),
            {"colour": 1},
            ValueError,
            r"^unknown synthetic option 'colour'; available: data_seed, image_size, in_channels, noise, ",
        ),
        (("synthetic",), {"download": "yes"}, ValueError, r"^download must be a bool, got 'yes'$"),
        (("synthetic",), {"augment": 1}, ValueError, r"^augment must be a bool, got 1$"),
        (("synthetic",), {"data_dir": 5}, ValueError, r"^data_dir must be a non-empty path or None, got 5$"),
        (("synthetic",), {"subset": 0}, ValueError, r"^subset must be an int >= 1, got 0$"),
        (("synthetic",), {"subset": True}, ValueError, r"^subset must be an int >= 1, got True$"),
        (
            ("synthetic",),
            {"test_subset": 300},
            ValueError,
            r"^test_subset must be an int in \[1, 256\], got 300$",
        ),
        (("synthetic",), {"seed": 0.5}, ValueError, r"^seed must be an int >= 0, got 0.5$"),
    ],
)
def test_bad_input(args, kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        build_datasets(*args, **kwargs)
    assert "\n" not in str(info.value)
