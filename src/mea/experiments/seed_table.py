"""The study's result table, rerun: LeNet_a trained with Adam, batch 512 and a constant learning rate
on 60,000 probability answers to `mnist-train` queries, at each of the study's five settings.

The loss is the study's too: plain cross-entropy against the answers (temperature 1), and no true
labels.  Only the implementation differs, so the time column measures the implementation.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from mea.experiments.attack import AttackConfig
from mea.experiments.trial import Trial
from mea.runs import write_json
from mea.training import LabelLoss, Schedule, TrainConfig


@dataclass(frozen=True)
class StudyRow:
    run: int
    lr: float
    epochs: int
    accuracy: float  # percent
    f1: float
    time_s: float


STUDY_ROWS = (
    StudyRow(1, 1e-4, 10, 90.94, 0.91, 111.17),
    StudyRow(2, 1e-4, 20, 93.98, 0.94, 217.25),
    StudyRow(3, 5e-4, 30, 97.87, 0.98, 319.97),
    StudyRow(4, 5e-4, 50, 98.11, 0.98, 590.27),
    StudyRow(5, 1e-3, 5, 95.94, 0.96, 60.17),
)


def row_config(row: StudyRow, seed: int = 0) -> AttackConfig:
    train = TrainConfig(
        epochs=row.epochs, lr=row.lr, batch_size=512, schedule=Schedule.CONSTANT, loss=LabelLoss.SOFT, temperature=1.0
    )
    return AttackConfig(queries=60_000, pool="mnist-train", output="probabilities", train=train, seed=seed)


HEADER = (
    "Run",
    "LR",
    "Epochs",
    "Clone accuracy (%)",
    "F1",
    "Time (s)",
    "Fidelity (%)",
    "Study accuracy (%)",
    "Study F1",
    "Study time (s)",
    "Time vs study",
)


def cells(rows: list[tuple[StudyRow, dict]]) -> list[list[str]]:
    """The table's rows as formatted cells, one list per study row (columns as in HEADER)."""
    table = []
    for row, metrics in rows:
        clone, seconds = metrics["clone"], metrics["time_s"]["train"]
        table.append(
            [
                str(row.run),
                f"{row.lr:g}",
                str(row.epochs),
                f"{100 * clone['accuracy']:.2f}",
                f"{clone['f1']:.3f}",
                f"{seconds:.1f}",
                f"{100 * clone['fidelity']:.2f}",
                f"{row.accuracy:.2f}",
                f"{row.f1:.2f}",
                f"{row.time_s:.2f}",
                f"{seconds / row.time_s:.2f}x",
            ]
        )
    return table


def markdown(rows: list[tuple[StudyRow, dict]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in cells(rows)]
    return "\n".join(lines) + "\n"


def study_trials(seed: int = 0) -> list[Trial]:
    """The five rows as sweep trials (undefended)."""
    return [Trial(row_config(row, seed)) for row in STUDY_ROWS]


def study_results(records: list[dict]) -> list[tuple[StudyRow, list[dict]]]:
    """The records that rerun each study row (any seed), for the rows that have some."""
    found = []
    for row in STUDY_ROWS:
        wanted = _without_seed(Trial(row_config(row)).to_dict())
        matching = [r for r in records if _without_seed(r["config"]) == wanted]
        if matching:
            found.append((row, matching))
    return found


def _without_seed(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)


def mean_metrics(records: list[dict]) -> dict:
    """The seed-averaged numbers `markdown` reads from one row's records."""
    clone = {k: statistics.fmean(r["metrics"]["clone"][k] for r in records) for k in ("accuracy", "f1", "fidelity")}
    return {"clone": clone, "time_s": {"train": statistics.fmean(r["time_s"]["train"] for r in records)}}


def write_seed_table(records: list[dict], out: Path) -> str:
    """seed_table.md and seed_table.json from a sweep's records; returns the table."""
    rows = study_results(records)
    table = markdown([(row, mean_metrics(found)) for row, found in rows])
    seeds = sorted({r["seed"] for _, found in rows for r in found})
    (out / "seed_table.md").write_text(
        "Time is the clone's training time; the study's is its reported time. "
        f"Seeds: {', '.join(map(str, seeds))} (mean).\n\n" + table
    )
    write_json(
        out / "seed_table.json",
        [
            {
                "study": row.__dict__,
                "seeds": [r["seed"] for r in found],
                "queries": found[0]["metrics"]["queries"],
                **mean_metrics(found),
                "hashes": [r["hash"] for r in found],
            }
            for row, found in rows
        ],
    )
    return table
