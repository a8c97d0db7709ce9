"""An honest evaluation of a defense: what it costs benign users, what it costs each attacker.

For every attacker query source it reports how well the detector separates those queries from
the victim's test set (AUROC) and how many it flags; the clone an attacker gets with and without the defense at
the same budget; how many queries (and how much time) an attacker needs to reach 90% and 95% clone
accuracy; and benign accuracy, the victim's test set answered through the defense.  A threshold sweep traces
benign accuracy against clone accuracy; every threshold is calibrated on the victim's held-out
calibration split, never on the sets evaluated here.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm.auto import tqdm

from mea import __version__
from mea.config import SOURCES as SOURCES  # re-exported
from mea.config import DetectorConfig, EvaluationConfig
from mea.data import ImageSet, make_pool
from mea.defenses.detector import CONFIDENCE, OodDetector
from mea.defenses.gate import ClientGate
from mea.defenses.mahalanobis import layer_features
from mea.defenses.policies import parse_policy
from mea.defenses.prada import REFUSED, SUSPECT
from mea.defenses.store import Defense
from mea.experiments.attack import AttackConfig, run_attack
from mea.models import LeNet5
from mea.oracle import VictimOracle
from mea.plots import line_plot, roc_png
from mea.runs import check_out, command_line, run_directory, write_json
from mea.victim import Victim

ACCURACY_LEVELS = (0.90, 0.95)
# Detection is scored on at most this many queries per source (AUROC needs no more).
DETECTION_SAMPLE = 10_000


def _auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    truth = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(truth, np.r_[in_scores.numpy(), out_scores.numpy()]))


def evaluate_defense(
    victim: Victim,
    defense: Defense,
    config: EvaluationConfig,
    out: Path,
    data_dir: Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Run the evaluation and write defense.json, tradeoff.csv/png, roc.png and cost.csv into out."""
    check_out(out, force)
    start = time.perf_counter()
    test = victim.test_set(data_dir)
    train_split, calibration = victim.owner_sets(data_dir)
    task = victim.dataset_title
    detector = defense.detector
    shape = victim.signature.image_shape
    pools = {source: make_pool(source, data_dir, seed=config.seed, image_shape=shape) for source in config.sources}

    # The sweeps meet the defense's own setting (its target FPR in --fpr-sweep, its policy in --policies):
    # the same oracle, seed and budget give the same clone, so each distinct attack is run once.
    attacks: dict[tuple, dict] = {}

    def attack(source: str, queries: int, defended: bool, detector_override=None, policy=None) -> dict:
        used_detector, used_policy = detector_override or detector, policy or defense.policy
        key = (source, queries, defended)
        if defended:
            key += (used_detector.threshold, used_detector.saturation, used_policy.spec)
        if key not in attacks:
            attack_config = AttackConfig(queries=queries, pool=source, train=config.train, seed=config.seed)
            oracle = None
            if defended:
                oracle = defense.oracle(victim, budget=queries, detector=used_detector, policy=used_policy)
            attacks[key] = run_attack(attack_config, victim, data_dir, oracle=oracle, progress=False)
        bar.update()
        return attacks[key]

    def benign_accuracy(detector_override=None, policy=None) -> float:
        answers, _ = defense.oracle(victim, detector=detector_override, policy=policy).answer(test.images)
        return float((answers.argmax(1) == test.labels).float().mean())

    n_runs = (
        2 * len(config.sources) * len(config.budgets)
        + len(config.fpr_sweep) * len(config.sweep_sources)
        + len(config.policies) * len(config.sweep_sources)
    )
    bar = tqdm(total=n_runs, desc="defense evaluation", unit="attack", disable=not progress, leave=False)

    # Detection: scores of the victim's test set (in-distribution) against each source's queries.
    test_scores = detector.score_images(victim.model, test.images)
    detection, roc_curves = {}, {}
    for source, pool in pools.items():
        sample = pool.images[:DETECTION_SAMPLE]
        scores = detector.score_images(victim.model, sample)
        detection[source] = {
            "auroc": _auroc(test_scores, scores),
            "flagged_rate": float(
                (detector.score_images(victim.model, pool.images[: config.queries]) > detector.threshold).float().mean()
            ),
        }
        truth = np.r_[np.zeros(len(test_scores)), np.ones(len(scores))]
        fpr, tpr, _ = roc_curve(truth, np.r_[test_scores.numpy(), scores.numpy()])
        roc_curves[source] = (fpr, tpr, detection[source]["auroc"])
    benign_flagged = float((test_scores > detector.threshold).float().mean())
    clients = client_detection(
        victim, defense, test.images, {s: p.images for s, p in pools.items()}, config.stream_queries, config.seed
    )
    study = layer_study(victim, train_split, test.images, {s: p.images[:DETECTION_SAMPLE] for s, p in pools.items()})

    # Benign accuracy, undefended and defended.
    undefended_benign = float((VictimOracle(victim.model).query(test.images).argmax(1) == test.labels).float().mean())
    defended_benign = benign_accuracy()

    # Clone quality and attack cost, per source, without and with the defense.
    clone_accuracy, clone_fidelity, cost_rows = {}, {}, []
    for source in config.sources:
        clone_accuracy[source], clone_fidelity[source] = {}, {}
        for defended in (False, True):
            key = "defended" if defended else "undefended"
            for budget in config.budgets:
                metrics = attack(source, budget, defended)
                cost_rows.append(
                    {
                        "source": source,
                        "defense": key,
                        "queries": budget,
                        "clone_accuracy": metrics["clone"]["accuracy"],
                        "fidelity": metrics["clone"]["fidelity"],
                        "time_s": metrics["time_s"]["query"] + metrics["time_s"]["train"],
                    }
                )
            clone_accuracy[source][key] = cost_rows[-1]["clone_accuracy"]
            clone_fidelity[source][key] = cost_rows[-1]["fidelity"]
    attack_cost = {
        source: {
            key: {f"{level:.0%}": _first_reaching(cost_rows, source, key, level) for level in ACCURACY_LEVELS}
            for key in ("undefended", "defended")
        }
        for source in config.sources
    }

    # The trade-off: benign accuracy against clone accuracy as the threshold sweeps.
    calibration_scores = detector.score_images(victim.model, calibration.images)
    tradeoff = []
    for rate in config.fpr_sweep:
        swept = detector.calibrated(calibration_scores, rate)
        row = {
            "target_fpr": rate,
            "threshold": swept.threshold,
            "benign_accuracy": benign_accuracy(swept),
            "benign_flagged": float((test_scores > swept.threshold).float().mean()),
        }
        for source in config.sweep_sources:
            row[f"clone_accuracy[{source}]"] = attack(source, config.queries, True, detector_override=swept)["clone"][
                "accuracy"
            ]
        tradeoff.append(row)

    # Response policies compared at the default threshold.
    policies = []
    for spec in config.policies:
        policy = parse_policy(spec)
        row = {
            "policy": policy.spec,
            "preserves_top1": policy.preserves_top1,
            "benign_accuracy": benign_accuracy(policy=policy),
        }
        for source in config.sweep_sources:
            row[f"clone_accuracy[{source}]"] = attack(source, config.queries, True, policy=policy)["clone"]["accuracy"]
        policies.append(row)
    bar.close()

    result = {
        "benign_accuracy": {
            "undefended": undefended_benign,
            "defended": defended_benign,
            "drop_pp": 100 * (undefended_benign - defended_benign),
        },
        "detector": detection,
        "layer_study": study,
        "client_detection": clients,
        "clone_accuracy": clone_accuracy,
        "clone_fidelity": clone_fidelity,
        "attack_cost": attack_cost,
        "threshold": detector.threshold,
        "target_fpr": detector.config.target_fpr,
        "benign_flagged_rate": benign_flagged,
        "policy": defense.policy.spec,
        "guarantee": _guarantee(defense, undefended_benign, defended_benign, benign_flagged),
        "tradeoff": tradeoff,
        "policies": policies,
        "config": {
            **asdict(config),
            "victim_fingerprint": victim.fingerprint,
            "defense": str(defense.directory),
            "mea_version": __version__,
            "command": command_line(),
        },
        "time_s": time.perf_counter() - start,
    }
    with run_directory(out, force) as scratch:
        write_json(scratch / "defense.json", result)
        _write_csv(scratch / "tradeoff.csv", tradeoff)
        _write_csv(scratch / "cost.csv", cost_rows)
        _write_csv(scratch / "policies.csv", policies)
        roc_png(
            roc_curves, f"Detector ROC: {task} test (in-distribution) vs each query source", scratch / "roc.png", task
        )
        line_plot(
            {
                source: (
                    [r["benign_accuracy"] * 100 for r in tradeoff],
                    [r[f"clone_accuracy[{source}]"] * 100 for r in tradeoff],
                )
                for source in config.sweep_sources
            },
            xlabel=f"benign accuracy on {task} test through the defense (%)",
            ylabel=f"clone accuracy on {task} test (%), {config.queries:,} queries",
            title="Defense trade-off as the threshold sweeps (target FPR 0.1% to 30%)",
            path=scratch / "tradeoff.png",
            annotations=[f"{r['target_fpr']:g}" for r in tradeoff],
        )
    return result


