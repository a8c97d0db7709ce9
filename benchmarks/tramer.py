"""Tramèr et al. 2016 reproduced: equation-solving, path-finding, Lowd-Meek and label-only
retraining against mea's classic-ML victims, beside the paper's figures.

    python -m benchmarks.tramer [--threads 1] [--seeds 2]

Trains its victims with `mea.tabular.train` (scikit-learn; digits softmax, ovr and a 20-unit tanh
MLP, breast-cancer logreg, depth-10 trees on digits and breast-cancer) into a scratch directory,
attacks each in process through the black-box oracle (`mea.extraction`), and writes
benchmarks/results/tramer.json.  Every figure is agreement on the victim's test inputs and on
10,000 uniform inputs in its feature ranges, the mean total-variation distance of the probability
vectors, and where the victim's class is known the largest parameter error.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import RESULTS, Provenance

VICTIMS = {
    "digits-softmax": {"dataset": "digits", "arch": "softmax"},
    "digits-ovr": {"dataset": "digits", "arch": "ovr"},
    "digits-mlp": {"dataset": "digits", "arch": "mlp", "hidden": 20},
    "cancer-logreg": {"dataset": "breast-cancer", "arch": "logreg"},
    "digits-tree": {"dataset": "digits", "arch": "tree", "max_depth": 10},
    "cancer-tree": {"dataset": "breast-cancer", "arch": "tree", "max_depth": 10},
}


def attack(victim, strategy, output=None, seed: int = 0, node_ids: bool = True) -> dict:
    from mea.extraction.base import ModelClass, QuerySpace
    from mea.extraction.metrics import fidelity
    from mea.oracle import VictimOracle
    from mea.tabular.models import Tree
    from mea.tabular.oracle import NodeOracle

    if isinstance(victim.model, Tree) and node_ids:
        oracle = NodeOracle(victim.model, output)
    else:
        oracle = VictimOracle(victim.model, output)
    started = time.perf_counter()
    result = strategy.run(
        oracle, QuerySpace(victim.signature), ModelClass.of(victim.model), np.random.default_rng(seed)
    )
    wall = time.perf_counter() - started
    close = fidelity(victim.model, result.clone, victim.test_set().images)
    return {
        "queries": result.queries,
        "compute_s": result.compute_s,
        "wall_s": wall,
        **close.to_dict(),
        "details": {k: v for k, v in result.details.items() if isinstance(v, int | float | str)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the MLP rows (its fit is nonconvex)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tramer.json")
    args = parser.parse_args()
    from mea import threads

    threads.apply(args.threads)
    provenance = Provenance()
    from mea.extraction.equation_solving import EquationSolving
    from mea.extraction.lowd_meek import LowdMeek
    from mea.extraction.path_finding import PathFinding
    from mea.extraction.retraining import AdaptiveRetraining, LineSearchRetraining, UniformRetraining
    from mea.models import fingerprint
    from mea.oracle import Label, Rounded
    from mea.tabular.train import ClassicConfig, train_classic
    from mea.victim import load_victim

    record: dict = {"victims": {}, "equation_solving": [], "path_finding": [], "lowd_meek": [], "label_only": []}
    record["rounding"] = []
    with tempfile.TemporaryDirectory(prefix="mea-tramer-") as scratch:
        victims = {}
        for name, settings in VICTIMS.items():
            metrics = train_classic(ClassicConfig(**settings), Path(scratch) / name)
            victims[name] = load_victim(Path(scratch) / name)
            model = victims[name].model
            record["victims"][name] = {
                **settings,
                "accuracy": metrics["victim"]["accuracy"],
                "signature": victims[name].signature.describe(),
                "unknowns": getattr(model, "unknowns", None),
                "leaves": getattr(model, "leaf_count", None),
                "depth": _depth(model) if hasattr(model, "leaf_count") else None,
                "weights_sha256": fingerprint(Path(scratch) / name / "model.safetensors")[:12],
            }
            print(name, record["victims"][name], flush=True)

        def row(table: str, victim: str, label: str, result: dict, **extra) -> None:
            record[table].append({"victim": victim, "setting": label, **extra, **result})
            # Written after every row: a run cut short leaves what it measured (marked partial).
            args.out.write_text(json.dumps({**record, "partial": True, "provenance": provenance.record()}, indent=2))
            print(
                table,
                victim,
                label,
                extra,
                {k: result[k] for k in ("queries", "test_agreement", "uniform_agreement")},
                flush=True,
            )

        for name, budgets in (
            ("cancer-logreg", (None,)),
            ("digits-softmax", (None, 325, 650)),
            ("digits-ovr", (None, 325, 650)),
        ):
            for budget in budgets:
                row(
                    "equation_solving",
                    name,
                    "needed" if budget is None else str(budget),
                    attack(victims[name], EquationSolving(queries=budget)),
                )
        for seed in range(args.seeds):
            for budget in (1510, 3020):
                row(
                    "equation_solving",
                    "digits-mlp",
                    str(budget),
                    attack(victims["digits-mlp"], EquationSolving(queries=budget), seed=seed),
                    seed=seed,
                )

        for name in ("digits-tree", "cancer-tree"):
            row("path_finding", name, "node ids", attack(victims[name], PathFinding()))
            row(
                "path_finding",
                name,
                "node ids, incomplete queries",
                attack(victims[name], PathFinding(incomplete=True)),
            )
            row("path_finding", name, "answers as ids", attack(victims[name], PathFinding(), node_ids=False))

        row(
            "lowd_meek",
            "cancer-logreg",
            "epsilon 1e-7",
            attack(victims["cancer-logreg"], LowdMeek(epsilon=1e-7), Label()),
        )

        for decimals in range(6):
            row(
                "rounding",
                "digits-softmax",
                f"rounded:{decimals}",
                attack(victims["digits-softmax"], EquationSolving(queries=650), Rounded(decimals)),
                decimals=decimals,
            )
            row(
                "rounding",
                "digits-mlp",
                f"rounded:{decimals}",
                attack(victims["digits-mlp"], EquationSolving(queries=3020), Rounded(decimals)),
                decimals=decimals,
            )

        # The MLP's 100x row (151,000 labels, ten refits for adaptive) is left out: hours on 2 cores.
        for name, multiples in (("digits-softmax", (1, 10, 100)), ("digits-mlp", (1, 10))):
            unknowns = record["victims"][name]["unknowns"]
            for multiple in multiples:
                for kind in (UniformRetraining, LineSearchRetraining, AdaptiveRetraining):
                    strategy = kind(queries=multiple * unknowns)
                    row("label_only", name, strategy.name, attack(victims[name], strategy, Label()), multiple=multiple)
    record["provenance"] = provenance.record()
    args.out.write_text(json.dumps({**record, "partial": False}, indent=2) + "\n")
    print(f"wrote {args.out}")


def _depth(tree) -> int:
    left, right = tree.left.tolist(), tree.right.tolist()
    depth, frontier = 0, [0]
    while frontier:
        frontier = [c for n in frontier for c in (left[n], right[n]) if c >= 0]
        depth += bool(frontier)
    return depth


if __name__ == "__main__":
    main()
