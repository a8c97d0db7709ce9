"""No credential reaches a file a run writes: a real server, a real attack over HTTP, every file read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import mea
from mea.runs import REDACTED, redact_arguments, redact_url
from mea.serve.process import create_key, start_server, stop_all


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--api-key", "mea_k_s3cret", "--out", "d"], ["--api-key", REDACTED, "--out", "d"]),
        (["--api-key=mea_k_s3cret"], [f"--api-key={REDACTED}"]),
        (["--token", "-starts-with-a-dash"], ["--token", REDACTED]),
        (["--password=hunter2", "--queries", "10"], [f"--password={REDACTED}", "--queries", "10"]),
        (["--header", "Authorization: Bearer abc"], ["--header", f"Authorization: {REDACTED}"]),
        (["-H", "X-API-Key: abc", "-H", "X-Trace: 7"], ["-H", f"X-API-Key: {REDACTED}", "-H", "X-Trace: 7"]),
        (["--header=Cookie: session=abc"], [f"--header=Cookie: {REDACTED}"]),
        (["--url", "https://me:pw@host:8000/v2"], ["--url", f"https://me:{REDACTED}@host:8000/v2"]),
        (["--victim", "runs/victim", "--seed", "3"], ["--victim", "runs/victim", "--seed", "3"]),
    ],
)
def test_credentials_in_arguments_are_redacted(arguments, expected):
    assert redact_arguments(arguments) == expected


def test_credential_query_parameters_are_redacted():
    assert redact_url("http://h/x?api_key=abc&batch=2") == f"http://h/x?api_key={REDACTED}&batch=2"
    assert redact_url("runs/victim") == "runs/victim" and redact_url("in-process") == "in-process"


def _files_containing(directory: Path, secrets: list[str]) -> list[str]:
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.name} holds {secret[:8]}..." for secret in secrets if secret.encode() in data]
    return found


@pytest.fixture(scope="module")
def server(victim_dir, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    served = start_server(victim_dir, root / "service.db", root / "server.log", data_dir=data_dir)
    yield served
    stop_all(served)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--api-key KEY", "--api-key=KEY", "MEA_API_KEY"])
def test_an_attack_over_http_writes_no_key(server, victim_dir, data_dir, tmp_path, how):
    token = create_key(server.db, "--name", f"thief {how}")
    secret = token.split("_", 2)[2]  # mea_<id>_<secret>: the id is public, the rest is the credential
    key_arguments = {"--api-key KEY": ["--api-key", token], "--api-key=KEY": [f"--api-key={token}"]}.get(how, [])
    out = tmp_path / "run"
    done = mea(
        *(
            "attack",
            "--victim",
            str(victim_dir),
            "--url",
            server.url,
            *key_arguments,
            "--queries",
            "300",
            "--epochs",
            "1",
            "--min-steps",
            "0",
            "--out",
            str(out),
            "-q",
        ),
        data_dir=data_dir,
        env={"MEA_API_KEY": token if how == "MEA_API_KEY" else None},
    )
    assert done.returncode == 0, done.stderr
    assert {"config.json", "metrics.json", "clone.safetensors"} <= {p.name for p in out.iterdir()}
    command = (out / "config.json").read_text()
    assert "mea attack --victim" in command and "--url" in command  # the command line is still recorded
    if how != "MEA_API_KEY":
        assert "--api-key" in command and REDACTED in command
    assert _files_containing(out, [token, secret]) == []
    assert token not in done.stdout + done.stderr and secret not in done.stdout + done.stderr
    assert token not in server.logs() and secret not in server.logs()
    stored = [path for path in server.db.parent.iterdir() if path.name.startswith(server.db.name)]
    assert stored and not [path for path in stored if secret.encode() in path.read_bytes()]  # the db, its WAL
