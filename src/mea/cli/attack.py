"""`mea attack`: steal a victim, in-process or over HTTP."""

from __future__ import annotations

from pathlib import Path

import click

from mea.cli.common import (
    console,
    data_dir_option,
    default_of,
    extra_needed,
    force_option,
    given_options,
    names,
    positive_int,
    print_metrics,
    quiet_option,
    seed_option,
    train_options,
    use_threads,
)
from mea.config import ARCH_NAMES, MODEL_NAME, OUTPUT_MODES, POOL_NAMES, STRATEGY_NAMES, AttackConfig, TrainConfig
from mea.errors import MeaError
from mea.extraction import EXTRACTION_STRATEGIES, is_extraction


@click.command("attack")
@click.option(
    "--victim",
    "victim_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Victim directory (from `mea train-victim`): attacked in-process, or with --url only used to score the clone.",
)
@click.option(
    "--url",
    default=None,
    help="Attack a served victim over HTTP instead: `mea serve` or any Open Inference Protocol v2 server "
    "(KServe, MLServer, Triton), e.g. http://127.0.0.1:8000.",
)
@click.option(
    "--model",
    "model_name",
    default=MODEL_NAME,
    show_default=True,
    help="The model's name on the --url server.",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="An HTTP header for every --url request, e.g. 'Authorization: Bearer TOKEN' (repeatable); "
    "never written into the run directory.",
)
@click.option(
    "--api-key",
    envvar="MEA_API_KEY",
    default=None,
    help="The key for --url [default: $MEA_API_KEY]; never written into the run directory.",
)
@click.option(
    "--ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA bundle (PEM) to trust for an https --url whose certificate the system does not know.",
)
@click.option(
    "--queries",
    type=int,
    default=default_of(AttackConfig, "queries"),
    show_default=True,
    callback=positive_int,
    help="Query budget, in images.",
)
@click.option(
    "--pool",
    default=default_of(AttackConfig, "pool"),
    show_default=True,
    help=f"Attacker's query pool: {names(POOL_NAMES)}, or its own images by path (a .npz file, or a folder "
    "of PNG/JPEG files, one subfolder per class when labelled); the data-free strategies (dfme, maze, dfms) use none.",
)
@click.option(
    "--output",
    default=None,
    help=f"What the oracle reveals: {OUTPUT_MODES} "
    f"[default: {default_of(AttackConfig, 'output')}; with --url, the service decides].",
)
@click.option(
    "--strategy",
    default=default_of(AttackConfig, "strategy"),
    show_default=True,
    help=f"How queries are chosen: {', '.join(STRATEGY_NAMES)} (dfme-aware:WEIGHT sets its push toward digits); "
    f"against a scikit-learn victim (Tramèr et al. 2016): {', '.join(EXTRACTION_STRATEGIES)} "
    "(path-finding:incomplete leaves features out).",
)
@click.option(
    "--clone-arch",
    default=default_of(AttackConfig, "clone_arch"),
    show_default=True,
    help=f"The clone's architecture: {names(ARCH_NAMES)}.",
)
@train_options
@seed_option(default_of(AttackConfig, "seed"))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create for the run.")
@data_dir_option
@force_option
@quiet_option
def attack_command(
    victim_dir: Path,
    url: str | None,
    model_name: str,
    headers: tuple[str, ...],
    api_key: str | None,
    ca: Path | None,
    queries: int,
    pool: str,
    output: str | None,
    strategy: str,
    clone_arch: str,
    train: TrainConfig,
    seed: int,
    out: Path,
    data_dir: Path | None,
    force: bool,
    quiet: bool,
) -> None:
    """Steal the victim: query it as a black box and train a clone on its answers."""
    from mea.runs import check_out, check_victim_directory

    # Mistakes are refused before any work and before torch is imported (seconds on a busy machine).
    check_out(out, force)
    check_victim_directory(victim_dir)
    if url is None:
        url_only = {"--ca": ca is not None, "--header": bool(headers), "--model": model_name != MODEL_NAME}
        for name, given in url_only.items():
            if given:
                raise MeaError(f"{name} only applies to --url; drop it or name the served victim with --url")
    sent_headers = parse_headers(headers)
    extraction = is_extraction(strategy)
    if extraction:
        # Tramèr et al.'s attacks solve for the model: they train no network with these options.
        given = given_options("epochs", "lr", "batch_size", "schedule", "loss", "temperature", "clone_arch")
        if given:
            raise MeaError(f"{given[0]} trains a neural clone; {strategy} solves for the victim's model: drop it")
    elif url is None:
        # Checked whole before torch and the first query (an unknown strategy, a bad output mode for the
        # loss...): mea.config needs no torch, so a mistake is refused in a fraction of a second.
        check_attack(queries, pool, output or default_of(AttackConfig, "output"), strategy, clone_arch, train)
    use_threads()
    from mea import api
    from mea.oracle import parse_output

    victim = api.load_victim(victim_dir)
    oracle = None
    if url is not None:
        with extra_needed("serve", "mea attack --url"):
            import mea.serve.client  # noqa: F401  (a missing extra is named before anything is sent)

        oracle = api.connect(url, api_key, model_name, headers=sent_headers, ca=ca, victim=victim)
        if output is not None and parse_output(output) != oracle.output:
            raise MeaError(f"the service answers in {oracle.output.spec}, not {output}; drop --output with --url")
        output = oracle.output.spec
    output = output or default_of(AttackConfig, "output")
    if extraction:
        explicit = given_options("queries", "pool")
        result = api.attack(
            victim,
            strategy,
            queries if "--queries" in explicit else None,
            pool=pool if "--pool" in explicit else None,
            output=output,
            oracle=oracle,
            seed=seed,
            out=out,
            force=force,
            data_dir=data_dir,
        )
        metrics = result.metrics
        clone = metrics["clone"]
        console().print(
            f"{strategy}: {metrics['queries']:,} queries, {metrics['time_s']['compute']:.2f} s of compute; "
            f"agreement [bold]{clone['fidelity']:.2%}[/bold] on test inputs, "
            f"[bold]{clone['uniform_agreement']:.2%}[/bold] on uniform inputs"
            + (
                f"; largest parameter error {clone['max_parameter_error']:.2g}"
                if clone["max_parameter_error"] is not None
                else ""
                if clone.get("max_logit_error") is None
                else f"; largest logit error {clone['max_logit_error']:.2g}"
            )
        )
        console().print(f"run written to [bold]{out}[/bold]")
        return
    if url is not None:  # the service decided the output mode: checked now that it has said
        check_attack(queries, pool, output, strategy, clone_arch, train)
    result = api.attack(
        victim,
        strategy,
        queries,
        pool=pool,
        output=output,
        oracle=oracle,
        clone_arch=clone_arch,
        train=train,
        seed=seed,
        out=out,
        force=force,
        data_dir=data_dir,
        progress=not quiet,
    )
    metrics = result.metrics
    print_metrics(metrics, metrics["time_s"], metrics["config"]["dataset"], metrics["queries"])
    if metrics["refused_after"] is not None:
        console().print(
            f"[yellow]the service refused further queries after {metrics['refused_after']:,}; "
            "the clone learned from the answers it got before that[/yellow]"
        )
    console().print(f"run written to [bold]{out}[/bold]")


def check_attack(queries: int, pool: str, output: str, strategy: str, clone_arch: str, train: TrainConfig) -> None:
    """A ConfigError if these settings make no valid run (AttackConfig checks itself)."""
    AttackConfig(queries=queries, pool=pool, output=output, strategy=strategy, clone_arch=clone_arch, train=train)


def parse_headers(headers: tuple[str, ...]) -> dict[str, str]:
    """`--header 'Name: value'` options as a mapping; a malformed one is a one-line error."""
    parsed = {}
    for header in headers:
        name, colon, value = header.partition(":")
        if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
            raise MeaError(f"--header {header!r} is not 'Name: value'; write e.g. --header 'Authorization: Bearer T'")
        parsed[name.strip()] = value.strip()
    return parsed
