"""How long sweeps take: one 20-trial sweep on the local and the Ray backend, a rerun that finds
everything done, and the README's budget sweep (docs/sweeps/budgets.yaml) with its report figure.

The 20-trial sweep is the test suite's (tests/test_sweep.py): MLP clones, 300 and 400 queries,
undefended and defended (target FPR 0.05), seeds 0-4, one short epoch.  Each backend runs it on
one worker of one torch thread, through `mea --threads 1 sweep` as a user would; the records of the
two backends must agree apart from timings.  The budget sweep's report figure is copied to
docs/sweep_accuracy_vs_budget.png.

    python -m benchmarks.sweep_timings --victim runs/victim --defense runs/defense [--no-budgets] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.provenance import RESULTS, ROOT, Provenance, load_average

TWENTY = {
    "base": {"clone_arch": "mlp", "queries": 300, "train": {"epochs": 1, "min_steps": 20}},
    "grid": {"queries": [300, 400], "defense": [None, {"target_fpr": 0.05}], "seed": list(range(5))},
}
VOLATILE = ("time_s", "run")  # where and when a trial ran: all that may differ between backends


def timed_mea(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mea", *args, "-q"], check=True)
    return time.perf_counter() - start


def records(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return {row["hash"]: {k: v for k, v in row.items() if k not in VOLATILE} for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--defense", type=Path, required=True)
    parser.add_argument("--no-budgets", action="store_true", help="skip the 36-trial budget sweep")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray backend")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep_timings.json")
    args = parser.parse_args()
    provenance = Provenance()
    record: dict = {}
    with tempfile.TemporaryDirectory(prefix="mea-sweep-timings-") as scratch:
        config = Path(scratch, "twenty.yaml")
        body = {"victim": str(args.victim.resolve()), "defense_dir": str(args.defense.resolve()), **TWENTY}
        config.write_text(yaml.safe_dump(body, sort_keys=False))
        backends = ("local",) if args.no_ray else ("local", "ray")
        twenty: dict = {"trials": 20, "workers": 1, "config": TWENTY}
        for backend in backends:
            out = Path(scratch, backend)
            load = load_average()
            # One thread per trial on both backends (a Ray task of one CPU gets one): float sums depend
            # on the thread count, and the records are compared below.
            seconds = timed_mea(
                "--threads", "1", "sweep", str(config), "--out", str(out), "--backend", backend, "--workers", "1"
            )
            twenty[backend] = {"wall_s": seconds, "load_average_1min": load}
            print(f"20-trial sweep, {backend} backend, one worker: {seconds:.1f} s", flush=True)
        twenty["rerun_local_wall_s"] = timed_mea("sweep", str(config), "--out", str(Path(scratch, "local")))
        print(f"rerun (nothing left to run): {twenty['rerun_local_wall_s']:.1f} s", flush=True)
        if not args.no_ray:
            twenty["identical_records"] = records(Path(scratch, "local")) == records(Path(scratch, "ray"))
        record["twenty"] = twenty
        if not args.no_budgets:
            budgets = ROOT / "docs" / "sweeps" / "budgets.yaml"
            out = Path(scratch, "budgets")
            load = load_average()
            seconds = timed_mea(
                "sweep",
                str(budgets),
                "--victim",
                str(args.victim),
                "--defense",
                str(args.defense),
                "--out",
                str(out),
                "--workers",
                "1",
            )
            spec = yaml.safe_load(budgets.read_text())
            trials = len((out / "results.jsonl").read_text().splitlines())
            report = Path(scratch, "report")
            subprocess.run([sys.executable, "-m", "mea", "report", str(out), "--out", str(report)], check=True)
            shutil.copyfile(report / "accuracy_vs_budget.png", ROOT / "docs" / "sweep_accuracy_vs_budget.png")
            record["budgets"] = {
                "config": "docs/sweeps/budgets.yaml",
                "base": spec["base"],
                "trials": trials,
                "workers": 1,
                "wall_s": seconds,
                "load_average_1min": load,
            }
            print(f"budget sweep: {trials} trials in {seconds:.1f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"provenance": provenance.record(), **record}, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
