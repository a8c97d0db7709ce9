"""Throughput and latency of `mea serve` over loopback, with and without the defense.

Starts a real server process per configuration, sends MNIST test images from client threads in the
same way HttpOracle does (OIP v2 with binary FP32 tensors) and, for comparison, as plain JSON, and
reports images/s and per-request p50/p99 latency at batch 1 and batch 256.  Client and server share
this machine's cores, as they would in any single-host measurement.  The in-process oracle (the
victim behind `VictimOracle`, no server, as many torch threads as the server) is measured in the
same run on the same images, in turns with the servers (this machine's speed drifts by a quarter
within minutes): the server's rate is judged against the model's own, like for like.

    python -m benchmarks.serve_throughput --victim DIR --defense DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import orjson

from benchmarks.provenance import Provenance
from mea.data import load
from mea.serve.client import binary_infer_request
from mea.serve.db import Database
from mea.serve.keys import KeyStore
from mea.serve.process import start_server, stop_all

INFER = "/v2/models/lenet-mnist/infer"


def json_request(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": list(images.shape), "datatype": "FP32", "data": images.reshape(-1)}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return body, {"Content-Type": "application/json"}


def summary(latencies: list[float], images: int, wall: float) -> dict:
    """Images/s over the wall time, and the requests' latency quantiles."""
    ordered = sorted(latencies)
    return {
        "images_per_s": images / wall,
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
    }


def measure(url: str, keys: list[str], images: np.ndarray, batch: int, encode, seconds: float, clients: int) -> dict:
    """Images/s and latency of `clients` threads sending `batch`-image requests for `seconds`.

    Each client walks through its own share of the images and never repeats one under the same
    key: repeated queries are what the per-client detector flags (as it should), which would then
    measure the treatment of a suspect client instead of a benign one.
    """
    shares = [images[i::clients] for i in range(clients)]
    requests = [[encode(share[i : i + batch]) for i in range(0, len(share) - batch + 1, batch)] for share in shares]
    latencies: list[float] = []
    answered = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(n: int) -> None:
        own = requests[n]
        i = 0
        http = None
        while time.perf_counter() < deadline:
            if i % len(own) == 0:  # a fresh key for every pass over this client's images
                if http is not None:
                    http.close()
                key = keys[(n + clients * (i // len(own))) % len(keys)]
                http = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60)
            body, headers = own[i % len(own)]
            start = time.perf_counter()
            response = http.post(INFER, content=body, headers=headers)
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            with lock:
                latencies.append(elapsed)
                answered[0] += batch
            i += 1
        if http is not None:
            http.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(latencies, answered[0], time.perf_counter() - start)


def in_process(victim: Path, images: np.ndarray, batch: int, seconds: float, threads: int) -> dict:
    """Images/s and per-call latency of the victim queried in process, one caller."""
    import torch

    from mea.oracle import VictimOracle
    from mea.victim import load_victim

    torch.set_num_threads(threads)
    oracle = VictimOracle(load_victim(victim).model)
    tensors = [torch.from_numpy(images[i : i + batch]) for i in range(0, len(images) - batch + 1, batch)]
    for chunk in tensors[:20]:  # warm-up
        oracle.query(chunk)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        chunk = tensors[len(latencies) % len(tensors)]
        tick = time.perf_counter()
        oracle.query(chunk)
        latencies.append(time.perf_counter() - tick)
    return summary(latencies, batch * len(latencies), time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--defense", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements per configuration")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_throughput.json"))
    args = parser.parse_args()
    provenance = Provenance()

    # Benign traffic: all 70,000 MNIST images, none repeated under one key (see `measure`).
    images = np.concatenate([load("mnist", part).images.numpy() for part in ("test", "train")])
    root = Path(tempfile.mkdtemp(prefix="mea-serve-bench-"))
    servers = {
        False: start_server(args.victim, root / "plain.db", root / "plain.log", threads=args.threads),
        True: start_server(
            args.victim,
            root / "defended.db",
            root / "defended.log",
            "--defense",
            str(args.defense),
            threads=args.threads,
        ),
    }
    stores = {defended: KeyStore(Database(server.db)) for defended, server in servers.items()}

    def fresh_keys(defended: bool, n: int) -> list[str]:
        return [stores[defended].create(f"bench-{uuid.uuid4().hex[:8]}")[1] for _ in range(n)]

    rows = []
    try:
        for encoding, encode in (("binary", binary_infer_request), ("json", json_request)):
            for batch in (1, 256):
                # None: the in-process oracle, measured in the binary rounds (its reference).
                contenders: list[bool | None] = [None, False, True] if encoding == "binary" else [False, True]
                samples: dict[bool | None, list[dict]] = {contender: [] for contender in contenders}
                for defended in (False, True):  # warm-up
                    measure(servers[defended].url, fresh_keys(defended, 1), images, batch, encode, 1.0, 1)
                # The servers and the in-process oracle take turns, so that a slower spell of a shared
                # machine hits all of them, and the server's share of the model's rate is like for like.
                # One more in-process turn closes the last round: each round's servers are judged
                # against the in-process turns on both sides of them.
                for round_ in range(args.rounds + (None in contenders)):
                    for contender in contenders if round_ < args.rounds else [None]:
                        samples[contender].append(
                            in_process(args.victim, images, batch, args.seconds, args.threads)
                            if contender is None
                            else measure(
                                servers[contender].url,
                                fresh_keys(contender, 8),
                                images,
                                batch,
                                encode,
                                args.seconds,
                                args.clients,
                            )
                        )
                for contender in contenders:
                    result = {
                        key: statistics.median(s[key] for s in samples[contender])
                        for key in ("images_per_s", "p50_ms", "p99_ms")
                    }
                    if contender is not None and None in samples:
                        # Each round's server against the mean of the in-process turns before and
                        # after it: a drift that is slow against a round cancels.
                        model = [s["images_per_s"] for s in samples[None]]
                        shares = [
                            served["images_per_s"] / ((model[r] + model[r + 1]) / 2)
                            for r, served in enumerate(samples[contender])
                        ]
                        result["share_of_in_process"] = {
                            "median": statistics.median(shares),
                            "rounds": shares,
                            "reference": "the mean of the in-process turns before and after",
                        }
                    rows.append(
                        {
                            "defense": contender,
                            "encoding": "in-process" if contender is None else encoding,
                            "batch": batch,
                            "server_threads": args.threads,
                            **result,
                        }
                    )
                    name = "in-process oracle" if contender is None else f"defense {'on ' if contender else 'off'}"
                    print(
                        f"{name:17s} {encoding:6s} batch {batch:3d}: {result['images_per_s']:8.0f} images/s, "
                        f"p50 {result['p50_ms']:6.2f} ms, p99 {result['p99_ms']:6.2f} ms",
                        flush=True,
                    )
    finally:
        stop_all(*servers.values())
    for encoding in ("binary", "json"):
        for batch in (1, 256):
            off, on = (
                next(r for r in rows if r["defense"] is d and r["encoding"] == encoding and r["batch"] == batch)
                for d in (False, True)
            )
            print(
                f"defense cost, {encoding} batch {batch}: {1 - on['images_per_s'] / off['images_per_s']:.1%} "
                "of throughput"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "provenance": provenance.record(),
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "cpus": os.cpu_count(),
                "clients": args.clients,
                "rounds": args.rounds,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
