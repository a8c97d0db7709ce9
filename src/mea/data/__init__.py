"""Datasets (MNIST, Fashion-MNIST), their offline fetching and cache, splits and attacker pools.

The names below load their modules on first use (PEP 562): `mea.data.catalog` and `mea.data.fetch`
need no torch, and `mea --help` or `mea data fetch` should not pay for importing it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "ImageSet": "mea.data.datasets",
    "load": "mea.data.datasets",
    "Splits": "mea.config",
    "POOLS": "mea.data.pools",
    "Pool": "mea.data.pools",
    "make_pool": "mea.data.pools",
}

if TYPE_CHECKING:
    from mea.config import Splits
    from mea.data.datasets import ImageSet, load
    from mea.data.pools import POOLS, Pool, make_pool


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'mea.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


__all__ = ["POOLS", "ImageSet", "Pool", "Splits", "load", "make_pool"]
