"""Run directories: written completely or not at all, with their config beside their results."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mea.errors import ArtifactError


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes the file private; a result is an ordinary file
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: {what}") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}): {what}") from None


def check_out(out: Path, force: bool = False) -> None:
    """Refuse an output directory that would be overwritten: call it before the work, not after."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ArtifactError(f"{out} already holds files; choose another --out or pass --force to replace it")


@contextmanager
def run_directory(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a scratch directory that becomes `out` only when the block finishes without error.

    A run that fails or is interrupted leaves no directory that looks complete.
    """
    out = Path(out)
    check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    scratch.chmod(0o755)  # mkdtemp makes it private; a finished run is an ordinary directory
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if out.exists():
        trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, trash / "old")
        os.replace(scratch, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(scratch, out)


def command_line() -> str:
    """The command that produced a run, as a user would retype it."""
    return shlex.join(["mea", *sys.argv[1:]])
