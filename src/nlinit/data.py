"""Image classification datasets for training, offline by default.

``build_datasets(name, data_dir)`` returns a :class:`DataSpec`: train and test datasets of
(float image (C, H, W) normalized with the dataset's mean and std, int label) pairs, plus the shapes a model
needs. Datasets: ``fashion-mnist`` (the IDX files of the Debian package dataset-fashion-mnist, read with
numpy), ``cifar10`` (torchvision's CIFAR10; downloaded only when asked), ``imagefolder`` (an ImageNet-style
``DIR/train``, ``DIR/val`` tree) and ``synthetic`` (small, generated, learnable).

Train augmentation is a deterministic function of (seed, epoch, index): call ``spec.train.set_epoch(epoch)``
before iterating an epoch, so a resumed run sees the same images, with any number of DataLoader workers
(the workers copy the dataset when the iterator starts: don't use ``persistent_workers``).

    >>> spec = build_datasets("fashion-mnist", subset=1000)
    >>> spec.train.set_epoch(0); x, y = spec.train[0]  # x: (1, 28, 28) float32, y: int
"""

from __future__ import annotations

import gzip
import inspect
import math
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ._checks import check_choice, check_int

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "DataSpec",
    "EpochDataset",
    "ImageFolderDataset",
    "TensorImageDataset",
    "build_datasets",
    "read_idx",
    "stratified_subset",
    "synthetic_images",
]

DATASETS = ("fashion-mnist", "cifar10", "imagefolder", "synthetic")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # the Debian package dataset-fashion-mnist

# Per-channel pixel mean and standard deviation (in [0, 1]) of each training set.
_Stats = tuple[Sequence[float], Sequence[float]]
_FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# Tags that keep the random streams derived from one seed apart.
_TRAIN_SUBSET, _TEST_SUBSET, _AUGMENT = 1, 2, 3


def _seed(*words: int) -> int:
    """A 64-bit seed hashed from non-negative ints (numpy's SeedSequence)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0])


class EpochDataset(Dataset[tuple[Tensor, int]]):
    """A dataset whose random augmentation is a function of (seed, epoch, index); ``set_epoch`` picks the
    epoch (0 at construction)."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_int("epoch", epoch, low=0)

    def __len__(self) -> int:
        raise NotImplementedError


