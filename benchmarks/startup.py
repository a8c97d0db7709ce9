"""Start-up time of the `mea` command line: `mea --help` and an error path, in fresh processes.

Each command runs `--repeat` times as a new Python process (`python -m mea ...`, the same virtual
environment), for the working tree and for an earlier git revision checked out into a temporary
`git worktree`; PYTHONPATH points each run at its tree's `src`, so the two differ only in the code.
A bare `python -c pass` gives the interpreter's own start-up for scale.  Reports the median and the
spread (min, quartiles, max) of the wall time per command and writes benchmarks/results/startup.json.
The machine's load average before and after is recorded: start-up time on a busy machine says
little about an idle one.

    python -m benchmarks.startup --before 7180e0b --repeat 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "startup.json"


def commands(scratch: Path) -> dict[str, list[str]]:
    """What is timed: the name in the results, and the arguments after `python`."""
    return {
        "python -c pass": ["-c", "pass"],
        "mea --help": ["-m", "mea", "--help"],
        "mea attack (missing victim)": [
            "-m",
            "mea",
            "attack",
            "--victim",
            str(scratch / "no-such-victim"),
            "--out",
            str(scratch / "run"),
        ],
    }


def _environment(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "CI": "true"}


def check_tree(src: Path) -> None:
    """Make sure `python -m mea` with this PYTHONPATH runs this tree's code, not the installed one."""
    found = subprocess.run(
        [sys.executable, "-c", "import mea; print(mea.__file__)"],
        capture_output=True,
        text=True,
        env=_environment(src),
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"PYTHONPATH={src} still imports mea from {found}")


def time_once(args: list[str], src: Path) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, env=_environment(src), check=False)
    return time.perf_counter() - start, done.returncode


def summary(samples: list[float]) -> dict:
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {
        "median_s": round(statistics.median(samples), 4),
        "min_s": round(min(samples), 4),
        "q1_s": round(quartiles[0], 4),
        "q3_s": round(quartiles[2], 4),
        "max_s": round(max(samples), 4),
        "samples_s": [round(s, 4) for s in samples],
    }


def measure(src: Path, repeat: int, scratch: Path) -> dict:
    check_tree(src)
    result = {}
    for name, args in commands(scratch).items():
        time_once(args, src)  # warm the file cache: every run after it reads the same pages
        samples, codes = [], set()
        for _ in range(repeat):
            seconds, code = time_once(args, src)
            samples.append(seconds)
            codes.add(code)
        result[name] = {**summary(samples), "exit_codes": sorted(codes)}
        print(
            f"  {name:32s} median {result[name]['median_s']:.3f} s  (min {result[name]['min_s']:.3f}, "
            f"max {result[name]['max_s']:.3f}; exit {sorted(codes)})",
            flush=True,
        )
    return result


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="7180e0b", help="git revision to compare with [default: 7180e0b]")
    parser.add_argument("--repeat", type=int, default=10, help="runs per command and tree [default: 10]")
    parser.add_argument(
        "--before-repeat", type=int, default=None, help="runs per command for --before [default: --repeat]"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file [default: {RESULTS}]")
    args = parser.parse_args()

    load_before = os.getloadavg()
    trees = {}
    with tempfile.TemporaryDirectory(prefix="mea-startup-") as tmp:
        scratch = Path(tmp)
        print(f"working tree ({REPO}):", flush=True)
        trees["working tree"] = {"revision": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain"))}
        trees["working tree"]["commands"] = measure(REPO / "src", args.repeat, scratch)
        worktree = scratch / "before"
        _git("worktree", "add", "--detach", str(worktree), args.before)
        try:
            print(f"revision {args.before} (git worktree {worktree}):", flush=True)
            trees[args.before] = {"revision": _git("rev-parse", args.before), "dirty": False}
            trees[args.before]["commands"] = measure(worktree / "src", args.before_repeat or args.repeat, scratch)
        finally:
            _git("worktree", "remove", "--force", str(worktree))
    load_after = os.getloadavg()

    now, before = trees["working tree"]["commands"]["mea --help"], trees[args.before]["commands"]["mea --help"]
    payload = {
        "benchmark": "startup",
        "command": " ".join(["python -m benchmarks.startup", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        },
        "note": "wall time of fresh processes; compare trees within one run (same machine, same load)",
        "trees": trees,
        "mea_help_speedup": round(before["median_s"] / now["median_s"], 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(
        f"mea --help: {before['median_s']:.3f} s at {args.before} -> {now['median_s']:.3f} s now "
        f"(load average {load_before[0]:.2f} before, {load_after[0]:.2f} after); written to {args.out}"
    )


if __name__ == "__main__":
    main()
