"""The prediction service, run for real: uvicorn on 127.0.0.1, SQLite on disk, HTTP clients."""

from __future__ import annotations

import gzip
import json
import signal
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as tritonclient

from mea.data import load
from mea.experiments.attack import AttackConfig, run_attack
from mea.serve.client import HttpOracle
from mea.serve.process import create_key, start_server, stop_all
from mea.training import TrainConfig

INFER = "/v2/models/lenet-mnist/infer"


@pytest.fixture(scope="module")
def service(victim_dir, defense_dir, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    server = start_server(
        victim_dir,
        root / "service.db",
        root / "server.log",
        "--defense",
        str(defense_dir),
        "--max-batch",
        "64",
        "--max-body-mb",
        "1",
        data_dir=data_dir,
    )
    yield server
    stop_all(server)


@pytest.fixture(scope="module")
def key(service):
    return create_key(service.db, "--name", "tests")


def body(images: np.ndarray, datatype: str = "FP32", shape: list[int] | None = None) -> dict:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": shape or [len(images), 1, 28, 28],
                "datatype": datatype,
                "data": images.reshape(-1).tolist(),
            }
        ]
    }


def mnist_images(data_dir, n: int) -> np.ndarray:
    return load("mnist", "test", data_dir).images[:n].numpy()


def test_health_metadata_and_unknown_model(service, key):
    assert httpx.get(f"{service.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{service.url}/v2/health/ready").json() == {"ready": True}
    metadata = httpx.get(f"{service.url}/v2/models/lenet-mnist").json()
    assert metadata["inputs"][0]["shape"] == [-1, 1, 28, 28]
    assert {o["name"] for o in metadata["outputs"]} == {"probabilities", "label"}
    missing = httpx.get(f"{service.url}/v2/models/resnet")
    assert missing.status_code == 404 and "unknown model 'resnet'" in missing.json()["error"]
    infer = httpx.post(f"{service.url}/v2/models/resnet/infer", json={}, headers={"X-API-Key": key})
    assert infer.status_code == 404


