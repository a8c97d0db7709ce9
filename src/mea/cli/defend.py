"""`mea defend`: fit the query detector, evaluate what it costs users and attackers."""

from __future__ import annotations

from pathlib import Path

import click

from mea.cli.common import (
    comma_list,
    console,
    data_dir_option,
    default_of,
    force_option,
    names,
    positive_int,
    quiet_option,
    seed_option,
    train_options,
    use_threads,
)
from mea.config import (
    DEFAULT_POLICY,
    LAYER_NAMES,
    POLICIES,
    DetectorConfig,
    EvaluationConfig,
    TrainConfig,
)
from mea.ownership.config import DEFAULT_RATE as DEFAULT_WATERMARK_RATE

victim_option = click.option(
    "--victim",
    "victim_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Victim directory (from `mea train-victim`).",
)


@click.group()
def defend() -> None:
    """Defenses: fit the OOD query detector, evaluate what it costs users and attackers."""


@defend.command("fit")
@victim_option
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create for the defense.")
@click.option(
    "--target-fpr",
    type=float,
    default=default_of(DetectorConfig, "target_fpr"),
    show_default=True,
    help="Share of in-distribution queries flagged, set on the calibration split.",
)
@click.option(
    "--layers",
    default=",".join(default_of(DetectorConfig, "layers")),
    show_default=True,
    callback=comma_list(str),
    help="Victim layers for the Mahalanobis scores: auto (every convolution's output; LeNet-5: conv1,conv2) "
    f"or names (LeNet-5: {', '.join(LAYER_NAMES)}; other victims: the names the error for a wrong one lists).",
)
@click.option(
    "--confidence/--no-confidence",
    default=default_of(DetectorConfig, "use_confidence"),
    show_default=True,
    help="Add the victim's maximum softmax probability to the score.",
)
@click.option(
    "--policy",
    default=DEFAULT_POLICY,
    show_default=True,
    help=f"Answer to flagged queries: {POLICIES}.",
)
@click.option(
    "--poison-all",
    "every_query_policy",
    default=None,
    help="Also answer every query the detector passes through this policy: prediction poisoning, "
    "e.g. mad-top1:1 (MAD, Orekondy et al. 2020, keeping each top-1 label) [default: exact answers].",
)
@click.option(
    "--watermark-rate",
    type=float,
    default=None,
    help="Share of each client's in-distribution answers the served victim watermarks, the evidence "
    f"`mea verify` uses (0: no watermark) [default: {DEFAULT_WATERMARK_RATE:g} for a victim of 28x28 grey "
    "images and 10 classes; 0 for others, which the watermark does not support yet].",
)
@data_dir_option
@force_option
def defend_fit_command(
    victim_dir: Path,
    out: Path,
    target_fpr: float,
    layers: tuple[str, ...],
    confidence: bool,
    policy: str,
    every_query_policy: str | None,
    watermark_rate: float | None,
    data_dir: Path | None,
    force: bool,
) -> None:
    """Fit the detector on the victim's training split; calibrate it on the held-out calibration split."""
    from mea.runs import check_out, check_victim_directory

    config = DetectorConfig(layers=layers, use_confidence=confidence, target_fpr=target_fpr)
    check_out(out, force)
    if every_query_policy is not None:
        from mea.defenses.policies import parse_policy

        parse_policy(every_query_policy)  # a typo is refused before the detector is fitted
    check_victim_directory(victim_dir)
    use_threads()
    from mea import api

    defense = api.fit_defense(
        api.load_victim(victim_dir),
        out,
        target_fpr=config.target_fpr,
        layers=config.layers,
        confidence=config.use_confidence,
        policy=policy,
        watermark_rate=watermark_rate,
        every_query_policy=every_query_policy,
        data_dir=data_dir,
        force=force,
    )
    detector = defense.detector
    layers = (
        f"layers {', '.join(detector.config.layers)}"
        if detector.config.layers
        else "no inner layers (the victim shows none: only the output-based score applies)"
    )
    console().print(
        f"detector: {layers}{' + confidence' if confidence else ''}; "
        f"threshold {detector.threshold:.3f} at target FPR {target_fpr:g}; policy {defense.policy.spec}"
        f"{'' if defense.every_query_policy is None else f', every query {defense.every_query_policy.spec}'}; "
        f"watermark {'none' if defense.watermark is None else f'{defense.watermark.rate:g} of answers'}"
    )
    console().print(f"defense written to [bold]{out}[/bold]")


