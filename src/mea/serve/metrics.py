"""`GET /metrics`: the service in the Prometheus text format, for the scrapers operators already run.

Counters live in the service database (`counters`), updated in the transaction that answers a
request, so every server process (`--workers`) reports the same totals and a restart loses none:

    mea_requests_total{status}          requests by HTTP status (refusals included, counted per minute)
    mea_images_total                    images answered
    mea_flagged_images_total            images the detector flagged
    mea_replays_total                   retries answered again without a charge (idempotency keys)
    mea_request_latency_seconds         histogram of answered requests' time in the server
    mea_client_*{client}                per client (key id, never the key): images used, quota,
                                        OOD rate, PRADA W, escalation level; the `MAX_CLIENTS` most
                                        recently active clients only (Prometheus dislikes unbounded
                                        label sets), with mea_clients_total and mea_clients_shown

Nothing here reveals a key, a secret or an input.
"""

from __future__ import annotations

import math
import sqlite3

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from mea.config import PradaConfig
from mea.serve.db import Database

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_CLIENTS = 50
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


_ADD = (
    "INSERT INTO counters (name, label, value) VALUES (?, ?, ?) "
    "ON CONFLICT (name, label) DO UPDATE SET value = value + excluded.value"
)


def count(connection: sqlite3.Connection, name: str, value: float = 1.0, label: str = "") -> None:
    """Add to a counter inside the caller's write transaction."""
    connection.execute(_ADD, (name, label, value))


def count_answer(connection: sqlite3.Connection, images: int, flagged: int, latency_s: float, replay: bool) -> None:
    """An answered request's counters, in one statement (this runs on every request)."""
    bucket = next((f"{b:g}" for b in LATENCY_BUCKETS_S if latency_s <= b), "+Inf")
    counts = [("requests", "200", 1.0), ("latency_bucket", bucket, 1.0), ("latency_sum", "", latency_s)]
    counts += [("replays", "", 1.0)] if replay else [("images", "", images), ("flagged", "", flagged)]
    connection.executemany(_ADD, counts)


class _Collector:
    def __init__(self, db: Database, prada: PradaConfig) -> None:
        self.db = db
        self.prada = prada

    def collect(self):
        connection = self.db.read()
        counters: dict[tuple[str, str], float] = {
            (name, label): value for name, label, value in connection.execute("SELECT name, label, value FROM counters")
        }
        statuses = {label: value for (name, label), value in counters.items() if name == "requests"}
        for status, n in connection.execute("SELECT status, SUM(count) FROM rejected GROUP BY status"):
            statuses[str(status)] = statuses.get(str(status), 0) + n
        requests = CounterMetricFamily("mea_requests", "Inference requests by HTTP status.", labels=["status"])
        for status, n in sorted(statuses.items()):
            requests.add_metric([status], n)
        yield requests
        for name, key, text in (
            ("mea_images", "images", "Images answered."),
            ("mea_flagged_images", "flagged", "Images the out-of-distribution detector flagged."),
            ("mea_replays", "replays", "Retried requests answered again without a charge."),
        ):
            yield CounterMetricFamily(name, text, value=counters.get((key, ""), 0.0))
        cumulative, buckets = 0.0, []
        for bound in (*LATENCY_BUCKETS_S, math.inf):
            label = "+Inf" if bound == math.inf else f"{bound:g}"
            cumulative += counters.get(("latency_bucket", label), 0.0)
            buckets.append((label, cumulative))
        yield HistogramMetricFamily(
            "mea_request_latency_seconds",
            "Time answered requests spent in the server, up to the commit of their audit row.",
            buckets=buckets,
            sum_value=counters.get(("latency_sum", ""), 0.0),
        )
        yield from self._clients(connection)

    def _clients(self, connection: sqlite3.Connection):
        rows = connection.execute(
            "SELECT k.id, k.used, k.quota, s.queries, s.flagged_ood, s.statistic, s.level FROM api_keys AS k "
            "LEFT JOIN client_state AS s ON s.key_id = k.id WHERE k.admin = 0 "
            "ORDER BY COALESCE(s.updated, k.created) DESC"
        ).fetchall()
        families = {
            "used": GaugeMetricFamily(
                "mea_client_images_used", "Images charged to the client's key.", labels=["client"]
            ),
            "quota": GaugeMetricFamily("mea_client_quota", "The client's quota in images.", labels=["client"]),
            "ood": GaugeMetricFamily(
                "mea_client_ood_rate", "Share of the client's queries the detector flagged.", labels=["client"]
            ),
            "w": GaugeMetricFamily(
                "mea_client_prada_statistic",
                f"PRADA's Shapiro-Wilk W of the client's stream (flagged below {self.prada.threshold:g}).",
                labels=["client"],
            ),
            "level": GaugeMetricFamily(
                "mea_client_level", "Escalation: 0 normal, 1 suspect, 2 refused.", labels=["client"]
            ),
        }
        for key_id, used, quota, queries, flagged, statistic, level in rows[:MAX_CLIENTS]:
            families["used"].add_metric([key_id], used)
            if quota is not None:
                families["quota"].add_metric([key_id], quota)
            families["ood"].add_metric([key_id], (flagged or 0) / queries if queries else 0.0)
            if statistic is not None:
                families["w"].add_metric([key_id], statistic)
            families["level"].add_metric([key_id], level or 0)
        yield from families.values()
        yield GaugeMetricFamily("mea_clients_total", "Inference keys in the service.", value=len(rows))
        yield GaugeMetricFamily(
            "mea_clients_shown",
            f"Clients with per-client series here (at most {MAX_CLIENTS}).",
            value=min(len(rows), MAX_CLIENTS),
        )


def render(db: Database, prada: PradaConfig) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(db, prada))
    return generate_latest(registry)