# Candidate detectors for the layer study: each a set of components summed after standardisation.
LAYER_CANDIDATES = {
    **{layer: (layer,) for layer in LeNet5.feature_names},
    CONFIDENCE: (CONFIDENCE,),
    "conv1+conv2": ("conv1", "conv2"),
    "conv1+conv2+confidence (default)": ("conv1", "conv2", CONFIDENCE),
    "fc2+confidence": ("fc2", CONFIDENCE),
    "all layers": LeNet5.feature_names,
    "all layers+confidence": (*LeNet5.feature_names, CONFIDENCE),
}


def layer_study(victim: Victim, train: ImageSet, test_images: torch.Tensor, sources: dict[str, torch.Tensor]) -> dict:
    """AUROC of the victim's test set against each source, for each candidate set of layers.

    Every candidate is fitted and standardised on the victim's training split only, as the
    detector is: which layers separate the distributions is measured here, not assumed.
    """
    if tuple(getattr(victim.model, "feature_names", ())) != LeNet5.feature_names:
        return {}
    everything = OodDetector.fit(
        victim.model,
        train.images,
        train.labels,
        train.images[:1000],
        DetectorConfig(layers=LeNet5.feature_names, use_confidence=True),
    )

    def standardised(images: torch.Tensor) -> dict[str, torch.Tensor]:
        components = everything.component_scores(layer_features(victim.model, images, everything.layers))
        return {name: everything.standardisers[name](value) for name, value in components.items()}

    test_components = standardised(test_images)
    study: dict[str, dict[str, float]] = {}
    for source, images in sources.items():
        source_components = standardised(images)
        for candidate, names in LAYER_CANDIDATES.items():
            in_scores = torch.stack([test_components[n] for n in names]).sum(0)
            out_scores = torch.stack([source_components[n] for n in names]).sum(0)
            study.setdefault(candidate, {})[source] = _auroc(in_scores, out_scores)
    return study


