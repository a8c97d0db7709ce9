"""`mea sweep` and `mea report`: grids of attacks, and the figures and tables they give."""

from __future__ import annotations

from pathlib import Path

import click

from mea.cli.common import (
    console,
    data_dir_option,
    extra_needed,
    force_option,
    positive_int,
    quiet_option,
    use_threads,
)
from mea.config import BACKEND_NAMES
from mea.experiments.presets import PRESETS


@click.command("sweep")
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
@click.option(
    "--backend",
    type=click.Choice(BACKEND_NAMES),
    default=BACKEND_NAMES[0],
    show_default=True,
    help="Where trials run: local worker processes, or a Ray cluster.",
)
@click.option(
    "--address",
    default=None,
    help="With --backend ray: the cluster's address [default: start Ray on this machine]; its nodes "
    "need no access to this machine's files (they are shipped through Ray's object store).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    callback=positive_int,
    help="Trials at a time: local worker processes, or a local Ray instance's CPUs [default: one per core].",
)
@data_dir_option
@click.option("--force", is_flag=True, help="Forget the results already in OUT and run every trial again.")
@quiet_option
def sweep_command(
    config: Path | None,
    preset: str | None,
    out: Path,
    victim_dir: Path | None,
    defense_dir: Path | None,
    seed: int | None,
    backend: str,
    address: str | None,
    workers: int | None,
    data_dir: Path | None,
    force: bool,
    quiet: bool,
) -> None:
    """Run a grid of attacks (CONFIG.yaml or --preset) into OUT/results.jsonl; rerunning resumes it."""
    if config is None and preset is None:
        raise click.UsageError("give a sweep file (CONFIG.yaml) or --preset NAME")
    if config is not None and preset is not None:
        raise click.UsageError("give a sweep file (CONFIG.yaml) or --preset NAME, not both")
    if preset is None and seed is not None:
        raise click.UsageError("--seed is for --preset; a sweep file sets its seeds itself")
    from mea.runs import check_writable

    check_writable(out / "results.jsonl")  # OUT itself, or where it will be created, must take files
    use_threads()
    with extra_needed("sweep", "mea sweep"):
        from mea.experiments.backends import make_backend
        from mea.experiments.sweep import check_failures, run_sweep
        from mea.experiments.sweep_config import load_sweep, replace_paths

    if preset is None:
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
        console().print(f"training a victim into {victim_dir}")
        train_victim(VictimConfig(seed=seed), victim_dir, data_dir, force=True, progress=not quiet)
    return victim_dir


@click.command("report")
@click.argument("runs", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create for the report.")
@force_option
def report_command(runs: Path, out: Path, force: bool) -> None:
    """Figures and tables from a sweep: report.html, report.md, PNGs.

    RUNS is the sweep's --out directory or its results.jsonl."""
    from mea.runs import check_out

    check_out(out, force)
    from mea.report import write_report

    page = write_report(runs, out, force=force)
    click.echo(f"report written to {page} (self-contained) and {out / 'report.md'}")
