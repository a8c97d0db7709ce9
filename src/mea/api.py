"""The public Python API: what `mea`'s command line does, as functions (the commands call them).

    import mea

    victim = mea.train_victim("runs/victim", epochs=3)              # or mea.load_victim("runs/victim")
    stolen = mea.attack(victim, "random", queries=5_000)            # an AttackResult
    print(stolen.clone_accuracy, stolen.fidelity)
    defense = mea.fit_defense(victim, "runs/defense")              # detector, thresholds, watermark key
    defended = mea.attack(victim, "random", queries=5_000, pool="fashion-mnist", oracle=defense.oracle(victim))
    verdict = mea.verify(stolen.clone, victim=victim, defense=defense, probes=500)
    print(verdict.decision)

A victim is a directory from `train_victim`, a model file (mea safetensors, ONNX, a scikit-learn
victim), or a served victim's file; `connect` reaches one behind an Open Inference Protocol v2
server.  An oracle is the one door to a victim (`mea.oracle.Oracle`: `query(images) -> answers`,
its output mode, its budget): in process, defended (`Defense.oracle`, a `DefendedOracle` wrapping
the victim), or over HTTP.  Attacks take an oracle; an image victim's strategies retrain a clone on
the answers (`mea.attacks`), a scikit-learn victim's solve for its model (Tramèr et al. 2016,
`mea.extraction`).  Results are frozen records.  Heavy modules load on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mea.config import MODEL_NAME
from mea.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from mea.config import TrainConfig
    from mea.defenses.store import Defense
    from mea.oracle import Oracle
    from mea.ownership.config import Budget
    from mea.ownership.evidence import EvidenceSet
    from mea.ownership.verify import Verdict
    from mea.serve.client import HttpOracle
    from mea.serve.process import Server
    from mea.victim import Victim

PathLike = str | Path


@dataclass(frozen=True)
class AttackResult:
    """One attack's outcome: the clone and its measurements against the victim.

    `metrics` is the content of the run's metrics.json (victim and clone metrics, confusion
    matrices, the resolved configuration); the fields repeat the figures people look at first.
    """

    strategy: str
    queries: int  # images sent to the victim
    clone_accuracy: float  # on the victim's test set
    fidelity: float  # top-1 agreement with the victim on its test set
    uniform_agreement: float  # the same on uniform random inputs (Tramèr et al. 2016)
    refused_after: int | None  # queries answered before the service refused the attacker
    time_s: dict[str, float]
    metrics: dict[str, Any] = field(repr=False)
    clone: nn.Module | None = field(default=None, repr=False, compare=False)
    directory: Path | None = None  # the run directory, when one was written


def load_victim(path: PathLike) -> Victim:
    """A victim from a directory `train_victim` wrote, a model file (with its optional sidecar
    MODEL.json), or a served victim's JSON file (`{"url": ..., "model": ...}`)."""
    from mea.victim import load_victim as load

    return load(Path(path))


