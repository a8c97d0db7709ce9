"""Tiny sweeps for the tests: an MLP clone, a few hundred queries, one short epoch (the sweep
machinery is under test, not the attack)."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY = {"clone_arch": "mlp", "queries": 300, "train": {"epochs": 1, "min_steps": 20}}
# The suite's shared sweep (tests/conftest.py `twenty_trials`): 2 budgets x undefended/defended x 5 seeds.
TWENTY = {"queries": [300, 400], "defense": [None, {"target_fpr": 0.05}], "seed": list(range(5))}


def write_sweep(path: Path, victim_dir: Path, defense_dir: Path | None = None, **sections) -> Path:
    body = {"victim": str(victim_dir), "base": TINY, **sections}
    if defense_dir is not None:
        body["defense_dir"] = str(defense_dir)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path