def test_inference_answers_like_the_victim(service, key, victim, data_dir):
    images = mnist_images(data_dir, 16)
    response = httpx.post(f"{service.url}{INFER}", json=body(images), headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(16, 10)
    assert outputs["probabilities"]["shape"] == [16, 10] and outputs["label"]["datatype"] == "INT64"
    expected = torch.softmax(victim.model(torch.from_numpy(images)), 1).detach().numpy()
    in_distribution = np.isclose(probabilities, expected, atol=1e-5).all(1)
    assert in_distribution.mean() > 0.8  # MNIST test: (almost) never flagged, answered exactly
    assert outputs["label"]["data"] == probabilities.argmax(1).tolist()
    # UINT8 pixels, the flat [B, 784] layout and a Bearer token reach the same answer.
    uint8 = (images * 255).round().astype(np.uint8)
    again = httpx.post(
        f"{service.url}{INFER}", json=body(uint8, "UINT8", [16, 784]), headers={"Authorization": f"Bearer {key}"}
    )
    assert again.status_code == 200
    assert np.allclose(np.asarray(again.json()["outputs"][0]["data"]).reshape(16, 10), probabilities, atol=1e-3)


def test_authentication(service, key):
    images = np.zeros((1, 1, 28, 28))
    for headers in (
        {},
        {"X-API-Key": "mea_000000000000_" + "A" * 43},
        {"X-API-Key": key[:-1] + "x"},
        {"Authorization": "Basic abc"},
    ):
        response = httpx.post(f"{service.url}{INFER}", json=body(images), headers=headers)
        assert response.status_code == 401 and "API key" in response.json()["error"]
    revoked = create_key(service.db, "--name", "leaver")
    key_id = revoked.split("_")[1]
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "mea", "keys", "revoke", key_id, "--db", str(service.db)],
        check=True,
        capture_output=True,
    )
    assert httpx.post(f"{service.url}{INFER}", json=body(images), headers={"X-API-Key": revoked}).status_code == 401


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"inputs": []}).encode(), 400, "exactly one tensor"),
        (json.dumps(body(np.zeros((2, 1, 28, 28)), shape=[2, 3, 28, 28])).encode(), 400, "is not"),
        (json.dumps(body(np.zeros((2, 1, 28, 28)), datatype="FP64")).encode(), 400, "FP64"),
        (
            json.dumps(
                {"inputs": [{"name": "x", "shape": [2, 784], "datatype": "FP32", "data": [0.0] * 784}]}
            ).encode(),
            400,
            "needs 1568",
        ),
        (json.dumps(body(np.full((1, 1, 28, 28), 2.0))).encode(), 400, r"in [0, 1]"),
        (json.dumps(body(np.full((1, 1, 28, 28), 300.0), datatype="UINT8")).encode(), 400, "[0, 255]"),
        (json.dumps(body(np.zeros((1, 1, 28, 28)))).replace("0.0", "NaN", 1).encode(), 400, "not valid JSON"),
        (json.dumps(body(np.zeros((65, 1, 28, 28)))).encode(), 413, "maximum of 64"),
        (
            json.dumps({"inputs": [{"name": "x", "shape": [0, 784], "datatype": "FP32", "data": []}]}).encode(),
            400,
            "at least 1",
        ),
    ],
)
def test_bad_input_gets_a_4xx_with_a_clear_error(service, key, payload, status, message):
    response = httpx.post(
        f"{service.url}{INFER}", content=payload, headers={"X-API-Key": key, "Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_size_limits_and_content_types(service, key):
    big = b'{"inputs": [' + b" " * (2 * 1024 * 1024) + b"]}"
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    assert httpx.post(f"{service.url}{INFER}", content=big, headers=headers).status_code == 413

    def chunks():  # no Content-Length: the server must count as it reads
        for _ in range(64):
            yield b" " * 65536

    chunked = httpx.post(f"{service.url}{INFER}", content=chunks(), headers=headers)
    assert chunked.status_code == 413 and "exceeds" in chunked.json()["error"]
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))
    assert (
        httpx.post(f"{service.url}{INFER}", content=bomb, headers={**headers, "Content-Encoding": "gzip"}).status_code
        == 413
    )
    wrong_type = httpx.post(
        f"{service.url}{INFER}", content=b"<xml/>", headers={"X-API-Key": key, "Content-Type": "application/xml"}
    )
    assert wrong_type.status_code == 415 and "Content-Type" in wrong_type.json()["error"]


def test_quota_is_exact_under_concurrency_and_every_request_is_audited(service, data_dir):
    token = create_key(service.db, "--name", "crowd", "--quota", "100")
    images = body(mnist_images(data_dir, 7))
    before = _audit_count(service)

    def send(_):
        return httpx.post(f"{service.url}{INFER}", json=images, headers={"X-API-Key": token}, timeout=60)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(send, range(24)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 14  # 14 x 7 = 98 <= 100 < 15 x 7
    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) == 10 and all(r.headers.get("retry-after") for r in refused)
    assert all(r.headers["x-quota-remaining"] == "2" for r in refused)
    with sqlite3.connect(service.db) as db:
        assert db.execute("SELECT used FROM api_keys WHERE name = 'crowd'").fetchone()[0] == 98
    assert _audit_count(service) - before == 24


def test_rate_limit_answers_429_with_retry_after(service, data_dir):
    token = create_key(service.db, "--name", "hasty", "--rate", "10")
    images = body(mnist_images(data_dir, 60))
    first = httpx.post(f"{service.url}{INFER}", json=images, headers={"X-API-Key": token})
    second = httpx.post(f"{service.url}{INFER}", json=images, headers={"X-API-Key": token})
    assert first.status_code == 200 and second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1 and "rate limit" in second.json()["error"]


