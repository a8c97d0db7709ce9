"""Per-client detector state in the service database, so that a restart forgets nothing.

Each client's PRADA record (`mea.defenses.prada.ClientState`: the kept queries per class, the
distance record, the test statistic, the OOD counter and the escalation level) lives in three
tables: `client_state` (the scalars and a version), `prada_kept` (each kept query, appended) and
`prada_distances` (the distances, appended a batch at a time, the oldest dropped once the record
holds `max_distances`).  A server process keeps a cached copy of each client it has seen and
writes only what a batch added, inside the same transaction as the request's audit row.  When
several processes answer from one database, each first compares its copy's version with the
database's and reads what the others appended since (all writes are serialised by the database's
write lock, so row ids grow in the order things happened).

The synthetic-step record (`mea.defenses.steps`) keeps the client's latest `step_memory` queries
in `step_memory` (8-bit pixels, zlib-compressed, the oldest deleted as new ones come) and its
counters and latest marks in `client_state`.

Disk cost: a kept query is its float32 pixels, zlib-compressed (about 0.5-1.5 kB for MNIST); at
most `max_per_class` per class and client; a distance is 8 bytes; a remembered query for the step
detector is its 8-bit pixels, zlib-compressed (about 0.2 kB for MNIST), at most `step_memory`.
"""

from __future__ import annotations

import sqlite3
import time
import zlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from mea.defenses.prada import LEVEL_NAMES, REFUSED, ClientState, PradaConfig, _GrowingSet
from mea.defenses.steps import StepRecord, coarse_of


@dataclass
class _Cached:
    state: ClientState
    epoch: int = 0  # bumped when an operator lifts a suspension: the record starts afresh
    version: int = 0
    kept_rowid: int = 0
    distances_rowid: int = 0
    saved_sizes: dict[int, int] = field(default_factory=dict)  # kept queries per class already in the database
    saved_distances: int = 0  # state.distance_count when last saved or loaded
    saved_level: int = 0
    chunks: deque[tuple[int, int]] = field(default_factory=deque)  # (row id, count) of the distance rows kept
    chunked: int = 0  # the sum of `chunks`' counts, kept as they come and go (a batch of one adds a row)
    step_rowid: int = 0  # the last step_memory row read or written
    step_rows: deque[int] = field(default_factory=deque)  # the step_memory row ids kept, oldest first
    saved_added: int = 0  # step_record.added when last saved or loaded


