"""Time for the clone to reach 98% MNIST test accuracy from 60,000 probability answers.

Compares this project's default training (one-cycle, distillation at T=4) with the study's best
setting (Adam, LR 5e-4, batch 512, constant LR, plain cross-entropy), and shows where a training
step's time goes.  Training time excludes querying and evaluation.

    python -m benchmarks.clone_time_to_98 [--victim DIR] [--study-epochs 50]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.provenance import RESULTS, Provenance
from mea import models
from mea.data import load
from mea.metrics import agreement
from mea.oracle import VictimOracle
from mea.seeding import generator
from mea.training import LabelLoss, Schedule, TrainConfig, fit, predict_logits
from mea.victim import VictimConfig, load_victim, train_victim

TARGET = 0.98
STUDY_BEST = TrainConfig(
    epochs=50, lr=5e-4, batch_size=512, schedule=Schedule.CONSTANT, loss=LabelLoss.SOFT, temperature=1.0
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, default=None, help="victim directory [default: train one]")
    parser.add_argument("--study-epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "clone_time_to_98.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    provenance = Provenance()

    victim_dir = args.victim
    if victim_dir is None:
        victim_dir = Path(tempfile.mkdtemp(prefix="mea-bench-")) / "victim"
        print(f"training a victim into {victim_dir} ...", flush=True)
        train_victim(VictimConfig(), victim_dir, progress=False)
    victim = load_victim(victim_dir)
    train, test = load("mnist", "train"), load("mnist", "test")
    answers = VictimOracle(victim.model).query(train.images)
    victim_logits = predict_logits(victim.model, test.images)

    def evaluate(model) -> tuple[float, float]:
        logits = predict_logits(model, test.images)
        return float((logits.argmax(1) == test.labels).float().mean()), agreement(logits, victim_logits)

    def run(config: TrainConfig, per_epoch: bool) -> dict:
        clone = models.build("lenet5", args.seed)
        history: list[dict] = []
        elapsed = [0.0]
        tick = [time.perf_counter()]

        def on_epoch_end(epoch: int, model) -> None:
            elapsed[0] += time.perf_counter() - tick[0]
            accuracy, fidelity = evaluate(model)
            history.append({"epoch": epoch, "train_s": elapsed[0], "accuracy": accuracy, "fidelity": fidelity})
            tick[0] = time.perf_counter()

        report = fit(
            clone,
            train.images,
            answers,
            config,
            generator(args.seed, "training"),
            progress=False,
            on_epoch_end=on_epoch_end if per_epoch else None,
        )
        accuracy, fidelity = evaluate(clone)
        return {
            "config": {**config.__dict__},
            "train_s": report.time_s,
            "accuracy": accuracy,
            "fidelity": fidelity,
            "history": history,
        }

    # One-cycle schedules are only meaningful at their end, so each length is its own run.
    default = TrainConfig()
    ours = []
    for epochs in range(1, default.epochs + 2):
        # min_steps off: every run has exactly the epochs it says (the default's 3 are above it anyway).
        result = run(TrainConfig(**{**default.__dict__, "epochs": epochs, "min_steps": 0}), per_epoch=False)
        ours.append(result)
        print(
            f"default, {epochs} epoch(s): {result['train_s']:.1f} s, accuracy {result['accuracy']:.2%}, "
            f"fidelity {result['fidelity']:.2%}",
            flush=True,
        )
    ours_first = next((r for r in ours if r["accuracy"] >= TARGET), None)

    study = run(TrainConfig(**{**STUDY_BEST.__dict__, "epochs": args.study_epochs}), per_epoch=True)
    study_first = next((h for h in study["history"] if h["accuracy"] >= TARGET), None)
    print(
        f"study's best setting, {args.study_epochs} epochs: {study['train_s']:.1f} s, "
        f"accuracy {study['accuracy']:.2%}, fidelity {study['fidelity']:.2%}",
        flush=True,
    )

    # Where the time of one default epoch goes, by operator.
    clone = models.build("lenet5", args.seed)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fit(clone, train.images[:16384], answers[:16384], TrainConfig(epochs=1), generator(0, "p"), progress=False)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    breakdown = [{"op": e.key, "share": e.self_cpu_time_total / total} for e in events[:12]]

    print()
    print(f"time to {TARGET:.0%} clone accuracy (training only, 60,000 probability answers):")
    if ours_first:
        print(
            f"  this project's default: {ours_first['train_s']:.1f} s ({ours_first['config']['epochs']} epochs, "
            f"one-cycle, accuracy {ours_first['accuracy']:.2%})"
        )
    else:
        print("  this project's default: not reached")
    if study_first:
        print(f"  the study's best setting: {study_first['train_s']:.1f} s (epoch {study_first['epoch']})")
    else:
        print(f"  the study's best setting: not reached in {args.study_epochs} epochs")
    if ours_first and study_first:
        print(f"  speed-up: {study_first['train_s'] / ours_first['train_s']:.1f}x")
    print("where one default epoch's time goes:")
    for row in breakdown:
        print(f"  {row['share']:6.1%}  {row['op']}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "provenance": provenance.record(),
                "victim_fingerprint": victim.fingerprint,
                "target": TARGET,
                "queries": len(train.images),
                "victim_accuracy": float((victim_logits.argmax(1) == test.labels).float().mean()),
                "default_runs": ours,
                "study_best": study,
                "time_to_target_s": {
                    "default": ours_first and ours_first["train_s"],
                    "study_best": study_first and study_first["train_s"],
                },
                "profile": breakdown,
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
