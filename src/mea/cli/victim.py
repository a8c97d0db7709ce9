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
    names,
    positive_float,
    positive_int,
    print_metrics,
    quiet_option,
    seed_option,
    use_threads,
)
from mea.config import ARCH_NAMES, DATASET_NAMES, VICTIM_TRAINING, Splits, VictimConfig


@click.command("train-victim")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create for the victim.")
@click.option(
    "--dataset",
    default=default_of(Splits, "dataset"),
    show_default=True,
    callback=dataset_name,
    help=f"The victim's task: a built-in dataset ({names(DATASET_NAMES)}), fetched into the cache on first use, "
    "or your own labelled images by path (a .npz file with train and test parts, or a folder with train/ and "
    "test/ holding one subfolder per class), at their own size and channels.",
)
@click.option(
    "--arch",
    default=default_of(VictimConfig, "arch"),
    show_default=True,
    help=f"Architecture: {names(ARCH_NAMES)}.",
)
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
) -> None:
    """Train a victim on a dataset's training images minus the calibration split."""
    from mea.runs import check_out

    train = dataclasses.replace(VICTIM_TRAINING, epochs=epochs, lr=lr, batch_size=batch_size, shift=shift)
    config = VictimConfig(arch=arch, train=train, splits=Splits(dataset, calibration_size), seed=seed)
    check_out(out, force)  # before torch is imported: a mistake costs no seconds
    use_threads()
    from mea.victim import train_victim

    metrics = train_victim(config, out, data_dir, force=force, progress=not quiet)
    print_metrics({"victim": metrics["victim"]}, metrics["time_s"], dataset)
    console().print(f"victim written to [bold]{out}[/bold]")


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("mea-demo"),
    show_default=True,
    help="Directory to create for the demo (victim/ and attack/ inside).",
)
@click.option("--force", is_flag=True, help="Replace --out if it already holds files (without it, the demo refuses).")
@data_dir_option
@quiet_option
def demo_command(out: Path, force: bool, data_dir: Path | None, quiet: bool) -> None:
    """The main job: fetch MNIST, train the victim, steal it with 60,000 queries, print the metrics."""
    # The study's setting throughout: the default dataset, victim and attack.
    from mea.runs import check_out

    check_out(out, force)  # before any work: an existing demo is replaced only with --force
    use_threads()
    from mea.config import AttackConfig
    from mea.data.catalog import dataset_spec
    from mea.data.fetch import fetch, is_cached
    from mea.experiments.attack import run_attack
    from mea.victim import load_victim, train_victim

    victim_config, attack_config = VictimConfig(), AttackConfig()
    spec = dataset_spec(victim_config.splits.dataset)
    if not is_cached(spec, data_dir):
        fetch(spec, data_dir)
    train_images = victim_config.splits.victim_train.stop
    console().print(f"[bold]1/2[/bold] training the victim LeNet-5 on {spec.title} ({train_images:,} images)")
    train_victim(victim_config, out / "victim", data_dir, force=True, progress=not quiet)
    console().print(
        f"[bold]2/2[/bold] stealing it: {attack_config.queries:,} queries from the {attack_config.pool} pool, "
        f"answered with {attack_config.output}, no true labels"
    )
    metrics = run_attack(
        attack_config, load_victim(out / "victim"), data_dir, out=out / "attack", force=True, progress=not quiet
    )
    print_metrics(metrics, metrics["time_s"], spec.name, metrics["queries"])
    console().print(
        f"victim: [bold]{out / 'victim'}[/bold]   attack: [bold]{out / 'attack'}[/bold] "
        "(metrics.json, config.json, confusion_*.png, *.safetensors)"
    )
