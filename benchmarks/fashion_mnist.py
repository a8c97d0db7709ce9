"""The second task end to end: a Fashion-MNIST victim, the attack suite, the defense, a report.

Everything runs through the `mea` command line as a user would run it; nothing here is specific
to the task except the dataset's name:

    mea train-victim --dataset fashion-mnist --out RUNS/victim
    mea sweep benchmarks/sweeps/fashion_mnist.yaml --victim RUNS/victim --out RUNS/sweep --workers 2
    mea report RUNS/sweep --out RUNS/report
    mea defend fit --victim RUNS/victim --out RUNS/defense
    mea defend eval --victim RUNS/victim --defense RUNS/defense --queries 20000 ... --out RUNS/eval

The sweep steals the victim with random, active, JBDA and Knockoff-adaptive queries from MNIST and
from uniform noise (the attacker holds no Fashion-MNIST), beside the reference of an attacker who
does, at 1,000 / 5,000 / 20,000 queries over two seeds.  The summary (victim accuracy, fidelity
against the budget per attack and pool, detector AUROC per source, clone accuracy with and without
the defense) goes to benchmarks/results/fashion_mnist.json, the sweep's trials beside it, and a
plot to docs/fashion_mnist.png.  Steps whose output exists are skipped (pass --fresh to rerun them).

    python -m benchmarks.fashion_mnist [--runs runs/fashion-mnist] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.provenance import FIGURES, RESULTS, ROOT, Provenance

SWEEP = ROOT / "benchmarks" / "sweeps" / "fashion_mnist.yaml"
EVAL_QUERIES = 20_000
EVAL_SOURCES = ("mnist-train", "uniform", "gaussian", "fashion-mnist")


def mea(*args: str) -> None:
    print("$ mea " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "mea", *args], check=True)


def run(runs: Path, fresh: bool) -> None:
    victim, defense, sweep = runs / "victim", runs / "defense", runs / "sweep"
    if fresh:
        shutil.rmtree(runs, ignore_errors=True)
    if not (victim / "metrics.json").exists():
        mea("train-victim", "--dataset", "fashion-mnist", "--out", str(victim), "--force", "--quiet")
    mea("sweep", str(SWEEP), "--victim", str(victim), "--out", str(sweep), "--workers", "2", "--quiet")
    mea("report", str(sweep), "--out", str(runs / "report"), "--force")
    if not (defense / "defense-config.json").exists():
        mea("defend", "fit", "--victim", str(victim), "--out", str(defense), "--force")
    if not (runs / "eval" / "defense.json").exists():
        mea(
            "defend", "eval", "--victim", str(victim), "--defense", str(defense),
            "--queries", str(EVAL_QUERIES), "--budgets", "1000,5000,20000",
            "--sources", ",".join(EVAL_SOURCES), "--sweep-sources", "mnist-train",
            "--fpr-sweep", "0.01", "--policies", "misinformation",
            "--out", str(runs / "eval"), "--force", "--quiet",
        )  # fmt: skip


def summarise(runs: Path, provenance: Provenance) -> dict:
    victim = json.loads((runs / "victim" / "metrics.json").read_text())
    records = [json.loads(line) for line in (runs / "sweep" / "results.jsonl").read_text().splitlines() if line]
    curves: dict[tuple[str, str, int], list[dict]] = {}
    for record in records:
        key = tuple(record["config"][name] for name in ("strategy", "pool", "queries"))
        curves.setdefault(key, []).append(record["metrics"]["clone"])
    rows = []
    for (strategy, pool, queries), clones in sorted(curves.items()):
        fidelity = [c["fidelity"] for c in clones]
        accuracy = [c["accuracy"] for c in clones]
        rows.append(
            {
                "strategy": strategy,
                "pool": pool,
                "queries": queries,
                "seeds": len(clones),
                "fidelity_mean": statistics.fmean(fidelity),
                "fidelity_std": statistics.stdev(fidelity) if len(fidelity) > 1 else None,
                "accuracy_mean": statistics.fmean(accuracy),
            }
        )
    evaluation = json.loads((runs / "eval" / "defense.json").read_text())
    defense = {
        source: {
            "auroc": evaluation["detector"][source]["auroc"],
            "flagged_rate": evaluation["detector"][source]["flagged_rate"],
            "clone_undefended": evaluation["clone_accuracy"][source]["undefended"],
            "clone_defended": evaluation["clone_accuracy"][source]["defended"],
        }
        for source in EVAL_SOURCES
    }
    return {
        "provenance": provenance.record(),
        "victim": {
            "accuracy": victim["victim"]["accuracy"],
            "train_s": victim["time_s"]["train"],
            "torch_threads": victim["torch_threads"],
        },
        "curves": rows,
        "defense": {
            "queries": EVAL_QUERIES,
            "benign_accuracy": evaluation["benign_accuracy"],
            "benign_flagged_rate": evaluation["benign_flagged_rate"],
            "sources": defense,
        },
        "commands": [
            "mea train-victim --dataset fashion-mnist --out RUNS/victim",
            f"mea sweep {SWEEP.relative_to(ROOT)} --victim RUNS/victim --out RUNS/sweep --workers 2",
            "mea report RUNS/sweep --out RUNS/report",
            "mea defend fit --victim RUNS/victim --out RUNS/defense",
            f"mea defend eval --victim RUNS/victim --defense RUNS/defense --queries {EVAL_QUERIES} "
            f"--budgets 1000,5000,20000 --sources {','.join(EVAL_SOURCES)} --out RUNS/eval",
        ],
    }


def plot(summary: dict, path: Path) -> None:
    from mea.plots import line_plot

    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in summary["curves"]:
        xs, ys = series.setdefault(f"{row['strategy']}, {row['pool']}", ([], []))
        xs.append(row["queries"])
        ys.append(100 * row["fidelity_mean"])
    line_plot(
        series,
        "queries",
        "fidelity: agreement with the victim on Fashion-MNIST test (%)",
        f"Stealing a Fashion-MNIST victim ({100 * summary['victim']['accuracy']:.2f}% accurate)",
        path,
        logx=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "fashion-mnist")
    parser.add_argument("--fresh", action="store_true", help="rerun every step")
    args = parser.parse_args()
    provenance = Provenance()
    run(args.runs, args.fresh)
    summary = summarise(args.runs, provenance)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fashion_mnist.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.copyfile(args.runs / "sweep" / "results.jsonl", RESULTS / "fashion_mnist_trials.jsonl")
    plot(summary, FIGURES / "fashion_mnist.png")
    print(f"wrote {RESULTS / 'fashion_mnist.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
