"""Datasets (MNIST, Fashion-MNIST), their offline fetching and cache, splits and attacker pools."""

from mea.data.datasets import ImageSet, MnistSplits, load
from mea.data.pools import POOLS, Pool, make_pool

__all__ = ["POOLS", "ImageSet", "MnistSplits", "Pool", "load", "make_pool"]
