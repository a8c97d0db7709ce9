"""`mea serve`, `mea keys`, `mea audit`: the prediction service, its keys and its audit log."""

from __future__ import annotations

import os
from pathlib import Path

import click

from mea.cli.common import console, default_of, extra_needed, positive_float, positive_int, use_threads
from mea.config import OUTPUT_MODES, ServeConfig
from mea.errors import MeaError

db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The service database (keys and audit log) [default: $MEA_SERVE_DB or ./mea-serve.db].",
)


def _db_path(db: Path | None) -> Path:
    return db or Path(os.environ.get("MEA_SERVE_DB", "mea-serve.db"))


@click.command("serve")
@click.option(
    "--victim",
    "victim_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Victim directory (from `mea train-victim`): the model to serve.",
)
@click.option(
    "--defense",
    "defense_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Defense directory (from `mea defend fit`); none: answer every query exactly.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="TCP port to listen on.")
@click.option(
    "--output",
    default=default_of(ServeConfig, "output"),
    show_default=True,
    help=f"Default output mode (keys may be restricted further): {OUTPUT_MODES}.",
)
@click.option(
    "--model-name",
    default=default_of(ServeConfig, "model_name"),
    show_default=True,
    help="The model's name in the inference protocol's URLs (/v2/models/NAME/infer).",
)
@click.option(
    "--max-batch",
    type=int,
    default=default_of(ServeConfig, "max_batch"),
    show_default=True,
    callback=positive_int,
    help="Most images one request may carry; the request body limit follows from it.",
)
@click.option(
    "--max-body-mb",
    type=float,
    default=None,
    callback=positive_float,
    help="A lower request body limit, in MiB after decompression [default: what --max-batch needs].",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    callback=positive_int,
    help="Server processes sharing the port and the database (quotas and detection stay exact).",
)
@click.option(
    "--ssl-certfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Serve HTTPS with this certificate (PEM); needs --ssl-keyfile.",
)
@click.option(
    "--ssl-keyfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The certificate's private key (PEM).",
)
@click.option(
    "--refusals-per-s",
    type=float,
    default=default_of(ServeConfig, "refusals_per_s"),
    show_default=True,
    callback=positive_float,
    help="Refused requests allowed per remote address and second (after a burst); beyond, 429.",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log a line per HTTP request (uvicorn's access log).  Off by default: it costs about a tenth "
    "of a small request's time, and the audit log (`mea audit`) has every answered request anyway.",
)
@db_option
def serve_command(
    victim_dir: Path,
    defense_dir: Path | None,
    host: str,
    port: int,
    output: str,
    model_name: str,
    max_batch: int,
    max_body_mb: float | None,
    workers: int,
    ssl_certfile: Path | None,
    ssl_keyfile: Path | None,
    refusals_per_s: float,
    access_log: bool,
    db: Path | None,
) -> None:
    """Serve the victim over HTTP (Open Inference Protocol v2), with keys, quotas and an audit log."""
    from mea.runs import check_victim_directory

    check_victim_directory(victim_dir)
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise MeaError("--ssl-certfile and --ssl-keyfile go together: give both (PEM files) or neither")
    config = ServeConfig(
        db=_db_path(db),
        model_name=model_name,
        output=output,
        max_batch=max_batch,
        max_body_bytes=None if max_body_mb is None else int(max_body_mb * 1024 * 1024),
        shared_db=workers > 1,
        refusals_per_s=refusals_per_s,
    )
    use_threads()
    import torch

    with extra_needed("serve", "mea serve"):
        import uvicorn

        from mea.serve.app import create_app

    from mea.defenses.store import load_defense
    from mea.victim import load_victim

    # Everything that can fail on the user's input fails before the port is taken or the database
    # is created, so a refused start leaves nothing behind.
    victim = load_victim(victim_dir)
    if defense_dir is not None:
        load_defense(defense_dir, victim)
    sock = _listen(host, port)
    options = {
        "host": host,
        "port": port,
        "log_level": "info",
        "access_log": access_log,
        "timeout_graceful_shutdown": 10,
        "ssl_certfile": ssl_certfile,
        "ssl_keyfile": ssl_keyfile,
    }
    scheme = "https" if ssl_certfile else "http"
    click.echo(
        f"serving {model_name} on {scheme}://{host}:{sock.getsockname()[1]} with {workers} process(es) "
        f"(defense: {defense_dir or 'none'}; output: {output}; database: {config.db})",
        err=True,
    )
    if workers == 1:
        app = create_app(config, victim, load_defense(defense_dir, victim) if defense_dir is not None else None)
        uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])
        return

    import json

    from uvicorn.supervisors import Multiprocess

    from mea.serve.app import CONFIG_ENVIRONMENT

    settings = {
        "victim": str(victim_dir),
        "defense": None if defense_dir is None else str(defense_dir),
        # Torch threads per process: the model runs one batch at a time across all of them.
        "threads": torch.get_num_threads(),
        "config": {
            "db": str(config.db),
            "model_name": config.model_name,
            "output": config.output,
            "max_batch": config.max_batch,
            "max_body_bytes": config.max_body_bytes,
            "shared_db": True,
            "refusals_burst": config.refusals_burst,
            "refusals_per_s": config.refusals_per_s,
        },
    }
    os.environ[CONFIG_ENVIRONMENT] = json.dumps(settings)
    factory = "mea.serve.app:app_from_environment"
    Multiprocess(uvicorn.Config(factory, factory=True, workers=workers, **options), sockets=[sock]).run()


