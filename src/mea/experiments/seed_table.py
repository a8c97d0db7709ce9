"""The study's result table, rerun: LeNet_a trained with Adam, batch 512 and a constant learning rate
on 60,000 probability answers to `mnist-train` queries, at each of the study's five settings.

The loss is the study's too: plain cross-entropy against the answers (temperature 1), and no true
labels.  Only the implementation differs, so the time column measures the implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mea.experiments.attack import AttackConfig, run_attack
from mea.runs import run_directory, write_json
from mea.training import LabelLoss, Schedule, TrainConfig
from mea.victim import Victim


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


def markdown(rows: list[tuple[StudyRow, dict]]) -> str:
    lines = [
        "| Run | LR | Epochs | Clone accuracy (%) | F1 | Time (s) | Fidelity (%) "
        "| Study accuracy (%) | Study F1 | Study time (s) | Time vs study |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, metrics in rows:
        clone, seconds = metrics["clone"], metrics["time_s"]["train"]
        lines.append(
            f"| {row.run} | {row.lr:g} | {row.epochs} | {100 * clone['accuracy']:.2f} | {clone['f1']:.3f} | "
            f"{seconds:.1f} | {100 * clone['fidelity']:.2f} | {row.accuracy:.2f} | {row.f1:.2f} | {row.time_s:.2f} | "
            f"{seconds / row.time_s:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def run_seed_table(
    victim: Victim, out: Path, data_dir: Path | None = None, seed: int = 0, force: bool = False, progress: bool = True
) -> str:
    """Rerun the five rows against `victim`; writes seed_table.md, seed_table.json and one run per row."""
    with run_directory(out, force) as scratch:
        results = []
        for row in STUDY_ROWS:
            metrics = run_attack(
                row_config(row, seed), victim, data_dir, out=scratch / f"run{row.run}", progress=progress
            )
            results.append((row, metrics))
        table = markdown(results)
        (scratch / "seed_table.md").write_text(
            "Time is the clone's training time; the study's is its reported time.\n\n" + table
        )
        write_json(
            scratch / "seed_table.json",
            [
                {
                    "study": row.__dict__,
                    "queries": m["queries"],
                    "clone": {k: m["clone"][k] for k in ("accuracy", "f1", "fidelity")},
                    "time_s": m["time_s"],
                    "config": m["config"],
                }
                for row, m in results
            ],
        )
    return table
