"""The audit log: one committed row per inference request, refused ones included.

A row holds the key id (never the key), the time, the batch size, a SHA-256 digest of the input
bytes, how many images the detector flagged, the HTTP status, the error shown to the client, and
the per-client detector's state.  The server writes the row before the answer leaves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mea.serve.db import Database


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


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self,
        key_id: str | None,
        batch: int,
        digest: str | None,
        flagged: int,
        status: int,
        error: str | None = None,
        client_state: str | None = None,
    ) -> None:
        with self.db.lock:
            self.db.connection.execute(
                "INSERT INTO audit (key_id, time, batch, digest, flagged, status, error, client_state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key_id, time.time(), batch, digest, flagged, status, error, client_state),
            )

    def count(self) -> int:
        with self.db.lock:
            return self.db.connection.execute("SELECT COUNT(*) FROM audit").fetchone()[0]

    def rows(self) -> list[dict]:
        with self.db.lock:
            cursor = self.db.connection.execute(
                "SELECT key_id, time, batch, digest, flagged, status, error, client_state FROM audit ORDER BY id"
            )
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def summary(self) -> list[ClientSummary]:
        """Per client: requests, refusals, images answered, images flagged, latest detector state."""
        with self.db.lock:
            rows = self.db.connection.execute(
                """
                SELECT key_id, COUNT(*), SUM(status >= 400),
                       SUM(CASE WHEN status = 200 THEN batch ELSE 0 END), SUM(flagged),
                       (SELECT client_state FROM audit AS later WHERE later.key_id IS audit.key_id
                        ORDER BY id DESC LIMIT 1)
                FROM audit GROUP BY key_id ORDER BY key_id
                """
            ).fetchall()
        return [
            ClientSummary(key, n, refused or 0, images or 0, flagged or 0, state)
            for key, n, refused, images, flagged, state in rows
        ]
