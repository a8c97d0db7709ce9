"""What an operator reads and does through the console: the service's state per client, and the
actions (revoke a key, suspend or lift a client, change a quota), each recorded in the audit log
with the administrator's key id.  Everything reads the service database, so one console shows the
whole service, whichever of its processes answers the page.
"""

from __future__ import annotations

import time

import numpy as np

from mea.config import PradaConfig
from mea.defenses.prada import LEVEL_NAMES, NORMAL, REFUSED
from mea.errors import ConfigError
from mea.serve import audit
from mea.serve.clients import ClientRecords
from mea.serve.db import Database
from mea.serve.keys import KeyStore


class UnknownClient(ConfigError):
    """No inference key has this id."""


RECENT_S = 300.0  # "request rate" is over the last five minutes
LATENCY_WINDOW_S = 900.0
SERIES_MINUTES = 60


def _evidence_counts(connection) -> dict[str, int]:
    """Watermark records per client, where the evidence store exists in this database."""
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'watermark_evidence_clients'"
    ).fetchone()
    if not exists:
        return {}
    return dict(connection.execute("SELECT client, stored FROM watermark_evidence_clients").fetchall())


def overview(db: Database, prada: PradaConfig) -> dict:
    """Every client and the service's totals, as the console's table and header show them."""
    connection = db.read()
    now = time.time()
    recent = {
        key: (requests, images)
        for key, requests, images in connection.execute(
            "SELECT key_id, COUNT(*), SUM(batch) FROM audit WHERE status = 200 AND endpoint = 'infer' AND time >= ? "
            "GROUP BY key_id",
            (now - RECENT_S,),
        )
    }
    last_seen = dict(connection.execute("SELECT key_id, MAX(time) FROM audit GROUP BY key_id").fetchall())
    for key, minute in connection.execute(
        "SELECT key_id, MAX(minute) FROM rejected WHERE key_id <> '' GROUP BY key_id"
    ):
        last_seen[key] = max(last_seen.get(key) or 0.0, minute * 60.0)
    refusals = dict(connection.execute("SELECT key_id, SUM(count) FROM rejected GROUP BY key_id").fetchall())
    evidence = _evidence_counts(connection)
    clients = []
    for row in connection.execute(
        "SELECT k.id, k.name, k.quota, k.used, k.rate, k.revoked, s.level, s.level_since, s.queries, s.flagged_ood, "
        "s.statistic, s.prada_flagged_at FROM api_keys AS k LEFT JOIN client_state AS s ON s.key_id = k.id "
        "WHERE k.admin = 0 ORDER BY k.created"
    ):
        key_id, name, quota, used, rate, revoked, level, since, queries, flagged, statistic, prada_at = row
        requests, images = recent.get(key_id, (0, 0))
        clients.append(
            {
                "id": key_id,
                "name": name,
                "quota": quota,
                "used": used,
                "rate_limit": rate,
                "revoked": bool(revoked),
                "level": LEVEL_NAMES[level or NORMAL],
                "since": since,
                "last_seen": last_seen.get(key_id),
                "requests_per_min": round(requests * 60 / RECENT_S, 2),
                "images_per_min": round((images or 0) * 60 / RECENT_S, 1),
                "queries": queries or 0,
                "ood_rate": (flagged or 0) / queries if queries else 0.0,
                "statistic": statistic,
                "prada_flagged_at": prada_at,
                "refusals": int(refusals.get(key_id, 0)),
                "evidence": int(evidence.get(key_id, 0)),
            }
        )
    totals = connection.execute(
        "SELECT COUNT(*), COALESCE(SUM(batch), 0), COALESCE(SUM(flagged), 0) FROM audit "
        "WHERE status = 200 AND endpoint = 'infer'"
    ).fetchone()
    latencies = np.array(
        [
            value
            for (value,) in connection.execute(
                "SELECT latency_ms FROM audit WHERE status = 200 AND latency_ms IS NOT NULL AND time >= ? "
                "ORDER BY id DESC LIMIT 20000",
                (now - LATENCY_WINDOW_S,),
            )
        ]
    )
    percentiles = (
        {f"p{q}": round(float(np.percentile(latencies, q)), 2) for q in (50, 95, 99)} if len(latencies) else {}
    )
    return {
        "time": now,
        "totals": {
            "answered_requests": totals[0],
            "images": totals[1],
            "flagged_images": totals[2],
            "refused_requests": int(sum(refusals.values())),
            "clients": len(clients),
            "refused_clients": sum(1 for c in clients if c["level"] == LEVEL_NAMES[REFUSED]),
        },
        "latency_ms": {"window_s": LATENCY_WINDOW_S, "requests": len(latencies), **percentiles},
        "prada": {
            "threshold": prada.threshold,
            "ood_suspect_rate": prada.ood_suspect_rate,
            "ood_refuse_rate": prada.ood_refuse_rate,
        },
        "clients": clients,
    }


