"""The service's SQLite database: keys, the audit log and the per-client detector state share one
file, in WAL mode.

Writes go through `Database.write()`: one transaction at a time, under a lock that is a thread
lock within a process and, when several server processes share the file (`mea serve --workers N`),
also an exclusive `flock` on ``<db>.lock``.  Everything one answered request changes (the quota
charge, the client's detector state, its audit row) commits in one such transaction, so a crash
leaves either all of it or none of it.  Reads (authentication, `mea audit`) use a connection per
thread and never wait for a writer (WAL).
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mea.errors import ArtifactError

# Each entry upgrades the schema by one version (PRAGMA user_version); a database written by an
# older `mea serve` is upgraded in place on open, never rebuilt.
MIGRATIONS: tuple[str, ...] = (
    # 1: keys and one audit row per request (the first service).
    """
    CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        digest BLOB NOT NULL,
        quota INTEGER,
        used INTEGER NOT NULL DEFAULT 0,
        rate REAL,
        output TEXT,
        revoked INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key_id TEXT,
        time REAL NOT NULL,
        batch INTEGER NOT NULL,
        digest TEXT,
        flagged INTEGER NOT NULL DEFAULT 0,
        status INTEGER NOT NULL,
        error TEXT,
        client_state TEXT
    );
    CREATE INDEX IF NOT EXISTS audit_key ON audit (key_id);
    """,
    # 2: rate-limit buckets beside the quota (exact across processes and restarts); administrator
    # keys; per audit row its endpoint, idempotency key, server time, the client's detector level and
    # statistic, the head of the watermark evidence chain after the request's records, and for
    # administrators' actions who did it; refused requests counted per minute;
    # detector state that survives a restart; idempotency keys of answered requests.
    """
    ALTER TABLE api_keys ADD COLUMN bucket REAL;
    ALTER TABLE api_keys ADD COLUMN bucket_time REAL;
    ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE audit ADD COLUMN endpoint TEXT NOT NULL DEFAULT 'infer';
    ALTER TABLE audit ADD COLUMN idempotency_key TEXT;
    ALTER TABLE audit ADD COLUMN latency_ms REAL;
    ALTER TABLE audit ADD COLUMN level INTEGER;
    ALTER TABLE audit ADD COLUMN statistic REAL;
    ALTER TABLE audit ADD COLUMN actor TEXT;
    ALTER TABLE audit ADD COLUMN evidence_head TEXT;
    CREATE INDEX audit_time ON audit (time);
    CREATE TABLE rejected (
        minute INTEGER NOT NULL,
        remote TEXT NOT NULL,
        key_id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        status INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (minute, remote, key_id, endpoint, status)
    );
    CREATE TABLE client_state (
        key_id TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL,
        level INTEGER NOT NULL,
        level_since REAL NOT NULL,
        queries INTEGER NOT NULL,
        tested_at INTEGER NOT NULL,
        flagged_ood INTEGER NOT NULL,
        statistic REAL,
        prada_flagged_at INTEGER,
        distance_count INTEGER NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE prada_kept (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key_id TEXT NOT NULL,
        class INTEGER NOT NULL,
        image BLOB NOT NULL,
        distance REAL,
        threshold REAL NOT NULL
    );
    CREATE INDEX prada_kept_key ON prada_kept (key_id, id);
    CREATE TABLE prada_distances (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key_id TEXT NOT NULL,
        count INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX prada_distances_key ON prada_distances (key_id, id);
    CREATE TABLE idempotency (
        key_id TEXT NOT NULL,
        token TEXT NOT NULL,
        digest TEXT NOT NULL,
        batch INTEGER NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (key_id, token)
    );
    CREATE INDEX idempotency_created ON idempotency (created);
    CREATE TABLE counters (
        name TEXT NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        value REAL NOT NULL,
        PRIMARY KEY (name, label)
    );
    CREATE TABLE console_sessions (
        digest BLOB PRIMARY KEY,
        key_id TEXT NOT NULL,
        csrf TEXT NOT NULL,
        expires REAL NOT NULL
    );
    """,
    # 3: the synthetic-step detector (mea.defenses.steps): each client's latest queries as 8-bit
    # pixels, its step and OOD marks of the latest windows, and when its steps first filled a window.
    """
    ALTER TABLE client_state ADD COLUMN steps INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE client_state ADD COLUMN steps_flagged_at INTEGER;
    ALTER TABLE client_state ADD COLUMN step_marks BLOB;
    ALTER TABLE client_state ADD COLUMN ood_marks BLOB;
    CREATE TABLE step_memory (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key_id TEXT NOT NULL,
        image BLOB NOT NULL
    );
    CREATE INDEX step_memory_key ON step_memory (key_id, id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    connection.execute("PRAGMA busy_timeout = 30000")
    return connection


class Database:
    """The service database: a write connection under the service lock, read connections per thread."""

    def __init__(self, path: Path, shared: bool = False) -> None:
        """`shared`: other processes answer from the same file (`--workers`), so writers also take
        the file lock."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "a+b") if shared else None  # noqa: SIM115
        self.connection = _connect(self.path)
        self.connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives a crash of the server process.
        self.connection.execute("PRAGMA synchronous=NORMAL")
        # The WAL is reset after each checkpoint; this caps the file it leaves on disk.
        self.connection.execute(f"PRAGMA journal_size_limit={8 * 1024 * 1024}")
        self._local = threading.local()
        with self._exclusive():
            self._migrate()

    def _migrate(self) -> None:
        version = self.connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ArtifactError(
                f"{self.path} was written by a newer mea (schema {version}, this one knows {SCHEMA_VERSION}); "
                "upgrade mea or use another --db"
            )
        for number in range(version, SCHEMA_VERSION):
            self.connection.executescript(f"BEGIN; {MIGRATIONS[number]}; PRAGMA user_version = {number + 1}; COMMIT;")

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self.lock:
            if self._lock_file is not None:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if self._lock_file is not None:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with self._exclusive():
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def read(self) -> sqlite3.Connection:
        """This thread's read connection (WAL readers see the last commit and never block writers)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = _connect(self.path)
        return connection