def test_per_key_output_mode(service, data_dir):
    token = create_key(service.db, "--name", "labels-only", "--output", "label")
    response = httpx.post(f"{service.url}{INFER}", json=body(mnist_images(data_dir, 4)), headers={"X-API-Key": token})
    probabilities = np.asarray(response.json()["outputs"][0]["data"]).reshape(4, 10)
    assert set(probabilities.reshape(-1).tolist()) == {0.0, 1.0} and (probabilities.sum(1) == 1).all()


def test_triton_client_works_unchanged(service, key, victim, data_dir):
    client = tritonclient.InferenceServerClient(service.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready("lenet-mnist")
    images = mnist_images(data_dir, 8).astype(np.float32)
    for binary in (True, False):
        tensor = tritonclient.InferInput("input", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=binary)
        outputs = [tritonclient.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "label")]
        result = client.infer("lenet-mnist", [tensor], outputs=outputs, headers={"X-API-Key": key})
        assert result.as_numpy("probabilities").shape == (8, 10)
        assert (result.as_numpy("label") == result.as_numpy("probabilities").argmax(1)).all()
    client.close()


def test_http_attack_matches_the_in_process_attack(service, victim, data_dir):
    token = create_key(service.db, "--name", "thief", "--quota", "1500")
    config = AttackConfig(queries=1500, train=TrainConfig(epochs=5, lr=3e-2, batch_size=128, min_steps=0), seed=2)
    oracle = HttpOracle(service.url, token, batch_size=64)
    assert oracle.budget == 1500
    over_http = run_attack(config, victim, data_dir, oracle=oracle, progress=False)
    in_process = run_attack(config, victim, data_dir, progress=False)
    assert over_http["config"]["oracle"].startswith("http://127.0.0.1")
    # The same queries and, for in-distribution images, the same exact answers: the same clone
    # up to the few images the defense flags.
    assert abs(over_http["clone"]["accuracy"] - in_process["clone"]["accuracy"]) < 0.02
    assert over_http["clone"]["accuracy"] > 0.85
    from mea.errors import BudgetExhausted

    with pytest.raises(BudgetExhausted):
        oracle.query(torch.zeros(1, 1, 28, 28))


def test_keys_are_never_logged_or_stored(service, key):
    assert key not in service.logs()
    with sqlite3.connect(service.db) as db:
        dump = "\n".join(db.iterdump())
    assert key not in dump and key.split("_")[2] not in dump


def _audit_count(service) -> int:
    with sqlite3.connect(service.db) as db:
        return db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]


def test_sigterm_shuts_down_cleanly_without_losing_a_row(victim_dir, data_dir, tmp_path):
    server = start_server(victim_dir, tmp_path / "db", tmp_path / "log", data_dir=data_dir)
    token = create_key(server.db, "--name", "steady")
    images = body(mnist_images(data_dir, 32))
    answered, stop = [], threading.Event()

    def client():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post(f"{server.url}{INFER}", json=images, headers={"X-API-Key": token})
                except httpx.TransportError:
                    return
                answered.append(response.status_code)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    while len(answered) < 10:
        threading.Event().wait(0.05)
    # uvicorn finishes the requests in flight, then re-raises the signal: exit by SIGTERM, cleanly.
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    stop.set()
    for thread in threads:
        thread.join()
    assert "Application shutdown complete" in server.logs() and "Traceback" not in server.logs()
    with sqlite3.connect(server.db) as db:
        rows = db.execute("SELECT COUNT(*) FROM audit WHERE status = 200").fetchone()[0]
    assert rows == answered.count(200) and rows >= 10


def test_an_attack_refused_over_http_trains_on_what_it_got_and_says_so(service, victim, data_dir):
    token = create_key(service.db, "--name", "fashion-thief", "--quota", "1000")
    config = AttackConfig(
        queries=1000, pool="fashion-mnist", train=TrainConfig(epochs=1, batch_size=128, min_steps=20), seed=0
    )
    metrics = run_attack(config, victim, data_dir, oracle=HttpOracle(service.url, token, batch_size=50), progress=False)
    # An all-OOD stream is refused by the batch that takes it to 200 queries; the 150 answered
    # before it are kept and trained on.
    assert metrics["refused_after"] == 150
