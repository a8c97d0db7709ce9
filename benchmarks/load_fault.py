"""Load and faults on `mea serve`: sustained mixed traffic, a memory bomb, and `kill -9` mid-load.

One real server with the defense on loopback, and client threads in this process sending as fast
as they are answered (a closed loop: the rate the machine holds):

- benign clients (MNIST test images; binary batches of 32, JSON batches of 8, binary batches of 1),
- an in-distribution attacker (binary batches of 256 from MNIST train),
- an out-of-distribution attacker (Fashion-MNIST), refused after 200 queries and then knocking on,
- malformed requests, oversized bodies and invalid keys.

Every request carries a unique Idempotency-Key, so each answer the clients received can be found in
the audit log.  Three phases:

1. steady: throughput, p50/p99 latency per kind of traffic, peak server memory, the 5xx count
   (must be 0), audit rows vs answered requests (must match; refusals are counted per minute, not
   row by row), and quota charged vs images answered (must match, key by key);
2. memory bomb: a benign client alone, then beside senders of the request from the hardening
   issue (shape [1, 1, 28, 28] with 7,000,000 numbers: chunked, announced, and within the byte
   limit as "0,"): the server's memory growth and the benign client's p50/p99 in both;
3. kill -9 mid-load, then a restart on the same database: answers the clients received that are
   missing from the audit log (must be 0), requests charged but never answered (at most those in
   flight at the kill), `PRAGMA integrity_check`, and the in-flight requests resent with their
   Idempotency-Key (answered, charged once).

    python -m benchmarks.load_fault --victim runs/victim --defense runs/defense
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import signal
import sqlite3
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.provenance import RESULTS, Provenance
from benchmarks.serve_throughput import json_request
from mea.data import load
from mea.serve.client import binary_infer_request
from mea.serve.process import Server, create_key, start_server, stop_all

INFER = "/v2/models/lenet-mnist/infer"


def bomb(values: int, number: bytes) -> bytes:
    """The hardening issue's memory bomb: one declared image, `values` numbers."""
    head = b'{"inputs": [{"name": "x", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ['
    return head + (number + b",") * (values - 1) + number + b"]}]}"


@dataclass
class Log:
    """Every request's outcome, from the clients' side."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    answered: dict[str, tuple[str, int]] = field(default_factory=dict)  # idempotency key -> (key id, images)
    in_flight: dict[str, tuple[str, int, bytes, dict]] = field(default_factory=dict)
    transport_errors: int = 0

    def add(self, kind: str, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[kind][status] += 1
            self.latencies[kind].append(seconds)


class Traffic:
    """Client threads sending one kind of request each, until stopped."""

    def __init__(self, url: str, log: Log) -> None:
        self.url = url
        self.log = log
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def keyed(self, kind: str, token: str, requests: list[tuple[bytes, dict[str, str], int]]) -> None:
        """Answerable requests under `token`, each with a fresh Idempotency-Key."""
        key_id = token.split("_")[1]

        def run() -> None:
            with httpx.Client(base_url=self.url, headers={"X-API-Key": token}, timeout=120) as http:
                i = 0
                while not self.stop.is_set():
                    body, headers, images = requests[i % len(requests)]
                    i += 1
                    idempotency = uuid.uuid4().hex
                    headers = {**headers, "Idempotency-Key": idempotency}
                    with self.log.lock:
                        self.log.in_flight[idempotency] = (token, images, body, headers)
                    start = time.perf_counter()
                    try:
                        response = http.post(INFER, content=body, headers=headers)
                    except httpx.TransportError:
                        with self.log.lock:
                            self.log.transport_errors += 1
                        return  # the server is gone (phase 3): this request stays in flight
                    self.log.add(kind, response.status_code, time.perf_counter() - start)
                    with self.log.lock:
                        del self.log.in_flight[idempotency]
                        if response.status_code == 200:
                            self.log.answered[idempotency] = (key_id, images)

        self._start(run)

    def raw(self, kind: str, make: callable) -> None:
        """Requests that are refused by design: `make(i)` gives (body, headers)."""

        def run() -> None:
            with httpx.Client(base_url=self.url, timeout=120) as http:
                i = 0
                while not self.stop.is_set():
                    body, headers = make(i)
                    i += 1
                    start = time.perf_counter()
                    try:
                        response = http.post(INFER, content=body, headers=headers)
                    except httpx.TransportError:
                        with self.log.lock:
                            self.log.transport_errors += 1
                        return
                    self.log.add(kind, response.status_code, time.perf_counter() - start)

        self._start(run)

    def _start(self, run) -> None:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


class Memory:
    """The server process's resident memory, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.samples.append(self.now())
            except (FileNotFoundError, ProcessLookupError, RuntimeError):
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.samples, default=0.0)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p99_ms": None}
    array = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(array, 50)), 2), "p99_ms": round(float(np.percentile(array, 99)), 2)}


