"""What a sweep's trials need from the driver's disk, packed once for Ray's object store and
unpacked on whichever node runs a trial: a cluster's worker nodes share no filesystem with the driver.

A `Bundle` holds the victim (its weights and record, or a model file and its sidecar), the defense
(detector, calibration record and its secret key: a defended trial answers with the defense's
keyed noise, so the key must travel with it), the cached files of every built-in dataset a trial
reads, and the attacker's own pools given by path.  A worker writes it once per node into a
directory named by its digest and points the trial's context there; records are the same as the
local backend's, since only where the files lie changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mea.data import files
from mea.data.catalog import DATASETS
from mea.data.fetch import cache_root
from mea.experiments.trial import Outcome, Trial, TrialContext, run_trial
from mea.runs import VICTIM_WEIGHTS, check_victim_directory, read_json

# What a trial reads of a victim directory and a defense directory.
VICTIM_FILES = (VICTIM_WEIGHTS, "config.json")
DEFENSE_FILES = ("detector.json", "detector.safetensors", "defense-config.json", "secret.key")


# The files of a bundle: relative path -> contents.  Shipped apart from the `Bundle` that indexes
# them, so that a worker whose node already holds them never fetches them again.
Contents = dict[str, bytes]


@dataclass(frozen=True)
class Bundle:
    digest: str  # of every file's path and contents: names the directory a node unpacks into
    victim: str  # relative path of the victim (a directory or a model file)
    defense: str | None
    pools: tuple[tuple[str, str], ...]  # (the pool as the driver names it, its relative path)
    size: int  # bytes in all


def pack(trials: list[Trial] | tuple[Trial, ...], context: TrialContext) -> tuple[Bundle, Contents]:
    """Everything `trials` read from the driver's disk under `context`."""
    found: dict[str, bytes] = {}
    weights = check_victim_directory(context.victim_dir)
    if Path(context.victim_dir).is_file():
        victim = f"victim/{weights.name}"
        found[victim] = weights.read_bytes()
        sidecar = weights.with_suffix(".json")
        if sidecar.is_file():
            found[f"victim/{sidecar.name}"] = sidecar.read_bytes()
        record = read_json(sidecar, "") if sidecar.is_file() else {}
    else:
        victim = "victim"
        for name in VICTIM_FILES:
            found[f"victim/{name}"] = (Path(context.victim_dir) / name).read_bytes()
        record = read_json(Path(context.victim_dir) / "config.json", "")
    defense = None
    if context.defense_dir is not None and any(t.defense is not None for t in trials):
        defense = "defense"
        for name in DEFENSE_FILES:
            found[f"defense/{name}"] = (Path(context.defense_dir) / name).read_bytes()
    datasets = {record.get("dataset", "mnist")} if isinstance(record, dict) else set()
    pools: list[tuple[str, str]] = []
    for pool in sorted({t.attack.pool for t in trials}):
        datasets |= {spec.name for spec in DATASETS.values() if spec.pool == pool}
        if pool not in {spec.pool for spec in DATASETS.values()} and files.is_path(pool):
            relative = f"pools/{len(pools)}/{Path(pool).name}"
            found.update(_tree(Path(pool).expanduser(), relative))
            pools.append((pool, relative))
    root = cache_root(context.data_dir)
    for name in sorted(datasets & set(DATASETS)):
        for file in DATASETS[name].files:
            found[f"data/{name}/{file.stem}"] = (root / name / file.stem).read_bytes()
    digest = hashlib.sha256()
    for path in sorted(found):
        digest.update(path.encode() + b"\0" + hashlib.sha256(found[path]).digest())
    return Bundle(digest.hexdigest()[:16], victim, defense, tuple(pools), sum(map(len, found.values()))), found


def _tree(path: Path, relative: str) -> dict[str, bytes]:
    if path.is_file():
        return {relative: path.read_bytes()}
    return {f"{relative}/{p.relative_to(path).as_posix()}": p.read_bytes() for p in path.rglob("*") if p.is_file()}


def unpack(bundle: Bundle, context: TrialContext, contents: Callable[[], Contents]) -> TrialContext:
    """Write the bundle on this node (once: a later call finds its directory and never calls
    `contents`) and return the context that points there."""
    root = Path(tempfile.gettempdir()) / f"mea-bundle-{bundle.digest}"
    if not root.is_dir():
        scratch = Path(tempfile.mkdtemp(prefix=f".mea-bundle-{bundle.digest}-", dir=root.parent))
        for relative, data in contents().items():
            (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
            (scratch / relative).write_bytes(data)
        try:
            os.rename(scratch, root)  # atomic: another worker on this node may have won the race
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
    return replace(
        context,
        victim_dir=root / bundle.victim,
        defense_dir=None if bundle.defense is None else root / bundle.defense,
        data_dir=root / "data",
        pool_paths=tuple((pool, str(root / relative)) for pool, relative in bundle.pools),
    )


def run_shipped_trial(
    trial: Trial, context: TrialContext, bundle: Bundle, contents: list, threads: int | None = None
) -> Outcome:
    """`run_trial` on a node that may share no files with the driver.  `contents` is a list holding
    the ObjectRef of the bundle's files (in a list, so that Ray does not fetch them for every task)."""

    def fetch() -> Contents:
        import ray

        return ray.get(contents[0])

    try:
        local = unpack(bundle, context, fetch)
    except Exception as exc:  # as run_trial: a failure is the trial's outcome, never the sweep's end
        return Outcome(trial, error=f"could not unpack the driver's files on this node: {type(exc).__name__}: {exc}")
    return run_trial(trial, local, threads)