class TensorImageDataset(EpochDataset):
    r"""uint8 images (N, C, H, W) in memory; item i is ((x_i / 255 - mean) / std, label_i) as float32.

    With ``pad > 0`` each item is a random H x W crop of the image zero-padded by ``pad`` on each side,
    flipped left-right with probability 1/2 when ``flip``: offsets and flips for all N items are drawn at
    once per epoch from a generator seeded by (seed, epoch).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        pad: int = 0,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        for name, x in (("images", images), ("labels", labels)):
            if not isinstance(x, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        for name, stat in (("mean", mean), ("std", std)):
            if not isinstance(stat, Sequence) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in stat
            ):
                raise ValueError(
                    f"{name} must be a sequence of finite numbers (one per channel), got {stat!r}"
                )
        if any(v <= 0 for v in std):
            raise ValueError(f"std must be > 0 in every channel, got {list(std)!r}")
        if images.dtype != torch.uint8 or images.dim() != 4 or not len(mean) == len(std) == images.shape[1]:
            raise ValueError(
                f"images must be uint8 (N, C, H, W) with len(mean) = len(std) = C, got {images.dtype} "
                f"{tuple(images.shape)} and {len(mean)}, {len(std)} channel statistics"
            )
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be a bool, got {flip!r}")
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.pad, self.flip = check_int("pad", pad, low=0), flip
        self.seed = check_int("seed", seed, low=0)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        g = torch.Generator().manual_seed(_seed(self.seed, _AUGMENT, self.epoch))
        n = len(self)
        # Python lists: indexing them per item is faster than indexing tensors.
        self._offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).tolist()  # N x (top, left)
        self._flips = ((torch.rand(n, generator=g) < 0.5) & self.flip).tolist()  # N bools

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]  # (C, H, W) uint8
        if self.pad:
            p, (h, w) = self.pad, image.shape[1:]
            top, left = self._offsets[index]
            image = F.pad(image, (p, p, p, p))[:, top : top + h, left : left + w]
        if self._flips[index]:
            image = image.flip(-1)
        x = (image.float() / 255 - self.mean) / self.std  # (C, H, W) float32
        return x, int(self.labels[index])


class ImageFolderDataset(EpochDataset):
    """Items ``indices`` of a torchvision ImageFolder through ``transform``; with ``random`` the transform's
    draws come from torch's CPU generator seeded by (seed, epoch, index) (saved and restored around it)."""

    def __init__(
        self,
        folder: torchvision.datasets.ImageFolder,
        transform: Callable[[Any], Tensor],
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        random: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(folder, torchvision.datasets.DatasetFolder):
            raise TypeError(f"folder must be a torchvision ImageFolder, got {type(folder).__name__}")
        if not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        if not isinstance(random, bool):
            raise ValueError(f"random must be a bool, got {random!r}")
        if indices is not None:
            bad = [i for i in indices if not 0 <= int(i) < len(folder)]
            if bad:
                raise ValueError(f"indices must lie in [0, {len(folder)}) for this folder, got {bad[0]!r}")
        self.folder, self.transform, self.random = folder, transform, random
        self.indices = list(range(len(folder))) if indices is None else [int(i) for i in indices]
        self.seed = check_int("seed", seed, low=0)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.folder.samples[self.indices[index]]
        image = self.folder.loader(path)
        if not self.random:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_seed(self.seed, _AUGMENT, self.epoch, int(index)))
            return self.transform(image), label


