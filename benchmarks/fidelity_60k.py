"""Fidelity of a clone distilled from 60,000 probability answers, against its training time.

What gets a clone closer to the victim when the whole budget is spent: the loss (distillation at
T = 4, this project's default, or logit matching), which 60,000 images are queried, and how long
the clone trains.  Each row is one `mea attack --queries 60000 --strategy S --loss L --epochs E
--min-steps 0 --seed N` (exact float32 probabilities, the mnist-train pool, no self-training):

- `random`: the attacker's pool as it is (the default attack's queries);
- `mixup`: half the pool as it is, half blends of two pool images (`mea.attacks.mixup`): queries
  between classes, where the victim's boundaries are.

Each row reports fidelity on MNIST test, accuracy, agreement on the test images the victim gets
wrong (the last part of the victim to copy) and the clone's training time on this machine.

    python -m benchmarks.fidelity_60k --victim DIR [--seeds 2] [--epochs 3 5 8 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tqdm.auto import tqdm

from benchmarks.provenance import FIGURES, RESULTS, Provenance
from mea import threads
from mea.attacks import extract, make_strategy
from mea.data import make_pool
from mea.oracle import VictimOracle
from mea.plots import line_plot
from mea.training import LabelLoss, TrainConfig, predict_logits
from mea.victim import load_victim

STRATEGIES = ("random", "mixup")
LOSSES = (LabelLoss.SOFT, LabelLoss.LOGITS)
BUDGET = 60_000


def share(hits) -> float:
    return float(hits.float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 5, 8, 12])
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: mea's choice]")
    parser.add_argument("--out", type=Path, default=RESULTS / "fidelity_60k.json")
    args = parser.parse_args()
    provenance = Provenance()
    used_threads = threads.apply(args.threads)

    victim = load_victim(args.victim)
    test = victim.test_set()
    pool = make_pool("mnist-train", None)
    victim_test = predict_logits(victim.model, test.images).argmax(1)
    errors = victim_test != test.labels

    rows = []
    bar = tqdm(total=len(STRATEGIES) * len(LOSSES) * len(args.epochs) * args.seeds, desc="clones", unit="clone")
    for strategy in STRATEGIES:
        for loss in LOSSES:
            for epochs in args.epochs:
                for seed in range(args.seeds):
                    config = TrainConfig(epochs=epochs, loss=loss, min_steps=0)  # exactly `epochs`
                    oracle = VictimOracle(victim.model, budget=BUDGET)
                    result = extract(
                        oracle, pool, make_strategy(strategy), BUDGET, train=config, seed=seed, progress=False
                    )
                    predicted = predict_logits(result.clone, test.images).argmax(1)
                    rows.append(
                        {
                            "strategy": strategy,
                            "loss": loss.value,
                            "epochs": epochs,
                            "seed": seed,
                            "fidelity": share(predicted == victim_test),
                            "accuracy": share(predicted == test.labels),
                            "agreement_on_victim_errors": share(predicted[errors] == victim_test[errors]),
                            "train_s": result.train_time_s,
                        }
                    )
                    bar.update()
    bar.close()

    summary = []
    for strategy in STRATEGIES:
        for loss in LOSSES:
            for epochs in args.epochs:
                group = [r for r in rows if (r["strategy"], r["loss"], r["epochs"]) == (strategy, loss.value, epochs)]
                summary.append(
                    {
                        "strategy": strategy,
                        "loss": loss.value,
                        "epochs": epochs,
                        "seeds": len(group),
                        **{
                            f"{name}_mean": statistics.mean(r[name] for r in group)
                            for name in ("fidelity", "accuracy", "agreement_on_victim_errors", "train_s")
                        },
                        "fidelity_min": min(r["fidelity"] for r in group),
                        "fidelity_std": statistics.stdev(r["fidelity"] for r in group) if len(group) > 1 else None,
                    }
                )
    result = {
        "provenance": provenance.record(),
        "victim": {"accuracy": share(victim_test == test.labels), "test_errors": int(errors.sum())},
        "budget": BUDGET,
        "threads": used_threads,
        "rows": rows,
        "summary": summary,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    series = {}
    for row in summary:
        xs, ys = series.setdefault(f"{row['strategy']} queries, {row['loss']} loss", ([], []))
        xs.append(row["train_s_mean"])
        ys.append(100 * row["fidelity_mean"])
    line_plot(
        series,
        "clone training time on this machine (s; points: the epoch counts)",
        "fidelity on MNIST test (%)",
        f"60,000 probability answers: fidelity against training time, mean of {args.seeds} seeds",
        FIGURES / "fidelity_60k.png",
        references={"target 99.5%": 99.5},
    )
    for row in summary:
        print(
            f"{row['strategy']:>6} {row['loss']:>6} {row['epochs']} epochs: fidelity {100 * row['fidelity_mean']:.2f}% "
            f"(min {100 * row['fidelity_min']:.2f}), on the victim's errors "
            f"{100 * row['agreement_on_victim_errors_mean']:.1f}%, {row['train_s_mean']:.1f} s"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
