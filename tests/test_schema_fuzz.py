"""Property-based fuzzing of the service against its own OpenAPI schema: no input yields a 5xx.

Positive (schema-valid) and negative (schema-violating) cases for every operation, each sent with
and without a valid API key.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from mea.serve.process import create_key, start_server, stop_all


@pytest.fixture(scope="module")
def served(victim_dir, defense_dir, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    # Refusals from one address are not slowed down here: the fuzzer's requests must reach every check.
    server = start_server(
        victim_dir,
        root / "db",
        root / "log",
        "--defense",
        str(defense_dir),
        "--max-batch",
        "8",
        "--refusals-per-s",
        "100000",
        data_dir=data_dir,
    )
    yield server, create_key(root / "db", "--name", "fuzzer")
    stop_all(server)


def test_no_input_produces_a_server_error(served):
    server, token = served
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path.endswith("/infer") for op in operations)
    strategy = st.one_of(
        [
            op.as_strategy(generation_mode=mode)
            for op in operations
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        ]
    )
    failures: list[str] = []

    # derandomize: the same 300 cases every run (a failure reproduces); the bugs a random run found
    # have their own regression tests (test_serve.py).
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    @given(case=strategy)
    def check(case):
        for headers in ({}, {"X-API-Key": token}):
            response = case.call(headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path}: {response.status_code} {response.text[:200]}")

    check()
    assert not failures, "\n".join(failures[:5])
