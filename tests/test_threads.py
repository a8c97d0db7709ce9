"""Torch threads picked from the CPUs free to the process (mea.threads)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from mea import threads
from mea.errors import ConfigError


def test_a_request_wins_then_the_environment(monkeypatch):
    monkeypatch.setenv(threads.ENV_THREADS, "3")
    assert threads.pick_threads(5) == 5
    assert threads.pick_threads() == 3
    monkeypatch.delenv(threads.ENV_THREADS)
    assert 1 <= threads.pick_threads() <= threads.usable_cpus()


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_environment_value_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv(threads.ENV_THREADS, value)
    with pytest.raises(ConfigError, match=r"MEA_THREADS=.* is not a positive whole number; unset it"):
        threads.pick_threads()


def test_the_cli_reports_a_bad_environment_value_in_one_line(victim_dir, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mea", "attack", "--victim", str(victim_dir), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**os.environ, threads.ENV_THREADS: "lots", "CI": "true"},
        check=False,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: MEA_THREADS='lots' is not a positive whole number; unset it or set e.g. 2"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("cpu_max", "expected_cap"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), ("400000 100000\n", 4)],
)
def test_the_cgroup_quota_caps_the_usable_cpus(tmp_path, monkeypatch, cpu_max, expected_cap):
    (tmp_path / "cpu.max").write_text(cpu_max)
    monkeypatch.setattr(threads, "_CGROUP_V2", tmp_path / "cpu.max")
    affinity = len(os.sched_getaffinity(0))
    assert threads.usable_cpus() == (affinity if expected_cap is None else min(affinity, expected_cap))


def test_an_unreadable_quota_means_no_quota(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("garbage\n")
    monkeypatch.setattr(threads, "_CGROUP_V2", tmp_path / "cpu.max")
    assert threads.cgroup_cpu_quota() is None


@pytest.fixture
def two_spinners():
    """Two CPU-bound processes elsewhere on the machine, running by the time the test starts."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    time.sleep(0.5)
    yield
    for spinner in spinners:
        spinner.kill()
        spinner.wait()


linux_only = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")


@linux_only
def test_a_busy_process_elsewhere_takes_a_core_from_the_pick(two_spinners, monkeypatch):
    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    assert threads.busy_elsewhere(samples=9) >= 1
    # Two spinning processes on this machine: at most the usable cores less one, at least one.
    assert threads.pick_threads() <= max(1, threads.usable_cpus() - 1)


@linux_only
def test_readjust_follows_the_load_only_where_the_count_was_chosen(two_spinners, monkeypatch):
    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)  # `apply` sets it: restored afterwards
    monkeypatch.setattr(threads, "_automatic", False)  # restored afterwards
    before = torch.get_num_threads()
    try:
        requested = threads.usable_cpus() + 1  # never what the load would give
        assert threads.apply(requested) == requested
        threads.readjust()
        assert torch.get_num_threads() == requested  # asked for: kept
        torch.set_num_threads(requested)
        threads.apply(None)
        torch.set_num_threads(requested)  # as if picked on an idle machine, before the spinners came
        threads.readjust()
        assert torch.get_num_threads() <= max(1, threads.usable_cpus() - 1)
    finally:
        torch.set_num_threads(before)


def test_a_fixed_thread_count_reaches_every_sweep_worker(monkeypatch):
    from mea.experiments.backends import LocalBackend

    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    assert threads.configured() is None
    assert LocalBackend(workers=1).plan(5) == (1, max(1, threads.usable_cpus()))
    monkeypatch.setenv(threads.ENV_THREADS, "1")  # what `mea --threads 1` sets for the processes it starts
    assert threads.configured() == 1
    assert LocalBackend(workers=1).plan(5) == (1, 1)
    assert LocalBackend(workers=1, threads=3).plan(5) == (1, 3)  # an explicit count still wins


@pytest.mark.skipif(threads.usable_cpus() < 2, reason="OpenBLAS runs one thread on one CPU anyway")
def test_numpy_and_scipy_blas_get_one_thread_unless_the_environment_says_otherwise():
    # numpy's OpenBLAS is loaded (with torch) before `apply`, scipy's after it: both are covered.
    probe = (
        "from mea import threads; threads.apply(1); import scipy.linalg; from threadpoolctl import threadpool_info; "
        "print(sorted({pool['num_threads'] for pool in threadpool_info() if pool['internal_api'] == 'openblas' "
        "and ('numpy' in pool['filepath'] or 'scipy' in pool['filepath'])}))"
    )
    env = {name: value for name, value in os.environ.items() if name not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}

    def blas_threads(**extra: str) -> str:
        done = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    quiet = blas_threads()
    if quiet == "[]":
        pytest.skip("numpy and scipy use no OpenBLAS here (MKL builds)")
    assert quiet == "[1]"
    assert blas_threads(OPENBLAS_NUM_THREADS="2") == "[2]"  # the user's word stands