def requests_of(images: np.ndarray, batch: int, encode) -> list[tuple[bytes, dict[str, str], int]]:
    return [(*encode(images[i : i + batch]), batch) for i in range(0, len(images) - batch + 1, batch)]


def binary(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return binary_infer_request(images)


def mixed_traffic(server: Server, log: Log, data_dir: Path | None, quota: int) -> tuple[Traffic, dict[str, str]]:
    mnist_test = load("mnist", "test", data_dir).images.numpy()
    mnist_train = load("mnist", "train", data_dir).images[:20_000].numpy()
    fashion = load("fashion-mnist", "test", data_dir).images[:2_000].numpy()
    tokens = {
        name: create_key(server.db, "--name", name, "--quota", str(quota))
        for name in ("benign-32", "benign-json", "benign-1", "attacker", "fashion", "malformed")
    }
    traffic = Traffic(server.url, log)
    traffic.keyed("benign binary x32", tokens["benign-32"], requests_of(mnist_test[:5000], 32, binary))
    traffic.keyed("benign JSON x8", tokens["benign-json"], requests_of(mnist_test[5000:8000], 8, json_request))
    traffic.keyed("benign binary x1", tokens["benign-1"], requests_of(mnist_test[8000:], 1, binary))
    traffic.keyed("attacker binary x256", tokens["attacker"], requests_of(mnist_train, 256, binary))
    traffic.keyed("OOD attacker x64", tokens["fashion"], requests_of(fashion, 64, binary))
    malformed = [
        (b"{not json", {"Content-Type": "application/json"}),
        (
            json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 3, 28, 28], "datatype": "FP32", "data": [0.0]}]}
            ).encode(),
            {"Content-Type": "application/json"},
        ),
        (bomb(5000, b"0.5"), {"Content-Type": "application/json"}),
    ]
    traffic.raw("malformed", lambda i: (malformed[i % 3][0], {**malformed[i % 3][1], "X-API-Key": tokens["malformed"]}))
    oversized = b" " * (24 * 1024 * 1024)
    traffic.raw(
        "oversized body",
        lambda i: (oversized, {"Content-Type": "application/json", "X-API-Key": tokens["malformed"]}),
    )
    invalid = binary(mnist_test[:8])
    traffic.raw("invalid key", lambda i: (invalid[0], {**invalid[1], "X-API-Key": f"mea_{i % 2**48:012x}_" + "B" * 43}))
    return traffic, tokens


