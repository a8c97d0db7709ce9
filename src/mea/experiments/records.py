"""The results of a sweep: a JSONL file, one line per finished trial, appended and never rewritten.

A line is written with one `write` of the whole line (newline included), then fsync'd, so a crash
leaves either the full line or a tail without its newline.  Such a torn last line is detected when
the file is opened, cut off, and its trial runs again; every earlier line is kept as it is.  Only
one sweep may append at a time (an advisory lock on the file; a killed process releases it).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mea.errors import ArtifactError
from mea.experiments.trial import RECORD_FORMAT

RESULTS_NAME = "results.jsonl"


@dataclass(frozen=True)
class Contents:
    records: tuple[dict, ...]
    good_bytes: int  # length of the file's valid prefix
    torn: bool  # a partial last line follows it

    @property
    def hashes(self) -> set[str]:
        return {r["hash"] for r in self.records}


def results_path(runs: Path) -> Path:
    """The JSONL file of a runs directory, or `runs` itself if it is a file."""
    runs = Path(runs)
    return runs if runs.suffix == ".jsonl" or runs.is_file() else runs / RESULTS_NAME


def read_results(path: Path) -> Contents:
    """Parse a results file; a damaged line other than the last is an error (it is not a torn append)."""
    data = Path(path).read_bytes() if Path(path).exists() else b""
    lines = data.split(b"\n")
    # Everything after the last newline is an unfinished append (empty if the file ends cleanly).
    complete, tail = lines[:-1], lines[-1]
    records, offset = [], 0
    for number, line in enumerate(complete, start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number == len(complete) and not tail:
                # A last line that does not parse though it ends in a newline: treat it as torn too.
                return Contents(tuple(records), offset, torn=True)
            raise ArtifactError(
                f"{path}:{number}: not a result record (the file is damaged); delete that line to resume"
            ) from None
        _check_record(record, path, number)
        records.append(record)
        offset += len(line) + 1
    return Contents(tuple(records), offset, torn=bool(tail))


def _check_record(record, path: Path, number: int) -> None:
    if not isinstance(record, dict) or "hash" not in record:
        raise ArtifactError(f"{path}:{number}: not a result record of `mea sweep`")
    if record.get("format") != RECORD_FORMAT:
        raise ArtifactError(
            f"{path}:{number}: written by an incompatible mea (result format {record.get('format')!r}; "
            f"this one reads format {RECORD_FORMAT}); report it with a matching mea or sweep into a new --out"
        )


class ResultStore:
    """Appends records to a results file that this process holds the lock of."""

    def __init__(self, path: Path, fd: int, contents: Contents) -> None:
        self.path = path
        self._fd = fd
        self.contents = contents

    def append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        # O_APPEND and one write of the full line: it lands whole, after whatever is there.
        written = os.write(self._fd, line)
        if written != len(line):  # only on a full disk; the next open cuts the partial line off
            raise ArtifactError(f"{self.path}: short write ({written} of {len(line)} bytes); is the disk full?")
        os.fsync(self._fd)


@contextmanager
def open_results(path: Path, fresh: bool = False) -> Iterator[ResultStore]:
    """Lock the results file, cut off a torn last line, and yield a store to append to.

    `fresh` empties the file first (under the lock): the sweep starts over.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(f"{path} is in use by another sweep; wait for it or choose another --out") from None
        if fresh:
            os.ftruncate(fd, 0)
        contents = read_results(path)
        if contents.torn:
            # Cut at the end of the last full line: the partial line's trial was not finished.
            os.ftruncate(fd, contents.good_bytes)
            os.fsync(fd)
        yield ResultStore(path, fd, contents)
    finally:
        os.close(fd)  # releases the lock
