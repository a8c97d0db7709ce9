"""How long CI takes: `.ci/run` on a fresh clone of this repository's HEAD, run as CI runs it.

Clones HEAD (the committed work only, as CI sees main) into a temporary directory and runs
`bash .ci/run` there with CI=true, timing the whole script and reading the phase stamps it prints
("CI: set up at N s") and pytest's summary line.  It installs everything from scratch into the
clone (its own .venv and .venv-mlserver), so it takes as long as CI does: about 11 minutes here (ci.json).

    python -m benchmarks.ci
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import RESULTS, ROOT, Provenance, load_average

STAMP = re.compile(r"^CI: (?P<phase>.+?) at (?P<seconds>\d+) s")
SUMMARY = re.compile(r"^=*\s*(?P<summary>\d+ passed.*?) in [\d.]+s")  # `pytest -q` prints it bare


def run_ci(clone: Path) -> dict:
    """Run .ci/run in `clone`, echoing its output, and return its time, exit status and stamps."""
    load = load_average()
    start = time.perf_counter()
    stamps: dict[str, int] = {}
    summary = None
    process = subprocess.Popen(
        ["bash", ".ci/run"],
        cwd=clone,
        env={**os.environ, "CI": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        if match := STAMP.match(line):
            stamps[match["phase"]] = int(match["seconds"])
        if match := SUMMARY.search(line):
            summary = match["summary"]
    returncode = process.wait()
    return {
        "command": "CI=true bash .ci/run",
        "wall_s": time.perf_counter() - start,
        "returncode": returncode,
        "stamps_s": stamps,
        "pytest": summary,
        "load_average_1min": {"start": load, "end": load_average()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "ci.json")
    args = parser.parse_args()
    provenance = Provenance()
    provenance.revision["dirty"] = False  # the clone holds HEAD alone, whatever this working tree has
    with tempfile.TemporaryDirectory(prefix="mea-ci-") as scratch:
        clone = Path(scratch) / "mea"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        record = run_ci(clone)
    if record["returncode"]:
        raise SystemExit(f"error: .ci/run exited {record['returncode']}; nothing written")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"provenance": provenance.record(), "ci": record}, indent=2) + "\n")
    print(f".ci/run: {record['wall_s']:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