class ClientRecords:
    """The service's per-client states; every method runs inside the database's write lock."""

    def __init__(self, config: PradaConfig, image_shape: tuple[int, ...]) -> None:
        self.config = config
        self.image_shape = tuple(image_shape)
        self.dim = int(np.prod(image_shape))
        self._cache: dict[str, _Cached] = {}

    def load(self, connection: sqlite3.Connection, key_id: str) -> ClientState:
        """The client's current state, brought up to date with what other processes wrote."""
        cached = self._cache.get(key_id)
        row = connection.execute(
            "SELECT epoch, version, level, queries, tested_at, flagged_ood, statistic, prada_flagged_at, "
            "distance_count, steps, steps_flagged_at, step_marks, ood_marks FROM client_state WHERE key_id = ?",
            (key_id,),
        ).fetchone()
        if cached is None or (row is not None and row[0] != cached.epoch):
            cached = self._cache[key_id] = _Cached(ClientState(), epoch=0 if row is None else row[0])
        if row is None or row[1] == cached.version:
            return cached.state
        state = cached.state
        version, state.level, state.queries, state.tested_at, state.flagged_ood = row[1:6]
        state.statistic, state.prada_flagged_at, state.distance_count = row[6:9]
        self._load_steps(connection, key_id, cached, *row[9:])
        for rowid, label, image, distance, threshold in connection.execute(
            "SELECT id, class, image, distance, threshold FROM prada_kept WHERE key_id = ? AND id > ? ORDER BY id",
            (key_id, cached.kept_rowid),
        ):
            kept = state.sets.setdefault(label, _GrowingSet(self.dim, self.config.max_per_class))
            pixels = np.frombuffer(zlib.decompress(image), dtype=np.float32)
            kept.add(pixels, float((pixels * pixels).sum()))
            if distance is not None:
                kept.kept_distances.append(distance)
            kept.threshold = threshold
            cached.saved_sizes[label] = kept.size
            cached.kept_rowid = rowid
        for rowid, count, data in connection.execute(
            "SELECT id, count, data FROM prada_distances WHERE key_id = ? AND id > ? ORDER BY id",
            (key_id, cached.distances_rowid),
        ):
            state.distances.extend(np.frombuffer(data, dtype=np.float64).tolist())
            cached.chunks.append((rowid, count))
            cached.chunked += count
            cached.distances_rowid = rowid
        del state.distances[: max(len(state.distances) - self.config.max_distances, 0)]
        cached.version, cached.saved_distances, cached.saved_level = version, state.distance_count, state.level
        return state

    def _load_steps(
        self,
        connection: sqlite3.Connection,
        key_id: str,
        cached: _Cached,
        steps: int,
        flagged_at: int | None,
        step_marks: bytes | None,
        ood_marks: bytes | None,
    ) -> None:
        """The step record and OOD window: the queries remembered since the last read, the marks as written."""
        state = cached.state
        if state.step_record is None:
            state.step_record = StepRecord(self.config.step_memory, self.config.step_window)
        record = state.step_record
        rows = connection.execute(
            "SELECT id, image FROM step_memory WHERE key_id = ? AND id > ? ORDER BY id", (key_id, cached.step_rowid)
        ).fetchall()
        if rows:
            pixels = np.stack([np.frombuffer(zlib.decompress(image), dtype=np.uint8) for _, image in rows])
            record.add(pixels, coarse_of(pixels, self.image_shape))
            cached.step_rows.extend(rowid for rowid, _ in rows)
            while len(cached.step_rows) > self.config.step_memory:
                cached.step_rows.popleft()
            cached.step_rowid = rows[-1][0]
        record.steps, record.flagged_at = steps, flagged_at
        record.marks = deque(bool(b) for b in (step_marks or b""))
        state.ood_marks = deque(bool(b) for b in (ood_marks or b""))
        cached.saved_added = record.added

    def save(self, connection: sqlite3.Connection, key_id: str, state: ClientState) -> None:
        """Write what changed since the last load or save of this client."""
        cached = self._cache[key_id]
        now = time.time()
        self._save_step_memory(connection, key_id, cached, state)
        for label, kept in state.sets.items():
            start = cached.saved_sizes.get(label, 0)
            rows = []
            for i in range(start, kept.size):
                # The first query of a class starts its set without a distance.
                distance = kept.kept_distances[i - 1] if i > 0 else None
                rows.append((key_id, label, zlib.compress(kept.buffer[i].tobytes(), 1), distance, kept.threshold))
            if rows:
                connection.executemany(
                    "INSERT INTO prada_kept (key_id, class, image, distance, threshold) VALUES (?, ?, ?, ?, ?)", rows
                )
                cached.kept_rowid = connection.execute("SELECT last_insert_rowid()").fetchone()[0]
                cached.saved_sizes[label] = kept.size
        new = min(state.distance_count - cached.saved_distances, len(state.distances))
        if new > 0:
            data = np.asarray(state.distances[len(state.distances) - new :], dtype=np.float64).tobytes()
            cursor = connection.execute(
                "INSERT INTO prada_distances (key_id, count, data) VALUES (?, ?, ?)", (key_id, new, data)
            )
            cached.distances_rowid = int(cursor.lastrowid)
            cached.chunks.append((cached.distances_rowid, new))
            cached.chunked += new
            self._drop_old_distances(connection, key_id, cached)
        since_clause = ", level_since = excluded.level_since" if state.level != cached.saved_level else ""
        version = cached.version + 1
        record = state.step_record
        connection.execute(
            "INSERT INTO client_state (key_id, version, level, level_since, queries, tested_at, flagged_ood, "
            "statistic, prada_flagged_at, distance_count, updated, steps, steps_flagged_at, step_marks, ood_marks) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key_id) DO UPDATE SET version = excluded.version, level = excluded.level, "
            "queries = excluded.queries, tested_at = excluded.tested_at, flagged_ood = excluded.flagged_ood, "
            "statistic = excluded.statistic, prada_flagged_at = excluded.prada_flagged_at, "
            "distance_count = excluded.distance_count, updated = excluded.updated, steps = excluded.steps, "
            "steps_flagged_at = excluded.steps_flagged_at, step_marks = excluded.step_marks, "
            f"ood_marks = excluded.ood_marks{since_clause}",
            (
                key_id,
                version,
                state.level,
                now,
                state.queries,
                state.tested_at,
                state.flagged_ood,
                state.statistic,
                state.prada_flagged_at,
                state.distance_count,
                now,
                0 if record is None else record.steps,
                None if record is None else record.flagged_at,
                None if record is None else bytes(record.marks),
                bytes(state.ood_marks),
            ),
        )
        cached.version, cached.saved_distances, cached.saved_level = version, state.distance_count, state.level

    def _save_step_memory(
        self, connection: sqlite3.Connection, key_id: str, cached: _Cached, state: ClientState
    ) -> None:
        """Append the queries remembered since the last save; delete those the record has forgotten."""
        record = state.step_record
        if record is None or record.added == cached.saved_added:
            return
        new = record.latest(record.added - cached.saved_added)
        for pixels in new:
            cursor = connection.execute(
                "INSERT INTO step_memory (key_id, image) VALUES (?, ?)", (key_id, zlib.compress(pixels.tobytes(), 1))
            )
            cached.step_rows.append(int(cursor.lastrowid))
        cached.step_rowid = cached.step_rows[-1]
        stale = []
        while len(cached.step_rows) > self.config.step_memory:
            stale.append((key_id, cached.step_rows.popleft()))
        if stale:
            connection.executemany("DELETE FROM step_memory WHERE key_id = ? AND id = ?", stale)
        cached.saved_added = record.added

    def _drop_old_distances(self, connection: sqlite3.Connection, key_id: str, cached: _Cached) -> None:
        """Delete distance rows no longer needed to rebuild the latest `max_distances`."""
        stale = []
        while cached.chunks and cached.chunked - cached.chunks[0][1] >= self.config.max_distances:
            rowid, count = cached.chunks.popleft()
            cached.chunked -= count
            stale.append((key_id, rowid))
        if stale:
            connection.executemany("DELETE FROM prada_distances WHERE key_id = ? AND id = ?", stale)

    @staticmethod
    def set_level(connection: sqlite3.Connection, key_id: str, level: int) -> None:
        """An operator's decision: `REFUSED` suspends the client (kept, like any escalation); a lower
        level lifts it, and the client's detector record starts afresh (what made it suspect would
        otherwise escalate it again at its next request)."""
        now = time.time()
        if level >= REFUSED:
            connection.execute(
                "INSERT INTO client_state (key_id, version, level, level_since, queries, tested_at, flagged_ood, "
                "distance_count, updated) VALUES (?, 1, ?, ?, 0, 0, 0, 0, ?) ON CONFLICT (key_id) DO UPDATE SET "
                "version = version + 1, level = excluded.level, level_since = excluded.level_since, updated = ?",
                (key_id, level, now, now, now),
            )
            return
        connection.execute("DELETE FROM prada_kept WHERE key_id = ?", (key_id,))
        connection.execute("DELETE FROM prada_distances WHERE key_id = ?", (key_id,))
        connection.execute("DELETE FROM step_memory WHERE key_id = ?", (key_id,))
        connection.execute(
            "INSERT INTO client_state (key_id, epoch, version, level, level_since, queries, tested_at, flagged_ood, "
            "distance_count, updated) VALUES (?, 1, 1, ?, ?, 0, 0, 0, 0, ?) ON CONFLICT (key_id) DO UPDATE SET "
            "epoch = epoch + 1, version = version + 1, level = excluded.level, level_since = excluded.level_since, "
            "queries = 0, tested_at = 0, flagged_ood = 0, statistic = NULL, prada_flagged_at = NULL, "
            "distance_count = 0, updated = excluded.updated, steps = 0, steps_flagged_at = NULL, step_marks = NULL, "
            "ood_marks = NULL",
            (key_id, level, now, now),
        )

    def forget(self, key_id: str) -> None:
        """Drop the cached copy (after a failed transaction): the next load reads the database."""
        self._cache.pop(key_id, None)


def level_name(level: int) -> str:
    return LEVEL_NAMES[level]
