"""The prediction service, run for real: uvicorn on 127.0.0.1, SQLite on disk, HTTP clients."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import signal
import sqlite3
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as tritonclient
import trustme
import uvicorn
from torch import nn

from cli import mea
from mea.data import load
from mea.defenses.gate import ClientGate, ClientOracle
from mea.defenses.store import load_defense
from mea.errors import BudgetExhausted
from mea.experiments.attack import AttackConfig, run_attack
from mea.oracle import VictimOracle
from mea.serve.app import ServeConfig, create_app
from mea.serve.client import HttpOracle, binary_infer_request
from mea.serve.db import Database
from mea.serve.keys import KeyStore
from mea.serve.process import create_key, free_port, start_server, stop_all
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
    # MNIST test is (almost) never flagged: answered with the victim's own values, except that the
    # watermark's runner-up mark swaps two of the classes below the top one (and a keyed few in a
    # thousand are flipped): the top class and the set of values are the victim's.
    same_top = probabilities.argmax(1) == expected.argmax(1)
    same_values = np.isclose(np.sort(probabilities, 1), np.sort(expected, 1), atol=1e-5).all(1)
    assert (same_top & same_values).mean() > 0.8
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
    revoking = mea("keys", "revoke", key_id, "--db", str(service.db))
    assert revoking.returncode == 0, revoking.stderr
    assert httpx.post(f"{service.url}{INFER}", json=body(images), headers={"X-API-Key": revoked}).status_code == 401
    # A key revoked right after a request (which the server remembers for a moment, to let the
    # client's next request in without a database read) is refused at once.
    busy = create_key(service.db, "--name", "busy")
    with httpx.Client(base_url=service.url, headers={"X-API-Key": busy}) as client:
        assert client.post(INFER, json=body(images)).status_code == 200
        KeyStore(Database(service.db)).revoke(busy.split("_")[1])
        refused = client.post(INFER, json=body(images))
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]


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
    # One row per answered request; the refusals are counted per minute (flushed within seconds).
    assert _audit_count(service) - before == 14
    assert _rejected(service, _key_id(token), 429, expected=10) == 10


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


def test_http_attack_matches_the_in_process_attack(service, victim, defense_dir, data_dir):
    token = create_key(service.db, "--name", "thief", "--quota", "1500")
    config = AttackConfig(queries=1500, train=TrainConfig(epochs=5, lr=3e-2, batch_size=128, min_steps=0), seed=2)
    oracle = HttpOracle(service.url, token, batch_size=64)
    assert oracle.budget == 1500
    over_http = run_attack(config, victim, data_dir, oracle=oracle, progress=False)
    # In process: the same defense behind the same per-client gate, in the same batches of 64, for the
    # same client (the watermark is keyed per client).
    defended = load_defense(defense_dir, victim).oracle(victim, budget=1500)
    in_process = run_attack(
        config,
        victim,
        data_dir,
        oracle=ClientOracle(ClientGate(defended), _key_id(token), batch_size=64),
        progress=False,
    )
    assert over_http["config"]["oracle"].startswith("http://127.0.0.1")
    # The same queries, the same exact answers (binary FP32 both ways): the same clone.
    assert over_http["queries"] == in_process["queries"] == 1500
    for metric in ("accuracy", "fidelity", "uniform_agreement", "loss"):
        assert over_http["clone"][metric] == in_process["clone"][metric], metric
    assert over_http["clone"]["accuracy"] > 0.85
    with pytest.raises(BudgetExhausted):
        oracle.query(torch.zeros(1, 1, 28, 28))


def test_keys_are_never_logged_or_stored(service, key):
    assert key not in service.logs()
    with sqlite3.connect(service.db) as db:
        dump = "\n".join(db.iterdump())
    assert key not in dump and key.split("_", 2)[2] not in dump  # the secret may hold "_" itself


def _audit_count(service) -> int:
    with sqlite3.connect(service.db) as db:
        return db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]


def _key_id(token: str) -> str:
    return token.split("_")[1]


def _rejected(service, key_id: str, status: int, expected: int, wait_s: float = 20.0) -> int:
    """The refusals counted for a key and status, once the server's periodic flush brought `expected`."""
    deadline = time.monotonic() + wait_s
    while True:
        with sqlite3.connect(service.db) as db:
            count = db.execute(
                "SELECT COALESCE(SUM(count), 0) FROM rejected WHERE key_id = ? AND status = ?", (key_id, status)
            ).fetchone()[0]
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.25)


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