def rejected_total(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT COALESCE(SUM(count), 0) FROM rejected").fetchone()[0]


def steady(args, root: Path) -> dict:
    server = start_server(
        args.victim,
        root / "steady.db",
        root / "steady.log",
        "--defense",
        str(args.defense),
        data_dir=args.data_dir,
        threads=args.server_threads,
    )
    try:
        log = Log()
        memory = Memory(server.process.pid)
        start_rss = memory.now()
        traffic, tokens = mixed_traffic(server, log, args.data_dir, quota=10**9)
        start = time.perf_counter()
        time.sleep(args.seconds)
        traffic.join()
        elapsed = time.perf_counter() - start
        peak_rss = memory.stop()
        time.sleep(3)  # one periodic flush of the refusal counts
    finally:
        stop_all(server)  # graceful: the last counts are flushed
    with sqlite3.connect(server.db) as connection:
        rows = connection.execute("SELECT idempotency_key, key_id, batch FROM audit WHERE status = 200").fetchall()
        used = dict(connection.execute("SELECT id, used FROM api_keys").fetchall())
    audited = {key: (key_id, batch) for key, key_id, batch in rows}
    answered_images: Counter = Counter()
    for key_id, images in log.answered.values():
        answered_images[key_id] += images
    all_statuses = Counter()
    for counts in log.statuses.values():
        all_statuses.update(counts)
    refused = sum(n for status, n in all_statuses.items() if status != 200)
    return {
        "seconds": round(elapsed, 1),
        "requests": sum(all_statuses.values()),
        "requests_per_s": round(sum(all_statuses.values()) / elapsed, 1),
        "answered_images_per_s": round(sum(answered_images.values()) / elapsed, 1),
        "by_kind": {
            kind: {
                "requests": sum(log.statuses[kind].values()),
                "statuses": {str(s): n for s, n in sorted(log.statuses[kind].items())},
                **percentiles(log.latencies[kind]),
            }
            for kind in sorted(log.statuses)
        },
        "server_5xx": sum(n for status, n in all_statuses.items() if status >= 500),
        "server_rss_mb": {"start": round(start_rss, 1), "peak": round(peak_rss, 1)},
        "answered_requests": len(log.answered),
        "audit_rows_answered": len(audited),
        "answered_missing_from_audit": sum(1 for key in log.answered if key not in audited),
        "images_answered": sum(answered_images.values()),
        "quota_charged": sum(used[token.split("_")[1]] for token in tokens.values()),
        "quota_mismatches": sum(
            1 for token in tokens.values() if used[token.split("_")[1]] != answered_images[token.split("_")[1]]
        ),
        "refused_requests": refused,
        "refusals_counted": rejected_total(server.db),
    }


def send_bombs(url: str, token: str, seconds: float, started, results) -> None:
    """Three threads sending the memory bomb three ways for `seconds`; puts their status counts."""
    log = Log()
    traffic = Traffic(url, log)
    payloads = {
        "announced": bomb(7_000_000, b"0.5"),  # 28 MB with Content-Length: refused before reading
        "within the byte limit": bomb(7_000_000, b"0"),  # 14 MB of "0,": refused as the values arrive
    }
    for name, payload in payloads.items():
        traffic.raw(name, lambda i, p=payload: (p, {"Content-Type": "application/json", "X-API-Key": token}))

    def chunked(i: int):
        def stream():
            yield b'{"inputs": [{"name": "x", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ['
            for _ in range(700):
                yield b"0.5," * 10_000

        return stream(), {"Content-Type": "application/json", "X-API-Key": token}

    traffic.raw("chunked", chunked)
    started.set()
    time.sleep(seconds)
    traffic.join()
    results.put({kind: {str(s): n for s, n in counts.items()} for kind, counts in log.statuses.items()})


def memory_bomb(args, root: Path) -> dict:
    server = start_server(
        args.victim, root / "bomb.db", root / "bomb.log", data_dir=args.data_dir, threads=args.server_threads
    )
    try:
        token = create_key(server.db, "--name", "benign", "--quota", str(10**9))
        bomber = create_key(server.db, "--name", "bomber", "--quota", str(10**9))
        images = load("mnist", "test", args.data_dir).images.numpy()

        def benign_phase(seconds: float) -> list[float]:
            log = Log()
            traffic = Traffic(server.url, log)
            traffic.keyed("benign", token, requests_of(images, 32, binary))
            time.sleep(seconds)
            traffic.join()
            return log.latencies["benign"]

        benign_phase(2)  # warm-up
        memory = Memory(server.process.pid)
        alone = benign_phase(args.bomb_seconds)
        before = max(memory.samples[-10:] or [memory.now()])
        # The bombs come from another process, so that sending them does not slow this one's client.
        context = multiprocessing.get_context("spawn")
        results, started = context.Queue(), context.Event()
        bombers = context.Process(target=send_bombs, args=(server.url, bomber, args.bomb_seconds + 1, started, results))
        bombers.start()
        started.wait()
        time.sleep(0.5)
        during_log = Log()
        benign = Traffic(server.url, during_log)
        benign.keyed("benign", token, requests_of(images, 32, binary))
        time.sleep(args.bomb_seconds)
        benign.join()
        statuses = results.get()
        bombers.join()
        peak = memory.stop()
    finally:
        stop_all(server)
    return {
        "bomb_requests": statuses,
        "server_rss_mb": {"before": round(before, 1), "peak": round(peak, 1), "growth": round(peak - before, 1)},
        "benign_alone": {"requests": len(alone), **percentiles(alone)},
        "benign_during": {
            "requests": len(during_log.latencies["benign"]),
            **percentiles(during_log.latencies["benign"]),
        },
    }


def kill9(args, root: Path) -> dict:
    db, server_log = root / "kill.db", root / "kill.log"
    server = start_server(
        args.victim, db, server_log, "--defense", str(args.defense), data_dir=args.data_dir, threads=args.server_threads
    )
    log = Log()
    traffic, _ = mixed_traffic(server, log, args.data_dir, quota=10**9)
    time.sleep(args.kill_after)
    server.stop(signal.SIGKILL)
    traffic.join()
    port = int(server.url.rsplit(":", 1)[1])
    with sqlite3.connect(db) as connection:
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
        audited = {
            key: batch
            for key, batch in connection.execute("SELECT idempotency_key, batch FROM audit WHERE status = 200")
        }
        used_before = dict(connection.execute("SELECT id, used FROM api_keys").fetchall())
    in_flight = dict(log.in_flight)
    charged_unanswered = [key for key in audited if key not in log.answered]
    restarted = start_server(
        args.victim,
        db,
        server_log,
        "--defense",
        str(args.defense),
        data_dir=args.data_dir,
        threads=args.server_threads,
        port=port,
    )
    try:
        # The clients resend what was in flight, with the same Idempotency-Key.
        resent, fresh_images = Counter(), 0
        for token, images, body, headers in in_flight.values():
            response = httpx.post(
                f"{restarted.url}{INFER}", content=body, headers={**headers, "X-API-Key": token}, timeout=120
            )
            replayed = response.headers.get("idempotent-replayed") == "true"
            resent["replayed" if replayed else str(response.status_code)] += 1
            if response.status_code == 200 and not replayed:
                fresh_images += images
        with sqlite3.connect(db) as connection:
            used_after = dict(connection.execute("SELECT id, used FROM api_keys").fetchall())
            integrity_after = connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        stop_all(restarted)
    newly_charged = sum(used_after[i] - used_before[i] for i in used_before)
    return {
        "kill_after_s": args.kill_after,
        "answered_before_kill": len(log.answered),
        "answered_missing_from_audit": sum(1 for key in log.answered if key not in audited),
        "in_flight_at_kill": len(in_flight),
        "charged_but_unanswered_requests": len(charged_unanswered),
        "charged_but_unanswered_in_flight": sum(1 for key in charged_unanswered if key in in_flight),
        "integrity_check": integrity,
        "integrity_check_after_restart": integrity_after,
        "resent_after_restart": dict(resent),
        # Resent requests answered afresh are charged once; replays are not charged again.
        "charged_on_resend_images": newly_charged,
        "answered_afresh_on_resend_images": fresh_images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--defense", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of the steady phase.")
    parser.add_argument("--bomb-seconds", type=float, default=15.0, help="Each half of the memory-bomb phase.")
    parser.add_argument("--kill-after", type=float, default=10.0, help="Seconds of load before kill -9.")
    parser.add_argument("--server-threads", type=int, default=1, help="Torch threads of the server process.")
    parser.add_argument("--out", type=Path, default=RESULTS / "load_fault.json")
    args = parser.parse_args()
    provenance = Provenance()
    with tempfile.TemporaryDirectory(prefix="mea-load-") as tmp:
        root = Path(tmp)
        result = {"steady": steady(args, root)}
        print(json.dumps(result["steady"], indent=1), flush=True)
        result["memory_bomb"] = memory_bomb(args, root)
        print(json.dumps(result["memory_bomb"], indent=1), flush=True)
        result["kill9"] = kill9(args, root)
        print(json.dumps(result["kill9"], indent=1), flush=True)
    result["provenance"] = provenance.record()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
