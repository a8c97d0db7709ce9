"""Extraction attacks: strategies that choose queries, and the driver that runs them."""

from collections.abc import Callable

from mea.attacks import detector_aware, dfme, dfms, maze
from mea.attacks.active import ActiveSelection, Entropy, KCenter, Margin, UncertainKCenter
from mea.attacks.boundary import BoundaryRetraining
from mea.attacks.data_free import DataFreeStrategy
from mea.attacks.extract import Extraction, extract
from mea.attacks.jbda import JacobianAugmentation
from mea.attacks.knockoff import AdaptiveKnockoff
from mea.attacks.mixup import MixupQueries
from mea.attacks.random_sampling import RandomSampling
from mea.attacks.strategy import AttackState, Queries, Strategy, TransferSet
from mea.errors import ConfigError

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
_WEIGHTED = ("dfme-aware",)


def is_data_free(name: str) -> bool:
    """Whether the named strategy makes its own queries (no pool) and trains its clone as it asks."""
    return isinstance(make_strategy(name), DataFreeStrategy)


def make_strategy(name: str) -> Strategy | DataFreeStrategy:
    base, colon, argument = name.partition(":")
    if base not in STRATEGIES or (colon and base not in _WEIGHTED):
        raise ConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    if not argument:
        return STRATEGIES[base]()
    try:
        weight = float(argument)
    except ValueError:
        raise ConfigError(f"strategy {name!r} needs a number after ':', e.g. {base}:1") from None
    return STRATEGIES[base](weight)


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