def test_more_values_than_the_declared_shape_are_refused_before_parsing(service, key):
    """The memory bomb: a request that declares one image and carries tens of thousands of numbers."""
    headers = {"X-API-Key": key, "Content-Type": "application/json"}

    def bomb(values: int) -> bytes:
        head = b'{"inputs": [{"name": "x", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ['
        return head + b"0," * (values - 1) + b"0]}]}"

    within_batch = httpx.post(f"{service.url}{INFER}", content=bomb(40_000), headers=headers)
    assert within_batch.status_code == 400, within_batch.text
    assert re.search(r"holds about 400\d\d values but its tensor takes at most 784", within_batch.json()["error"])
    # More than the largest batch (64 images here) could need: refused as too large.
    beyond_batch = httpx.post(f"{service.url}{INFER}", content=bomb(60_000), headers=headers)
    assert beyond_batch.status_code == 413, beyond_batch.text
    # A shape whose product overflows 64 bits (found by the schema fuzzer): a 400, not a 500.
    huge = b'{"inputs": [{"name": "x", "shape": [99999999999, 99999999999], "datatype": "FP32", "data": [0]}]}'
    overflow = httpx.post(f"{service.url}{INFER}", content=huge, headers=headers)
    assert overflow.status_code == 400, overflow.text


def test_binary_size_mismatch_and_compressed_bodies(service, key, data_dir):
    images = mnist_images(data_dir, 4).astype(np.float32)
    content, headers = binary_infer_request(images)
    headers = {**headers, "X-API-Key": key}
    short = httpx.post(f"{service.url}{INFER}", content=content[:-4], headers=headers)
    assert short.status_code == 400 and "binary input has 12540 bytes" in short.json()["error"]
    plain = httpx.post(f"{service.url}{INFER}", json=body(images), headers={"X-API-Key": key})
    json_headers = {"X-API-Key": key, "Content-Type": "application/json"}
    for encoding, compress in (("deflate", zlib.compress), ("gzip", gzip.compress)):
        packed = compress(json.dumps(body(images)).encode())
        response = httpx.post(
            f"{service.url}{INFER}", content=packed, headers={**json_headers, "Content-Encoding": encoding}
        )
        assert response.status_code == 200, response.text
        assert response.json()["outputs"] == plain.json()["outputs"]
        damaged = httpx.post(
            f"{service.url}{INFER}", content=packed[:-8], headers={**json_headers, "Content-Encoding": encoding}
        )
        assert damaged.status_code == 400, damaged.text


