"""mea: model extraction attacks and defenses, measured honestly.

The command line (`mea --help`) and this library do the same things; the command line calls these
functions (`mea.api`).  In ten lines:

    import mea

    victim = mea.train_victim("runs/victim")                         # or mea.load_victim(path)
    stolen = mea.attack(victim, "random", queries=5_000)             # -> mea.AttackResult
    defense = mea.fit_defense(victim, "runs/defense")                # -> mea.Defense
    blocked = mea.attack(victim, "random", queries=5_000, pool="fashion-mnist", oracle=defense.oracle(victim))
    print(stolen.clone_accuracy, blocked.clone_accuracy)
    verdict = mea.verify(stolen.clone, victim=victim, defense=defense)  # -> mea.Verdict
    print(verdict.decision)

Names load on first use, so `import mea` (and `mea --help`) imports neither torch nor the service.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "AttackResult": "mea.api",
    "attack": "mea.api",
    "connect": "mea.api",
    "export_evidence": "mea.api",
    "extract": "mea.api",
    "fit_defense": "mea.api",
    "load_defense": "mea.api",
    "load_victim": "mea.api",
    "local_oracle": "mea.api",
    "start_server": "mea.api",
    "train_victim": "mea.api",
    "verify": "mea.api",
    "Defense": "mea.defenses.store",
    "DefendedOracle": "mea.defenses.defended_oracle",
    "Oracle": "mea.oracle",
    "TrainConfig": "mea.config",
    "Verdict": "mea.ownership.verify",
    "Victim": "mea.victim",
}
__all__ = [
    "AttackResult",
    "DefendedOracle",
    "Defense",
    "Oracle",
    "TrainConfig",
    "Verdict",
    "Victim",
    "attack",
    "connect",
    "export_evidence",
    "extract",
    "fit_defense",
    "load_defense",
    "load_victim",
    "local_oracle",
    "start_server",
    "train_victim",
    "verify",
]
assert sorted(__all__) == sorted(_EXPORTS)

if TYPE_CHECKING:
    from mea.api import (
        AttackResult,
        attack,
        connect,
        export_evidence,
        extract,
        fit_defense,
        load_defense,
        load_victim,
        local_oracle,
        start_server,
        train_victim,
        verify,
    )
    from mea.config import TrainConfig
    from mea.defenses.defended_oracle import DefendedOracle
    from mea.defenses.store import Defense
    from mea.oracle import Oracle
    from mea.ownership.verify import Verdict
    from mea.victim import Victim


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once loaded, an ordinary attribute
        return value
    raise AttributeError(f"module 'mea' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
