"""The strategies by name: the one table that imports every strategy (`make_strategy` builds one).

The command line's names (mea.config.STRATEGY_NAMES) are this table's keys, which the suite checks;
the records in mea.config check a name against those without importing any strategy.
"""

from __future__ import annotations

from collections.abc import Callable

from mea.attacks import detector_aware, dfme, dfms, maze
from mea.attacks.active import ActiveSelection, Entropy, KCenter, Margin, UncertainKCenter
from mea.attacks.boundary import BoundaryRetraining
from mea.attacks.data_free import DataFreeStrategy
from mea.attacks.jbda import JacobianAugmentation
from mea.attacks.knockoff import AdaptiveKnockoff
from mea.attacks.mixup import MixupQueries
from mea.attacks.random_sampling import RandomSampling
from mea.attacks.strategy import Strategy
from mea.config import strategy_spec

STRATEGIES: dict[str, Callable[[], Strategy | DataFreeStrategy]] = {
    "random": RandomSampling,
    "jbda": JacobianAugmentation,
    "jbda-tr": lambda: JacobianAugmentation(name="jbda-tr", targeted=True),
    "active": lambda: ActiveSelection("active", UncertainKCenter()),
    "active-margin": lambda: ActiveSelection("active-margin", Margin()),
    "active-entropy": lambda: ActiveSelection("active-entropy", Entropy()),
    "active-kcenter": lambda: ActiveSelection("active-kcenter", KCenter()),
    "knockoff-adaptive": AdaptiveKnockoff,
    "boundary": BoundaryRetraining,
    "mixup": MixupQueries,
    # Data-free: no pool, the queries come from a generator (mea.attacks.data_free).
    "dfme": dfme.strategy,
    "maze": maze.strategy,
    "dfms": dfms.strategy,
    # DFME with a generator pushed toward digit-like images; "dfme-aware:W" sets the push's weight.
    "dfme-aware": detector_aware.strategy,
}


def is_data_free(name: str) -> bool:
    """Whether the named strategy makes its own queries (no pool) and trains its clone as it asks."""
    return isinstance(make_strategy(name), DataFreeStrategy)


def make_strategy(name: str) -> Strategy | DataFreeStrategy:
    base, weight = strategy_spec(name)
    return STRATEGIES[base]() if weight is None else STRATEGIES[base](weight)
