"""One extraction attack against one victim: configure, run, evaluate, record.

`run_attack` is a pure function of its config and the victim (up to timings), which is what lets
sweeps skip finished trials and compare backends.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from mea import __version__, models
from mea.attacks import extract, make_strategy
from mea.config import NO_POOL
from mea.config import AttackConfig as AttackConfig  # re-exported
from mea.data import make_pool
from mea.metrics import agreement, classification_metrics
from mea.oracle import Oracle, VictimOracle, parse_output
from mea.plots import confusion_matrix_png
from mea.runs import check_out, command_line, redact_url, run_directory, write_json
from mea.signature import DEFAULT
from mea.training import predict_logits
from mea.victim import Victim

# Agreement on uniform noise (Tramèr et al. 2016 measure fidelity on test data *and* on uniform
# inputs): a fixed set of images, the same for every run.
UNIFORM_AGREEMENT_IMAGES = 10_000
UNIFORM_AGREEMENT_SEED = 20_160_913


def uniform_agreement_images(image_shape: tuple[int, ...] = DEFAULT.image_shape) -> torch.Tensor:
    return torch.rand(
        UNIFORM_AGREEMENT_IMAGES, *image_shape, generator=torch.Generator().manual_seed(UNIFORM_AGREEMENT_SEED)
    )


# The victim's logits on its test set and on the noise images, per victim: a sweep runs many attacks
# against one victim, and for small budgets predicting 20,000 images with it is most of the work.
_VICTIM_LOGITS: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _victim_logits(
    victim: Victim, test_images: torch.Tensor, data_dir: Path | None
) -> tuple[torch.Tensor, torch.Tensor]:
    key = (victim.fingerprint, victim.dataset, str(data_dir))
    if key not in _VICTIM_LOGITS:
        if len(_VICTIM_LOGITS) >= 4:
            _VICTIM_LOGITS.clear()
        _VICTIM_LOGITS[key] = (
            predict_logits(victim.model, test_images),
            predict_logits(victim.model, uniform_agreement_images(victim.signature.image_shape)),
        )
    return _VICTIM_LOGITS[key]


def run_attack(
    config: AttackConfig,
    victim: Victim,
    data_dir: Path | None = None,
    oracle: Oracle | None = None,
    out: Path | None = None,
    force: bool = False,
    progress: bool = True,
    pool_path: str | None = None,
) -> dict:
    """Attack `victim` (through `oracle`, by default an in-process one) and return metrics.json content.

    The victim's weights are used only to evaluate (victim metrics and fidelity), never by the attack.
    `pool_path`: where the pool `config.pool` names lies on this machine, if not there (a path pool
    shipped to a cluster's worker node, mea.experiments.shipping).
    """
    return attack_run(config, victim, data_dir, oracle, out, force, progress, pool_path)[0]


def attack_run(
    config: AttackConfig,
    victim: Victim,
    data_dir: Path | None = None,
    oracle: Oracle | None = None,
    out: Path | None = None,
    force: bool = False,
    progress: bool = True,
    pool_path: str | None = None,
) -> tuple[dict, nn.Module]:
    """`run_attack`, and the clone itself (`mea.api.attack` returns both)."""
    start = time.perf_counter()
    if out is not None:
        check_out(out, force)
    # The oracle first: a mistake it refuses (top-k past the victim's classes) costs no pool.
    oracle = oracle or VictimOracle(victim.model, parse_output(config.output), budget=config.queries)
    pool = None
    if config.pool != NO_POOL:
        pool = make_pool(pool_path or config.pool, data_dir, seed=config.seed, image_shape=victim.signature.image_shape)
        if pool_path is not None:  # the name the trial gave it, not this node's path
            pool = dataclasses.replace(pool, name=config.pool)
    extraction = extract(
        oracle,
        pool,
        make_strategy(config.strategy),
        config.queries,
        config.clone_arch,
        config.train,
        config.seed,
        progress=progress,
    )
    test = victim.test_set(data_dir)
    victim_logits, victim_noise_logits = _victim_logits(victim, test.images, data_dir)
    clone_logits = predict_logits(extraction.clone, test.images)
    noise = uniform_agreement_images(victim.signature.image_shape)  # the same images as _victim_logits saw
    clone_metrics = classification_metrics(clone_logits, test.labels).to_dict()
    victim_metrics = classification_metrics(victim_logits, test.labels).to_dict()
    resolved = {
        **asdict(config),
        "oracle": redact_url(getattr(oracle, "url", None) or "in-process"),
        "uses_true_labels": config.uses_true_labels,
        "victim": str(victim.directory),
        "dataset": victim.dataset,  # what accuracy and fidelity are measured on: its test part
        "victim_fingerprint": victim.fingerprint,
        "mea_version": __version__,
        "command": command_line(),
    }
    metrics = {
        "victim": victim_metrics,
        "clone": {
            **clone_metrics,
            "fidelity": agreement(clone_logits, victim_logits),
            "uniform_agreement": agreement(predict_logits(extraction.clone, noise), victim_noise_logits),
        },
        "queries": extraction.queries,
        # Queries answered before the service refused the attacker (None: never refused).
        "refused_after": extraction.refused_after,
        "uses_true_labels": config.uses_true_labels,
        "time_s": {
            "query": extraction.query_time_s,
            "train": extraction.train_time_s,
            "total": time.perf_counter() - start,
        },
        "torch_threads": torch.get_num_threads(),  # the times above depend on it
        "config": resolved,
    }
    if out is not None:
        with run_directory(out, force) as scratch:
            write_json(scratch / "config.json", resolved)
            models.save(extraction.clone, config.clone_arch, scratch / "clone.safetensors")
            confusion_matrix_png(
                victim_metrics["confusion_matrix"],
                f"victim: accuracy {victim_metrics['accuracy']:.2%}",
                scratch / "confusion_victim.png",
            )
            confusion_matrix_png(
                clone_metrics["confusion_matrix"],
                f"clone ({config.strategy}, {config.queries} queries, {config.output}): "
                f"accuracy {clone_metrics['accuracy']:.2%}",
                scratch / "confusion_clone.png",
            )
            write_json(scratch / "metrics.json", metrics)
    return metrics, extraction.clone
