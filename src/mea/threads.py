"""Torch threads that fit the machine: the CPUs this process may use, less those busy with others.

Two processes that each take every core as torch threads oversubscribe the machine, and a run beside
another CPU-bound job was measured 12-35x slower instead of 2x.  So a `mea` process takes the cores
it is allowed (affinity and cgroup CPU quota) minus the ones other processes are running on at the
moment it starts, read from the kernel's count of runnable tasks, and looks again every so many
training steps (`readjust`), so that a long run started alone makes room for one started after it.
`--threads N` or MEA_THREADS=N fixes the count (a run is then repeatable bit for bit: floating-point
sums depend on how the work is split).  numpy's and scipy's BLAS get one thread (`quiet_blas`).
Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from pathlib import Path

ENV_THREADS = "MEA_THREADS"
_BLAS_THREADS = "OPENBLAS_NUM_THREADS"
_PROC_SELF_TASKS = Path("/proc/self/task")
_PROC_STAT = Path("/proc/stat")
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else cpus


def cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup may use per period (cgroup v2 `cpu.max`, or v1), None if unlimited."""
    try:
        if _CGROUP_V2.exists():
            quota, period = _CGROUP_V2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_file, period_file = _CGROUP_V1
        if quota_file.exists():
            quota_us = int(quota_file.read_text())
            return None if quota_us < 0 else quota_us / int(period_file.read_text())
    except (OSError, ValueError):
        pass  # an unreadable or unexpected file: no quota we can know of
    return None


def busy_elsewhere(samples: int = 5, interval_s: float = 0.01) -> int:
    """Tasks running on the machine besides this process's, the median of a few readings of the
    kernel's `procs_running` less this process's own running threads (the count is of threads, so a
    torch job on two cores counts two).  0 where unknown."""
    readings = []
    for i in range(samples):
        try:
            running = next(
                int(line.split()[1]) for line in _PROC_STAT.read_text().splitlines() if line.startswith("procs_running")
            )
        except (OSError, ValueError, StopIteration):
            return 0
        readings.append(running - _own_running_threads())
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0, int(statistics.median(readings)))


def _own_running_threads() -> int:
    """This process's threads in state R (at least 1: the one asking)."""
    running = 0
    try:
        for task in _PROC_SELF_TASKS.iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                # The state follows the parenthesised name, which may itself hold spaces.
                running += (task / "stat").read_text().rpartition(")")[2].split()[0] == "R"
    except OSError:
        pass
    return max(1, running)


def configured() -> int | None:
    """The count MEA_THREADS (or `mea --threads`, which sets it) fixes, if any."""
    value = os.environ.get(ENV_THREADS, "").strip()
    return pick_threads() if value else None


def pick_threads(requested: int | None = None) -> int:
    """`requested`, else MEA_THREADS, else the usable CPUs not busy elsewhere (at least one)."""
    if requested:
        return requested
    configured = os.environ.get(ENV_THREADS, "").strip()
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            from mea.errors import ConfigError

            raise ConfigError(f"{ENV_THREADS}={configured!r} is not a positive whole number; unset it or set e.g. 2")
        return int(configured)
    return max(1, usable_cpus() - busy_elsewhere())


_automatic = False  # whether `apply` chose the count (then `readjust` may change it)


def apply(requested: int | None = None) -> int:
    """Set torch's threads to `pick_threads(requested)`; return the count."""
    global _automatic
    threads = pick_threads(requested)
    _automatic = not requested and not os.environ.get(ENV_THREADS, "").strip()
    import torch

    torch.set_num_threads(threads)
    quiet_blas()
    return threads


def quiet_blas() -> None:
    """One thread for numpy's and scipy's OpenBLAS, unless OPENBLAS_NUM_THREADS says otherwise.

    mea's parallel work is torch's; its numpy products (PRADA's distances, the watermark's cells)
    are small, and OpenBLAS's idle workers spin: measured in `mea serve` at batch 256, a worker
    took 13 ms of the second core per request for no gain in throughput, a core that torch or the
    client beside it then lacks.  The variable covers the OpenBLAS copies loaded from now on (and
    child processes), threadpoolctl the ones numpy and scipy already loaded; torch's own BLAS is
    left alone."""
    if os.environ.get(_BLAS_THREADS):
        return
    os.environ[_BLAS_THREADS] = "1"
    from threadpoolctl import ThreadpoolController

    for library in ThreadpoolController().lib_controllers:
        if library.internal_api == "openblas" and any(name in library.filepath for name in ("numpy", "scipy")):
            library.set_num_threads(1)


def readjust() -> None:
    """Where `apply` chose the count: choose again for the load now (cheap: a few /proc reads)."""
    if not _automatic:
        return
    import torch

    threads = max(1, usable_cpus() - busy_elsewhere(samples=3, interval_s=0.002))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
