"""What every command shares: options, their checks, the thread setting, printing.

Nothing here imports torch, rich or any other heavy library at module level: `mea --help` and the
error paths import only click and the torch-free configuration (mea.config).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mea import threads
from mea.config import LabelLoss, Schedule, TrainConfig
from mea.errors import MeaError

if TYPE_CHECKING:
    from rich.console import Console

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Dataset cache [default: $MEA_DATA_DIR or ~/.cache/mea/data].",
)
force_option = click.option("--force", is_flag=True, help="Replace --out if it already holds files.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


def seed_option(default: int) -> Callable:
    return click.option(
        "--seed", type=int, default=default, show_default=True, help="Seed of every random choice (reproducible)."
    )


def default_of(config: type, name: str) -> Any:
    """The default of one field of a config dataclass, without building (and validating) an instance."""
    for item in dataclasses.fields(config):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
            raise ValueError(f"{config.__name__}.{name} has no default")
    raise ValueError(f"{config.__name__} has no field {name!r}")


def positive_int(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be a positive integer, got {value}")
    return value


def positive_float(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise click.BadParameter(f"must be positive, got {value}")
    return value


def comma_list(convert: Callable[[str], Any]) -> Callable:
    """A click callback turning "a,b,c" into a tuple of converted items."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple | None:
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


def dataset_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A built-in dataset's name, or a path to the user's own images (made absolute: run records
    name it wherever they are read)."""
    from mea.config import DATASET_NAMES
    from mea.tabular import CSV_PREFIX, is_tabular

    if value in DATASET_NAMES:
        return value
    if is_tabular(value):  # a classic-ML victim's task (mea.tabular): built in, or csv:PATH
        if not value.startswith(CSV_PREFIX):
            return value
        path = Path(value[len(CSV_PREFIX) :]).expanduser()
        if not path.is_file():
            raise click.BadParameter(f"{value!r}: no such CSV file")
        return CSV_PREFIX + str(path.resolve())
    path = Path(value).expanduser()
    if not path.exists():
        raise click.BadParameter(
            f"{value!r} is neither a built-in dataset ({names(DATASET_NAMES)}) "
            "nor a .npz file or image folder that exists"
        )
    return str(path.resolve())


def given_options(*params: str) -> list[str]:
    """The options among `params` (parameter names) that the command line set explicitly, as flags."""
    context = click.get_current_context()
    return [
        f"--{name.replace('_', '-')}"
        for name in params
        if context.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
    ]


def names(items: tuple[str, ...]) -> str:
    """Items as prose: "a, b or c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def use_threads() -> None:
    """Apply `mea --threads N` (default: MEA_THREADS, else the usable cores not busy elsewhere,
    re-read as training goes: `mea.threads`) to torch.

    Called by each command that computes, when it runs: the group option only records the request,
    so that `--help` and the error paths never import torch.  At most one thread per free core:
    more oversubscribes the cores, and waiting threads then burn the time of working ones.
    """
    context = click.get_current_context(silent=True)
    requested = context.find_root().params.get("threads") if context is not None else None
    if requested:
        # As MEA_THREADS=N: the processes this command starts (a sweep's workers) keep to it too.
        os.environ[threads.ENV_THREADS] = str(requested)
    threads.apply(requested)


# The optional extras of pyproject.toml and the top-level modules each one installs.
EXTRAS = {
    "serve": ("fastapi", "starlette", "uvicorn", "httpx", "orjson", "prometheus_client"),
    "sweep": ("pydantic", "yaml"),
}


