"""`mea train-victim` and `mea demo`: the victim, and the main job from end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from mea.cli.common import (
    console,
    data_dir_option,
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
from mea.config import ARCH_NAMES, VICTIM_TRAINING, MnistSplits, VictimConfig


@click.command("train-victim")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create for the victim.")
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
    default=default_of(MnistSplits, "calibration_size"),
    show_default=True,
    callback=positive_int,
    help="Last MNIST training images held out for the defender's calibration.",
)
@seed_option(default_of(VictimConfig, "seed"))
@data_dir_option
@force_option
@quiet_option
def train_victim_command(
    out: Path,
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
    """Train the victim LeNet-5 on MNIST train minus the calibration split."""
    from mea.runs import check_out

    train = dataclasses.replace(VICTIM_TRAINING, epochs=epochs, lr=lr, batch_size=batch_size, shift=shift)
    config = VictimConfig(arch=arch, train=train, splits=MnistSplits(calibration_size), seed=seed)
    check_out(out, force)  # before torch is imported: a mistake costs no seconds
    use_threads()
    from mea.victim import train_victim

    metrics = train_victim(config, out, data_dir, force=force, progress=not quiet)
    print_metrics({"victim": metrics["victim"]}, metrics["time_s"])
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
    from mea.runs import check_out

    check_out(out, force)  # before any work: an existing demo is replaced only with --force
    use_threads()
    from mea.config import AttackConfig
    from mea.data.catalog import MNIST
    from mea.data.fetch import fetch, is_cached
    from mea.experiments.attack import run_attack
    from mea.victim import load_victim, train_victim

    if not is_cached(MNIST, data_dir):
        fetch(MNIST, data_dir)
    console().print("[bold]1/2[/bold] training the victim LeNet-5 on MNIST (55,000 images)")
    train_victim(VictimConfig(), out / "victim", data_dir, force=True, progress=not quiet)
    console().print("[bold]2/2[/bold] stealing it: 60,000 probability queries from public MNIST, no true labels")
    metrics = run_attack(
        AttackConfig(), load_victim(out / "victim"), data_dir, out=out / "attack", force=True, progress=not quiet
    )
    print_metrics(metrics, metrics["time_s"], metrics["queries"])
    console().print(
        f"victim: [bold]{out / 'victim'}[/bold]   attack: [bold]{out / 'attack'}[/bold] "
        "(metrics.json, config.json, confusion_*.png, *.safetensors)"
    )