@defend.command("eval")
@victim_option
@click.option(
    "--defense",
    "defense_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Defense directory (from `mea defend fit`) for this victim.",
)
@click.option(
    "--queries",
    type=int,
    default=default_of(EvaluationConfig, "queries"),
    show_default=True,
    callback=positive_int,
    help="Each attacker's budget.",
)
@click.option(
    "--sources",
    default=",".join(default_of(EvaluationConfig, "sources")),
    show_default=True,
    callback=comma_list(str),
    help=f"Attacker query sources (pools: {names(default_of(EvaluationConfig, 'sources'))}).",
)
@click.option(
    "--sweep-sources",
    default=",".join(default_of(EvaluationConfig, "sweep_sources")),
    show_default=True,
    callback=comma_list(str),
    help="Sources attacked at every swept threshold and policy.",
)
@click.option(
    "--fpr-sweep",
    default=",".join(f"{r:g}" for r in default_of(EvaluationConfig, "fpr_sweep")),
    show_default=True,
    callback=comma_list(float),
    help="Target false-positive rates for the trade-off curve.",
)
@click.option(
    "--policies",
    default=",".join(default_of(EvaluationConfig, "policies")),
    show_default=True,
    callback=comma_list(str),
    help="Response policies to compare.",
)
@click.option(
    "--budgets",
    default=",".join(map(str, default_of(EvaluationConfig, "cost_budgets"))),
    show_default=True,
    callback=comma_list(int),
    help="Budgets tried to find the attack cost (capped at --queries).",
)
@click.option(
    "--stream-queries",
    type=int,
    default=default_of(EvaluationConfig, "stream_queries"),
    show_default=True,
    callback=positive_int,
    help="Queries per attacker stream for the per-client detector.",
)
@train_options
@seed_option(default_of(EvaluationConfig, "seed"))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory to create for the evaluation (defense.json, tradeoff.png/csv, roc.png, cost.csv).",
)
@data_dir_option
@force_option
@quiet_option
def defend_eval_command(
    victim_dir: Path,
    defense_dir: Path,
    queries: int,
    sources: tuple[str, ...],
    sweep_sources: tuple[str, ...],
    fpr_sweep: tuple[float, ...],
    policies: tuple[str, ...],
    budgets: tuple[int, ...],
    stream_queries: int,
    train: TrainConfig,
    seed: int,
    out: Path,
    data_dir: Path | None,
    force: bool,
    quiet: bool,
) -> None:
    """Measure the defense: detection, benign accuracy, clone accuracy and attack cost per source."""
    from mea.runs import check_out, check_victim_directory

    check_out(out, force)
    check_victim_directory(victim_dir)
    config = EvaluationConfig(
        queries=queries,
        sources=sources,
        fpr_sweep=fpr_sweep,
        sweep_sources=sweep_sources,
        policies=policies,
        cost_budgets=budgets,
        stream_queries=stream_queries,
        train=train,
        seed=seed,
    )
    use_threads()
    from mea.defenses.store import load_defense
    from mea.experiments.evaluation import evaluate_defense
    from mea.victim import load_victim

    victim = load_victim(victim_dir)
    result = evaluate_defense(
        victim, load_defense(defense_dir, victim), config, out, data_dir, force=force, progress=not quiet
    )
    print_defense(result)
    console().print(f"evaluation written to [bold]{out}[/bold] (defense.json, tradeoff.png/csv, roc.png, cost.csv)")


def print_defense(result: dict) -> None:
    from rich.table import Table

    benign = result["benign_accuracy"]
    console().print(
        f"benign accuracy: {benign['undefended']:.2%} undefended, {benign['defended']:.2%} defended "
        f"(drop {benign['drop_pp']:.2f} pp); policy {result['policy']}, target FPR {result['target_fpr']:g}"
    )
    table = Table(title=f"Per attacker query source ({result['config']['queries']:,} queries each)")
    for column in ("source", "AUROC", "flagged", "clone undef.", "clone def.", "to 90% (def.)"):
        table.add_column(column, justify="right", overflow="fold")
    for source, detection in result["detector"].items():
        clone = result["clone_accuracy"][source]
        cost = result["attack_cost"][source]["defended"]["90%"]
        table.add_row(
            source,
            f"{detection['auroc']:.4f}",
            f"{detection['flagged_rate']:.2%}",
            f"{clone['undefended']:.2%}",
            f"{clone['defended']:.2%}",
            cost if isinstance(cost, str) else f"{cost['queries']:,} queries",
        )
    console().print(table)
