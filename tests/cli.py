"""The `mea` command line (and the examples) run as a user runs them: a process of its own, its
output and exit status.

Each run is a fresh process that runs `python -m mea ...` (or `python SCRIPT ...`) with the test's
arguments, environment and working directory, but not a fresh interpreter: it is forked from a warm
one (`serve`, below) that has imported the third-party libraries the commands use and has run
nothing.  A cold `mea attack` spends about 4.3 s importing them (`python -X importtime`: torch
1.2 s, the torch._dynamo that torch.optim imports on its first step 1.4 s, scikit-learn's metrics
1.4 s, matplotlib); with the warm start the suite took 13.0 CPU-minutes instead of 16.4 (`time
pytest`, user + sys).  mea's own modules are not preloaded: each run imports them afresh, so a
module that reads the environment or keeps state at import sees this run's.  What a warm start
cannot show is checked by cold interpreters elsewhere: what a command imports (tests/test_cli.py,
tests/test_imports.py), the installed console script (CI's wheel demo), thread counts
(tests/test_threads.py), servers and signals (tests/test_serve.py, tests/test_sweep.py: `mea
serve` and sweeps started with subprocess).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

# What the warm interpreter imports before it forks: none of it starts a thread that could hold a
# lock across the fork (numpy's OpenBLAS starts workers, and is fork-aware).
PRELOAD = (
    "torch",
    "torch._dynamo",
    "torch.optim",
    "sklearn.metrics",
    "matplotlib.pyplot",
    "safetensors.torch",
    "scipy.stats",
)


def mea(
    *args: str,
    data_dir: Path | None = None,
    env: dict[str, str | None] | None = None,
    threads: int | None = None,
) -> subprocess.CompletedProcess:
    """`python -m mea ARGS` with this process's environment, CI=true and ENV (None: unset)."""
    env = {"CI": "true", "COLUMNS": "200", **(env or {})}
    if data_dir is not None:
        env["MEA_DATA_DIR"] = str(data_dir)
    return python("-m", "mea", *([] if threads is None else ["--threads", str(threads)]), *args, env=env)


def python(
    *argv: str, env: dict[str, str | None] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`python ARGV` (`-m MODULE ...` or `SCRIPT ...`) in a process of its own, as subprocess.run
    with capture_output and text would: this process's environment updated by ENV (None: unset)."""
    # No time limit: a busy machine may take many times longer than an idle one, and that is no failure.
    merged = {**os.environ, **(env or {})}
    environment = {name: value for name, value in merged.items() if value is not None}
    with tempfile.TemporaryDirectory(prefix="mea-cli-") as scratch:
        stdout, stderr = Path(scratch, "stdout"), Path(scratch, "stderr")
        server = _servers.take()
        try:
            code = server.run(list(argv), environment, str(cwd or os.getcwd()), stdout, stderr)
        finally:
            _servers.give_back(server)
        return subprocess.CompletedProcess([sys.executable, *argv], code, _text(stdout), _text(stderr))


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The single `error:` line of a refused command (exit status 2, no traceback)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def _text(path: Path) -> str:
    # As subprocess.run(text=True) decodes: UTF-8 here, universal newlines.
    return path.read_bytes().decode().replace("\r\n", "\n").replace("\r", "\n") if path.exists() else ""


class _Server:
    """One warm interpreter (this file run as a script): a request in on its stdin, one forked run,
    its exit status back on its stdout."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        atexit.register(self.close)

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # its loop ends
            self.process.wait()

    def run(self, argv: list[str], env: dict[str, str], cwd: str, stdout: Path, stderr: Path) -> int:
        request = {"argv": argv, "env": env, "cwd": cwd, "stdout": str(stdout), "stderr": str(stderr)}
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError(f"the warm interpreter for `mea` ended (status {self.process.wait()})")
        return int(reply)


class _Pool:
    """Warm interpreters for this process: one per run at a time (tests may run commands side by
    side from threads), started as first needed, kept for the rest of the session."""

    def __init__(self) -> None:
        self.idle: list[_Server] = []
        self.lock = threading.Lock()

    def take(self) -> _Server:
        with self.lock:
            if self.idle:
                return self.idle.pop()
        return _Server()

    def give_back(self, server: _Server) -> None:
        with self.lock:
            self.idle.append(server)


_servers = _Pool()


def serve() -> None:
    """The warm interpreter: import PRELOAD, then for each request fork a run of `python ARGV` and
    answer its exit status, until its stdin closes."""
    for name in PRELOAD:
        importlib.import_module(name)
    for line in sys.stdin:
        request = json.loads(line)
        child = os.fork()
        if child == 0:
            _become_python(**request)
        _, status = os.waitpid(child, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


def _become_python(argv: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str) -> None:
    """In the forked child: `python ARGV` started with ENV in CWD, then exit as it would."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, stdout), (2, stderr)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(file, fd)
        os.close(file)
    code = 1
    try:
        # sys.path[0] as Python sets it (where running this file put tests/): the working directory
        # for -m, the script's directory for a script; sys.argv[0]: the module's path or the script.
        if argv[0] == "-m":
            sys.path[0], sys.argv = cwd, argv[1:]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.path[0], sys.argv = os.path.dirname(os.path.abspath(argv[0])), argv
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as stop:  # as the interpreter reads it
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
    except BaseException:  # uncaught: its traceback and status 1, as Python does
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # what the interpreter runs on its way out; os._exit skips it
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    serve()