@dataclass(frozen=True)
class DataSpec:
    """Train and test datasets and what a model needs to know about them."""

    train: EpochDataset
    test: EpochDataset
    num_classes: int
    in_channels: int
    image_size: int


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST: IDX files (LeCun's MNIST format), gzipped.

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """The array in a gzipped IDX file: magic (0, 0, type code, ndim), ndim big-endian int32 sizes, data.

    Args:
        path: an ``*-idx?-ubyte.gz`` file.
        ndim: the number of dimensions required (3 for images, 1 for labels), or None for any.
    Returns:
        An array of the file's shape and type, in native byte order.
    Raises:
        FileNotFoundError: no such file.
        ValueError: not gzip, truncated, a wrong magic number, or a size that does not match the data; a
            path that is not a str or PathLike, ndim not None or an int >= 0.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"path must be a non-empty str or PathLike, got {path!r}")
    if ndim is not None:
        check_int("ndim", ndim, low=0)
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes())
    except (EOFError, OSError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"corrupt IDX file {path}: {type(e).__name__}: {e}") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_TYPES:
        raise ValueError(f"corrupt IDX file {path}: bad magic number {data[:4].hex() or 'none'}")
    dims = data[3]
    if ndim is not None and dims != ndim:
        raise ValueError(f"corrupt IDX file {path}: {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise ValueError(f"corrupt IDX file {path}: header ends after {len(data)} of {header} bytes")
    shape = tuple(int(s) for s in np.frombuffer(data, ">i4", count=dims, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"corrupt IDX file {path}: {len(data)} bytes, {expected} expected for shape {shape}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_fashion_mnist(root: Path) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((train images (60000, 1, 28, 28) uint8, labels (60000,) int64), (test ..., 10000))"""
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    if not all((root / f).is_file() for pair in files.values() for f in pair):
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root}; install it with `sudo apt-get install "
            "dataset-fashion-mnist` or pass --data-dir DIR with the four IDX .gz files"
        )
    out = []
    for image_file, label_file in files.values():
        images, labels = read_idx(root / image_file, ndim=3), read_idx(root / label_file, ndim=1)
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise ValueError(
                f"corrupt Fashion-MNIST in {root}: images {images.shape} and labels {labels.shape} in "
                f"{image_file}, {label_file}; expected (N, 28, 28) and (N,)"
            )
        if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
            raise ValueError(f"corrupt Fashion-MNIST in {root}: labels outside 0..9 in {label_file}")
        out.append((torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------------------
# Subsets and the in-memory datasets.


def stratified_subset(labels: Sequence[int] | np.ndarray | Tensor, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` items drawn without replacement, each class kept in proportion.

    Items are shuffled by ``seed``; class k (n_k of the N items) gets floor(size n_k / N) items plus one
    more for the classes with the largest remainders (Hamilton's method; ties go to the class whose next
    item comes first in the shuffle), so |count_k - size n_k / N| < 1, and takes its first items in the
    shuffled order.

    Raises:
        ValueError: labels not a 1-D sequence of ints, size not an int in [1, len(labels)], seed not an
            int >= 0.
    """
    try:
        y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    except (TypeError, ValueError):
        y = np.asarray([None])
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D sequence of ints, got {labels!r:.60}")
    y = y.astype(np.int64)
    check_int("subset size", size, low=1, high=len(y))
    check_int("seed", seed, low=0)
    perm = np.random.default_rng(seed).permutation(len(y))
    y_perm = y[perm]
    _, inverse, counts = np.unique(y_perm, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")  # grouped by class, shuffled within
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - np.repeat(np.cumsum(counts) - counts, counts)
    share = size * counts / len(y)
    take = np.floor(share).astype(np.int64)
    # the position in the shuffle of each class's next item (its rank take_k), to break ties
    first = np.full(len(counts), len(y), dtype=np.int64)
    nxt = rank == take[inverse]
    np.minimum.at(first, inverse[nxt], np.flatnonzero(nxt))
    extra = np.lexsort((first, -(share - take)))[: size - int(take.sum())]
    take[extra] += 1
    return np.sort(perm[rank < take[inverse]])


def _subset(labels: Sequence[int] | Tensor, size: int, seed: int, tag: int) -> np.ndarray:
    """stratified_subset with an error that names the option and a seed stream of its own."""
    option = "subset" if tag == _TRAIN_SUBSET else "test_subset"
    check_int(option, size, low=1, high=len(labels))
    return stratified_subset(labels, size, _seed(seed, tag))


def _in_memory(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    stats: _Stats,
    *,
    pad: int,
    flip: bool,
    num_classes: int,
    subset: int | None,
    test_subset: int | None,
    seed: int,
    augment: bool,
) -> DataSpec:
    (x_train, y_train), (x_test, y_test) = train, test
    if subset is not None:
        keep = torch.from_numpy(_subset(y_train, subset, seed, _TRAIN_SUBSET))
        x_train, y_train = x_train[keep], y_train[keep]
    if test_subset is not None:
        keep = torch.from_numpy(_subset(y_test, test_subset, seed, _TEST_SUBSET))
        x_test, y_test = x_test[keep], y_test[keep]
    return DataSpec(
        train=TensorImageDataset(
            x_train, y_train, *stats, pad=pad if augment else 0, flip=flip and augment, seed=seed
        ),
        test=TensorImageDataset(x_test, y_test, *stats, seed=seed),
        num_classes=num_classes,
        in_channels=x_train.shape[1],
        image_size=x_train.shape[2],
    )


def _synthetic_split(templates: Tensor, n: int, noise: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    labels = torch.randperm(n, generator=g) % templates.shape[0]  # (n,), balanced
    x = templates[labels] + noise * torch.randn((n, *templates.shape[1:]), generator=g)  # (n, C, S, S)
    scale = 127.5 / (4 * math.sqrt(1 + noise**2))  # 4 standard deviations fit in [0, 255]
    return (127.5 + scale * x).round().clamp(0, 255).to(torch.uint8), labels


def synthetic_images(
    *,
    train_size: int = 1024,
    test_size: int = 256,
    num_classes: int = 10,
    image_size: int = 28,
    in_channels: int = 1,
    noise: float = 3.0,
    data_seed: int = 0,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    r"""A small Gaussian-mixture image set: class k's images are N(m_k, noise^2 I), quantized to uint8.

    Each template m_k (in_channels, image_size, image_size) is fixed by ``data_seed``: a 4 x 4 standard
    normal grid, upsampled bicubically, made left-right symmetric and scaled to unit RMS. So the images are
    smooth class patterns under pixel noise, a class survives small shifts and flips (the train
    augmentation), and the nearest-template rule is Bayes-optimal. Labels are balanced.

    Returns:
        ((train images (train_size, C, S, S) uint8, labels (train_size,) int64), (test images, labels)).
    """
    for key, value, low in [
        ("train_size", train_size, 1),
        ("test_size", test_size, 1),
        ("num_classes", num_classes, 2),
        ("image_size", image_size, 4),
        ("in_channels", in_channels, 1),
        ("data_seed", data_seed, 0),
    ]:
        check_int(key, value, low=low)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < math.inf:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    g = torch.Generator().manual_seed(data_seed)
    grid = torch.randn(num_classes, in_channels, 4, 4, generator=g)
    templates = F.interpolate(grid, size=(image_size, image_size), mode="bicubic", align_corners=False)
    templates = templates + templates.flip(-1)  # (K, C, S, S), mirror-symmetric
    templates = templates / templates.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
    return _synthetic_split(templates, train_size, noise, g), _synthetic_split(templates, test_size, noise, g)


_SYNTHETIC_CLASSES: int = inspect.signature(synthetic_images).parameters["num_classes"].default


def _pixel_stats(images: Tensor) -> _Stats:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), in [0, 1] units."""
    pixels = images.double() / 255
    return pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).tolist()


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10 and ImageFolder.


def _read_cifar10(root: Path, download: bool) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    out = []
    for train in (True, False):
        try:
            ds = torchvision.datasets.CIFAR10(root=str(root), train=train, download=download)
        except RuntimeError:  # torchvision: "Dataset not found or corrupted"
            raise FileNotFoundError(
                f"CIFAR-10 not found (or corrupt) in {root}; pass --data-dir DIR holding "
                "cifar-10-batches-py, or add --download to fetch it there"
            ) from None
        images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        out.append((images, torch.as_tensor(ds.targets, dtype=torch.long)))
    return out[0], out[1]


def _imagefolder(
    root: Path, *, subset: int | None, test_subset: int | None, seed: int, augment: bool
) -> DataSpec:
    missing = [d for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"ImageFolder data not found in {root}: no {' or '.join(missing)} folder; expected the ImageNet "
            "layout DIR/train/<class>/<image> and DIR/val/<class>/<image>"
        )
    train, val = (torchvision.datasets.ImageFolder(str(root / d)) for d in ("train", "val"))
    if train.classes != val.classes:
        raise ValueError(
            f"{root}/train and {root}/val have different classes ({len(train.classes)} and "
            f"{len(val.classes)}; first differences: {sorted(set(train.classes) ^ set(val.classes))[:5]})"
        )
    mean, std = _IMAGENET_STATS
    finish = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    train_tf = v2.Compose([v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(), *finish])
    test_tf = v2.Compose([v2.Resize(256), v2.CenterCrop(224), *finish])
    if not augment:
        train_tf = test_tf
    keep = None if subset is None else _subset(train.targets, subset, seed, _TRAIN_SUBSET)
    keep_test = None if test_subset is None else _subset(val.targets, test_subset, seed, _TEST_SUBSET)
    return DataSpec(
        train=ImageFolderDataset(train, train_tf, keep, random=augment, seed=seed),
        test=ImageFolderDataset(val, test_tf, keep_test),
        num_classes=len(train.classes),
        in_channels=3,
        image_size=224,
    )


def build_datasets(
    name: str,
    data_dir: str | Path | None = None,
    *,
    subset: int | None = None,
    test_subset: int | None = None,
    download: bool = False,
    seed: int = 0,
    augment: bool = True,
    **synthetic: Any,
) -> DataSpec:
    """Train and test datasets by name (one of :data:`DATASETS`).

    Args:
        name: ``fashion-mnist`` (data_dir default /usr/share/datasets/fashion-mnist), ``cifar10``,
            ``imagefolder`` (data_dir with train/ and val/) or ``synthetic`` (no files).
        subset, test_subset: keep a seeded, class-stratified random sample of this many train / test items.
        download: fetch CIFAR-10 into data_dir with torchvision (the only dataset that downloads).
        seed: the subsets and the train augmentation derive from it.
        augment: standard train augmentation (fashion-mnist: crop 28 with padding 2 and flip; cifar10: crop
            32 with padding 4 and flip; imagefolder: RandomResizedCrop 224 and flip; synthetic: as
            fashion-mnist); test items are never augmented.
        synthetic: options of :func:`synthetic_images` (train_size, num_classes, image_size, noise, ...).
    Raises:
        ValueError: a bad name or value (one line, naming what is allowed), or corrupt files.
        FileNotFoundError: the data is missing; the message says how to get it.
    """
    check_choice("dataset", name, DATASETS)
    check_int("seed", seed, low=0)
    for key, flag in (("download", download), ("augment", augment)):
        if not isinstance(flag, bool):
            raise ValueError(f"{key} must be a bool, got {flag!r}")
    if data_dir is not None and (not isinstance(data_dir, (str, os.PathLike)) or not str(data_dir)):
        raise ValueError(f"data_dir must be a non-empty path or None, got {data_dir!r}")
    for key, value in (("subset", subset), ("test_subset", test_subset)):
        if value is not None:
            check_int(key, value, low=1)
    if synthetic and name != "synthetic":
        raise ValueError(
            f"options {', '.join(sorted(synthetic))} apply to the synthetic dataset only, not {name!r}"
        )
    for key in synthetic:
        check_choice("synthetic option", key, inspect.signature(synthetic_images).parameters)
    if download and name != "cifar10":
        raise ValueError(f"download=True works for cifar10 only, not {name!r}")
    if name == "imagefolder":
        if data_dir is None:
            raise FileNotFoundError(
                "dataset 'imagefolder' needs --data-dir DIR with train/<class>/<image> and "
                "val/<class>/<image> (the ImageNet layout)"
            )
        return _imagefolder(
            Path(data_dir), subset=subset, test_subset=test_subset, seed=seed, augment=augment
        )
    stats: _Stats
    num_classes = 10
    if name == "synthetic":
        train, test = synthetic_images(**synthetic)
        stats, pad = _pixel_stats(train[0]), 2
        num_classes = synthetic.get("num_classes", _SYNTHETIC_CLASSES)
    elif name == "fashion-mnist":
        train, test = _read_fashion_mnist(FASHION_MNIST_DIR if data_dir is None else Path(data_dir))
        stats, pad = _FASHION_MNIST_STATS, 2
    else:
        if data_dir is None:
            raise FileNotFoundError(
                "dataset 'cifar10' needs --data-dir DIR holding cifar-10-batches-py (add --download to fetch "
                "it there)"
            )
        train, test = _read_cifar10(Path(data_dir), download)
        stats, pad = _CIFAR10_STATS, 4
    return _in_memory(
        train,
        test,
        stats,
        pad=pad,
        flip=True,
        num_classes=num_classes,
        subset=subset,
        test_subset=test_subset,
        seed=seed,
        augment=augment,
    )
