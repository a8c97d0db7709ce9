"""Named sweeps: `mea sweep --preset NAME`.  Each builds its trials from a seed and may write a
summary of its own beside the results once every trial has finished.

`mea sweep --help` lists the presets, so this module imports nothing heavy: each preset's functions
import what they need when they run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the schema pulls in pydantic and yaml: not for every `mea` start-up
    from mea.experiments.sweep_config import SweepSpec


def _seed_table(seed: int) -> SweepSpec:
    from mea.experiments.seed_table import study_trials
    from mea.experiments.sweep_config import spec_from_trials

    return spec_from_trials("seed-table", study_trials(seed))


def _write_seed_table(records: list[dict], out: Path) -> str | None:
    from mea.experiments.seed_table import write_seed_table

    return write_seed_table(records, out)


@dataclass(frozen=True)
class Preset:
    description: str
    build: Callable[[int], SweepSpec]
    # (all records of the results file, the sweep's directory) -> text to show, or None
    summarise: Callable[[list[dict], Path], str | None] | None = None


PRESETS: dict[str, Preset] = {
    "seed-table": Preset(
        "the study's five runs (Adam, batch 512, constant LR, 60,000 probability queries); "
        "writes seed_table.md beside the study's numbers",
        _seed_table,
        _write_seed_table,
    ),
}
