"""A `mea` job alone and beside a second CPU-bound copy of itself: how much slower does it get?

Two jobs that each take every core as torch threads oversubscribe the machine; the ideal pair on a
fully used machine runs 2x slower than one job alone.  Each job is the real command line in a fresh
process (`mea attack` with the defaults, and `mea train-victim`), timed by its own record (the
clone's or victim's training time in metrics.json).  Three settings:

- `alone`: one job, default threads (`mea.threads.pick_threads`).
- `pair, default threads`: two copies started together, each picking its threads.
- `pair, staggered`: the second copy starts once the first is training (it sees a busy machine;
  the first does not).
- `pair, every core each (before)`: both with `mea --threads <usable cores>`, the default before
  threads were picked from the free cores.

    python -m benchmarks.thread_contention --victim runs/victim [--jobs attack victim]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import RESULTS, Provenance
from mea.threads import usable_cpus

SETTINGS = ("alone", "pair, default threads", "pair, staggered", "pair, every core each (before)")


def job_args(job: str, victim: Path, out: Path) -> list[str]:
    if job == "attack":
        return ["attack", "--victim", str(victim), "--out", str(out)]
    return ["train-victim", "--out", str(out)]


def start(
    job: str, victim: Path, out: Path, threads: int | None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    command = [sys.executable, "-m", "mea", *([] if threads is None else ["--threads", str(threads)])]
    environment = {**os.environ, "CI": "true", **(env or {})}  # CI: no progress bars
    environment.pop("MEA_THREADS", None)
    return subprocess.Popen(
        [*command, *job_args(job, victim, out)], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def finish(process: subprocess.Popen, out: Path) -> dict:
    _, stderr = process.communicate()
    if process.returncode:
        raise SystemExit(f"{process.args} failed: {stderr.decode()[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    times = metrics["time_s"]
    return {"train_s": times["train"], "total_s": times["total"], "threads": metrics["torch_threads"]}


def wait_until_training(process: subprocess.Popen, pause_s: float = 8.0) -> None:
    """Until the first job is past its start-up (its torch threads chosen and busy): a fixed pause,
    since a run writes nothing before it ends; 8 s covers imports and data loading here."""
    deadline = time.monotonic() + pause_s
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)


def measure(job: str, setting: str, victim: Path, scratch: Path, env: dict[str, str] | None = None) -> list[dict]:
    outs = [scratch / f"{job}-{setting.split(',')[0].replace(' ', '-')}-{i}-{time.monotonic_ns()}" for i in (0, 1)]
    if setting == "alone":
        return [finish(start(job, victim, outs[0], None, env), outs[0])]
    threads = usable_cpus() if "before" in setting else None
    first = start(job, victim, outs[0], threads, env)
    if setting == "pair, staggered":
        wait_until_training(first)
    second = start(job, victim, outs[1], threads, env)
    return [finish(first, outs[0]), finish(second, outs[1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, default=Path("runs/victim"))
    parser.add_argument("--jobs", nargs="+", choices=("attack", "victim"), default=["attack", "victim"])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each setting (the median is reported)")
    args = parser.parse_args()
    provenance = Provenance()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for job in args.jobs:
            alone = None
            for setting in SETTINGS:
                runs = [run for _ in range(args.repeat) for run in measure(job, setting, args.victim, Path(scratch))]
                train = statistics.median(run["train_s"] for run in runs)
                alone = train if setting == "alone" else alone
                row = {"job": job, "setting": setting, "runs": runs, "train_s": train, "ratio": train / alone}
                rows.append(row)
                print(f"{job:7s} {setting:32s} train {train:7.1f} s  ({row['ratio']:.2f}x alone)", flush=True)
    out = RESULTS / "thread_contention.json"
    payload = {"provenance": provenance.record(), "usable_cpus": usable_cpus(), "rows": rows}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
