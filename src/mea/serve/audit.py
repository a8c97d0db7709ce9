"""The audit log: one row per answered request, and per-minute counts of refused ones.

An answered request (inference, or model metadata asked with a valid key) gets one row: the key id
(never the key), the time, the endpoint, the batch size, a SHA-256 digest of the input bytes, how
many images the detector flagged, the status, and the per-client detector's state.  The row
commits in the same transaction as the quota charge and the detector state, before the answer
leaves, so nothing answered is ever missing from the log.

A refused request (bad key, bad input, spent quota, rate limit, a suspended client, an unknown
model) costs the service nothing but the refusal, and a flood of them must not grow the database
without bound: they are counted per minute, remote address, key, endpoint and status, at most
`REMOTES_PER_MINUTE` distinct addresses per minute (the rest under "other"), and flushed to the
database every few seconds by a background thread (so the event loop never writes).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass

from mea.defenses.prada import ClientState
from mea.serve.db import Database

REMOTES_PER_MINUTE = 64
OTHER_REMOTES = "other"
FLUSH_EVERY_S = 2.0


@dataclass(frozen=True)
class ClientSummary:
    key_id: str | None
    requests: int
    refused: int
    images: int
    flagged: int
    last_state: str | None

    @property
    def ood_rate(self) -> float:
        return self.flagged / self.images if self.images else 0.0


def record(
    connection: sqlite3.Connection,
    key_id: str,
    batch: int,
    digest: str | None,
    flagged: int,
    state: ClientState | None,
    endpoint: str = "infer",
    idempotency_key: str | None = None,
    status: int = 200,
    error: str | None = None,
    latency_ms: float | None = None,
    actor: str | None = None,
) -> int:
    """Add one row inside the caller's write transaction; returns its id."""
    cursor = connection.execute(
        "INSERT INTO audit (key_id, time, endpoint, batch, digest, flagged, status, error, client_state, "
        "level, statistic, idempotency_key, latency_ms, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key_id,
            time.time(),
            endpoint,
            batch,
            digest,
            flagged,
            status,
            error,
            None if state is None else state.describe(),
            None if state is None else state.level,
            None if state is None else state.statistic,
            idempotency_key,
            latency_ms,
            actor,
        ),
    )
    return int(cursor.lastrowid)


class RejectCounter:
    """Per-minute counts of refused requests, kept in memory and added to the database in bulk."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._counts: Counter[tuple[int, str, str, str, int]] = Counter()
        self._remotes: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, remote: str, key_id: str | None, endpoint: str, status: int) -> None:
        minute = int(time.time() // 60)
        with self._lock:
            seen = self._remotes.setdefault(minute, set())
            if remote not in seen and len(seen) >= REMOTES_PER_MINUTE:
                remote = OTHER_REMOTES
            seen.add(remote)
            self._counts[(minute, remote, key_id or "", endpoint, status)] += 1

    def start(self) -> None:
        """Flush every `FLUSH_EVERY_S` seconds from a background thread until `stop`."""

        def run() -> None:
            while not self._stop.wait(FLUSH_EVERY_S):
                self.flush()

        self._thread = threading.Thread(target=run, name="mea-audit-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
            current = int(time.time() // 60)
            self._remotes = {m: r for m, r in self._remotes.items() if m >= current - 1}
        if not counts:
            return
        with self.db.write() as connection:
            connection.executemany(
                "INSERT INTO rejected (minute, remote, key_id, endpoint, status, count) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET count = count + excluded.count",
                [(*group, count) for group, count in counts.items()],
            )


def summary(db: Database) -> list[ClientSummary]:
    """Per client: requests, refusals, images answered, images flagged, current detector state."""
    connection = db.read()
    answered = {
        key or "": (n, images or 0, flagged or 0)
        for key, n, images, flagged in connection.execute(
            "SELECT key_id, COUNT(*), SUM(batch), SUM(flagged) FROM audit WHERE status = 200 AND endpoint = 'infer' "
            "GROUP BY key_id"
        )
    }
    refused = dict(connection.execute("SELECT key_id, SUM(count) FROM rejected GROUP BY key_id").fetchall())
    # An older database has per-request rows for refusals too.
    older = "SELECT key_id, COUNT(*) FROM audit WHERE status <> 200 AND endpoint = 'infer' GROUP BY key_id"
    for key, n in connection.execute(older):
        refused[key or ""] = refused.get(key or "", 0) + n
    states = {
        key or "": state
        for key, state in connection.execute(
            "SELECT key_id, client_state FROM audit WHERE id IN "
            "(SELECT MAX(id) FROM audit WHERE client_state IS NOT NULL GROUP BY key_id)"
        )
    }
    rows = []
    named = sorted(key for key in {*answered, *refused} if key)
    for key in named + ([""] if "" in answered or "" in refused else []):
        n, images, flagged = answered.get(key, (0, 0, 0))
        rows.append(
            ClientSummary(key or None, n + refused.get(key, 0), refused.get(key, 0), images, flagged, states.get(key))
        )
    return rows