def test_a_retry_with_the_same_idempotency_key_is_answered_again_and_charged_once(service, data_dir):
    token = create_key(service.db, "--name", "retrier", "--quota", "100")
    images, other = mnist_images(data_dir, 10), mnist_images(data_dir, 20)[10:]
    headers = {"X-API-Key": token, "Idempotency-Key": "3f1c-retry-1"}
    first = httpx.post(f"{service.url}{INFER}", json=body(images), headers=headers)
    again = httpx.post(f"{service.url}{INFER}", json=body(images), headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert again.json()["outputs"] == first.json()["outputs"]
    assert first.headers["x-quota-remaining"] == again.headers["x-quota-remaining"] == "90"
    reused = httpx.post(f"{service.url}{INFER}", json=body(other), headers=headers)
    assert reused.status_code == 422 and "different request" in reused.json()["error"]
    malformed = httpx.post(f"{service.url}{INFER}", json=body(other), headers={**headers, "Idempotency-Key": "a b"})
    assert malformed.status_code == 400 and "Idempotency-Key" in malformed.json()["error"]
    with sqlite3.connect(service.db) as db:
        assert db.execute("SELECT used FROM api_keys WHERE name = 'retrier'").fetchone()[0] == 10
        rows = db.execute("SELECT error FROM audit WHERE key_id = ? ORDER BY id", (_key_id(token),)).fetchall()
    assert [row[0] for row in rows] == [None, "replay: answered before, not charged again"]


def test_the_client_resends_a_timed_out_request_and_is_charged_once(service, victim, defense_dir, data_dir):
    token = create_key(service.db, "--name", "impatient", "--quota", "512")
    images = torch.from_numpy(mnist_images(data_dir, 512))
    # A first attempt of 1 ms cannot be answered in time; each retry doubles the wait.
    oracle = HttpOracle(service.url, token, batch_size=64, timeout_s=0.001, max_retries=16)
    answers = oracle.query(images)
    assert oracle.retries > 0 and oracle.queries_used == 512
    with sqlite3.connect(service.db) as db:
        assert db.execute("SELECT used FROM api_keys WHERE name = 'impatient'").fetchone()[0] == 512
    # Every answer is the defended victim's own for this client (repeat-proof keyed answers and
    # watermark, replayed or not).
    expected = load_defense(defense_dir, victim).oracle(victim).respond(images, _key_id(token)).answers
    assert torch.equal(answers, expected)


def test_keyed_metadata_requests_are_audited(service, key):
    before = _audit_count(service)
    anonymous = httpx.get(f"{service.url}/v2/models/lenet-mnist")
    keyed = httpx.get(f"{service.url}/v2/models/lenet-mnist", headers={"X-API-Key": key})
    assert anonymous.status_code == keyed.status_code == 200
    assert keyed.json()["parameters"]["idempotency_header"] == "Idempotency-Key"
    with sqlite3.connect(service.db) as db:
        rows = db.execute("SELECT key_id, endpoint, batch, status FROM audit WHERE id > ?", (before,)).fetchall()
    assert rows == [(_key_id(key), "metadata", 0, 200)]


def test_a_busy_port_is_one_error_line_and_leaves_nothing_behind(service, victim_dir, tmp_path):
    port = service.url.rsplit(":", 1)[1]
    done = mea("serve", "--victim", str(victim_dir), "--port", port, "--db", str(tmp_path / "db"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert list(tmp_path.iterdir()) == []


def test_anonymous_floods_are_counted_per_minute_not_row_by_row(victim_dir, data_dir, tmp_path):
    server = start_server(victim_dir, tmp_path / "db", tmp_path / "log", "--refusals-per-s", "0.1", data_dir=data_dir)
    try:
        images = body(np.zeros((1, 1, 28, 28)))
        with httpx.Client(timeout=30) as http:
            statuses = [
                http.post(
                    f"{server.url}{INFER}", json=images, headers={"X-API-Key": f"mea_{i:012x}_" + "A" * 43}
                ).status_code
                for i in range(300)
            ]
        # The first hundred (the burst) are told their key is wrong; past that, to slow down (one
        # more refusal is allowed every 10 s).
        assert statuses[:100] == [401] * 100 and statuses.count(429) >= 150
        assert _rejected(server, "", 401, expected=statuses.count(401)) == statuses.count(401)
        assert _rejected(server, "", 429, expected=statuses.count(429)) == statuses.count(429)
        with sqlite3.connect(server.db) as db:
            assert db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 0
            # A row per minute, address and status: at most two minutes were crossed.
            assert db.execute("SELECT COUNT(*) FROM rejected").fetchone()[0] <= 4
    finally:
        stop_all(server)


def test_a_model_error_answers_500_with_an_audit_row_and_no_charge(victim, data_dir, tmp_path):
    class Faulty(nn.Module):
        """The victim, failing on any batch holding an image whose first pixel is exactly 1."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if (images[:, 0, 0, 0] == 1.0).any():
                raise RuntimeError("simulated failure inside the model")
            return self.model(images)

    config = ServeConfig(db=tmp_path / "db")
    app = create_app(config, dataclasses.replace(victim, model=Faulty(victim.model)))
    token = KeyStore(Database(config.db)).create("unlucky", quota=100)[1]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url, headers = f"http://127.0.0.1:{port}{INFER}", {"X-API-Key": token}
        images = mnist_images(data_dir, 5)
        assert httpx.post(url, json=body(images), headers=headers).status_code == 200
        images[2, 0, 0, 0] = 1.0
        failed = httpx.post(url, json=body(images), headers=headers)
        assert failed.status_code == 500 and "not charged" in failed.json()["error"]
        with sqlite3.connect(config.db) as db:
            assert db.execute("SELECT used FROM api_keys").fetchone()[0] == 5
            rows = db.execute("SELECT batch, status, error FROM audit ORDER BY id").fetchall()
        assert rows == [(5, 200, None), (5, 500, "the model failed; not charged")]
    finally:
        server.should_exit = True
        thread.join()


def _fashion_batches(data_dir, n: int = 400, batch: int = 50) -> list[dict]:
    images = load("fashion-mnist", "test", data_dir).images[:n].numpy()
    return [body(images[start : start + batch]) for start in range(0, n, batch)]


def _until_refused(url: str, token: str, batches: list[dict]) -> list[int]:
    statuses = []
    for request in batches:  # a new connection each time: with several workers, any may answer
        statuses.append(httpx.post(f"{url}{INFER}", json=request, headers={"X-API-Key": token}).status_code)
        if statuses[-1] != 200:
            break
    return statuses


def test_a_refused_client_stays_refused_after_the_server_is_killed_and_restarted(
    victim_dir, defense_dir, data_dir, tmp_path
):
    db, log = tmp_path / "db", tmp_path / "log"
    server = start_server(victim_dir, db, log, "--defense", str(defense_dir), data_dir=data_dir)
    thief, benign = create_key(db, "--name", "fashion-thief"), create_key(db, "--name", "benign")
    benign_images = mnist_images(data_dir, 300)
    try:
        first = httpx.post(f"{server.url}{INFER}", json=body(benign_images[:150]), headers={"X-API-Key": benign})
        assert first.status_code == 200
        # An all-OOD stream is refused by the batch that takes it to 200 queries.
        assert _until_refused(server.url, thief, _fashion_batches(data_dir)) == [200, 200, 200, 403]
        with sqlite3.connect(db) as connection:
            before = connection.execute("SELECT key_id, level FROM client_state ORDER BY key_id").fetchall()
        server.stop(signal.SIGKILL)  # no graceful shutdown: what was committed is all there is
        server = start_server(
            victim_dir, db, log, "--defense", str(defense_dir), data_dir=data_dir, port=int(server.url.rsplit(":")[-1])
        )
        again = httpx.post(f"{server.url}{INFER}", json=_fashion_batches(data_dir)[0], headers={"X-API-Key": thief})
        assert again.status_code == 403 and "suspended" in again.json()["error"]
        answered = httpx.post(f"{server.url}{INFER}", json=body(benign_images[150:]), headers={"X-API-Key": benign})
        assert answered.status_code == 200
        with sqlite3.connect(db) as connection:
            levels = dict(connection.execute("SELECT key_id, level FROM client_state").fetchall())
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert levels == {_key_id(thief): 2, _key_id(benign): 0}
        assert dict(before) == levels
    finally:
        stop_all(server)


def test_several_workers_keep_quotas_and_detection_exact(victim_dir, defense_dir, data_dir, tmp_path):
    server = start_server(
        victim_dir,
        tmp_path / "db",
        tmp_path / "log",
        "--defense",
        str(defense_dir),
        "--workers",
        "2",
        data_dir=data_dir,
    )
    try:
        token = create_key(server.db, "--name", "crowd", "--quota", "100")
        images = body(mnist_images(data_dir, 7))

        def send(_):
            return httpx.post(f"{server.url}{INFER}", json=images, headers={"X-API-Key": token}, timeout=60)

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = [r.status_code for r in pool.map(send, range(24))]
        assert statuses.count(200) == 14 and statuses.count(429) == 10
        with sqlite3.connect(server.db) as db:
            assert db.execute("SELECT used FROM api_keys WHERE name = 'crowd'").fetchone()[0] == 98
        # The OOD stream is refused at the same query as with one process: the workers share its state.
        thief = create_key(server.db, "--name", "fashion-thief")
        assert _until_refused(server.url, thief, _fashion_batches(data_dir)) == [200, 200, 200, 403]
        assert server.logs().count("Started server process") == 2
    finally:
        stop_all(server)


def test_https_with_the_operators_certificate(victim, victim_dir, data_dir, tmp_path):
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    ca, cert, private = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    authority.cert_pem.write_to_path(str(ca))
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(private))
    server = start_server(
        victim_dir,
        tmp_path / "db",
        tmp_path / "log",
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(private),
        data_dir=data_dir,
        ca=ca,
    )
    try:
        assert server.url.startswith("https://")
        token = create_key(server.db, "--name", "tls")
        images = torch.from_numpy(mnist_images(data_dir, 32))
        answers = HttpOracle(server.url, token, verify=str(ca)).query(images)
        assert torch.equal(answers, VictimOracle(victim.model).query(images))
        with pytest.raises(httpx.ConnectError):  # not trusted without the operator's CA
            httpx.get(f"{server.url}/v2/health/ready")
        # The command line trusts the operator's CA with --ca.
        out = tmp_path / "attack"
        command = ["attack", "--victim", str(victim_dir), "--url", server.url, "--ca", str(ca)]
        command += ["--queries", "256", "--epochs", "1", "--min-steps", "0", "--out", str(out)]
        finished = mea(*command, data_dir=data_dir, env={"MEA_API_KEY": token}, threads=1)
        assert finished.returncode == 0, finished.stderr
        assert json.loads((out / "metrics.json").read_text())["queries"] == 256
        assert token not in (out / "config.json").read_text()
    finally:
        stop_all(server)
