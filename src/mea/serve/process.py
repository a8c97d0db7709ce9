"""`mea serve` as a child process on 127.0.0.1 and an ephemeral port: for tests, benchmarks and
notebooks that need a real server and want to know when it is ready."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    db: Path
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def logs(self) -> str:
        return self.log.read_text()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        stop_all(self)


def start_server(
    victim_dir: Path,
    db: Path,
    log: Path,
    *extra: str,
    data_dir: Path | None = None,
    threads: int = 1,
    port: int | None = None,
    ca: Path | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """Start `mea serve` (its output goes to `log`) and return once /v2/health/ready answers.

    `port`: a given port (to restart a server where its clients expect it) instead of a free one;
    `ca`: the server speaks HTTPS (pass --ssl-certfile/--ssl-keyfile in `extra`) with a
    certificate this CA bundle verifies; `env`: variables set for the server beside this process's."""
    port = port or free_port()
    env = {**os.environ, "CI": "true", **(env or {})}
    if data_dir is not None:
        env["MEA_DATA_DIR"] = str(data_dir)
    handle = log.open("a")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mea",
            "--threads",
            str(threads),
            "serve",
            "--victim",
            str(victim_dir),
            "--port",
            str(port),
            "--db",
            str(db),
            *extra,
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
    )
    handle.close()  # the server holds its own copy of the descriptor
    url = f"{'https' if ca else 'http'}://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(ca)) if ca else True
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1, verify=verify).status_code == 200:
                return Server(process, url, db, log)
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not become ready:\n{log.read_text()}")


def create_key(db: Path, *args: str) -> str:
    """`mea keys create --db DB ARGS...`; returns the new key."""
    done = subprocess.run(
        [sys.executable, "-m", "mea", "keys", "create", "--db", str(db), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def stop_all(*servers: Server) -> None:
    """SIGTERM each server, killing those that do not stop within the grace period."""
    for server in servers:
        try:
            server.stop()
        except subprocess.TimeoutExpired:
            server.process.kill()
