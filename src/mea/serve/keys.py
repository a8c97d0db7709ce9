"""API keys: created once, stored only as a SHA-256 digest, compared in constant time.

A key reads ``mea_<id>_<secret>``: the id finds the row, the secret (32 random bytes) proves
possession.  Keys are random, not passwords, so a fast hash suffices.  Each key may carry a quota
(images, for its lifetime), a rate limit (images per second) and an output mode it is restricted to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

from mea.config import canonical_output
from mea.errors import ConfigError
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
    admin: bool = False  # an operator's key: opens the console, never runs inference

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(self.quota - self.used, 0)


@dataclass(frozen=True)
class Admission:
    key: ApiKey
    tokens: float | None  # what the rate-limit bucket holds once this request is charged


class KeyRevoked(Exception):
    """The key was revoked after the request authenticated."""


class RateLimited(Exception):
    def __init__(self, key: ApiKey, wait_s: float) -> None:
        super().__init__(f"rate limit of {key.rate:g} images/s exceeded; retry in {wait_s:.1f} s")
        self.key = key
        self.wait_s = wait_s

    @property
    def retry_after(self) -> str:
        """A Retry-After header value: whole seconds, at least one."""
        return str(max(1, math.ceil(self.wait_s)))


class QuotaExceeded(Exception):
    def __init__(self, key: ApiKey, asked: int) -> None:
        super().__init__(f"quota exhausted: {key.used} of {key.quota} images used, {asked} more asked")
        self.key = key
        self.asked = asked


def token_digest(token: str) -> bytes:
    """What the database keeps of a secret token (keys, console sessions): its SHA-256."""
    return hashlib.sha256(token.encode()).digest()


def _row(row: tuple) -> ApiKey:
    key_id, name, quota, used, rate, output, revoked, created, admin = row
    return ApiKey(key_id, name, quota, used, rate, output, bool(revoked), created, bool(admin))


_COLUMNS = "id, name, quota, used, rate, output, revoked, created, admin"


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        name: str,
        quota: int | None = None,
        rate: float | None = None,
        output: str | None = None,
        admin: bool = False,
    ) -> tuple[ApiKey, str]:
        """A new key and its token; the token is shown to the operator once and never stored.

        An administrator's key (`admin`) opens the operator console and nothing else: it carries no
        quota, rate or output mode, and inference refuses it."""
        if admin and (quota is not None or rate is not None or output is not None):
            raise ConfigError("an admin key opens the console only: it takes no --quota, --rate or --output")
        if quota is not None and quota < 0:
            raise ConfigError(f"a quota is a number of images >= 0, got {quota}")
        if rate is not None and not rate > 0:
            raise ConfigError(f"a rate limit is a positive number of images per second, got {rate}")
        if output is not None:
            output = canonical_output(output)  # torch-free: `mea keys create` starts in a fraction of a second
        key_id = secrets.token_hex(6)
        token = f"mea_{key_id}_{secrets.token_urlsafe(32)}"
        created = time.time()
        with self.db.write() as connection:
            connection.execute(
                "INSERT INTO api_keys (id, name, digest, quota, rate, output, created, admin) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key_id, name, token_digest(token), quota, rate, output, created, int(admin)),
            )
        return ApiKey(key_id, name, quota, 0, rate, output, False, created, admin), token

    def find(self, key_id: str) -> ApiKey | None:
        return self.find_in(self.db.read(), key_id)

    @staticmethod
    def find_in(connection: sqlite3.Connection, key_id: str) -> ApiKey | None:
        row = connection.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return None if row is None else _row(row)

    def list(self) -> list[ApiKey]:
        rows = self.db.read().execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created").fetchall()
        return [_row(row) for row in rows]

    def revoke(self, key_id: str) -> None:
        with self.db.write() as connection:
            self.revoke_in(connection, key_id)

    @staticmethod
    def revoke_in(connection: sqlite3.Connection, key_id: str) -> None:
        """Revoke inside the caller's transaction (the console records who did it beside)."""
        changed = connection.execute("UPDATE api_keys SET revoked = 1 WHERE id = ?", (key_id,)).rowcount
        if not changed:
            raise ConfigError(f"no key with id {key_id!r}; `mea keys list` shows the ids")

    @staticmethod
    def set_quota(connection: sqlite3.Connection, key_id: str, quota: int | None) -> None:
        if quota is not None and quota < 0:
            raise ConfigError(f"a quota is a number of images >= 0, got {quota}")
        changed = connection.execute(
            "UPDATE api_keys SET quota = ? WHERE id = ? AND admin = 0", (quota, key_id)
        ).rowcount
        if not changed:
            raise ConfigError(f"no inference key with id {key_id!r}")

    def authenticate(self, token: str | None) -> ApiKey | None:
        """The key a token belongs to, if the token is valid and not revoked; None otherwise.

        Every path computes and compares one digest, so timing does not reveal which part failed.
        Reads only: it never waits for a request being answered.
        """
        match = _KEY.match(token or "")
        key_id = match.group(1) if match else ""
        row = self.db.read().execute(f"SELECT {_COLUMNS}, digest FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        stored = row[-1] if row else _DUMMY_DIGEST
        valid = hmac.compare_digest(stored, token_digest(token or ""))
        if not (valid and match and row):
            return None
        key = _row(row[:-1])
        return None if key.revoked else key

    @staticmethod
    def admit(connection: sqlite3.Connection, key_id: str, images: int, burst: int, now: float) -> Admission:
        """Check `images` against the key's quota and rate limit inside the caller's write
        transaction; `charge` then counts them (the row cannot change in between).

        The rate limit is a token bucket of `rate` images per second holding max(rate, burst) images
        (at least one full batch), kept in the database: exact across server processes and restarts.
        Raises KeyRevoked, QuotaExceeded or RateLimited.
        """
        found = connection.execute(
            f"SELECT {_COLUMNS}, bucket, bucket_time FROM api_keys WHERE id = ?", (key_id,)
        ).fetchone()
        if found is None or found[6]:
            raise KeyRevoked(key_id)
        key, bucket, bucket_time = _row(found[:-2]), found[-2], found[-1]
        if key.quota is not None and key.used + images > key.quota:
            raise QuotaExceeded(key, images)
        tokens = None
        if key.rate is not None:
            capacity = max(key.rate, float(burst))
            tokens = capacity if bucket is None else min(capacity, bucket + max(now - bucket_time, 0.0) * key.rate)
            if tokens < images:
                raise RateLimited(key, (images - tokens) / key.rate)
            tokens -= images
        return Admission(key, tokens)

    @staticmethod
    def charge(connection: sqlite3.Connection, admission: Admission, images: int, now: float) -> ApiKey:
        """Count an admitted request: its images against the quota, its tokens out of the bucket."""
        key = admission.key
        connection.execute(
            "UPDATE api_keys SET used = used + ?, bucket = ?, bucket_time = ? WHERE id = ?",
            (images, admission.tokens, now, key.id),
        )
        return dataclasses.replace(key, used=key.used + images)
