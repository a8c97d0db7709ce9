"""Data-free attackers (DFME, MAZE, DFMS) against the victim undefended, behind the OOD gate, behind
MAD prediction poisoning and behind both; when the service's gate flags and refuses them; and the
detector-aware variant per weight of its in-distribution push.

Curves come from one run per (attacker, defender): nothing in a data-free attack here depends on
its budget (the clone's learning rate falls with the queries spent, not with the fraction of a
budget), so the clone it holds after b queries is the clone a run with budget b returns (see
`mea.attacks.data_free.Session.next_round`); it is scored on MNIST test at every checkpoint.
Defended curves stop at 200,000 queries (at the defended speeds measured, a 2M-query run takes from
14 min for MAZE to 84 min for DFMS on one core of this machine): there the gated ones sit at
chance with every query flagged.

    python -m benchmarks.data_free --victim runs/victim --defense runs/defense --part curves-a
    python -m benchmarks.data_free --victim runs/victim --defense runs/defense --part curves-b
    python -m benchmarks.data_free --victim runs/victim --defense runs/defense --part detection
    python -m benchmarks.data_free --plot     # merges the parts: data_free.json and docs/data_free.png

Each curve is written to data_free_curves/STRATEGY_DEFENDER.json as soon as it ends; `--curve
dfms:none:2000000` (repeatable) reruns single curves of a part.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from benchmarks.defense_keys import draw_key
from benchmarks.provenance import FIGURES, RESULTS, Provenance
from mea.attacks import extract, make_strategy
from mea.attacks.data_free import run_data_free
from mea.data import load, make_pool
from mea.defenses.gate import ClientGate, ClientOracle
from mea.defenses.policies import parse_policy
from mea.defenses.prada import SUSPECT
from mea.defenses.store import load_defense
from mea.experiments.trial import FlagCounter
from mea.metrics import agreement
from mea.oracle import Label, OracleWrapper, Probabilities, VictimOracle
from mea.training import predict_logits
from mea.victim import load_victim

MAD = "mad-top1:1"
CHECKPOINTS = (10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000)
DEFENDERS = ("none", "ood-gate", "mad", "ood-gate+mad")
PARTS = {
    # (strategy, defender, budget); two parts of about equal time (70 min), to run side by side on 2 cores.
    "curves-a": [
        ("dfme", "none", 2_000_000),
        *[("dfme", d, 200_000) for d in DEFENDERS[1:]],
        *[("dfms", d, 200_000) for d in DEFENDERS[1:]],
        *[("maze", d, 200_000) for d in DEFENDERS[1:]],
    ],
    "curves-b": [
        ("maze", "none", 2_000_000),
        ("dfms", "none", 2_000_000),
    ],
}
AWARE_WEIGHTS = (0.0, 3.0, 30.0, 300.0)


CURVES = RESULTS / "data_free_curves"  # one file per (strategy, defender), written as each curve ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, default=Path("runs/victim"))
    parser.add_argument("--defense", type=Path, default=Path("runs/defense"))
    parser.add_argument("--part", choices=(*PARTS, "detection"))
    parser.add_argument(
        "--curve",
        action="append",
        default=[],
        metavar="STRATEGY:DEFENDER:BUDGET",
        help=f"one curve of a part (repeatable), e.g. dfms:none:2000000; defenders: {', '.join(DEFENDERS)}",
    )
    parser.add_argument("--plot", action="store_true", help="merge the parts' results and draw the curves")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (two parts share 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.plot:
        merge_and_plot()
        return
    runs = [parse_curve(text) for text in args.curve] or PARTS.get(args.part, [])
    if not runs and args.part != "detection":
        parser.error("name a --part, one or more --curve, or --plot")
    torch.set_num_threads(args.threads)
    victim = load_victim(args.victim)
    # The noise key of draw 0 of benchmarks.defense_keys, as the other defense benchmarks use.
    defense = dataclasses.replace(load_defense(args.defense, victim), secret=draw_key(0))
    test = load("mnist", "test")
    victim_logits = predict_logits(victim.model, test.images)
    if args.part == "detection" and not args.curve:
        provenance = Provenance()
        rows = detection(victim, defense, test, args.seed)
        write(RESULTS / "data_free_detection.json", provenance, victim, rows)
        return
    CURVES.mkdir(exist_ok=True)
    for strategy, defender, budget in runs:
        provenance = Provenance()
        row = curve(victim, defense, test, victim_logits, strategy, defender, budget, args.seed)
        write(CURVES / f"{strategy}_{defender}.json", provenance, victim, [row])


def parse_curve(text: str) -> tuple[str, str, int]:
    strategy, _, rest = text.partition(":")
    defender, _, budget = rest.partition(":")
    if strategy not in ("dfme", "maze", "dfms") or defender not in DEFENDERS or not budget.isdigit():
        raise SystemExit(f"--curve {text!r}: write STRATEGY:DEFENDER:BUDGET, e.g. dfms:none:2000000")
    return strategy, defender, int(budget)


def write(out: Path, provenance: Provenance, victim, rows: list[dict]) -> None:
    payload = {"provenance": provenance.record(), "victim_fingerprint": victim.fingerprint, "rows": rows}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written to {out}", flush=True)


def oracle_for(victim, defense, defender: str, output, budget: int | None):
    mad = parse_policy(MAD)
    if defender == "none":
        return VictimOracle(victim.model, output, budget=budget)
    if defender == "ood-gate":
        return FlagCounter(defense.oracle(victim, output, budget=budget))
    if defender == "mad":  # MAD alone, on every query
        return FlagCounter(defense.oracle(victim, output, budget=budget, policy=mad, unflagged_policy=mad))
    if defender == "ood-gate+mad":  # misinformation where the gate flags, MAD everywhere else
        return FlagCounter(defense.oracle(victim, output, budget=budget, unflagged_policy=mad))
    raise ValueError(defender)


def output_for(strategy: str):
    return Label() if strategy == "dfms" else Probabilities()


def curve(victim, defense, test, victim_logits, strategy: str, defender: str, budget: int, seed: int) -> dict:
    oracle = oracle_for(victim, defense, defender, output_for(strategy), budget)
    points = []
    start = time.perf_counter()

    def score(at: int, clone) -> None:
        clone.eval()
        logits = predict_logits(clone, test.images)
        point = {
            "budget": at,
            "accuracy": float((logits.argmax(1) == test.labels).float().mean()),
            "fidelity": agreement(logits, victim_logits),
            "flagged_rate": getattr(oracle, "flagged_rate", None),
        }
        points.append(point)
        print(f"{strategy:5s} vs {defender:13s} at {at:>9,}: accuracy {point['accuracy']:.2%}", flush=True)

    checkpoints = tuple(c for c in CHECKPOINTS if c <= budget)
    result = run_data_free(
        oracle,
        None,
        make_strategy(strategy),
        budget,
        "lenet5",
        seed,
        False,
        checkpoints=checkpoints,
        on_checkpoint=score,
    )
    wall = time.perf_counter() - start
    attack_time = result.query_time_s + result.train_time_s
    return {
        "strategy": strategy,
        "defender": defender,
        "output": oracle.output.spec,
        "mad": MAD if "mad" in defender else None,
        "budget": budget,
        "queries": result.queries,
        "seed": seed,
        "points": points,
        "attack_time_s": attack_time,
        "wall_time_s": wall,
        "queries_per_s": result.queries / attack_time,
    }


class Timeline(OracleWrapper):
    """A client of the service's gate, noting the query count at which each escalation happened."""

    _oracle: ClientOracle

    def __init__(self, oracle: ClientOracle) -> None:
        super().__init__(oracle)
        self.first_ood_flag: int | None = None
        self.suspect_at: int | None = None

    def query(self, images: torch.Tensor) -> torch.Tensor:
        try:
            return self._oracle.query(images)
        finally:
            state = self._oracle.state
            if self.first_ood_flag is None and state.flagged_ood:
                self.first_ood_flag = state.queries
            if self.suspect_at is None and state.level >= SUSPECT:
                self.suspect_at = state.queries


