"""Should `mea` make OpenMP's waiting threads sleep rather than spin?  Measured, not assumed.

torch's CPU kernels run on an OpenMP pool whose idle threads spin for a while before they sleep
(libgomp's default); `OMP_WAIT_POLICY=PASSIVE` makes them sleep at once, ACTIVE makes them spin.
Spinning helps one job alone (a woken thread starts at once) and hurts jobs that share cores (a
spinning thread burns the time a working one needs).  For each policy this runs the default
attack (`mea attack`, 60,000 queries) alone, as a pair with default threads, and as a pair that
each take every core (the oversubscribed case), through benchmarks.thread_contention.

    python -m benchmarks.omp_wait_policy --victim runs/victim [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.provenance import RESULTS, Provenance
from benchmarks.thread_contention import measure

POLICIES = {
    "default (libgomp spins, then sleeps)": {},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
}
SETTINGS = ("alone", "pair, default threads", "pair, every core each (before)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, default=Path("runs/victim"))
    parser.add_argument("--repeat", type=int, default=1, help="runs of each setting (the median is reported)")
    args = parser.parse_args()
    provenance = Provenance()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for policy, env in POLICIES.items():
            for setting in SETTINGS:
                runs = [
                    run
                    for _ in range(args.repeat)
                    for run in measure("attack", setting, args.victim, Path(scratch), env)
                ]
                train = statistics.median(run["train_s"] for run in runs)
                rows.append({"policy": policy, "setting": setting, "runs": runs, "train_s": train})
                print(f"{policy:38s} {setting:32s} train {train:6.1f} s", flush=True)
    out = RESULTS / "omp_wait_policy.json"
    out.write_text(json.dumps({"provenance": provenance.record(), "rows": rows}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