def train_victim(
    out: PathLike,
    dataset: str = "mnist",
    arch: str = "lenet5",
    seed: int = 0,
    *,
    train: TrainConfig | None = None,
    calibration_size: int | None = None,
    target: str | None = None,
    hidden: int | None = None,
    activation: str | None = None,
    max_depth: int | None = None,
    trees: int | None = None,
    data_dir: PathLike | None = None,
    force: bool = False,
    progress: bool = False,
) -> Victim:
    """Train a victim into `out` and load it (what `mea train-victim` runs).

    An image victim (`arch` lenet5, small-cnn, mlp) trains with `train` (default: the victim's
    recipe, `mea.config.VICTIM_TRAINING`) on the dataset's training images minus the calibration
    split.  A scikit-learn victim (`arch` logreg, softmax, ovr, mlp, tree, forest:
    `mea.tabular.CLASSIC_ARCHS`) trains on a tabular task (digits, breast-cancer, iris, wine, csv:PATH
    with `target`) or on MNIST as flat pixels; `hidden`/`activation` (mlp), `max_depth` (tree,
    forest) and `trees` (forest) apply to it.  `mlp` on an image dataset is the image MLP unless
    `hidden` or `activation` is given (`mea.tabular.is_classic`).
    """
    from mea.config import VICTIM_TRAINING, Splits, VictimConfig
    from mea.tabular import is_classic, is_tabular

    data = None if data_dir is None else Path(data_dir)
    if is_classic(arch, dataset, hidden, activation):
        if train is not None or calibration_size is not None:
            raise ConfigError(f"train and calibration_size train the image victims; scikit-learn fits a {arch} victim")
        from mea.tabular.train import ClassicConfig, train_classic

        defaults = ClassicConfig(dataset=dataset, arch=arch)
        config = ClassicConfig(
            dataset=dataset,
            arch=arch,
            target=target,
            hidden=hidden or defaults.hidden,
            activation=activation or defaults.activation,
            max_depth=max_depth,
            trees=trees or defaults.trees,
            seed=seed,
        )
        train_classic(config, Path(out), data, force=force)
        return load_victim(out)
    for name, value in {"target": target, "hidden": hidden, "max_depth": max_depth, "trees": trees}.items():
        if value is not None:
            raise ConfigError(f"{name} applies to the scikit-learn victims, not {arch}")
    if is_tabular(dataset):
        raise ConfigError(f"{dataset} is a tabular task: train a scikit-learn victim on it (arch softmax, tree, ...)")
    from mea.victim import train_victim as train_image_victim

    splits = Splits(dataset) if calibration_size is None else Splits(dataset, calibration_size)
    config = VictimConfig(arch=arch, train=train or VICTIM_TRAINING, splits=splits, seed=seed)
    train_image_victim(config, Path(out), data, force=force, progress=progress)
    return load_victim(out)


def local_oracle(victim: Victim, output: str = "probabilities", budget: int | None = None) -> Oracle:
    """The victim's prediction API in process, answering in `output` mode, `budget` queries at most
    (a tree's names the leaf that answers too, as the path-finding attack needs)."""
    from mea.extraction.run import in_process_oracle

    return in_process_oracle(victim, output, budget)


def connect(
    url: str,
    api_key: str | None = None,
    model: str = MODEL_NAME,
    *,
    headers: dict[str, str] | None = None,
    ca: PathLike | None = None,
    victim: Victim | None = None,
) -> HttpOracle:
    """A victim behind an Open Inference Protocol v2 server (`mea serve`, KServe, Triton, MLServer),
    as an oracle.  `victim`, when the attacker has a copy of its record (its signature), fixes the
    classes and whether it takes feature vectors."""
    try:
        from mea.serve.client import HttpOracle
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"an HTTP oracle needs the optional package {exc.name!r}: pip install 'model-extraction-attack[serve]'"
        ) from None
    options: dict[str, Any] = {}
    if victim is not None:
        options = {"classes": victim.signature.classes, "features": not victim.signature.is_image}
    return HttpOracle(
        url,
        api_key,
        model=model,
        headers=headers or {},
        verify=str(ca) if ca is not None else True,
        **options,
    )


