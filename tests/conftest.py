"""Shared fixtures: the real MNIST cache (fetched before the suite, never during it) and a tiny victim."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from mea.data.catalog import FASHION_MNIST, MNIST
from mea.data.fetch import cache_root, is_cached
from mea.threads import usable_cpus
from mea.training import LabelLoss, TrainConfig
from mea.victim import Victim, VictimConfig, load_victim, train_victim

# The suite runs on two pytest-xdist workers (pyproject's addopts): one torch thread each keeps the
# two cores busy without oversubscribing them; alone, a run takes both cores.
torch.set_num_threads(max(1, usable_cpus() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

# The order the two workers take the files in (pyproject: `--dist loadfile --no-loadscope-reorder`):
# the longest first, so that both end together rather than one waiting for the other's last file
# (longest-processing-time-first scheduling); the seconds are `pytest --durations=0` summed
# per file, on 2 cores.  The second needs none of the shared victim (it trains its own), so the other
# worker need not wait while the first builds it.  Files not named here run last, in their own order.
SCHEDULE = (
    "test_ownership.py",  # about 105 s (it builds the shared victim and defense)
    "test_any_shape.py",  # 50 s
    "test_strategies.py",  # 94 s
    "test_cli.py",  # 113 s
    "test_examples.py",  # 84 s
    "test_ray_cluster.py",  # 76 s (both Ray tests, on one cluster)
    "test_serve.py",  # 74 s
    "test_tramer.py",  # 55 s
    "test_sweep.py",  # 50 s
    "test_second_task.py",  # 33 s
    "test_data_free.py",  # 32 s
    "test_attack.py",  # 23 s
    "test_upstream.py",  # 19 s
    "test_secrets.py",  # 17 s
    "test_console.py",  # 15 s
    "test_oip_servers.py",  # 14 s
    "test_schema_fuzz.py",  # 12 s
    "test_model_files.py",  # 11 s
    "test_docs.py",  # 9 s
    "test_report.py",  # 9 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SCHEDULE)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SCHEDULE)))  # stable: a file's tests keep their order


FETCH_HINT = "run `mea data fetch --dataset all` before the tests (the README's test command does)"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    for spec in (MNIST, FASHION_MNIST):
        if not is_cached(spec):
            pytest.fail(f"{spec.name} is not in the cache {cache_root()}: {FETCH_HINT}", pytrace=False)
    return cache_root()


# One epoch on 55,000 images: a real victim (about 98% accurate) in a few seconds.
TINY_VICTIM = VictimConfig(
    train=TrainConfig(epochs=1, lr=3e-3, batch_size=128, loss=LabelLoss.HARD, temperature=1.0), seed=0
)


def shared(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """`build(out)` once for the whole run: the xdist workers share the run's temporary directory,
    and the first to ask builds while the other waits.  What is shared is only ever read."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / f"shared-{name}"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not (folder / "built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder / name)
            (folder / "built").touch()
    return folder / name


@pytest.fixture(scope="session")
def victim_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared(tmp_path_factory, "victim", lambda out: train_victim(TINY_VICTIM, out, data_dir, progress=False))


@pytest.fixture(scope="session")
def victim(victim_dir: Path) -> Victim:
    return load_victim(victim_dir)


@pytest.fixture(scope="session")
def defense_dir(victim: Victim, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mea.defenses.detector import DetectorConfig
    from mea.defenses.store import fit_defense

    config = DetectorConfig(target_fpr=0.02)
    return shared(tmp_path_factory, "defense", lambda out: fit_defense(victim, out, config, data_dir=data_dir))


@pytest.fixture(scope="session")
def twenty_trials(
    victim_dir: Path, defense_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A 20-trial sweep of tiny trials (tests/sweeps.py `TWENTY`), run once for the whole suite by the
    local backend: `twenty.yaml` and its `out/` (records the sweep tests check and the Ray backend must
    match, and the report tests render)."""
    from mea.experiments.backends import LocalBackend
    from mea.experiments.sweep import run_sweep
    from mea.experiments.sweep_config import load_sweep
    from sweeps import TWENTY, write_sweep

    def build(directory: Path) -> None:
        directory.mkdir()
        config = write_sweep(directory / "twenty.yaml", victim_dir, defense_dir, grid=TWENTY)
        # Two worker processes of one thread each: the threads a Ray task of one CPU gets.
        result = run_sweep(
            load_sweep(config), directory / "out", LocalBackend(workers=2, threads=1), data_dir, quiet=True
        )
        assert result.finished == 20 and not result.failed

    return shared(tmp_path_factory, "twenty-trials", build)
