"""Prediction poisoning (MAD) beside the OOD-gated misinformation: the defense table's policy rows.

Each defender answers MNIST test (benign accuracy: its top-1 against the true labels) and four
attackers with random queries: probability or label answers, from `mnist-train` (in distribution:
what an attacker with natural digits sends) or `fashion-mnist` (out of distribution).  Draw d uses
the noise key of draw d of `benchmarks.defense_keys` and attacker seed d.

    python -m benchmarks.poisoning --victim runs/victim --defense runs/defense [--draws 2] [--queries 20000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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

# (row, policy for flagged queries or None = no gate, policy for every other query or None)
DEFENDERS = (
    ("undefended", None, None),
    ("OOD gate + misinformation:0.9 (default)", "misinformation:0.9", None),
    ("MAD-argmax (mad-top1:1), every query", "mad-top1:1", "mad-top1:1"),
    ("MAD (mad:1), every query", "mad:1", "mad:1"),
    ("OOD gate + misinformation, MAD-argmax on the rest", "misinformation:0.9", "mad-top1:1"),
)
TRAIN = {"probabilities": TrainConfig(shift=2), "label": TrainConfig(shift=2, loss=LabelLoss.HARD)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, default=Path("runs/victim"))
    parser.add_argument("--defense", type=Path, default=Path("runs/defense"))
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    provenance = Provenance()
    victim = load_victim(args.victim)
    fitted = load_defense(args.defense, victim)
    test = load("mnist", "test")
    pools = {name: make_pool(name) for name in ("mnist-train", "fashion-mnist")}
    rows = []
    for draw in range(args.draws):
        defense = dataclasses.replace(fitted, secret=draw_key(draw))
        for name, gate_policy, every_query in DEFENDERS:

            def oracle(output, budget=None, defense=defense, gate_policy=gate_policy, every_query=every_query):
                if gate_policy is None:
                    return VictimOracle(victim.model, output, budget=budget)
                poison = None if every_query is None else parse_policy(every_query)
                return defense.oracle(
                    victim, output, budget=budget, policy=parse_policy(gate_policy), unflagged_policy=poison
                )

            row = {"draw": draw, "defender": name, "budget": args.queries}
            row["benign_accuracy"] = top1(oracle(Probabilities()).query(test.images), test.labels)
            for output in (Probabilities(), Label()):
                for pool_name, pool in pools.items():
                    result = extract(
                        oracle(output, args.queries),
                        pool,
                        make_strategy("random"),
                        args.queries,
                        train=TRAIN[output.spec],
                        seed=draw,
                        progress=False,
                    )
                    row[f"clone[{output.spec}, {pool_name}]"] = top1(
                        predict_logits(result.clone, test.images), test.labels
                    )
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = []
    for name, *_ in DEFENDERS:
        group = [row for row in rows if row["defender"] == name]
        summary.append(
            {
                "defender": name,
                **{k: spread([r[k] for r in group]) for k in group[0] if k not in ("draw", "defender", "budget")},
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


def top1(answers: torch.Tensor, labels: torch.Tensor) -> float:
    return float((answers.argmax(1) == labels).float().mean())


if __name__ == "__main__":
    main()
