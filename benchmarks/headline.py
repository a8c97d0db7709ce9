"""The README's headline figures: the victim, and the default attack on it, as a user runs them.

Runs the README's own commands in subprocesses (`mea attack --victim DIR --out TMP`, and with
`--train-victim` also `mea train-victim --out TMP`), then copies what their metrics.json files say
into benchmarks/results/headline.json with the victim's fingerprint and the machine's state.

    python -m benchmarks.headline --victim runs/victim [--train-victim]

Accuracy, F1, fidelity and agreement are deterministic for a given victim and thread count; the
times are not: take them with --train-victim on a machine nobody else is using (the victim trained
here must match --victim's fingerprint, which is checked and recorded).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.provenance import RESULTS, Provenance, load_average
from mea.victim import load_victim

ATTACK = ("attack",)  # the README's default attack: every option at its default


def mea(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mea", *args], check=True)


def summary(metrics: dict) -> dict:
    keep = ("accuracy", "precision", "recall", "f1", "fidelity", "uniform_agreement")
    return {key: metrics[key] for key in keep if key in metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True, help="the victim directory (mea train-victim)")
    parser.add_argument(
        "--train-victim", action="store_true", help="also time `mea train-victim` (into a scratch directory)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "headline.json")
    args = parser.parse_args()
    provenance = Provenance()
    victim = load_victim(args.victim)
    victim_metrics = json.loads((args.victim / "metrics.json").read_text())
    record: dict = {
        "victim": {
            "fingerprint": victim.fingerprint,
            **summary(victim_metrics["victim"]),
            "config": {
                k: victim_metrics["config"][k] for k in ("arch", "train", "seed") if k in victim_metrics["config"]
            },
            "train_images": victim_metrics["config"]["splits"]["victim_train"],
            "command": victim_metrics["config"]["command"],
        }
    }
    with tempfile.TemporaryDirectory(prefix="mea-headline-") as scratch:
        if args.train_victim:
            load_before = load_average()
            mea("train-victim", "--out", f"{scratch}/victim", "-q")
            trained = json.loads(Path(scratch, "victim", "metrics.json").read_text())
            record["victim_training"] = {
                "command": "mea train-victim --out DIR",
                "fingerprint": load_victim(Path(scratch, "victim")).fingerprint,
                "accuracy": trained["victim"]["accuracy"],
                "time_s": trained["time_s"],
                "load_average_1min": {"start": load_before, "end": load_average()},
            }
            record["victim_training"]["matches_victim"] = record["victim_training"]["fingerprint"] == victim.fingerprint
            if not record["victim_training"]["matches_victim"]:
                print("warning: the victim trained here differs from --victim (another thread count or torch?)")
        load_before = load_average()
        mea(*ATTACK, "--victim", str(args.victim), "--out", f"{scratch}/attack", "-q")
        attack = json.loads(Path(scratch, "attack", "metrics.json").read_text())
        record["attack"] = {
            "command": f"mea attack --victim {args.victim} --out runs/attack",
            "clone": summary(attack["clone"]),
            "victim": summary(attack["victim"]),
            "queries": attack["queries"],
            "time_s": attack["time_s"],
            "config": attack["config"],
            "load_average_1min": {"start": load_before, "end": load_average()},
        }
    if attack["victim"]["accuracy"] != record["victim"]["accuracy"]:
        raise SystemExit("error: the attack's victim metrics differ from the victim directory's; rerun both")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"provenance": provenance.record(), **record}, indent=2) + "\n")
    clone = record["attack"]["clone"]
    print(
        f"victim {record['victim']['accuracy']:.2%}; clone {clone['accuracy']:.2%} accuracy, "
        f"{clone['fidelity']:.2%} fidelity, {clone['uniform_agreement']:.2%} on noise; written to {args.out}"
    )


if __name__ == "__main__":
    main()
