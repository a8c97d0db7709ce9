"""`mea train-victim` and `mea demo`: the victim, and the main job from end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from mea.cli.common import (
    console,
    data_dir_option,
    dataset_name,
    default_of,
    force_option,
    given_options,
    names,
    positive_float,
    positive_int,
    print_metrics,
    quiet_option,
    seed_option,
    use_threads,
)
from mea.config import ARCH_NAMES, DATASET_NAMES, VICTIM_TRAINING, AttackConfig, Splits, VictimConfig
from mea.errors import MeaError
from mea.tabular import CLASSIC_ARCHS, TABULAR_DATASETS, is_classic, is_tabular


@click.command("train-victim")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create for the victim.")
@click.option(
    "--dataset",
    default=default_of(Splits, "dataset"),
    show_default=True,
    callback=dataset_name,
    help=f"The victim's task: a built-in dataset ({names(DATASET_NAMES)}), fetched into the cache on first use, "
    "or your own labelled images by path (a .npz file with train and test parts, or a folder with train/ and "
    "test/ holding one subfolder per class), at their own size and channels; for a scikit-learn --arch, a "
    f"tabular task ({names(TABULAR_DATASETS)}, csv:PATH with --target) or mnist.",
)
@click.option(
    "--arch",
    default=default_of(VictimConfig, "arch"),
    show_default=True,
    help=f"Architecture: {names(ARCH_NAMES)}, or a scikit-learn model ({names(CLASSIC_ARCHS)}) on a tabular task "
    f"({names(TABULAR_DATASETS)}, csv:PATH) or on mnist as 784 features.",
)
@click.option("--target", default=None, help="A csv:PATH task's class column.")
@click.option("--hidden", type=int, default=None, callback=positive_int, help="mlp: hidden units [default: 20].")
@click.option(
    "--activation", type=click.Choice(["tanh", "relu"]), default=None, help="mlp: hidden activation [default: tanh]."
)
@click.option("--max-depth", type=int, default=None, callback=positive_int, help="tree, forest: the largest depth.")
@click.option("--trees", type=int, default=None, callback=positive_int, help="forest: its trees [default: 10].")
@click.option(
    "--epochs",
    type=int,
    default=VICTIM_TRAINING.epochs,
    show_default=True,
    callback=positive_int,
    help="Passes over the training split.",
)
@click.option(
    "--lr",
    type=float,
    default=VICTIM_TRAINING.lr,
    show_default=True,
    callback=positive_float,
    help="Learning rate.",
)
@click.option(
    "--batch-size",
    type=int,
    default=VICTIM_TRAINING.batch_size,
    show_default=True,
    callback=positive_int,
    help="Images per optimiser step.",
)
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
    default=default_of(Splits, "calibration_size"),
    show_default=True,
    callback=positive_int,
    help="Last training images of the dataset held out for the defender's calibration.",
)
@seed_option(default_of(VictimConfig, "seed"))
@data_dir_option
@force_option
@quiet_option
def train_victim_command(
    out: Path,
    dataset: str,
    arch: str,
    epochs: int,
    lr: float,
    batch_size: int,
    shift: int,
    calibration_size: int,
    seed: int,
    data_dir: Path | None,
    force: bool,
    quiet: bool,
    target: str | None,
    hidden: int | None,
    activation: str | None,
    max_depth: int | None,
    trees: int | None,
) -> None:
    """Train a victim on a dataset's training images minus the calibration split."""
    from mea.runs import check_out

    classic = {"--target": target, "--hidden": hidden, "--activation": activation, "--max-depth": max_depth}
    if is_classic(arch, dataset, hidden, activation):
        _train_classic(out, dataset, arch, seed, data_dir, force, target, hidden, activation, max_depth, trees)
        return
    for name, value in {**classic, "--trees": trees}.items():
        if value is not None:
            raise MeaError(f"{name} applies to the scikit-learn victims ({names(CLASSIC_ARCHS)}), not {arch}")
    if is_tabular(dataset):
        raise MeaError(
            f"{dataset} is a tabular task: train a scikit-learn victim on it (--arch {names(CLASSIC_ARCHS)})"
        )

    train = dataclasses.replace(VICTIM_TRAINING, epochs=epochs, lr=lr, batch_size=batch_size, shift=shift)
    config = VictimConfig(arch=arch, train=train, splits=Splits(dataset, calibration_size), seed=seed)
    check_out(out, force)  # before torch is imported: a mistake costs no seconds
    use_threads()
    from mea import api
    from mea.runs import read_json

    api.train_victim(
        out,
        dataset,
        arch,
        seed,
        train=config.train,
        calibration_size=calibration_size,
        data_dir=data_dir,
        force=force,
        progress=not quiet,
    )
    metrics = read_json(out / "metrics.json", "the victim directory is incomplete")
    print_metrics({"victim": metrics["victim"]}, metrics["time_s"], dataset)
    console().print(f"victim written to [bold]{out}[/bold]")


