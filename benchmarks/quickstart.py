"""How long the README's quick start takes: `mea demo`, and the README's test command.

Times `mea demo --out TMP` (fetch from the cache, train the victim, steal it with 60,000 queries)
and, unless --no-tests, `ruff check . && pytest -q` (the README's test command once the data is
cached), each as a subprocess from the repository root.

    python -m benchmarks.quickstart [--no-tests]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import RESULTS, ROOT, Provenance, load_average


def timed(command: list[str]) -> dict:
    load = load_average()
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, check=False)
    return {
        "wall_s": time.perf_counter() - start,
        "returncode": completed.returncode,
        "load_average_1min": {"start": load, "end": load_average()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tests", action="store_true", help="time the demo only")
    parser.add_argument("--out", type=Path, default=RESULTS / "quickstart.json")
    args = parser.parse_args()
    provenance = Provenance()
    record: dict = {}
    with tempfile.TemporaryDirectory(prefix="mea-quickstart-") as scratch:
        record["demo"] = {
            "command": "mea demo",
            **timed([sys.executable, "-m", "mea", "demo", "--out", scratch + "/d"]),
        }
    print(f"mea demo: {record['demo']['wall_s']:.0f} s", flush=True)
    if not args.no_tests:
        record["tests"] = {
            "command": "ruff check . && pytest -q",
            "ruff": timed([sys.executable, "-m", "ruff", "check", "."]),
            "pytest": timed([sys.executable, "-m", "pytest", "-q"]),
        }
        print(f"pytest -q: {record['tests']['pytest']['wall_s']:.0f} s", flush=True)
    runs = {"demo": record["demo"], **{k: v for k, v in record.get("tests", {}).items() if isinstance(v, dict)}}
    failed = [name for name, run in runs.items() if run["returncode"]]
    if failed:
        raise SystemExit(f"error: {', '.join(failed)} failed; nothing written")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"provenance": provenance.record(), **record}, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
