"""API keys: created once, stored only as a SHA-256 digest, compared in constant time.

A key reads ``mea_<id>_<secret>``: the id finds the row, the secret (32 random bytes) proves
possession.  Keys are random, not passwords, so a fast hash suffices.  Each key may carry a quota
(images, for its lifetime), a rate limit (images per second) and an output mode it is restricted to.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from mea.errors import ConfigError
from mea.oracle import parse_output
from mea.serve.db import Database

_KEY = re.compile(r"^mea_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DUMMY_DIGEST = hashlib.sha256(b"no such key").digest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    quota: int | None
    used: int
    rate: float | None
    output: str | None
    revoked: bool
    created: float

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(self.quota - self.used, 0)


class QuotaExceeded(Exception):
    def __init__(self, key: ApiKey, asked: int) -> None:
        super().__init__(f"quota exhausted: {key.used} of {key.quota} images used, {asked} more asked")
        self.key = key
        self.asked = asked


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _row(row: tuple) -> ApiKey:
    key_id, name, quota, used, rate, output, revoked, created = row
    return ApiKey(key_id, name, quota, used, rate, output, bool(revoked), created)


_COLUMNS = "id, name, quota, used, rate, output, revoked, created"


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, name: str, quota: int | None = None, rate: float | None = None, output: str | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its token; the token is shown to the operator once and never stored."""
        if quota is not None and quota < 0:
            raise ConfigError(f"a quota is a number of images >= 0, got {quota}")
        if rate is not None and not rate > 0:
            raise ConfigError(f"a rate limit is a positive number of images per second, got {rate}")
        if output is not None:
            output = parse_output(output).spec
        key_id = secrets.token_hex(6)
        token = f"mea_{key_id}_{secrets.token_urlsafe(32)}"
        created = time.time()
        with self.db.lock:
            self.db.connection.execute(
                "INSERT INTO api_keys (id, name, digest, quota, rate, output, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, name, _digest(token), quota, rate, output, created),
            )
        return ApiKey(key_id, name, quota, 0, rate, output, False, created), token

    def list(self) -> list[ApiKey]:
        with self.db.lock:
            rows = self.db.connection.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created").fetchall()
        return [_row(row) for row in rows]

    def get(self, key_id: str) -> ApiKey | None:
        with self.db.lock:
            row = self.db.connection.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return None if row is None else _row(row)

    def revoke(self, key_id: str) -> None:
        with self.db.lock:
            changed = self.db.connection.execute("UPDATE api_keys SET revoked = 1 WHERE id = ?", (key_id,)).rowcount
        if not changed:
            raise ConfigError(f"no key with id {key_id!r}; `mea keys list` shows the ids")

    def authenticate(self, token: str | None) -> ApiKey | None:
        """The key a token belongs to, if the token is valid and not revoked; None otherwise.

        Every path computes and compares one digest, so timing does not reveal which part failed.
        """
        match = _KEY.match(token or "")
        key_id = match.group(1) if match else ""
        with self.db.lock:
            row = self.db.connection.execute(
                f"SELECT {_COLUMNS}, digest FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        stored = row[-1] if row else _DUMMY_DIGEST
        valid = hmac.compare_digest(stored, _digest(token or ""))
        if not (valid and match and row):
            return None
        key = _row(row[:-1])
        return None if key.revoked else key

    def charge(self, key_id: str, images: int) -> ApiKey:
        """Count `images` against the key's quota, all or nothing; raises QuotaExceeded."""
        with self.db.lock:
            charged = self.db.connection.execute(
                "UPDATE api_keys SET used = used + ? WHERE id = ? AND (quota IS NULL OR used + ? <= quota)",
                (images, key_id, images),
            ).rowcount
            row = self.db.connection.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        key = _row(row)
        if not charged:
            raise QuotaExceeded(key, images)
        return key

    def refund(self, key_id: str, images: int) -> None:
        """Give back a charge for a request that was refused after charging (e.g. by the rate limit)."""
        with self.db.lock:
            self.db.connection.execute("UPDATE api_keys SET used = MAX(used - ?, 0) WHERE id = ?", (images, key_id))
