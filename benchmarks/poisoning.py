"""Prediction poisoning (MAD) beside the OOD-gated misinformation: the defense table's policy rows.

Each defender answers MNIST test (benign accuracy: its top-1 against the true labels) and four
attackers with random queries: probability or label answers, from `mnist-train` (in distribution:
what an attacker with natural digits sends) or `fashion-mnist` (out of distribution).  Draw d uses
the noise key of draw d of `benchmarks.defense_keys` and attacker seed d.

    python -m benchmarks.poisoning --victim runs/victim --defense runs/defense [--draws 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from benchmarks.defense_keys import draw_key, spread
from benchmarks.provenance import RESULTS, Provenance
from mea.attacks import extract, make_strategy
from mea.data import load, make_pool
from mea.defenses.policies import parse_policy
from mea.defenses.store import load_defense
from mea.oracle import Label, Probabilities, VictimOracle
from mea.training import LabelLoss, TrainConfig, predict_logits
from mea.victim import load_victim

# (key, row, policy for flagged queries or None = no gate, policy for every other query or None).
# The gate's rows are the policies of `mea defend eval` (EvaluationConfig.policies) at the default
# threshold, so MAD sits beside each of them.
DEFENDERS = (
    ("undefended", "undefended", None, None),
    ("gate", "OOD gate + misinformation:0.9 (default)", "misinformation:0.9", None),
    ("gate-gaussian", "OOD gate + gaussian:0.5", "gaussian:0.5", None),
    ("gate-dirichlet", "OOD gate + dirichlet:1", "dirichlet:1", None),
    ("gate-top1", "OOD gate + top1-preserving:1", "top1-preserving:1", None),
    ("gate-mad", "OOD gate + MAD-argmax (mad-top1:1) on flagged queries", "mad-top1:1", None),
    ("mad-argmax", "MAD-argmax (mad-top1:1), every query", "mad-top1:1", "mad-top1:1"),
    ("mad", "MAD (mad:1), every query", "mad:1", "mad:1"),
    ("gate+mad-argmax", "OOD gate + misinformation, MAD-argmax on the rest", "misinformation:0.9", "mad-top1:1"),
)
LABELS = ("draw", "key", "defender", "budget")  # a row's fields that are not measurements
TRAIN = {"probabilities": TrainConfig(shift=2), "label": TrainConfig(shift=2, loss=LabelLoss.HARD)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, default=Path("runs/victim"))
    parser.add_argument("--defense", type=Path, default=Path("runs/defense"))
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per draw")
    parser.add_argument("--workers", type=int, default=2, help="draws run at once, one process each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # as each draw's process does: the provenance records it
    provenance = Provenance()
    victim = load_victim(args.victim)
    # One process per draw (spawned: a fork of a process whose OpenMP pool runs can deadlock), each
    # with its own threads; the draws are independent, and each is seeded by its number alone.
    work = functools.partial(run_draw, args.victim, args.defense, args.queries, args.threads)
    with ProcessPoolExecutor(max(1, args.workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = [row for draw_rows in pool.map(work, range(args.draws)) for row in draw_rows]
    summary = []
    for key, name, *_ in DEFENDERS:
        group = [row for row in rows if row["key"] == key]
        summary.append(
            {
                "key": key,
                "defender": name,
                **{k: spread([r[k] for r in group]) for k in group[0] if k not in LABELS},
            }
        )
    out = RESULTS / "poisoning.json"
    payload = {
        "provenance": provenance.record(),
        "victim_fingerprint": victim.fingerprint,
        "draws": args.draws,
        "budget": args.queries,
        "rows": rows,
        "summary": summary,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written to {out}")


def run_draw(victim_dir: Path, defense_dir: Path, queries: int, threads: int, draw: int) -> list[dict]:
    """Every defender's row for one draw: noise key `draw_key(draw)`, attacker seed `draw`."""
    torch.set_num_threads(threads)
    victim = load_victim(victim_dir)
    defense = dataclasses.replace(load_defense(defense_dir, victim), secret=draw_key(draw))
    test = load("mnist", "test")
    pools = {name: make_pool(name) for name in ("mnist-train", "fashion-mnist")}
    rows = []
    for key, name, gate_policy, every_query in DEFENDERS:

        def oracle(output, budget=None, gate_policy=gate_policy, every_query=every_query):
            if gate_policy is None:
                return VictimOracle(victim.model, output, budget=budget)
            poison = None if every_query is None else parse_policy(every_query)
            return defense.oracle(
                victim, output, budget=budget, policy=parse_policy(gate_policy), unflagged_policy=poison
            )

        row = {"draw": draw, "key": key, "defender": name, "budget": queries}
        row["benign_accuracy"] = top1(oracle(Probabilities()).query(test.images), test.labels)
        for output in (Probabilities(), Label()):
            for pool_name, pool in pools.items():
                result = extract(
                    oracle(output, queries),
                    pool,
                    make_strategy("random"),
                    queries,
                    train=TRAIN[output.spec],
                    seed=draw,
                    progress=False,
                )
                row[f"clone[{output.spec}, {pool_name}]"] = top1(predict_logits(result.clone, test.images), test.labels)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def top1(answers: torch.Tensor, labels: torch.Tensor) -> float:
    return float((answers.argmax(1) == labels).float().mean())


if __name__ == "__main__":
    main()
