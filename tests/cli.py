"""The `mea` command line run as a user runs it: a fresh process, its stderr and exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def mea(
    *args: str, data_dir: Path | None = None, env: dict[str, str] | None = None, threads: int | None = None
) -> subprocess.CompletedProcess:
    # No time limit: a busy machine may take many times longer than an idle one, and that is no failure.
    env = {**os.environ, "CI": "true", "COLUMNS": "200", **(env or {})}
    if data_dir is not None:
        env["MEA_DATA_DIR"] = str(data_dir)
    options = [] if threads is None else ["--threads", str(threads)]
    return subprocess.run(
        [sys.executable, "-m", "mea", *options, *args], capture_output=True, text=True, env=env, check=False
    )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The single `error:` line of a refused command (exit status 2, no traceback)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]
