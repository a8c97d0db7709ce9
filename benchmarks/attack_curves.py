"""Clone fidelity and accuracy against the query budget, per strategy and output mode, over seeds.

Every curve uses the attacker's `mnist-train` pool and no true labels, with the suite's best clone
training (shifts of 2 px, two rounds of self-training on the unqueried pool).  Beside them, the
reference an attacker gets for free: the same training on as many *public labelled* images, with
zero queries, so that the value of stealing is visible.  Finished trials are appended to a JSONL
file (with the victim's fingerprint) and skipped on a rerun against the same victim, so an
interrupted run resumes.  Seed s of a defended curve uses the noise key of draw s of
`benchmarks.defense_keys`, so that its spread covers the key as well as the attacker's seed.
Spreads are sample standard deviations (n - 1) over the seeds.

    python -m benchmarks.attack_curves --victim DIR [--defense DIR] [--seeds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.defense_keys import draw_key
from benchmarks.provenance import RESULTS, Provenance
from mea import models
from mea.attacks.pseudo_labels import self_train
from mea.data import load, make_pool
from mea.defenses.store import load_defense
from mea.experiments.attack import AttackConfig, run_attack
from mea.metrics import agreement
from mea.oracle import parse_output
from mea.plots import line_plot
from mea.seeding import derive_seed, generator
from mea.training import LabelLoss, TrainConfig, fit, predict_logits
from mea.victim import load_victim

BUDGETS = (100, 250, 1_000, 5_000)
DEFENDED_BUDGETS = (1_000, 5_000)
JBDA_BUDGETS = (2_400, 9_600)  # 150 seeds doubled 4 and 6 times (Papernot et al. 2017)
RECIPE = TrainConfig(shift=2, pseudo_label_rounds=2)


@dataclass(frozen=True)
class Trial:
    curve: str
    strategy: str  # "public-labels" for the zero-query reference
    output: str
    budget: int
    seed: int
    defended: bool = False
    self_training: bool = True

    @property
    def key(self) -> str:
        return f"{self.curve}|{self.budget}|{self.seed}"

    @property
    def train(self) -> TrainConfig:
        train = RECIPE if self.self_training else TrainConfig(shift=2)
        if self.output == "label":
            return dataclasses.replace(train, loss=LabelLoss.HARD)
        return train


def trials(seeds: int, defended: bool) -> list[Trial]:
    out = []
    for seed in range(seeds):
        for budget in BUDGETS:
            out.append(Trial("public labels, no queries", "public-labels", "label", budget, seed))
            for output in ("probabilities", "label"):
                out.append(Trial(f"random, {output}", "random", output, budget, seed))
                if budget <= 10_000:
                    out.append(Trial(f"active, {output}", "active", output, budget, seed))
            if defended and budget in DEFENDED_BUDGETS:
                out.append(Trial("random, probabilities, defended", "random", "probabilities", budget, seed, True))
        for budget in JBDA_BUDGETS:
            for name in ("jbda", "jbda-tr"):
                # JBDA as Papernot et al. ran it: label-only, no unlabelled pool beyond its 150 seeds.
                out.append(Trial(f"{name}, label", name, "label", budget, seed, self_training=False))
                if defended:
                    out.append(
                        Trial(f"{name}, label, defended", name, "label", budget, seed, True, self_training=False)
                    )
    return out


def public_labels(trial: Trial, victim, data_dir, test) -> dict:
    """The attacker's free alternative: train on `budget` pool images with their own true labels."""
    start = time.perf_counter()
    pool = make_pool("mnist-train", data_dir)
    index = torch.randperm(len(pool), generator=generator(trial.seed, "public-labels"))[: trial.budget]
    assert pool.labels is not None
    labels = F.one_hot(pool.labels[index], 10).float()
    clone = models.build("lenet5", derive_seed(trial.seed, "clone-init"))
    rng = generator(trial.seed, "training")
    fit(clone, pool.images[index], labels, trial.train, rng, progress=False)
    unqueried = torch.ones(len(pool), dtype=torch.bool)
    unqueried[index] = False
    clone, _ = self_train(
        lambda r: models.build("lenet5", derive_seed(trial.seed, f"student-{r}")),
        clone,
        pool.images[index],
        labels,
        pool.images[unqueried],
        trial.train,
        rng,
        progress=False,
    )
    clone_logits = predict_logits(clone, test.images)
    return {
        "fidelity": agreement(clone_logits, predict_logits(victim.model, test.images)),
        "accuracy": float((clone_logits.argmax(1) == test.labels).float().mean()),
        "queries": 0,
        "time_s": time.perf_counter() - start,
    }