def _listen(host: str, port: int):
    """The listening socket, bound here so that a busy port is one clear error before any work."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP by name: asyncio turns Nagle's algorithm off only on sockets whose protocol says
    # TCP, and a socket made with protocol 0 would send each answer's headers and body as two
    # segments, the second held for the client's delayed ACK (measured: 48 ms per request instead
    # of a few).  TCP_NODELAY on the listening socket is inherited by every accepted connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MeaError(
            f"cannot listen on {host}:{port} ({exc.strerror}); stop what holds the port or choose another --port"
        ) from None
    sock.set_inheritable(True)
    return sock


@click.group()
def keys() -> None:
    """API keys of the prediction service."""


@keys.command("create")
@click.option("--name", required=True, help="Who the key is for.")
@click.option("--quota", type=int, default=None, help="Images this key may send in all [default: unlimited].")
@click.option("--rate", type=float, default=None, help="Images per second [default: unlimited].")
@click.option(
    "--output", default=None, help=f"Restrict this key to an output mode ({OUTPUT_MODES}) [default: the server's]."
)
@click.option(
    "--admin",
    is_flag=True,
    help="An administrator's key: opens the operator console (/console), never runs inference.",
)
@db_option
def keys_create(
    name: str, quota: int | None, rate: float | None, output: str | None, admin: bool, db: Path | None
) -> None:
    """Create a key; prints it once on stdout (only its digest is stored)."""
    from mea.serve.db import Database
    from mea.serve.keys import KeyStore

    key, token = KeyStore(Database(_db_path(db))).create(name, quota, rate, output, admin=admin)
    if admin:
        click.echo(f"created administrator's key {key.id} for {name!r} (console only, no inference)", err=True)
    else:
        click.echo(
            f"created key {key.id} for {name!r} (quota {quota if quota is not None else 'unlimited'}, "
            f"rate {rate if rate is not None else 'unlimited'}, output {output or 'server default'})",
            err=True,
        )
    click.echo(token)


@keys.command("list")
@db_option
def keys_list(db: Path | None) -> None:
    """List keys (ids, quotas, usage; never the keys themselves)."""
    from rich.table import Table

    from mea.serve.db import Database
    from mea.serve.keys import KeyStore

    table = Table()
    for column in ("id", "name", "role", "quota", "used", "rate", "output", "status"):
        table.add_column(column)
    for key in KeyStore(Database(_db_path(db))).list():
        table.add_row(
            key.id,
            key.name,
            "admin" if key.admin else "inference",
            str(key.quota) if key.quota is not None else "unlimited",
            str(key.used),
            f"{key.rate:g}/s" if key.rate else "unlimited",
            key.output or "default",
            "revoked" if key.revoked else "active",
        )
    console().print(table)


@keys.command("revoke")
@click.argument("key_id")
@db_option
def keys_revoke(key_id: str, db: Path | None) -> None:
    """Revoke a key by its id (KEY_ID, as `mea keys list` shows it)."""
    from mea.serve.db import Database
    from mea.serve.keys import KeyStore

    KeyStore(Database(_db_path(db))).revoke(key_id)
    click.echo(f"revoked {key_id}")


@click.command("audit")
@db_option
def audit_command(db: Path | None) -> None:
    """Summarise the audit log per client: requests, refusals, images, OOD rate, detector state."""
    from rich.table import Table

    from mea.serve.audit import summary
    from mea.serve.db import Database

    path = _db_path(db)
    if not path.is_file():
        raise MeaError(f"no service database at {path}; pass --db or start `mea serve` first")
    table = Table(title=f"audit log {path}")
    for column in ("key", "requests", "refused", "images", "flagged OOD", "OOD rate", "detector state"):
        table.add_column(column)
    for row in summary(Database(path)):
        table.add_row(
            row.key_id or "(no valid key)",
            str(row.requests),
            str(row.refused),
            str(row.images),
            str(row.flagged),
            f"{row.ood_rate:.1%}",
            row.last_state or "-",
        )
    console().print(table)
