"""The defense evaluation over several draws of the noise key and the attacker's seed.

`mea defend fit` draws the defense's noise key at random, and every answer to a flagged query is a
function of that key: one evaluation is one draw, and a Fashion-MNIST clone through the defense
moves by several points from one key to the next.  This runs `mea defend eval`'s own
evaluation (`mea.experiments.evaluation.evaluate_defense`) once per draw d, with the fitted
detector of --defense, the key SHA-256("mea-benchmark-key/d") in place of the directory's key, and
the attacker's seed d (its query order, its clone's initialisation, the noise pools), and writes
every draw and their mean and spread to benchmarks/results/defense_keys.json.  It adds the
severity-ramp comparison (the ramp of `DetectorConfig`, each value over the same draws) and the
detector's ROC (docs/roc.png) and trade-off (docs/tradeoff.png, mean and sample standard deviation
over the draws).  The keys here are derived, not secret, so that the draws can be rerun; a deployed
defense keeps `mea defend fit`'s random key.

    python -m benchmarks.defense_keys --victim runs/victim --defense runs/defense [--draws 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.provenance import RESULTS, ROOT, Provenance
from mea.config import AttackConfig, EvaluationConfig
from mea.data import load
from mea.defenses.detector import OodDetector
from mea.defenses.gate import ClientGate
from mea.defenses.prada import PradaConfig
from mea.defenses.store import Defense, load_defense
from mea.experiments.attack import run_attack
from mea.experiments.evaluation import evaluate_defense
from mea.plots import line_plot
from mea.victim import Victim, load_victim

RAMPS = (10.0,)  # DetectorConfig.severity_ramp values compared with the fitted detector's (4 by default)


def draw_key(draw: int) -> bytes:
    """The noise key of draw `draw`: derived so the draw can be rerun (a deployment's key is random)."""
    return hashlib.sha256(f"mea-benchmark-key/{draw}".encode()).digest()


def with_ramp(detector: OodDetector, ramp: float, calibration_scores: torch.Tensor) -> OodDetector:
    """The same detector and threshold, with severity saturating at target_fpr / ramp instead."""
    config = dataclasses.replace(detector.config, severity_ramp=ramp)
    base = OodDetector(config, detector.gaussians, detector.standardisers, detector.threshold, detector.saturation)
    return base.calibrated(calibration_scores, detector.config.target_fpr)


def ramp_study(victim: Victim, defense: Defense, config: EvaluationConfig, source: str, result: dict) -> list[dict]:
    """Benign accuracy and the `source` clone through the defense, for the fitted detector's severity
    ramp (read from the evaluation's `result`) and each other ramp in RAMPS."""
    mnist_train = load("mnist", "train")
    calibration = mnist_train.subset(victim.splits.calibration)
    scores = defense.detector.score_images(victim.model, calibration.images)
    test = load("mnist", "test")
    rows = [
        {
            "severity_ramp": defense.detector.config.severity_ramp,
            "benign_accuracy": result["benign_accuracy"]["defended"],
            f"clone_accuracy[{source}]": result["clone_accuracy"][source]["defended"],
        }
    ]
    for ramp in RAMPS:
        detector = with_ramp(defense.detector, ramp, scores)
        answers, _ = defense.oracle(victim, detector=detector).answer(test.images)
        attack = AttackConfig(queries=config.queries, pool=source, train=config.train, seed=config.seed)
        oracle = defense.oracle(victim, budget=config.queries, detector=detector)
        metrics = run_attack(attack, victim, oracle=oracle, progress=False)
        rows.append(
            {
                "severity_ramp": ramp,
                "benign_accuracy": float((answers.argmax(1) == test.labels).float().mean()),
                f"clone_accuracy[{source}]": metrics["clone"]["accuracy"],
            }
        )
        print(f"  ramp {ramp:g}: benign {rows[-1]['benign_accuracy']:.2%}, clone {metrics['clone']['accuracy']:.2%}")
    return rows


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (n - 1), minimum and maximum of one figure over the draws."""
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarise(draws: list[dict]) -> dict:
    """Every numeric leaf that the draws share, as a spread over them (same nesting)."""

    def walk(items: list) -> object:
        first = items[0]
        if any(item is None or isinstance(item, bool | str) for item in items):
            return first if all(item == first for item in items) else None
        if isinstance(first, int | float):
            return spread([float(item) for item in items])
        if isinstance(first, dict):
            return {k: walk([item[k] for item in items]) for k in first if all(k in item for item in items)}
        if isinstance(first, list) and all(isinstance(item, list) and len(item) == len(first) for item in items):
            return [walk([item[i] for item in items]) for i in range(len(first))]
        return None

    return walk(draws)  # type: ignore[return-value]


def benign_streams(victim: Victim, defense: Defense, batch: int = 100) -> dict:
    """PRADA's statistic on benign clients: the calibration split in streams of 1,000 images and MNIST
    test in streams of 3,000 and whole, each sent in order through a fresh service gate."""
    calibration = load("mnist", "train").subset(victim.splits.calibration).images
    test = load("mnist", "test").images
    streams = {f"calibration {i * 1000}-{(i + 1) * 1000}": calibration[i * 1000 : (i + 1) * 1000] for i in range(5)}
    streams |= {f"MNIST test {i * 3000}-{(i + 1) * 3000}": test[i * 3000 : (i + 1) * 3000] for i in range(3)}
    streams["MNIST test, all"] = test
    rows = []
    for name, images in streams.items():
        gate = ClientGate(defense.oracle(victim))
        for start in range(0, len(images), batch):
            _, _, state = gate.answer(name, images[start : start + batch])
        rows.append(
            {
                "name": name,
                "queries": state.queries,
                "statistic": state.statistic,
                "prada_flagged_at": state.prada_flagged_at,
            }
        )
    return {
        "description": "the calibration split in 5 streams of 1,000, MNIST test in 3 of 3,000 and whole, in order",
        "streams": rows,
    }


def draw_log(path: Path, identity: dict) -> dict[int, dict]:
    """Finished draws of this configuration (victim, detector, queries) by number; a torn line is skipped."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("identity") == identity:
                done[row["draw"]] = row
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--defense", type=Path, required=True, help="a `mea defend fit` directory (its detector)")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument(
        "--sweep-draws", type=int, default=3, help="draws that also run the threshold sweep and the policies"
    )
    parser.add_argument("--queries", type=int, default=EvaluationConfig().queries)
    parser.add_argument(
        "--only-draws", type=int, nargs="*", default=None, help="run only these draws (several processes share the log)"
    )
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=RESULTS / "defense_keys.json")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs", help="where roc.png and tradeoff.png go")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    provenance = Provenance()
    victim = load_victim(args.victim)
    fitted = load_defense(args.defense, victim)
    sweep_source = "fashion-mnist"
    # Each finished draw is appended here, so an interrupted run resumes where it stopped.
    log = args.out.with_suffix(".jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    identity = {
        "victim_fingerprint": victim.fingerprint,
        "threshold": fitted.detector.threshold,
        "queries": args.queries,
        "threads": args.threads,
    }
    with tempfile.TemporaryDirectory(prefix="mea-defense-keys-") as scratch:
        for draw in range(args.draws):
            sweeps = draw < args.sweep_draws
            done = draw_log(log, identity)  # re-read: another process may have finished this draw
            if args.only_draws is not None and draw not in args.only_draws:
                continue
            if draw in done and (done[draw]["tradeoff"] or not sweeps):
                continue
            defense = dataclasses.replace(fitted, secret=draw_key(draw))
            # The cost ladder is `mea defend eval`'s own business: here only the full budget, per draw.
            config = EvaluationConfig(
                queries=args.queries,
                cost_budgets=(),
                sweep_sources=(sweep_source,),
                fpr_sweep=EvaluationConfig().fpr_sweep if sweeps else (),
                policies=EvaluationConfig().policies if sweeps else (),
                seed=draw,
            )
            print(f"draw {draw}: evaluating ...", flush=True)
            result = evaluate_defense(victim, defense, config, Path(scratch, str(draw)), progress=False)
            result.pop("attack_cost")  # one rung only: the clone accuracy above says it
            result["config"].pop("command", None)
            result["severity_ramps"] = ramp_study(victim, defense, config, sweep_source, result)
            row = {"identity": identity, "draw": draw, "seed": draw, **result}
            with log.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # one whole line at a time, whichever process writes
                handle.write(json.dumps(row) + "\n")
            print(
                f"draw {draw}: benign {result['benign_accuracy']['defended']:.2%}, "
                + ", ".join(
                    f"{source} {acc['undefended']:.2%} -> {acc['defended']:.2%}"
                    for source, acc in result["clone_accuracy"].items()
                ),
                flush=True,
            )
            if draw == 0:  # the detector's ROC does not depend on the key
                args.figures.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(scratch, "0", "roc.png"), args.figures / "roc.png")
    done = draw_log(log, identity)
    missing = [d for d in range(args.draws) if d not in done]
    if missing:
        print(f"draws {missing} are not finished yet; the summary waits for them")
        return
    draws = [{k: v for k, v in done[d].items() if k != "identity"} for d in range(args.draws)]
    summary = summarise([{k: v for k, v in d.items() if k not in ("tradeoff", "policies")} for d in draws])
    swept = [d for d in draws if d["tradeoff"]]
    summary |= summarise([{"tradeoff": d["tradeoff"], "policies": d["policies"]} for d in swept])
    summary["sweep_draws"] = len(swept)
    tradeoff = summary["tradeoff"]
    line_plot(
        {
            sweep_source: (
                [100 * row["benign_accuracy"]["mean"] for row in tradeoff],
                [100 * row[f"clone_accuracy[{sweep_source}]"]["mean"] for row in tradeoff],
            )
        },
        xlabel="benign accuracy on MNIST test through the defense (%)",
        ylabel=f"clone accuracy on MNIST test (%), {args.queries:,} queries",
        title=f"Defense trade-off as the threshold sweeps (mean ± sd over {len(swept)} keys)",
        path=args.figures / "tradeoff.png",
        annotations=[f"{row['target_fpr']['mean']:g}" for row in tradeoff],
        spreads={sweep_source: [100 * row[f"clone_accuracy[{sweep_source}]"]["sd"] for row in tradeoff]},
    )
    print("benign streams through the service gate ...", flush=True)
    record = {
        "provenance": provenance.record(),
        "keying": "coarse",  # noise keyed on a coarse code of the image (mea.keying), not the exact pixels
        "victim_fingerprint": victim.fingerprint,
        "detector": fitted.detector.describe(),
        "policy": fitted.policy.spec,
        "prada": dataclasses.asdict(PradaConfig()),
        "benign_streams": benign_streams(victim, dataclasses.replace(fitted, secret=draw_key(0))),
        "draws_rule": "draw d: noise key SHA-256('mea-benchmark-key/d'), attacker seed d",
        "sd": "sample standard deviation (n - 1) over the draws",
        "draws": draws,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {args.out}, {args.figures / 'roc.png'} and {args.figures / 'tradeoff.png'}")


if __name__ == "__main__":
    main()
