"""Attacker query pools: the images an attacker can send to the victim.

- ``mnist-train``: all 60,000 MNIST training images (the study's setting: the attacker holds
  public MNIST; it never holds MNIST test, which is kept for evaluation).
- ``fashion-mnist``: Fashion-MNIST training images, surrogate data from another distribution.
- ``uniform``: pixels drawn uniformly from [0, 1].
- ``gaussian``: pixels drawn from a normal with MNIST's pixel mean and deviation, clipped to [0, 1].

Noise pools are generated from an explicit seed, so a pool is a pure function of (name, size, seed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mea.data.datasets import load
from mea.errors import ConfigError

# MNIST's pixel statistics, so that Gaussian noise has the brightness of a digit image.
MNIST_PIXEL_MEAN = 0.1307
MNIST_PIXEL_STD = 0.3081
NOISE_POOL_SIZE = 60_000


@dataclass(frozen=True)
class Pool:
    """Images an attacker may query; labels only where the attacker's own data carries them."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.images)


def _mnist_train(data_dir: Path | None, size: int, seed: int) -> Pool:
    data = load("mnist", "train", data_dir)
    return Pool("mnist-train", data.images[:size], data.labels[:size])


def _fashion(data_dir: Path | None, size: int, seed: int) -> Pool:
    data = load("fashion-mnist", "train", data_dir)
    return Pool("fashion-mnist", data.images[:size], data.labels[:size])


def _uniform(data_dir: Path | None, size: int, seed: int) -> Pool:
    generator = torch.Generator().manual_seed(seed)
    return Pool("uniform", torch.rand(size, 1, 28, 28, generator=generator), None)


def _gaussian(data_dir: Path | None, size: int, seed: int) -> Pool:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 1, 28, 28, generator=generator).mul_(MNIST_PIXEL_STD).add_(MNIST_PIXEL_MEAN)
    return Pool("gaussian", images.clamp_(0.0, 1.0), None)


POOLS: dict[str, Callable[[Path | None, int, int], Pool]] = {
    "mnist-train": _mnist_train,
    "fashion-mnist": _fashion,
    "uniform": _uniform,
    "gaussian": _gaussian,
}


def check_pool_name(name: str) -> str:
    if name not in POOLS:
        raise ConfigError(f"unknown pool {name!r}; choose one of: {', '.join(POOLS)}")
    return name


def make_pool(name: str, data_dir: Path | None = None, size: int = NOISE_POOL_SIZE, seed: int = 0) -> Pool:
    """Build a pool of at most `size` images (datasets hold 60,000 training images)."""
    if size <= 0:
        raise ConfigError(f"pool size must be positive, got {size}")
    return POOLS[check_pool_name(name)](data_dir, size, seed)