def series(db: Database, key_id: str, minutes: int = SERIES_MINUTES) -> dict:
    """Per minute over the last `minutes`: images answered, OOD rate, PRADA W, refusals."""
    connection = db.read()
    now_minute = int(time.time() // 60)
    first = now_minute - minutes + 1
    start = {m: i for i, m in enumerate(range(first, now_minute + 1))}
    images, ood, statistic, refused = ([0] * minutes, [None] * minutes, [None] * minutes, [0] * minutes)
    for minute, batch, flagged in connection.execute(
        "SELECT CAST(time / 60 AS INTEGER) AS minute, SUM(batch), SUM(flagged) FROM audit "
        "WHERE key_id = ? AND status = 200 AND endpoint = 'infer' AND time >= ? GROUP BY minute",
        (key_id, first * 60.0),
    ):
        if minute in start:
            images[start[minute]] = batch
            ood[start[minute]] = flagged / batch if batch else None
    for minute, value in connection.execute(
        "SELECT CAST(time / 60 AS INTEGER) AS minute, statistic FROM audit WHERE id IN ("
        "SELECT MAX(id) FROM audit WHERE key_id = ? AND time >= ? AND statistic IS NOT NULL "
        "GROUP BY CAST(time / 60 AS INTEGER))",
        (key_id, first * 60.0),
    ):
        if minute in start:
            statistic[start[minute]] = value
    for minute, n in connection.execute(
        "SELECT minute, SUM(count) FROM rejected WHERE key_id = ? AND minute >= ? GROUP BY minute", (key_id, first)
    ):
        if minute in start:
            refused[start[minute]] = n
    return {
        "client": key_id,
        "minutes": [m * 60 for m in start],
        "images": images,
        "ood_rate": ood,
        "statistic": statistic,
        "refused": refused,
    }


def _revoke(connection, key_id: str, quota: int | None, old_quota: int | None) -> str:
    KeyStore.revoke_in(connection, key_id)
    return "key revoked"


def _suspend(connection, key_id: str, quota: int | None, old_quota: int | None) -> str:
    ClientRecords.set_level(connection, key_id, REFUSED)
    return "client suspended by the operator"


def _lift(connection, key_id: str, quota: int | None, old_quota: int | None) -> str:
    ClientRecords.set_level(connection, key_id, NORMAL)
    return "suspension lifted; the client's detector record starts afresh"


def _quota(connection, key_id: str, quota: int | None, old_quota: int | None) -> str:
    KeyStore.set_quota(connection, key_id, quota)
    return f"quota {old_quota} -> {quota}"


ACTIONS = {"revoke": _revoke, "suspend": _suspend, "lift": _lift, "quota": _quota}


def act(db: Database, admin_id: str, key_id: str, name: str, quota: int | None = None) -> str:
    """Carry out an operator's action (one of `ACTIONS`) on a client and record it in the audit log
    with the administrator's key id, in one transaction; returns what changed."""
    if name not in ACTIONS:
        raise UnknownClient(f"unknown action {name!r}; one of {', '.join(ACTIONS)}")
    with db.write() as connection:
        row = connection.execute("SELECT quota, admin FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None or row[1]:
            raise UnknownClient(f"no inference key with id {key_id!r}")
        detail = ACTIONS[name](connection, key_id, quota, row[0])
        audit.record(connection, key_id, 0, None, 0, None, endpoint=f"admin:{name}", error=detail, actor=admin_id)
    return detail