def run_trial(trial: Trial, victim, defense, data_dir, test) -> dict:
    if trial.strategy == "public-labels":
        return public_labels(trial, victim, data_dir, test)
    config = AttackConfig(
        queries=trial.budget, strategy=trial.strategy, output=trial.output, train=trial.train, seed=trial.seed
    )
    if trial.defended:  # seed s meets the noise key of draw s (benchmarks.defense_keys)
        keyed = dataclasses.replace(defense, secret=draw_key(trial.seed))
        oracle = keyed.oracle(victim, parse_output(trial.output), budget=trial.budget)
    else:
        oracle = None
    metrics = run_attack(config, victim, data_dir, oracle=oracle, progress=False)
    return {
        "fidelity": metrics["clone"]["fidelity"],
        "accuracy": metrics["clone"]["accuracy"],
        "queries": metrics["queries"],
        "time_s": metrics["time_s"]["total"],
    }


def read_log(log: Path, fingerprint: str) -> dict[str, dict]:
    """Finished trials against this victim by key; a torn last line (an interrupted write) and
    trials against another victim are ignored."""
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("victim_fingerprint") == fingerprint:
                done[row["key"]] = row
    return done


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["curve"], row["budget"]), []).append(row)
    summary = []
    for (curve, budget), group in sorted(groups.items()):
        fid = [r["fidelity"] for r in group]
        acc = [r["accuracy"] for r in group]
        summary.append(
            {
                "curve": curve,
                "budget": budget,
                "seeds": len(group),
                "fidelity_mean": statistics.mean(fid),
                "fidelity_std": statistics.stdev(fid) if len(fid) > 1 else None,
                "fidelity_min": min(fid),
                "accuracy_mean": statistics.mean(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else None,
            }
        )
    return summary


def budget_plot(lines: dict[str, list[dict]], title: str, path: Path) -> None:
    """Fidelity against the budget, one line per name: summary rows' means with their sd as error bars."""
    line_plot(
        {name: ([r["budget"] for r in rows], [100 * r["fidelity_mean"] for r in rows]) for name, rows in lines.items()},
        "query budget (images; log scale)",
        "clone fidelity on MNIST test (%)",
        title,
        path,
        spreads={name: [100 * (r["fidelity_std"] or 0.0) for r in rows] for name, rows in lines.items()},
        logx=True,
    )


def plot(summary: list[dict], output: str, path: Path) -> None:
    lines: dict[str, list[dict]] = {}
    for row in summary:
        if output in row["curve"] or "public" in row["curve"]:
            lines.setdefault(row["curve"], []).append(row)
    budget_plot(lines, f"Fidelity vs budget, {output} answers, mnist-train pool, mean ± sd over seeds", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--defense", type=Path, default=None, help="also attack the defended victim")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--figures", type=Path, default=Path("docs"), help="where the two PNGs go")
    parser.add_argument("--only-seed", type=int, default=None, help="run only this seed's trials")
    parser.add_argument("--budgets", type=int, nargs="*", default=None, help="run only these budgets")
    parser.add_argument("--summary-only", action="store_true", help="summarise the trials finished so far")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    provenance = Provenance()
    data_dir = None
    victim = load_victim(args.victim)
    defense = load_defense(args.defense, victim) if args.defense else None
    test = load("mnist", "test", data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "attack_curves.jsonl"
    plan = [
        t
        for t in trials(args.seeds, defense is not None)
        if args.only_seed in (None, t.seed) and (not args.budgets or t.budget in args.budgets)
    ]
    done = read_log(log, victim.fingerprint)
    for number, trial in enumerate(plan, 1):
        # Re-read before each trial: a second process (another core, another seed) may share the log.
        if args.summary_only or trial.key in (done := read_log(log, victim.fingerprint)):
            continue
        result = run_trial(trial, victim, defense, data_dir, test)
        row = {"key": trial.key, "victim_fingerprint": victim.fingerprint, **trial.__dict__, **result}
        done[trial.key] = row
        with log.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(
            f"[{number}/{len(plan)}] {trial.curve:38s} budget {trial.budget:6d} seed {trial.seed}: "
            f"fidelity {result['fidelity']:.2%}, accuracy {result['accuracy']:.2%} ({result['time_s']:.0f} s)",
            flush=True,
        )
    done = read_log(log, victim.fingerprint)
    plan = trials(args.seeds, defense is not None)
    rows = [done[t.key] for t in plan if t.key in done]
    summary = summarise(rows)
    args.figures.mkdir(parents=True, exist_ok=True)
    for output in ("probabilities", "label"):
        plot(summary, output, args.figures / f"attack_curves_{output}.png")
    with (args.out / "attack_curves.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    payload = {
        "provenance": provenance.record(trials_finished=len(rows), trials_planned=len(plan)),
        "victim_fingerprint": victim.fingerprint,
        "seeds": args.seeds,
        "sd": "sample standard deviation (n - 1) over seeds; null where one seed ran",
        "recipe": RECIPE.__dict__,
        "summary": summary,
    }
    (args.out / "attack_curves.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    for row in summary:
        print(
            f"{row['curve']:38s} {row['budget']:6d}: fidelity {row['fidelity_mean']:.2%} "
            f"± {row['fidelity_std'] or 0:.2%} "
            f"(min {row['fidelity_min']:.2%}), accuracy {row['accuracy_mean']:.2%}"
        )


if __name__ == "__main__":
    main()
