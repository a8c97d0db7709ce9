"""Where a results file came from: the command, the date, the code's revision and the machine.

Every results file under benchmarks/results/ carries one `provenance` record, so that a figure in
README.md or docs/benchmarks.md can be traced to the run that produced it, and a timing can be judged
by the load the machine was under when it was taken (the 1-minute load average, read from
/proc/loadavg at the start and at the end of the measurement).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs"  # the docs site's figures, drawn from the results files


def load_average() -> float | None:
    """The 1-minute load average (None where the system does not report one)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def git_revision() -> dict:
    """The commit the code was run from, and whether the working tree's code differed from it
    (results files, figures and Markdown do not count: other benchmarks and the README change them
    while a measurement runs, which says nothing about the code measured)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30
        ).stdout.strip()

    revision = git("rev-parse", "HEAD")
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    code = [
        path
        for path in changed
        if not path.startswith("benchmarks/results/") and not path.endswith((".md", ".png", ".svg"))
    ]
    return {"commit": revision or None, "dirty": bool(code)}


def machine() -> dict:
    """CPU, cores, memory and the versions and thread count the measurement ran with."""
    import torch

    from mea import __version__

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    memory = None
    if Path("/proc/meminfo").exists():
        total_kb = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        memory = round(int(total_kb.split()[1]) / 2**20, 1)
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mea": __version__,
    }


class Provenance:
    """Start it before a measurement, `record()` it after: the dict that goes into the results file."""

    def __init__(self, command: str | None = None) -> None:
        self.command = command or "python -m " + " ".join(
            [_module_name(sys.argv[0]), *(shlex.quote(a) for a in sys.argv[1:])]
        )
        self.started = datetime.now(UTC)
        self.revision = git_revision()  # the code as the measurement starts
        self.load_start = load_average()
        self._clock = time.perf_counter()

    def record(self, **extra: object) -> dict:
        return {
            "command": self.command,
            "date": self.started.strftime("%Y-%m-%d %H:%M UTC"),
            "revision": self.revision,
            "machine": machine(),
            "load_average_1min": {"start": self.load_start, "end": load_average()},
            "wall_s": time.perf_counter() - self._clock,
            **extra,
        }


def _module_name(path: str) -> str:
    """`benchmarks/run.py` -> `benchmarks.run` (the form the README's commands use)."""
    relative = Path(path).resolve()
    try:
        relative = relative.relative_to(ROOT)
    except ValueError:
        return path
    return ".".join(relative.with_suffix("").parts)