def attack(
    victim: Victim | PathLike,
    strategy: str = "random",
    queries: int | None = None,
    *,
    pool: str | None = None,
    output: str | None = None,
    oracle: Oracle | None = None,
    clone_arch: str = "lenet5",
    train: TrainConfig | None = None,
    seed: int = 0,
    out: PathLike | None = None,
    force: bool = False,
    data_dir: PathLike | None = None,
    progress: bool = False,
) -> AttackResult:
    """Steal `victim` (what `mea attack` runs): query it as a black box through `oracle` (default:
    in process) and build a clone.  The victim's weights only score the clone, never the attack.

    `strategy` names one of `mea.config.STRATEGY_NAMES` (an image victim: a clone retrained on the
    answers, from `pool`, by default `mnist-train`, `queries` of them, by default 60,000) or of
    `mea.extraction.EXTRACTION_STRATEGIES` (a scikit-learn victim; `queries` None: what the attack
    needs; `pool` None: uniform points in the feature ranges).  `output` is the answers' mode in
    process (an oracle's own mode otherwise).  `out` writes the run directory `mea attack` writes.
    """
    from mea.config import AttackConfig
    from mea.extraction import is_extraction

    victim = victim if not isinstance(victim, str | Path) else load_victim(victim)
    if oracle is not None and output is not None and output != oracle.output.spec:
        raise ConfigError(f"the oracle answers in {oracle.output.spec}, not {output}; drop output")
    output = output or (oracle.output.spec if oracle is not None else "probabilities")
    directory = None if out is None else Path(out)
    data = None if data_dir is None else Path(data_dir)
    if is_extraction(strategy):
        if train is not None or clone_arch != "lenet5":
            raise ConfigError(f"{strategy} solves for the victim's model and trains no network: drop train/clone_arch")
        from mea.extraction.run import ExtractionConfig, extraction_run

        metrics, clone = extraction_run(
            ExtractionConfig(strategy, queries, pool, output, seed), victim, oracle, directory, force, data
        )
    else:
        from mea.config import TrainConfig
        from mea.experiments.attack import attack_run

        config = AttackConfig(
            queries=queries or AttackConfig.queries,
            pool=pool or AttackConfig.pool,
            output=output,
            strategy=strategy,
            clone_arch=clone_arch,
            train=train or TrainConfig(),
            seed=seed,
        )
        metrics, clone = attack_run(config, victim, data, oracle, directory, force, progress)
    return AttackResult(
        strategy=strategy,
        queries=metrics["queries"],
        clone_accuracy=metrics["clone"]["accuracy"],
        fidelity=metrics["clone"]["fidelity"],
        uniform_agreement=metrics["clone"]["uniform_agreement"],
        refused_after=metrics.get("refused_after"),
        time_s=metrics["time_s"],
        metrics=metrics,
        clone=clone,
        directory=directory,
    )


def extract(oracle: Oracle, pool, strategy, budget: int, **options):
    """The attack driver itself (`mea.attacks.extract`): `strategy` a strategy object
    (`mea.attacks.make_strategy(name)` builds one by name), `pool` a `mea.data.Pool`; returns the
    `Extraction` (clone, transfer set, queries, timings) without scoring it."""
    from mea.attacks import extract as run

    return run(oracle, pool, strategy, budget, **options)


def fit_defense(
    victim: Victim,
    out: PathLike,
    *,
    target_fpr: float = 0.01,
    layers: tuple[str, ...] = ("auto",),
    confidence: bool = True,
    policy: str | None = None,
    watermark_rate: float | None = None,
    every_query_policy: str | None = None,
    data_dir: PathLike | None = None,
    force: bool = False,
) -> Defense:
    """Fit and calibrate the defense into `out` (what `mea defend fit` runs): the OOD detector on the
    owner's training split, its threshold and the synthetic-step detector's on the calibration
    split (`layers` the victim's layers it reads, `confidence` adding the victim's top probability),
    the response `policy` (default misinformation:0.9), a secret key, and the watermark's
    rate (None: the default where it applies; 0: none).  `Defense.oracle(victim)` is the defended
    victim, `Defense.gate(victim)` the same behind per-client detection, as `mea serve` runs it."""
    from mea.config import DEFAULT_POLICY, DetectorConfig
    from mea.defenses.store import fit_defense as fit

    config = DetectorConfig(layers=tuple(layers), use_confidence=confidence, target_fpr=target_fpr)
    return fit(
        victim,
        Path(out),
        config,
        policy or DEFAULT_POLICY,
        None if data_dir is None else Path(data_dir),
        force=force,
        watermark_rate=watermark_rate,
        every_query_policy=every_query_policy,
    )


def load_defense(path: PathLike, victim: Victim) -> Defense:
    """A defense directory `fit_defense` wrote, checked against the victim it was fitted for."""
    from mea.defenses.store import load_defense as load

    return load(Path(path), victim)


def start_server(
    victim: PathLike, db: PathLike, *, defense: PathLike | None = None, port: int | None = None, threads: int = 1
) -> Server:
    """`mea serve` as a child process on 127.0.0.1 (an ephemeral port by default), returned once it
    answers; use it as a context manager, or call `.stop()`.  Keys: `mea.serve.process.create_key`."""
    from mea.serve.process import start_server as start

    extra = () if defense is None else ("--defense", str(defense))
    return start(Path(victim), Path(db), Path(db).with_suffix(".log"), *extra, port=port, threads=threads)


