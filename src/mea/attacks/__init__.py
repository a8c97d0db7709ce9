"""Extraction attacks: strategies that choose queries, and the driver that runs them."""

from collections.abc import Callable

from mea.attacks.active import ActiveSelection, Entropy, KCenter, Margin, UncertainKCenter
from mea.attacks.boundary import BoundaryRetraining
from mea.attacks.extract import Extraction, extract
from mea.attacks.jbda import JacobianAugmentation
from mea.attacks.knockoff import AdaptiveKnockoff
from mea.attacks.random_sampling import RandomSampling
from mea.attacks.strategy import AttackState, Queries, Strategy, TransferSet
from mea.errors import ConfigError

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "random": RandomSampling,
    "jbda": JacobianAugmentation,
    "jbda-tr": lambda: JacobianAugmentation(name="jbda-tr", targeted=True),
    "active": lambda: ActiveSelection("active", UncertainKCenter()),
    "active-margin": lambda: ActiveSelection("active-margin", Margin()),
    "active-entropy": lambda: ActiveSelection("active-entropy", Entropy()),
    "active-kcenter": lambda: ActiveSelection("active-kcenter", KCenter()),
    "knockoff-adaptive": AdaptiveKnockoff,
    "boundary": BoundaryRetraining,
}


def make_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()


__all__ = [
    "STRATEGIES",
    "AttackState",
    "Extraction",
    "Queries",
    "RandomSampling",
    "Strategy",
    "TransferSet",
    "extract",
    "make_strategy",
]
