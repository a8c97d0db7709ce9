"""Tramèr et al. 2016 reproduced: equation-solving, path-finding, Lowd-Meek and label-only
retraining against mea's classic-ML victims, beside the paper's figures.

    python -m benchmarks.tramer [--threads 1] [--seeds 2] [--fe-seeds 5] [--sections equation,trees,...]

Trains its victims with `mea.tabular.train` (scikit-learn; digits softmax, ovr, a 20-unit tanh and
a 20-unit ReLU MLP, breast-cancer logreg, trees on digits, breast-cancer and a diabetes CSV, MNIST
softmax on pixels) into a scratch directory, attacks each in process through the black-box oracle
(`mea.extraction`), the ReLU MLP beside IBM ART's functionally-equivalent extraction, the digits and
MNIST softmax regressions behind `mea serve --defense`, over HTTP (MNIST's clones then put to `mea
verify`: benchmarks.tramer_beyond), and writes benchmarks/results/tramer.json.
Every figure is agreement on the victim's test inputs and on
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
    "digits-relu": {"dataset": "digits", "arch": "mlp", "hidden": 20, "activation": "relu"},
    "cancer-logreg": {"dataset": "breast-cancer", "arch": "logreg"},
    "digits-tree": {"dataset": "digits", "arch": "tree", "max_depth": 10},
    "cancer-tree": {"dataset": "breast-cancer", "arch": "tree", "max_depth": 10},
    # scikit-learn's diabetes table (442 patients, 10 features), its disease progression cut into
    # terciles: a tabular task whose tree grows past depth 10 (breast-cancer's is pure at depth 5).
    "diabetes-tree": {"dataset": "csv:diabetes.csv", "target": "progression", "arch": "tree", "max_depth": 12},
    "mnist-softmax": {"dataset": "mnist", "arch": "softmax"},
}
SECTIONS = ("equation", "functionally-equivalent", "trees", "lowd-meek", "rounding", "label-only", "defended")


def write_diabetes_csv(path: Path) -> Path:
    """scikit-learn's bundled diabetes data as a CSV, the target's terciles as classes low/medium/high."""
    import csv

    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    classes = np.digitize(bunch.target, np.quantile(bunch.target, [1 / 3, 2 / 3]))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*bunch.feature_names, "progression"])
        for row, level in zip(bunch.data, classes, strict=True):
            writer.writerow([f"{v:g}" for v in row] + [("low", "medium", "high")[level]])
    return path


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
    parser.add_argument("--fe-seeds", type=int, default=5, help="seeds of the functionally-equivalent rows")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "tramer.json")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if not sections <= set(SECTIONS):
        parser.error(f"unknown sections {sorted(sections - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
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
    record |= {"rounding": [], "functionally_equivalent": [], "defended": {}, "sections": sorted(sections)}
    with tempfile.TemporaryDirectory(prefix="mea-tramer-") as scratch:
        victims = {}
        for name, settings in VICTIMS.items():
            if name == "mnist-softmax" and "defended" not in sections:
                continue
            if settings["dataset"].startswith("csv:"):
                csv_file = write_diabetes_csv(Path(scratch) / settings["dataset"][4:])
                settings = {**settings, "dataset": f"csv:{csv_file}"}
            metrics = train_classic(ClassicConfig(**settings), Path(scratch) / name)
            victims[name] = load_victim(Path(scratch) / name)
            model = victims[name].model
            record["victims"][name] = {
                **settings,
                "dataset": VICTIMS[name]["dataset"],
                "train_s": metrics["time_s"]["train"],
                "accuracy": metrics["victim"]["accuracy"],
                "signature": victims[name].signature.describe(),
                "unknowns": getattr(model, "unknowns", None),
                "leaves": getattr(model, "leaf_count", None),
                "depth": _depth(model) if hasattr(model, "leaf_count") else None,
                "weights_sha256": fingerprint(Path(scratch) / name / "model.safetensors")[:12],
            }
            print(name, record["victims"][name], flush=True)

        def save() -> None:
            # Written after every row: a run cut short leaves what it measured (marked partial).
            args.out.write_text(json.dumps({**record, "partial": True, "provenance": provenance.record()}, indent=2))

        def row(table: str, victim: str, label: str, result: dict, **extra) -> None:
            record[table].append({"victim": victim, "setting": label, **extra, **result})
            save()
            print(
                table,
                victim,
                label,
                extra,
                {k: result[k] for k in ("queries", "test_agreement", "uniform_agreement")},
                flush=True,
            )

        if "equation" in sections:
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

        if "functionally-equivalent" in sections:
            from benchmarks.tramer_beyond import art_functionally_equivalent, mea_functionally_equivalent

            relu = victims["digits-relu"]
            runs = [lambda seed=seed: mea_functionally_equivalent(relu, seed) for seed in range(args.fe_seeds)]
            runs.append(lambda: mea_functionally_equivalent(relu, 0, polish=False))
            runs += [lambda seed=seed: art_functionally_equivalent(relu, seed, True) for seed in range(args.fe_seeds)]
            runs.append(lambda: art_functionally_equivalent(relu, 0, False))
            for run in runs:
                result = run()
                record["functionally_equivalent"].append({"victim": "digits-relu", **result})
                save()
                print("functionally-equivalent", {k: result.get(k) for k in ("attack", "seed", "status", "queries",
                      "test_agreement", "max_logit_error")}, flush=True)  # fmt: skip

        if "trees" in sections:
            for name in ("digits-tree", "cancer-tree", "diabetes-tree"):
                row("path_finding", name, "node ids", attack(victims[name], PathFinding()))
                row(
                    "path_finding",
                    name,
                    "node ids, incomplete queries",
                    attack(victims[name], PathFinding(incomplete=True)),
                )
                row("path_finding", name, "answers as ids", attack(victims[name], PathFinding(), node_ids=False))

        if "lowd-meek" in sections:
            row(
                "lowd_meek",
                "cancer-logreg",
                "epsilon 1e-7",
                attack(victims["cancer-logreg"], LowdMeek(epsilon=1e-7), Label()),
            )

        if "rounding" in sections:
            for decimals in range(6):
                for name, queries in (("digits-softmax", 650), ("digits-mlp", 3020)):
                    result = attack(victims[name], EquationSolving(queries=queries), Rounded(decimals))
                    row("rounding", name, f"rounded:{decimals}", result, decimals=decimals)

        if "label-only" in sections:
            for name in ("digits-softmax", "digits-mlp"):
                unknowns = record["victims"][name]["unknowns"]
                for multiple in (1, 10, 100):
                    for kind in (UniformRetraining, LineSearchRetraining, AdaptiveRetraining):
                        strategy = kind(queries=multiple * unknowns)
                        result = attack(victims[name], strategy, Label())
                        row("label_only", name, strategy.name, result, multiple=multiple)

        if "defended" in sections:
            from benchmarks.tramer_beyond import DIGITS_RUNS, MNIST_RUNS, service_rows

            root = Path(scratch)
            record["defended"]["digits"] = service_rows(root / "digits-softmax", root, ("digits",), DIGITS_RUNS)
            save()
            record["defended"]["mnist"] = service_rows(root / "mnist-softmax", root, ("mnist-train",), MNIST_RUNS)
            save()
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
