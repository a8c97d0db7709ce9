"""Run directories: written completely or not at all, with their config beside their results."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mea.errors import ArtifactError


def write_atomically(path: Path, data: bytes) -> None:
    """Write a file completely or not at all: a temporary file beside it, flushed to disk, then renamed.

    A reader (or a crash) never sees half a file: the data cache and every result rely on this.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; results and the cache are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically."""
    write_atomically(path, (json.dumps(payload, indent=2) + "\n").encode())


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: {what}") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}): {what}") from None


def check_writable(out: Path) -> None:
    """Refuse a directory that could not be created or replaced: its nearest existing ancestor (where
    the run's scratch directory goes) must be a directory this process can write to.

    Tried by creating and removing a directory there, not read from permission bits: root ignores
    those, while a read-only or virtual file system (/proc, /sys, a read-only mount) refuses even root.
    """
    out = Path(out).absolute()
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ArtifactError(f"cannot create {out}: {ancestor} is a file, not a directory; choose another --out")
    try:
        probe = tempfile.mkdtemp(dir=ancestor, prefix=".mea-write-check-")
    except OSError as exc:
        raise ArtifactError(
            f"cannot write {out}: {ancestor} does not accept new directories ({exc.strerror or exc}); "
            "choose another --out"
        ) from None
    os.rmdir(probe)


def check_out(out: Path, force: bool = False) -> None:
    """Refuse an output directory that would be overwritten or cannot be written: call it before
    the work, not after."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ArtifactError(f"{out} already holds files; choose another --out or pass --force to replace it")
    check_writable(out)


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


VICTIM_WEIGHTS = "model.safetensors"


def check_victim_directory(directory: Path) -> Path:
    """The weights file of a victim (a victim directory, or a model file: mea safetensors or ONNX), or
    an ArtifactError saying how to make one.

    Here rather than in mea.victim, which imports torch: the command line checks its arguments
    before it pays for that import."""
    directory = Path(directory)
    if directory.is_file():
        if directory.suffix not in VICTIM_FILE_SUFFIXES:
            raise ArtifactError(
                f"{directory} is not a victim: pass a victim directory (`mea train-victim --out DIR`), "
                f"a model file ending in .safetensors or .onnx, or a served victim's .json file"
            )
        return directory
    if not directory.is_dir():
        raise ArtifactError(
            f"victim directory {directory} does not exist; create it with `mea train-victim --out {directory}`"
        )
    weights = directory / VICTIM_WEIGHTS
    if not weights.is_file():
        raise ArtifactError(
            f"{directory} holds no {VICTIM_WEIGHTS}; it is not a victim directory (`mea train-victim --out DIR`)"
        )
    return weights


# Victims as a single model file (mea.model_files): mea's safetensors, or ONNX; or a victim
# served elsewhere, named by a JSON file (mea.serve.upstream).
SERVED_SUFFIX = ".json"
VICTIM_FILE_SUFFIXES = (".safetensors", ".onnx", SERVED_SUFFIX)

REDACTED = "***"
# Names that say a value is a credential: options (--api-key, --token, --password, --auth ...), HTTP
# headers given with --header (Authorization, X-API-Key, Cookie ...) and URL query parameters.
_CREDENTIAL = re.compile(r"key|token|secret|passw|auth|credential|cookie", re.IGNORECASE)
_HEADER_OPTIONS = ("--header", "-H")


def _redact_header(header: str) -> str:
    """`Authorization: Bearer abc` -> `Authorization: ***`; headers that carry no credential stay."""
    name, colon, _ = header.partition(":")
    return f"{name}: {REDACTED}" if colon and _CREDENTIAL.search(name) else header


def redact_url(text: str) -> str:
    """A URL without the password of its user part and without credential-named query values."""
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        return text
    if not (parts.scheme and parts.netloc):
        return text
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{REDACTED}@{host}" if ":" in user else f"{REDACTED}@{host}"
    query = urllib.parse.urlencode(
        [
            (name, REDACTED if _CREDENTIAL.search(name) else value)
            for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query if parts.query else ""))


def redact_arguments(arguments: Sequence[str]) -> list[str]:
    """Command-line arguments with every credential replaced by ***.

    The value of an option whose name names a credential (`--api-key KEY`, `--api-key=KEY`), the
    credential headers of `--header`, and passwords in URLs.  The value after such an option is
    hidden whatever it looks like: a key that happens to start with "-" is still a key.
    """
    redacted: list[str] = []
    hide_next = None
    for argument in arguments:
        if hide_next is not None:
            redacted.append(hide_next(argument))
            hide_next = None
            continue
        name, equals, value = argument.partition("=")
        if argument.startswith("-") and name in _HEADER_OPTIONS:
            redacted.append(f"{name}={_redact_header(value)}" if equals else argument)
            hide_next = None if equals else _redact_header
        elif argument.startswith("--") and _CREDENTIAL.search(name):
            redacted.append(f"{name}={REDACTED}" if equals else argument)
            hide_next = None if equals else (lambda _: REDACTED)
        else:
            redacted.append(redact_url(argument))
    return redacted


def command_line() -> str:
    """The command that produced a run, as a user would retype it, credentials replaced by ***.

    Read from the arguments only: a key passed in the environment (MEA_API_KEY) is never recorded.
    """
    return shlex.join(["mea", *redact_arguments(sys.argv[1:])])