def export_evidence(db: PathLike, out: PathLike) -> EvidenceSet:
    """Check the watermark evidence's hash chain in a service database and export it to one file."""
    from mea.ownership.evidence import export_evidence as export

    return export(Path(db), Path(out))


def verify(
    suspect: nn.Module | PathLike,
    *,
    victim: Victim | None = None,
    defense: Defense | None = None,
    evidence: EvidenceSet | PathLike | None = None,
    fingerprint: PathLike | None = None,
    clients: tuple[str, ...] = (),
    before: float | None = None,
    expect_head: str | None = None,
    probes: int | None = None,
    alpha: float | None = None,
    budget: Budget | None = None,
    api_key: str | None = None,
    model: str = MODEL_NAME,
    data_dir: PathLike | None = None,
) -> Verdict:
    """Was `suspect` extracted from `victim`? (what `mea verify` runs).

    `suspect`: a model in memory, a weights file (mea safetensors, ONNX) or a prediction API's URL.
    The exact watermark test needs `victim` and `defense` (the key); `evidence` (a service database,
    an export, or an `EvidenceSet`) adds the recorded answers, selected by `clients`, `before` (epoch
    seconds) and `expect_head`; `probes` caps the held-out probes (0: none).  `fingerprint` adds the
    passive fingerprint, reported but never counted.  The decision is at `alpha` (default 1e-6).
    """
    import dataclasses

    import numpy as np

    from mea.ownership.config import DEFAULT_ALPHA, Budget, check_victim_signature
    from mea.ownership.evidence import EvidenceError, EvidenceSet, load_evidence, records_until
    from mea.ownership.fingerprint import Fingerprint
    from mea.ownership.suspects import ModelSuspect, http_suspect, load_suspect
    from mea.ownership.verify import calibration_probes, verify_suspect
    from mea.ownership.watermark import defense_watermark

    if defense is not None and victim is None:
        raise ConfigError("the watermark test needs the victim too (it labels the probe images)")
    if evidence is not None and defense is None:
        raise ConfigError("evidence needs the victim and the defense: the watermark key is the defense's secret")
    budget = budget or Budget()
    if probes is not None:
        budget = dataclasses.replace(budget, probes=probes)
    data = None if data_dir is None else Path(data_dir)
    watermark = probe_set = records = None
    if victim is not None:
        check_victim_signature(victim.signature)
        if defense is not None:
            watermark = defense_watermark(defense.secret)
            if budget.probes != 0 or (budget.neighbours > 0 and evidence is not None):
                probe_set = calibration_probes(victim, None, data)
    if evidence is not None:
        records = evidence if isinstance(evidence, EvidenceSet) else load_evidence(Path(evidence))
        if expect_head is not None:
            records = records_until(records, expect_head)
        if clients:
            records = records.for_clients(clients)
        if before is not None:
            records = records.select(np.asarray(records.times) < before)
        if len(records) == 0:
            raise EvidenceError(
                "the evidence set is empty after selection (clients, before, expect_head): nothing to test with"
            )
    marks = Fingerprint.load(Path(fingerprint)) if fingerprint is not None else None
    if marks is not None and victim is not None and marks.victim_fingerprint != victim.fingerprint:
        raise ConfigError(
            f"{fingerprint} was made for another victim; make one for this one with `mea fingerprint make`"
        )
    if isinstance(suspect, str) and suspect.startswith(("http://", "https://")):
        try:
            model_suspect = http_suspect(suspect, api_key, model)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"a suspect API needs the optional package {exc.name!r}: pip install 'model-extraction-attack[serve]'"
            ) from None
    elif isinstance(suspect, str | Path):
        model_suspect = load_suspect(Path(suspect))
    else:
        model_suspect = ModelSuspect(suspect, type(suspect).__name__, "in memory")
    return verify_suspect(
        model_suspect,
        watermark=watermark,
        records=records,
        probes=probe_set,
        fingerprint=marks,
        alpha=DEFAULT_ALPHA if alpha is None else alpha,
        budget=budget,
    )
