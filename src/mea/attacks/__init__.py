"""Extraction attacks: strategies that choose queries (one module each; `mea.attacks.registry`
names them), and the driver that runs them (`mea.attacks.extract`).

The names below load on first use, so that a strategy's module that imports another part of this
package (its `strategy` records, say) never runs this package's imports in a circle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "STRATEGIES": "mea.attacks.registry",
    "is_data_free": "mea.attacks.registry",
    "make_strategy": "mea.attacks.registry",
    "extract": "mea.attacks.extract",
    "Extraction": "mea.attacks.strategy",
    "AttackState": "mea.attacks.strategy",
    "Queries": "mea.attacks.strategy",
    "Strategy": "mea.attacks.strategy",
    "TransferSet": "mea.attacks.strategy",
    "DataFreeStrategy": "mea.attacks.data_free",
    "RandomSampling": "mea.attacks.random_sampling",
}
__all__ = [
    "STRATEGIES",
    "AttackState",
    "DataFreeStrategy",
    "Extraction",
    "Queries",
    "RandomSampling",
    "Strategy",
    "TransferSet",
    "extract",
    "is_data_free",
    "make_strategy",
]

if TYPE_CHECKING:
    from mea.attacks.data_free import DataFreeStrategy
    from mea.attacks.extract import extract
    from mea.attacks.random_sampling import RandomSampling
    from mea.attacks.registry import STRATEGIES, is_data_free, make_strategy
    from mea.attacks.strategy import AttackState, Extraction, Queries, Strategy, TransferSet


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mea.attacks' has no attribute {name!r}")