def _train_classic(
    out: Path,
    dataset: str,
    arch: str,
    seed: int,
    data_dir: Path | None,
    force: bool,
    target: str | None,
    hidden: int | None,
    activation: str | None,
    max_depth: int | None,
    trees: int | None,
) -> None:
    """`mea train-victim --arch logreg|softmax|ovr|mlp|tree|forest` (mea.tabular.train)."""
    from mea.runs import check_out

    given = given_options("epochs", "lr", "batch_size", "shift", "calibration_size")
    if given:
        raise MeaError(f"{given[0]} trains the image victims; scikit-learn fits a {arch} victim: drop it")
    mlp_only = {"--hidden": hidden, "--activation": activation}
    for name, value in mlp_only.items():
        if value is not None and arch != "mlp":
            raise MeaError(f"{name} applies to --arch mlp, not {arch}")
    if max_depth is not None and arch not in ("tree", "forest"):
        raise MeaError(f"--max-depth applies to --arch tree or forest, not {arch}")
    if trees is not None and arch != "forest":
        raise MeaError(f"--trees applies to --arch forest, not {arch}")
    from mea.tabular.train import ClassicConfig

    config = ClassicConfig(
        dataset=dataset,
        arch=arch,
        target=target,
        hidden=hidden or default_of(ClassicConfig, "hidden"),
        activation=activation or default_of(ClassicConfig, "activation"),
        max_depth=max_depth,
        trees=trees or default_of(ClassicConfig, "trees"),
        seed=seed,
    )
    check_out(out, force)
    use_threads()
    from mea import api
    from mea.runs import read_json

    api.train_victim(
        out,
        dataset,
        arch,
        seed,
        target=target,
        hidden=config.hidden,
        activation=config.activation,
        max_depth=max_depth,
        trees=config.trees,
        data_dir=data_dir,
        force=force,
    )
    metrics = read_json(out / "metrics.json", "the victim directory is incomplete")
    victim = metrics["victim"]
    console().print(
        f"{arch} on {dataset}: test accuracy [bold]{victim['accuracy']:.2%}[/bold], macro F1 {victim['f1']:.4f} "
        f"({metrics['config']['signature']}; trained in {metrics['time_s']['train']:.1f} s)"
    )
    console().print(f"victim written to [bold]{out}[/bold]")


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("mea-demo"),
    show_default=True,
    help="Directory to create for the demo (victim/ and attack/ inside).",
)
@click.option(
    "--queries",
    type=int,
    default=default_of(AttackConfig, "queries"),
    show_default=True,
    callback=positive_int,
    help="The attacker's budget (a smaller one makes a quicker, weaker demo).",
)
@click.option("--force", is_flag=True, help="Replace --out if it already holds files (without it, the demo refuses).")
@data_dir_option
@quiet_option
def demo_command(out: Path, queries: int, force: bool, data_dir: Path | None, quiet: bool) -> None:
    """The main job: fetch MNIST, train the victim, steal it (60,000 queries by default), print the metrics."""
    # The study's setting throughout: the default dataset, victim and attack.
    from mea.runs import check_out

    check_out(out, force)  # before any work: an existing demo is replaced only with --force
    use_threads()
    from mea import api
    from mea.data.catalog import dataset_spec
    from mea.data.fetch import fetch, is_cached

    victim_config = VictimConfig()
    spec = dataset_spec(victim_config.splits.dataset)
    if not is_cached(spec, data_dir):
        fetch(spec, data_dir)
    train_images = victim_config.splits.victim_train.stop
    console().print(f"[bold]1/2[/bold] training the victim LeNet-5 on {spec.title} ({train_images:,} images)")
    victim = api.train_victim(out / "victim", data_dir=data_dir, force=True, progress=not quiet)
    attack_config = AttackConfig(queries=queries)
    console().print(
        f"[bold]2/2[/bold] stealing it: {attack_config.queries:,} queries from the {attack_config.pool} pool, "
        f"answered with {attack_config.output}, no true labels"
    )
    stolen = api.attack(
        victim, attack_config.strategy, queries, out=out / "attack", force=True, data_dir=data_dir, progress=not quiet
    )
    metrics = stolen.metrics
    print_metrics(metrics, metrics["time_s"], spec.name, metrics["queries"])
    console().print(
        f"victim: [bold]{out / 'victim'}[/bold]   attack: [bold]{out / 'attack'}[/bold] "
        "(metrics.json, config.json, confusion_*.png, *.safetensors)"
    )
