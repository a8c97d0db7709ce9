"""`mea attack --strategy equation-solving|path-finding|lowd-meek|uniform|line-search|adaptive`:
one extraction of a classic-ML victim, in process or over HTTP, written as a run directory
(`metrics.json`, `config.json`, `clone.safetensors`) like every attack's."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mea import __version__
from mea.errors import ConfigError
from mea.extraction.base import Extraction, ModelClass, QuerySpace
from mea.extraction.metrics import fidelity
from mea.extraction.registry import make_extraction
from mea.metrics import classification_metrics
from mea.oracle import Label, Oracle, VictimOracle, parse_output
from mea.runs import check_out, command_line, redact_url, run_directory, write_json
from mea.tabular import is_tabular
from mea.tabular.models import Tree, save
from mea.victim import Victim


@dataclass(frozen=True)
class ExtractionConfig:
    strategy: str
    queries: int | None = None  # None: what the strategy needs
    pool: str | None = None  # None: uniform points in the victim's ranges
    output: str = "probabilities"
    seed: int = 0

    def __post_init__(self) -> None:
        make_extraction(self.strategy, self.queries)
        parse_output(self.output)


def pool_points(name: str, victim: Victim, data_dir: Path | None = None) -> torch.Tensor:
    """The attacker's own points: a tabular task's rows outside its test part, or an image pool."""
    if is_tabular(name):
        from mea.tabular.datasets import feature_sets

        parts = feature_sets(name, victim.config.get("target") if name == victim.dataset else None)
        pool = torch.cat([parts["train"].images, parts["calibration"].images])
        if pool.shape[1:] != victim.signature.input_shape:
            raise ConfigError(
                f"the pool {name} has {pool.shape[1]} features; the victim takes {victim.signature.features}"
            )
        return pool
    if not victim.signature.is_image:
        raise ConfigError(f"a feature-vector victim's pool is a tabular task (digits, csv:PATH, ...), not {name!r}")
    from mea.data.pools import make_pool

    return make_pool(name, data_dir, seed=0, image_shape=victim.signature.image_shape).images


def in_process_oracle(victim: Victim, output: str, budget: int | None) -> Oracle:
    """The victim's API in process: a tree's names the answering node too, except label-only."""
    mode = parse_output(output)
    if isinstance(victim.model, Tree) and not isinstance(mode, Label):
        from mea.tabular.oracle import NodeOracle

        return NodeOracle(victim.model, mode, budget)
    return VictimOracle(victim.model, mode, budget)


def run_extraction(
    config: ExtractionConfig,
    victim: Victim,
    oracle: Oracle | None = None,
    out: Path | None = None,
    force: bool = False,
    data_dir: Path | None = None,
) -> dict:
    """Extract `victim` through `oracle` (by default in process) and return metrics.json content."""
    return extraction_run(config, victim, oracle, out, force, data_dir)[0]


def extraction_run(
    config: ExtractionConfig,
    victim: Victim,
    oracle: Oracle | None = None,
    out: Path | None = None,
    force: bool = False,
    data_dir: Path | None = None,
) -> tuple[dict, torch.nn.Module]:
    """`run_extraction`, and the extracted model itself (`mea.api.attack` returns both)."""
    start = time.perf_counter()
    if out is not None:
        check_out(out, force)
    known = ModelClass.of(victim.model)
    strategy = make_extraction(config.strategy, config.queries)
    oracle = oracle or in_process_oracle(victim, config.output, config.queries)
    pool = None if config.pool is None else pool_points(config.pool, victim, data_dir)
    space = QuerySpace(victim.signature, pool, config.pool or "uniform")
    result: Extraction = strategy.run(oracle, space, known, np.random.default_rng(config.seed))
    test = victim.test_set(data_dir)
    with torch.inference_mode():
        victim_metrics = classification_metrics(victim.model(test.images).double(), test.labels).to_dict()
        clone_metrics = classification_metrics(result.clone(test.images).double(), test.labels).to_dict()
    close = fidelity(victim.model, result.clone, test.images)
    resolved = {
        "strategy": config.strategy,
        "queries": config.queries,
        "pool": config.pool or "uniform",
        "output": oracle.output.spec,
        "seed": config.seed,
        "oracle": redact_url(getattr(oracle, "url", None) or "in-process"),
        "victim": str(victim.directory),
        "victim_arch": known.arch,
        "unknowns": known.unknowns if known.arch in ("logreg", "softmax", "ovr", "mlp") else None,
        "dataset": victim.dataset,
        "mea_version": __version__,
        "command": command_line(),
    }
    metrics = {
        "victim": victim_metrics,
        "clone": {
            **clone_metrics,
            "fidelity": close.test_agreement,
            "uniform_agreement": close.uniform_agreement,
            **{
                key: value
                for key, value in close.to_dict().items()
                if key not in ("test_agreement", "uniform_agreement")
            },
        },
        "queries": result.queries,
        "details": result.details,
        "time_s": {"compute": result.compute_s, "total": time.perf_counter() - start},
        "torch_threads": torch.get_num_threads(),
        "config": resolved,
    }
    if out is not None:
        with run_directory(out, force) as scratch:
            write_json(scratch / "config.json", resolved)
            save(result.clone, scratch / "clone.safetensors")
            write_json(scratch / "metrics.json", metrics)
    return metrics, result.clone