def client_detection(
    victim: Victim,
    defense: Defense,
    benign: torch.Tensor,
    sources: dict[str, torch.Tensor],
    queries: int,
    seed: int,
    batch: int = 100,
) -> dict:
    """Per-client detection (PRADA + OOD rate) on whole streams, as the service would see them.

    The benign client sends the victim's test set in order; each attacker sends `queries` images of its pool in
    the random order of the `random` strategy.  Reported: the query count at which PRADA's test
    first flags the stream, and at which the client becomes suspect and is refused (None: never).
    """
    streams = {f"benign ({victim.dataset_title} test in order)": benign}
    for source, images in sources.items():
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:queries]
        streams[f"random from {source}"] = images[order]
    oracle = defense.oracle(victim)
    report = {}
    for name, images in streams.items():
        gate = ClientGate(oracle)
        first = {SUSPECT: None, REFUSED: None}
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            _, _, state = gate.answer(name, chunk)
            for level in first:
                if first[level] is None and state.level >= level:
                    first[level] = state.queries
        report[name] = {
            "queries": state.queries,
            "prada_flagged_at": state.prada_flagged_at,
            "suspect_at": first[SUSPECT],
            "refused_at": first[REFUSED],
            "final_statistic": state.statistic,
            "ood_rate": state.ood_rate,
        }
    return report


def _first_reaching(rows: list[dict], source: str, key: str, level: float) -> dict | str:
    for row in rows:
        if row["source"] == source and row["defense"] == key and row["clone_accuracy"] >= level:
            return {"queries": row["queries"], "time_s": row["time_s"]}
    return "not reached within budget"


def _guarantee(defense: Defense, undefended: float, defended: float, flagged: float) -> dict:
    if defense.policy.preserves_top1:
        statement = "top-1-preserving policy: benign top-1 accuracy is unchanged by construction"
    else:
        statement = (
            "label-changing policy: benign accuracy can fall by at most the benign flagged rate "
            "(only flagged queries are answered differently)"
        )
    return {
        "statement": statement,
        "benign_flagged_rate": flagged,
        "bound_pp": 0.0 if defense.policy.preserves_top1 else 100 * flagged,
        "measured_drop_pp": 100 * (undefended - defended),
    }


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
