"""Attacker query pools: the images an attacker can send to the victim.

- one per built-in dataset, its training images (mea.data.catalog names them: ``mnist-train`` is
  the study's setting, the attacker holding public MNIST but never MNIST test, which is kept for
  evaluation; ``fashion-mnist`` is surrogate data from another distribution for an MNIST victim);
- ``uniform``: pixels drawn uniformly from [0, 1];
- ``gaussian``: pixels drawn from a normal with a digit image's pixel mean and deviation, clipped to [0, 1];
- a path: the attacker's own images, a .npz file or an image folder (mea.data.files), labels optional.

Noise pools are generated from an explicit seed, so a pool is a pure function of (name, size, seed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mea.config import check_pool_name as check_pool_name  # re-exported
from mea.data import files
from mea.data.catalog import DATASETS, DatasetSpec
from mea.data.datasets import load
from mea.errors import ConfigError
from mea.signature import DEFAULT

# The pixel statistics of MNIST's training images, so that Gaussian noise has a digit's brightness.
GAUSSIAN_POOL_MEAN = 0.1307
GAUSSIAN_POOL_STD = 0.3081
NOISE_POOL_SIZE = 60_000


@dataclass(frozen=True)
class Pool:
    """Images an attacker may query; labels only where the attacker's own data carries them."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.images)


ImageShape = tuple[int, int, int]


def _dataset_pool(spec: DatasetSpec, data_dir: Path | None, size: int, seed: int, image_shape: ImageShape) -> Pool:
    data = load(spec, "train", data_dir)
    return Pool(spec.pool, files.fit_to(data.images[:size], image_shape, spec.pool), data.labels[:size])


def _uniform(data_dir: Path | None, size: int, seed: int, image_shape: ImageShape) -> Pool:
    generator = torch.Generator().manual_seed(seed)
    return Pool("uniform", torch.rand(size, *image_shape, generator=generator), None)


def _gaussian(data_dir: Path | None, size: int, seed: int, image_shape: ImageShape) -> Pool:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, *image_shape, generator=generator).mul_(GAUSSIAN_POOL_STD).add_(GAUSSIAN_POOL_MEAN)
    return Pool("gaussian", images.clamp_(0.0, 1.0), None)


POOLS: dict[str, Callable[[Path | None, int, int, ImageShape], Pool]] = {
    **{spec.pool: functools.partial(_dataset_pool, spec) for spec in DATASETS.values()},
    "uniform": _uniform,
    "gaussian": _gaussian,
}


def make_pool(
    name: str,
    data_dir: Path | None = None,
    size: int = NOISE_POOL_SIZE,
    seed: int = 0,
    image_shape: ImageShape = DEFAULT.image_shape,
) -> Pool:
    """Build a pool of at most `size` images (datasets hold 60,000 training images), shaped as a
    victim of `image_shape` takes them (`files.fit_to`: grey/RGB, resized)."""
    if size <= 0:
        raise ConfigError(f"pool size must be positive, got {size}")
    if name in POOLS:
        return POOLS[name](data_dir, size, seed, tuple(image_shape))
    found = files.read(check_pool_name(name), "train")
    labels = None if found.labels is None else found.labels[:size]
    return Pool(name, files.fit_to(found.images[:size], tuple(image_shape), name), labels)
