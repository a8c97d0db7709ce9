"""Adaptive attackers against the defense: each one's clone, beside the same attack undefended.

Three defenders: none; the defended oracle (OOD detector + keyed misinformation, stateless); and
the service's gate (the same plus per-client PRADA and OOD-rate escalation, as `mea serve` runs it).
Attackers: random Fashion-MNIST queries, plainly and with repeat averaging or jitter consensus;
targeted JBDA (label-only, 150 seeds), plainly and hidden in cover traffic of natural images; and
the in-distribution attacker (random `mnist-train`), which no OOD defense is meant to stop.

Every scenario runs once per draw d: attacker seed d and, for the defended columns, the noise key
of draw d of `benchmarks.defense_keys` (the fitted detector of --defense, another key), so that a
figure is never one key's luck; the summary gives the mean and the sample standard deviation.

    python -m benchmarks.adaptive_attackers --victim DIR --defense DIR [--draws 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.defense_keys import draw_key, spread
from benchmarks.provenance import RESULTS, Provenance
from mea.attacks import extract, make_strategy
from mea.attacks.adaptive import CoverTraffic, JitterConsensus, RepeatAveraging
from mea.data import load, make_pool
from mea.defenses.gate import ClientGate, ClientOracle
from mea.defenses.store import load_defense
from mea.metrics import agreement
from mea.oracle import Oracle, VictimOracle, parse_output
from mea.training import LabelLoss, TrainConfig, predict_logits
from mea.victim import load_victim

TRAIN = TrainConfig(shift=2)
STRATEGIES = {
    "random": lambda: make_strategy("random"),
    "jbda-tr": lambda: make_strategy("jbda-tr"),
    "jbda-tr+cover": lambda: CoverTraffic(make_strategy("jbda-tr"), 4.0),
}
LABEL_TRAIN = TrainConfig(shift=2, loss=LabelLoss.HARD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--defense", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "adaptive_attackers.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    provenance = Provenance()
    victim = load_victim(args.victim)
    fitted = load_defense(args.defense, victim)
    rows = []
    for draw in range(args.draws):
        defense = dataclasses.replace(fitted, secret=draw_key(draw))
        rows += run_draw(victim, defense, args.queries, seed=draw)
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["attacker"], row["defender"]), []).append(row)
    summary = []
    for (attacker, defender), group in groups.items():
        entry: dict = {"attacker": attacker, "defender": defender, "budget": group[0]["budget"], "draws": len(group)}
        for key in ("clone_accuracy", "fidelity", "answers_kept", "queries_spent"):
            entry[key] = spread([float(row[key]) for row in group])
        refusals = [row["refused_after"] for row in group]
        entry["refused_after"] = refusals
        entry["prada_flagged_at"] = [(row["client"] or {}).get("prada_flagged_at") for row in group]
        summary.append(entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "provenance": provenance.record(),
        "victim_fingerprint": victim.fingerprint,
        "draws_rule": "draw d: noise key SHA-256('mea-benchmark-key/d'), attacker seed d",
        "sd": "sample standard deviation (n - 1) over the draws",
        "rows": rows,
        "summary": summary,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written to {args.out}")


def run_draw(victim, defense, queries: int, seed: int) -> list[dict]:
    """Every scenario against every defender it applies to, with this draw's key and seed."""
    test = load("mnist", "test")
    victim_logits = predict_logits(victim.model, test.images)
    pools = {name: make_pool(name) for name in ("fashion-mnist", "mnist-train")}
    probabilities, label = parse_output("probabilities"), parse_output("label")
    jbda_budget = 4_800  # 150 seeds doubled five times

    def undefended(output, budget):
        return VictimOracle(victim.model, output, budget=budget)

    def defended(output, budget):
        return defense.oracle(victim, output, budget=budget)

    def service(output, budget):
        return ClientOracle(ClientGate(defense.oracle(victim, output, budget=budget)), "attacker")

    defenders: dict[str, Callable[..., Oracle]] = {
        "none": undefended,
        "defended oracle": defended,
        "service gate": service,
    }
    scenarios = [
        # (attacker, pool, strategy factory, output, budget, oracle wrapper, defenders)
        ("random fashion-mnist", "fashion-mnist", "random", probabilities, queries, None, defenders),
        (
            "random fashion-mnist + repeat averaging x4",
            "fashion-mnist",
            "random",
            probabilities,
            queries,
            lambda o: RepeatAveraging(o, 4),
            ("none", "defended oracle"),
        ),
        (
            "random fashion-mnist + jitter consensus x3",
            "fashion-mnist",
            "random",
            probabilities,
            queries,
            lambda o: JitterConsensus(o, 3, seed=seed),
            ("none", "defended oracle"),
        ),
        ("jbda-tr, label-only, 150 seeds", "mnist-train", "jbda-tr", label, jbda_budget, None, defenders),
        (
            "jbda-tr + 4:1 cover traffic of mnist-train",
            "mnist-train",
            "jbda-tr+cover",
            label,
            jbda_budget,
            None,
            ("none", "service gate"),
        ),
        ("random mnist-train (in-distribution)", "mnist-train", "random", probabilities, queries, None, defenders),
    ]
    rows = []
    for attacker, pool_name, strategy_name, output, budget, wrap, which in scenarios:
        for defender in which:
            oracle = defenders[defender](output, budget)
            if wrap is not None:
                oracle = wrap(oracle)
            strategy = (
                CoverTraffic(make_strategy("jbda-tr"), 4.0)
                if strategy_name == "jbda-tr+cover"
                else make_strategy(strategy_name)
            )
            train = LABEL_TRAIN if output == label else TRAIN
            result = extract(oracle, pools[pool_name], strategy, budget, train=train, seed=seed, progress=False)
            clone_logits = predict_logits(result.clone, test.images)
            monitor_state = None
            if isinstance(oracle, ClientOracle):
                state = oracle.state
                monitor_state = {"prada_flagged_at": state.prada_flagged_at, "ood_rate": state.ood_rate}
            row = {
                "draw": seed,
                "attacker": attacker,
                "defender": defender,
                "budget": budget,
                "queries_spent": result.queries,
                "answers_kept": len(result.transfer),
                "refused_after": result.refused_after,
                "client": monitor_state,
                "clone_accuracy": float((clone_logits.argmax(1) == test.labels).float().mean()),
                "fidelity": agreement(clone_logits, victim_logits),
            }
            rows.append(row)
            refused = f", refused after {row['refused_after']}" if row["refused_after"] is not None else ""
            print(
                f"draw {seed}: {attacker:44s} vs {defender:15s}: clone accuracy {row['clone_accuracy']:.2%}, "
                f"{row['answers_kept']} answers kept of {row['queries_spent']} queries{refused}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
