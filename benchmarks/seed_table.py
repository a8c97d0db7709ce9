"""The study's table, rerun as the README says: `mea sweep --preset seed-table`, one trial at a time.

Runs `mea sweep --preset seed-table --victim DIR --out TMP --workers 1` (one trial at a time with
every core, as the study's times were taken) and copies the table it writes (seed_table.json)
into benchmarks/results/seed_table.json with the victim's fingerprint and the machine's state.

    python -m benchmarks.seed_table --victim runs/victim
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.provenance import RESULTS, Provenance
from mea.victim import load_victim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=RESULTS / "seed_table.json")
    args = parser.parse_args()
    provenance = Provenance()
    victim = load_victim(args.victim)
    with tempfile.TemporaryDirectory(prefix="mea-seed-table-") as scratch:
        command = ["sweep", "--preset", "seed-table", "--victim", str(args.victim), "--out", f"{scratch}/table"]
        subprocess.run([sys.executable, "-m", "mea", *command, "--workers", "1", "-q"], check=True)
        rows = json.loads(Path(scratch, "table", "seed_table.json").read_text())
    record = {
        "provenance": provenance.record(),
        "victim_fingerprint": victim.fingerprint,
        "sweep_command": f"mea sweep --preset seed-table --victim {args.victim} --out runs/seed-table --workers 1",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for row in rows:
        print(
            f"run {row['study']['run']}: {row['clone']['accuracy']:.2%} in {row['time_s']['train']:.1f} s "
            f"(study: {row['study']['accuracy']:.2f}% in {row['study']['time_s']:.1f} s)"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
