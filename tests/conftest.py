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