def detection(victim, defense, test, seed: int) -> list[dict]:
    """Each data-free attacker as one client of the service's gate (what `mea serve` runs); then the
    detector-aware variant per weight, against the gate and against the stateless OOD gate."""
    rows = []
    pool = make_pool("mnist-train")  # only the detector-aware attacker reads it: 150 public digits
    attackers = [("dfme", None), ("maze", None), ("dfms", None)] + [("dfme-aware", w) for w in AWARE_WEIGHTS]
    for name, weight in attackers:
        spec = name if weight is None else f"{name}:{weight:g}"
        output = output_for(name)
        gate = ClientGate(defense.oracle(victim, output))
        client = Timeline(ClientOracle(gate, "attacker", batch_size=100))
        result = extract(client, pool, make_strategy(spec), 20_000, seed=seed, progress=False)
        state = client._oracle.state
        row = {
            "attacker": spec,
            "output": output.spec,
            "service": {
                "budget": 20_000,
                "first_ood_flag_at": client.first_ood_flag,
                "prada_flagged_at": state.prada_flagged_at,
                "suspect_at": client.suspect_at,
                "refused_after": result.refused_after,
                "ood_rate": state.ood_rate,
                "clone_accuracy": accuracy(result.clone, test),
            },
        }
        if weight is not None:
            oracle = FlagCounter(defense.oracle(victim, output, budget=50_000))
            started = time.perf_counter()
            gated = extract(oracle, pool, make_strategy(spec), 50_000, seed=seed, progress=False)
            undefended = extract(
                VictimOracle(victim.model, output, budget=50_000),
                pool,
                make_strategy(spec),
                50_000,
                seed=seed,
                progress=False,
            )
            row["ood_gate"] = {
                "budget": 50_000,
                "flagged_rate": oracle.flagged_rate,
                "clone_accuracy": accuracy(gated.clone, test),
                "undefended_clone_accuracy": accuracy(undefended.clone, test),
                "wall_time_s": time.perf_counter() - started,
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def accuracy(clone, test) -> float:
    return float((predict_logits(clone, test.images).argmax(1) == test.labels).float().mean())


def merge_and_plot() -> None:
    from mea.plots import pyplot

    plt = pyplot()

    files = sorted(CURVES.glob("*.json"))
    records = {path.stem: json.loads(path.read_text()) for path in files}
    detection_record = json.loads((RESULTS / "data_free_detection.json").read_text())
    curves = [row for record in records.values() for row in record["rows"]]
    merged = {
        "provenance": {name: record["provenance"] for name, record in records.items()}
        | {"detection": detection_record["provenance"]},
        "mad": MAD,
        "curves": curves,
        "detection": detection_record["rows"],
    }
    (RESULTS / "data_free.json").write_text(json.dumps(merged, indent=2) + "\n")
    figure, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    # Fixed per defender; where two lines coincide (MAD cannot touch a label-only attacker; the gate
    # flags every data-free query, so MAD on the rest changes nothing), the dashes show both.
    styles = {"none": "-", "ood-gate": "--", "mad": ":", "ood-gate+mad": "-."}
    colours = {"none": "tab:blue", "ood-gate": "tab:orange", "mad": "tab:green", "ood-gate+mad": "tab:red"}
    for axis, strategy in zip(axes, ("dfme", "maze", "dfms"), strict=True):
        for row in sorted(
            (r for r in curves if r["strategy"] == strategy), key=lambda r: DEFENDERS.index(r["defender"])
        ):
            xs = [p["budget"] for p in row["points"]]
            ys = [100 * p["accuracy"] for p in row["points"]]
            defender = row["defender"]
            axis.plot(xs, ys, styles[defender], color=colours[defender], marker="o", markersize=3, label=defender)
        axis.set_xscale("log")
        axis.set_title(f"{strategy} ({'labels' if strategy == 'dfms' else 'probabilities'})")
        axis.set_xlabel("queries (log scale)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("clone accuracy on MNIST test (%)")
    axes[0].legend(title="defender")
    figure.suptitle("Data-free extraction of the MNIST LeNet: no real image used by the attacker")
    figure.tight_layout()
    figure.savefig(FIGURES / "data_free.png", dpi=110)
    print(f"written to {RESULTS / 'data_free.json'} and {FIGURES / 'data_free.png'}")


if __name__ == "__main__":
    os.environ.setdefault("CI", "true")  # no progress bars in logs
    main()
