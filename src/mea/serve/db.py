"""The service's SQLite database: API keys and the audit log share one file, in WAL mode.

One connection per store, used under a lock: SQLite serialises writers anyway, and the lock makes
read-modify-write sequences (quota charges) atomic across the server's worker threads.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

SCHEMA = """
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
"""


class Database:
    """A locked SQLite connection with the service schema."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self.connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed row survives a crash of the server process.
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.connection.close()
