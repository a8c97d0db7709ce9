"""The `mea` command line's group and its entry point (`run`); each command group lives in its own
module, every heavy import inside the commands.

`mea --help`, `mea COMMAND --help` and the usage errors import click and the torch-free
configuration (mea.config) only; a command imports torch and the rest when it runs.
"""

from __future__ import annotations

import sys

import click

from mea import __version__
from mea.cli.attack import attack_command
from mea.cli.common import positive_int
from mea.cli.data import data
from mea.cli.defend import defend
from mea.cli.export import export_command
from mea.cli.serve import audit_command, keys, serve_command
from mea.cli.sweep import report_command, sweep_command
from mea.cli.verify import evidence_group, fingerprint_group, verify_command
from mea.cli.victim import demo_command, train_victim_command
from mea.errors import MeaError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mea")
@click.option(
    "--threads",
    type=int,
    default=None,
    callback=positive_int,
    help="Torch threads [default: $MEA_THREADS, else the usable CPU cores not busy with other processes].",
)
def main(threads: int | None) -> None:
    """Model extraction attacks and defenses on a served image classifier (an MNIST digit reader by default)."""
    # Only recorded here (click keeps it in the root context): each command that computes applies
    # it with mea.cli.common.use_threads, so that --help never imports torch.


for command in (
    data,
    train_victim_command,
    attack_command,
    defend,
    serve_command,
    keys,
    audit_command,
    sweep_command,
    report_command,
    demo_command,
    export_command,
    verify_command,
    fingerprint_group,
    evidence_group,
):
    main.add_command(command)


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
