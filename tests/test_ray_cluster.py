"""A sweep on a two-node Ray cluster whose worker node cannot see the driver's files.

The head node offers no CPU, so every trial runs on the worker node.  That node is started in a
different working directory with no data cache, and (where the kernel lets this root process make
a mount namespace) with the driver's run directories and data cache hidden under empty tmpfs
mounts: it can run a trial only with what the sweep ships through Ray's object store.  Its records
must equal the local backend's apart from timings."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mea.data import load
from mea.experiments.backends import LocalBackend
from mea.experiments.records import read_results
from mea.experiments.sweep import run_sweep
from mea.experiments.sweep_config import load_sweep
from mea.serve.process import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (the `ray` extra)"),
]

RAY = str(Path(sys.executable).with_name("ray"))
TINY = {"clone_arch": "mlp", "queries": 300, "train": {"epochs": 1, "min_steps": 20}}
VOLATILE = ("time_s", "run")


def ray_env() -> dict[str, str]:
    # A loopback test cluster: no token authentication (which `ray start --head` turns on, keeping the
    # token in a home directory the worker node here does not share).
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def can_hide_directories() -> bool:
    """Whether this process may mount over directories in a namespace of its own (root, and a
    kernel and container that allow it)."""
    done = (
        subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False)
        if shutil.which("unshare")
        else None
    )
    return done is not None and done.returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, data_dir):
    port = free_port()
    env = ray_env()
    start = [RAY, "start", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run([*start[:2], "--head", *start[2:], "--num-cpus=0"], env=env, check=True, capture_output=True)
    # The worker node: elsewhere, with no data cache; the driver's directories hidden where possible.
    elsewhere = Path(tempfile.mkdtemp(prefix="mea-worker-node-"))
    worker_env = {k: v for k, v in env.items() if k not in ("MEA_DATA_DIR", "XDG_CACHE_HOME")}
    worker_env["HOME"] = str(elsewhere)
    join = f"exec {RAY} start --address=127.0.0.1:{port} --num-cpus=1 --block"
    # The run's temporary directory whole: the xdist workers' shared victim and defense live beside
    # this worker's own directory (tests/conftest.py's `shared`).
    base = tmp_path_factory.getbasetemp()
    hidden = [base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base, Path(data_dir)]
    if can_hide_directories():
        mounts = " && ".join(f"mount -t tmpfs none '{path}'" for path in hidden)
        command = ["unshare", "--mount", "sh", "-c", f"{mounts} && {join}"]
    else:
        command, hidden = ["sh", "-c", join], []
    worker = subprocess.Popen(
        command,
        cwd=elsewhere,
        env=worker_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (
            "0.0/1.0 CPU"
            not in subprocess.run(
                [RAY, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True, text=True, check=False
            ).stdout
        ):
            assert worker.poll() is None and time.monotonic() < deadline, "the worker node did not join"
            time.sleep(1)
        yield f"127.0.0.1:{port}", hidden
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, check=False)
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_a_worker_node_without_the_drivers_files_writes_the_local_records(
    cluster, victim_dir, defense_dir, data_dir, tmp_path
):
    address, hidden = cluster
    test = load("mnist", "test", data_dir)
    own = tmp_path / "own.npz"  # the attacker's own images, by path: shipped too
    np.savez(own, images=(test.images[:400, 0] * 255).round().byte().numpy())
    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "victim": str(victim_dir),
                "defense_dir": str(defense_dir),
                "base": TINY,
                "trials": [
                    {"seed": 0},
                    {"seed": 1, "defense": {"target_fpr": 0.05}},
                    {"seed": 0, "pool": str(own)},
                ],
            }
        )
    )
    local = run_sweep(load_sweep(config), tmp_path / "local", LocalBackend(1, threads=1), data_dir, quiet=True)
    assert local.finished == 3 and not local.failed

    env = {**ray_env(), "CI": "true", "MEA_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "mea", "sweep", str(config), "--out", str(tmp_path / "ray"),
         "--backend", "ray", "--address", address, "-q"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = {r["hash"]: r for r in read_results(tmp_path / "ray" / "results.jsonl").records}
    expected = {r["hash"]: r for r in read_results(tmp_path / "local" / "results.jsonl").records}
    assert len(records) == 3 and {r["run"]["backend"] for r in records.values()} == {"ray"}
    stable = {h: {k: v for k, v in r.items() if k not in VOLATILE} for h, r in records.items()}
    assert stable == {h: {k: v for k, v in r.items() if k not in VOLATILE} for h, r in expected.items()}

    # What a task on the worker node (the only node with a CPU) sees of the driver's files.
    probe = (
        "import json, os, sys, ray\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        "look = ray.remote(num_cpus=1)(lambda paths: {'exists': [os.path.exists(p) for p in paths], "
        "'cache': os.environ.get('MEA_DATA_DIR'), 'cwd': os.getcwd()})\n"
        "print(json.dumps(ray.get(look.remote(sys.argv[1:]))))\n"
    )
    paths = [str(victim_dir), str(defense_dir), str(own), str(Path(data_dir) / "mnist")]
    seen = subprocess.run([sys.executable, "-c", probe, *paths], env=env, capture_output=True, text=True, check=True)
    worker = json.loads(seen.stdout.strip().splitlines()[-1])
    assert worker["cache"] is None and not worker["cwd"].startswith(os.getcwd())
    if hidden:  # the driver's run directories and data cache do not exist there
        assert worker["exists"] == [False] * len(paths), worker


def test_a_sweep_s_own_ray_instance_leaves_a_cluster_on_this_machine_alone(cluster, twenty_trials, data_dir, tmp_path):
    """`--backend ray` without --address starts a Ray instance of its own, here while this module's
    cluster runs on the same machine and RAY_ADDRESS names it (ray.init(address=None) would join that
    cluster and refuse the sweep's CPU count).  Its records equal the local backend's for the suite's
    twenty trials."""
    address, _ = cluster
    out = tmp_path / "ray"
    env = {**ray_env(), "CI": "true", "MEA_DATA_DIR": str(data_dir), "RAY_ADDRESS": address}
    command = [sys.executable, "-m", "mea", "sweep", str(twenty_trials / "twenty.yaml"), "--out", str(out)]
    # A local Ray instance of 2 CPUs, started by the sweep and shut down by it.
    process = subprocess.Popen(
        [*command, "--backend", "ray", "--workers", "2", "-q"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == 0, stderr
    records = {r["hash"]: r for r in read_results(out / "results.jsonl").records}
    local = read_results(twenty_trials / "out" / "results.jsonl").records
    assert len(records) == 20 and {r["run"]["backend"] for r in records.values()} == {"ray"}
    stable = {h: {k: v for k, v in r.items() if k not in VOLATILE} for h, r in records.items()}
    assert stable == {r["hash"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in local}
