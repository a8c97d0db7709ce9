"""The test suite's wall time alone and on a busy machine.

Runs the README's test command (`pytest -q`, CI=true, in this checkout) twice: once alone, once
beside a CPU-bound neighbour, the default attack (`mea attack --victim VICTIM`, 60,000 queries)
started over and over in its own process for as long as the suite runs.  Both runs must pass:
the suite has no wall-clock limit a busy machine can hit.  Records each run's wall time, its
pass/fail counts, how many neighbour attacks finished and the load averages, into
benchmarks/results/suite_time.json (README block `suite-time`).

    python -m benchmarks.suite_time --victim runs/victim

Run it on an otherwise idle machine: the "alone" figure is only alone if nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.provenance import RESULTS, ROOT, Provenance, load_average

_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def run_suite(extra: list[str]) -> dict:
    """`pytest -q` in a fresh process, as CI runs it; its wall time and outcome counts."""
    env = {**os.environ, "CI": "true"}
    load_before = load_average()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - start
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in _SUMMARY.findall(last)}
    return {
        "wall_s": wall,
        "exit_code": done.returncode,
        "summary": last,
        "counts": counts,
        "load_average_1min": {"start": load_before, "end": load_average()},
    }


class Neighbour:
    """The default attack, restarted in a loop in its own process until stopped."""

    def __init__(self, victim: Path, scratch: Path) -> None:
        self.victim, self.scratch = victim, scratch
        self.finished = 0
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._process: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        command = [sys.executable, "-m", "mea", "attack", "--victim", str(self.victim)]
        while not self._stop.is_set():
            started = time.perf_counter()
            out = self.scratch / "attack"
            self._process = subprocess.Popen(
                [*command, "--out", str(out), "--force", "-q"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "CI": "true"},
            )
            if self._process.wait() == 0:
                self.finished += 1
                self.seconds.append(time.perf_counter() - started)

    def __enter__(self) -> Neighbour:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True, help="the neighbour attack's victim")
    parser.add_argument("--out", type=Path, default=RESULTS / "suite_time.json")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. a subset, to try it out)")
    args = parser.parse_args()
    provenance = Provenance()
    print("the suite alone ...", flush=True)
    alone = run_suite(args.pytest_args)
    print(f"  {alone['summary']} ({alone['wall_s']:.0f} s)", flush=True)
    print("the suite beside the default attack, restarted in a loop ...", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="mea-suite-neighbour-") as scratch,
        Neighbour(args.victim.resolve(), Path(scratch)) as neighbour,
    ):
        busy = run_suite(args.pytest_args)
    busy["neighbour"] = {
        "command": f"mea attack --victim {args.victim} (60,000 queries), restarted in a loop",
        "attacks_finished": neighbour.finished,
        "attack_wall_s": neighbour.seconds,
    }
    print(f"  {busy['summary']} ({busy['wall_s']:.0f} s; {neighbour.finished} neighbour attacks finished)")
    record = {"provenance": provenance.record(), "alone": alone, "busy": busy}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {args.out}")
    if alone["exit_code"] or busy["exit_code"]:
        sys.exit("the suite failed in at least one run; see the summaries above")


if __name__ == "__main__":
    main()