@contextmanager
def extra_needed(extra: str, what: str) -> Iterator[None]:
    """Turn the import error of a missing optional extra into one line that says how to install it."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in EXTRAS[extra]:
            raise
        raise MeaError(
            f"{what} needs the optional package {exc.name!r}: pip install 'model-extraction-attack[{extra}]'"
        ) from None


@functools.cache
def console() -> Console:
    """The rich console for tables and messages (imported on first use: rich costs start-up time)."""
    from rich.console import Console

    return Console()


# --- clone training -------------------------------------------------------------------------

_TRAIN_FIELDS = tuple(item.name for item in dataclasses.fields(TrainConfig))


def train_options(func: Callable) -> Callable:
    """Add the clone-training options (defaults: TrainConfig's); the command receives one TrainConfig, `train`."""
    clone = TrainConfig()
    options = [
        click.option(
            "--epochs",
            type=int,
            default=clone.epochs,
            show_default=True,
            callback=positive_int,
            help="Passes over the transfer set.",
        ),
        click.option(
            "--lr",
            type=float,
            default=clone.lr,
            show_default=True,
            callback=positive_float,
            help="Learning rate (the peak under one-cycle).",
        ),
        click.option(
            "--batch-size",
            type=int,
            default=clone.batch_size,
            show_default=True,
            callback=positive_int,
            help="Images per optimiser step.",
        ),
        click.option(
            "--schedule",
            type=click.Choice([s.value for s in Schedule]),
            default=clone.schedule.value,
            show_default=True,
            help="Learning-rate schedule: constant, or one-cycle (Smith & Topin 2017).",
        ),
        click.option(
            "--loss",
            type=click.Choice([loss.value for loss in LabelLoss]),
            default=clone.loss.value,
            show_default=True,
            help="soft: match the answers; hard: their top-1 class; logits: regress on their log-probabilities "
            "(exact probability answers only; ignores --temperature).",
        ),
        click.option(
            "--temperature",
            type=float,
            default=clone.temperature,
            show_default=True,
            callback=positive_float,
            help="Distillation temperature for soft labels (1 = plain CE).",
        ),
        click.option(
            "--true-label-weight",
            type=float,
            default=clone.true_label_weight,
            show_default=True,
            help="Weight of the pool's own true labels in the loss (0 = not used).",
        ),
        click.option(
            "--shift",
            type=int,
            default=clone.shift,
            show_default=True,
            help="Augmentation: random shifts of up to this many pixels (0 = off).",
        ),
        click.option(
            "--rotate",
            type=float,
            default=clone.rotate,
            show_default=True,
            help="Augmentation: random rotations of up to this many degrees either way (0 = off; 15 at small budgets).",
        ),
        click.option(
            "--scale",
            type=float,
            default=clone.scale,
            show_default=True,
            help="Augmentation: random rescaling by up to this fraction either way (0 = off; 0.15 at small budgets).",
        ),
        click.option(
            "--min-steps",
            type=int,
            default=clone.min_steps,
            show_default=True,
            help="Small transfer sets get more epochs, up to this many optimiser steps (0 = off).",
        ),
        click.option(
            "--pseudo-label-rounds",
            type=int,
            default=clone.pseudo_label_rounds,
            show_default=True,
            help="Semi-supervised: rounds of self-training on the unqueried pool (0 = answers only).",
        ),
        click.option(
            "--pseudo-label-epochs",
            type=int,
            default=clone.pseudo_label_epochs,
            show_default=True,
            help="Epochs per self-training round.",
        ),
    ]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["train"] = TrainConfig(**{name: kwargs.pop(name) for name in _TRAIN_FIELDS})
        return func(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


# --- printing -------------------------------------------------------------------------------


def print_metrics(metrics: dict, time_s: dict, dataset: str, queries: int | None = None) -> None:
    """The victim's and the clone's metrics on the victim's test set (`dataset` names it)."""
    from rich.table import Table

    from mea.data.catalog import title

    images = sum(map(sum, metrics["victim"]["confusion_matrix"]))
    table = Table(title=f"{title(dataset)} test ({images:,} images)")
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
    console().print(table)
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in time_s.items())
    console().print(("" if queries is None else f"queries: {queries:,}   ") + f"time: {timing}")
