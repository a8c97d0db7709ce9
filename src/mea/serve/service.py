"""What the prediction service does with a request, apart from HTTP: authenticate, admit, answer,
remember, audit.

An inference request is answered in one database transaction under the service's write lock
(`mea.serve.db`): the client's detector state is brought up to date, the quota and rate limit are
checked, the victim answers (through the defense, at the severity the client's state calls for),
the client's state is updated, and the quota charge, the new state and the audit row commit
together before the answer leaves.  A request that fails anywhere (a model error included) rolls
back whole: nothing is charged for an answer that was never given.  The victim's forward pass and
the detector's scores, which depend on no client, run just before the transaction under a lock of
their own (one batch at a time through the model, which is what two cores do best), so that one
request's forward pass overlaps the previous one's bookkeeping.

A request may carry an idempotency key.  A retry of an answered request with the same key and the
same images is answered again (the same keyed answer: nothing is learned by retrying) without
being charged or observed twice; the key is remembered for `IDEMPOTENCY_TTL_S`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field

import torch

from mea.config import ServeConfig
from mea.defenses.gate import ClientGate
from mea.defenses.prada import REFUSED, PradaMonitor
from mea.defenses.store import Defense
from mea.oracle import VictimOracle, parse_output
from mea.ownership.evidence import EvidenceStore
from mea.serve import audit, metrics
from mea.serve.clients import ClientRecords
from mea.serve.db import Database
from mea.serve.keys import ApiKey, KeyRevoked, KeyStore, QuotaExceeded, RateLimited, token_digest
from mea.serve.protocol import InferRequest, InputLayout, body_limit
from mea.serve.ratelimit import TokenBuckets
from mea.tabular.models import Tree
from mea.victim import Victim

logger = logging.getLogger("mea.serve")

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_TTL_S = 600.0
# How long a key that passed the lookup is taken as valid without reading the database again.
RECENT_KEY_S = 1.0
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
SUSPENDED = "this API key is suspended; contact the service operator"


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _answered_digest(connection: sqlite3.Connection, key_id: str, idempotency_key: str) -> str | None:
    """The input digest of the request answered under this idempotency key, if one was."""
    row = connection.execute(
        "SELECT digest FROM idempotency WHERE key_id = ? AND token = ?", (key_id, idempotency_key)
    ).fetchone()
    return None if row is None else row[0]


def _reused(idempotency_key: str) -> Refusal:
    return Refusal(
        422,
        f"{IDEMPOTENCY_HEADER} {idempotency_key!r} was used for a different request; "
        "send a new key with every new request",
    )


def body_limit_of(config: ServeConfig, binary: bool, layout: InputLayout) -> int:
    """The request body limit: derived from the largest batch, or the configured one if smaller."""
    derived = body_limit(config.max_batch, binary, layout)
    return derived if config.max_body_bytes is None else min(derived, config.max_body_bytes)


@dataclass(frozen=True)
class Answered:
    answers: torch.Tensor  # in the key's output mode
    key: ApiKey
    replayed: bool = False


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


class _RecentKeys:
    """Inference keys that passed `Service.lookup` (valid, not revoked, not suspended) in the last
    `RECENT_KEY_S`, by their token's digest: a busy client's next request is let in on the event
    loop, without a trip to the thread pool.  Staleness costs no guarantee: revocation and
    suspension are checked again inside the request's transaction (`Service.infer`), so a key
    revoked within the window has at most its body read before its 401."""

    def __init__(self) -> None:
        self._keys: dict[bytes, tuple[ApiKey, float]] = {}
        self._lock = threading.Lock()  # the event loop reads, thread-pool threads add and drop

    def get(self, token: str) -> ApiKey | None:
        digest = token_digest(token)
        with self._lock:
            found = self._keys.get(digest)
        return found[0] if found is not None and found[1] > time.monotonic() else None

    def put(self, token: str, key: ApiKey) -> None:
        digest, now = token_digest(token), time.monotonic()
        with self._lock:
            if len(self._keys) >= 1024:  # one entry per key in use: drop those that lapsed
                self._keys = {known: entry for known, entry in self._keys.items() if entry[1] > now}
            self._keys[digest] = (key, now + RECENT_KEY_S)

    def drop(self, key_id: str) -> None:
        """Forget a key that was just refused as revoked or suspended: its next request is looked up."""
        with self._lock:
            self._keys = {digest: entry for digest, entry in self._keys.items() if entry[0].id != key_id}


class Service:
    def __init__(self, config: ServeConfig, victim: Victim, defense: Defense | None = None) -> None:
        self.config = config
        self.db = Database(config.db, shared=config.shared_db)
        self.keys = KeyStore(self.db)
        self._recent = _RecentKeys()
        self.rejected = audit.RejectCounter(self.db)
        self.refusals = TokenBuckets(config.refusals_per_s, config.refusals_burst)
        prada = config.prada if defense is None else defense.stream_config(config.prada)
        self.monitor = PradaMonitor(prada)
        self.signature = victim.signature
        # A tree names the answering node only when nothing answers in its place (no defense: a
        # flagged query's node would give away the answer the policy replaced).
        self._tree = victim.model if isinstance(victim.model, Tree) and defense is None else None
        # What a request's tensor may be, and the outputs it may ask for.
        self.layout = InputLayout(self.signature.input_shape, self.signature.missing, self._tree is not None)
        self.clients = ClientRecords(prada, self.signature.input_shape)
        oracle = defense.oracle(victim) if defense is not None else VictimOracle(victim.model)
        self.gate = ClientGate(oracle, self.monitor)
        self._model = threading.Lock()  # one batch at a time through the model: its threads are the machine's
        self.evidence = None
        if defense is not None and defense.watermark is not None:
            with self.db.write() as connection:
                self.evidence = EvidenceStore(connection, defense.watermark.commitment)

    def nodes(self, images: torch.Tensor) -> torch.Tensor:
        """The node that answers each row of a tree victim (the `node` output)."""
        assert self._tree is not None
        with self._model, torch.inference_mode():
            return self._tree.nodes(images)

    # --- authentication -------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> ApiKey | None:
        return self.keys.authenticate(token)

    def recently_admitted(self, token: str | None) -> ApiKey | None:
        """The inference key of `token` if `lookup` let it in moments ago; None means: look it up.
        Touches no database, so the event loop may call it."""
        return None if token is None else self._recent.get(token)

    def lookup(self, token: str | None) -> tuple[ApiKey | None, bool]:
        """(the token's key or None, whether that inference key's client is suspended)."""
        key = self.authenticate(token)
        if key is None or key.admin:
            return key, False
        suspended = self.suspended(key.id)
        if not suspended:
            self._recent.put(token, key)
        return key, suspended

    def suspended(self, key_id: str) -> bool:
        row = self.db.read().execute("SELECT level FROM client_state WHERE key_id = ?", (key_id,)).fetchone()
        return row is not None and row[0] >= REFUSED

    def refuse(self, remote: str, key_id: str | None, endpoint: str, refusal: Refusal) -> Refusal:
        """Count a refusal; past the remote address's allowance it becomes a 429."""
        wait = self.refusals.acquire(remote, 1.0)
        if wait > 0:
            refusal = Refusal(
                429,
                f"too many refused requests from {remote}; retry in {TokenBuckets.retry_after(wait)} s "
                f"(the last was refused with: {refusal.message})",
                {"Retry-After": TokenBuckets.retry_after(wait)},
            )
        self.rejected.add(remote, key_id, endpoint, refusal.status)
        return refusal

    @staticmethod
    def check_idempotency_key(value: str | None) -> str | None:
        if value is not None and not _IDEMPOTENCY_KEY.match(value):
            raise ValueError(
                f"{IDEMPOTENCY_HEADER} must be 1-128 characters of letters, digits and _.:- (a UUID will do)"
            )
        return value

    # --- answering ------------------------------------------------------------------------------

    def infer(
        self, key: ApiKey, request: InferRequest, idempotency_key: str | None, started: float | None = None
    ) -> Answered | Refusal:
        """Answer one authenticated, parsed request, or say why not; see the module docstring.
        `started`: when the request arrived (time.perf_counter), for the audit row's latency."""
        started = time.perf_counter() if started is None else started
        images, batch = request.images, len(request.images)
        digest = hashlib.sha256(request.raw).hexdigest()
        output = parse_output(key.output or self.config.output)
        try:
            # The model and the detector need no client record: they run before the transaction, so
            # that one request's forward pass overlaps another's bookkeeping.  What the transaction
            # would refuse without the model is refused first, so that it never runs the model.
            if (early := self._refused_early(key, batch, digest, idempotency_key)) is not None:
                return early
            with self._model:
                examined = self.gate.examine(images)
            with self.db.write() as connection:
                now = time.time()  # read after the waits for the locks: the commits keep its order
                state = self.clients.load(connection, key.id)
                if state.level >= REFUSED:
                    self._recent.drop(key.id)
                    return Refusal(403, SUSPENDED)
                if idempotency_key is not None:
                    earlier = _answered_digest(connection, key.id, idempotency_key)
                    if earlier is not None:
                        if earlier != digest:
                            return _reused(idempotency_key)
                        # The same keyed answers (watermark included) as the first time; its evidence
                        # was recorded then.
                        response = self.gate.treat(key.id, state, examined, observe=False)
                        answers, flags = response.answers, response.flagged
                        audit.record(
                            connection,
                            key.id,
                            batch,
                            digest,
                            int(flags.sum()),
                            state,
                            idempotency_key=idempotency_key,
                            error="replay: answered before, not charged again",
                            latency_ms=_since(started),
                        )
                        metrics.count_answer(connection, batch, int(flags.sum()), _since(started) / 1000, replay=True)
                        # The key as it stands now (the caller's copy may be a moment old): its quota.
                        key = KeyStore.find_in(connection, key.id) or key
                        return Answered(output(answers), key, replayed=True)
                admitted = KeyStore.admit(connection, key.id, batch, self.config.max_batch, now)
                response = self.gate.treat(key.id, state, examined)
                answers, flags = response.answers, response.flagged
                self.clients.save(connection, key.id, state)
                if state.level >= REFUSED:
                    # The stream crossed the line with this very batch: it is not answered nor charged,
                    # and what the detector learned from it is kept.
                    self._recent.drop(key.id)
                    return Refusal(403, SUSPENDED)
                key = KeyStore.charge(connection, admitted, batch, now)
                audit_id = audit.record(
                    connection,
                    key.id,
                    batch,
                    digest,
                    int(flags.sum()),
                    state,
                    idempotency_key=idempotency_key,
                    latency_ms=_since(started),
                )
                metrics.count_answer(connection, batch, int(flags.sum()), _since(started) / 1000, replay=False)
                if self.evidence is not None and response.watermarked.any():
                    # Evidence of the watermarked answers, bound to this audit row, whose copy of the
                    # chain's head then shows the evidence existed by this time.
                    head = self.evidence.record(key.id, images, response, audit_id)
                    connection.execute("UPDATE audit SET evidence_head = ? WHERE id = ?", (head, audit_id))
                if idempotency_key is not None:
                    connection.execute(
                        "INSERT INTO idempotency (key_id, token, digest, batch, created) VALUES (?, ?, ?, ?, ?)",
                        (key.id, idempotency_key, digest, batch, now),
                    )
                    self._expire_idempotency_keys(connection, now)
        except QuotaExceeded as exc:
            return Refusal(
                429,
                f"{exc}; ask the operator for a larger quota",
                {"Retry-After": "3600", "X-Quota-Remaining": str(exc.key.remaining)},
            )
        except RateLimited as exc:
            return Refusal(429, f"{exc}", {"Retry-After": exc.retry_after})
        except KeyRevoked:
            self._recent.drop(key.id)
            return Refusal(401, "this API key was revoked", {"WWW-Authenticate": "Bearer"})
        except Exception:
            # Not the client's doing: log it, record it, charge nothing (the transaction rolled back).
            self.clients.forget(key.id)
            logger.exception("inference failed for key %s (batch of %d)", key.id, batch)
            with self.db.write() as connection:
                audit.record(
                    connection,
                    key.id,
                    batch,
                    digest,
                    0,
                    None,
                    status=500,
                    error="the model failed; not charged",
                    latency_ms=_since(started),
                )
                metrics.count(connection, "requests", label="500")
            return Refusal(500, "the model failed on this request; it was not charged; retry or tell the operator")
        return Answered(output(answers), key)

    def _refused_early(self, key: ApiKey, batch: int, digest: str, idempotency_key: str | None) -> Refusal | None:
        """What the request's transaction would refuse before the model is needed, checked on a
        read connection (the transaction checks all of it again): a suspended client, an idempotency
        key reused for other images, a spent quota or rate limit (raised as `KeyStore.admit` does).
        A retry of an answered request passes: it is answered again without a charge."""
        if self.suspended(key.id):
            self._recent.drop(key.id)
            return Refusal(403, SUSPENDED)
        reads = self.db.read()
        if idempotency_key is not None:
            earlier = _answered_digest(reads, key.id, idempotency_key)
            if earlier is not None:
                return None if earlier == digest else _reused(idempotency_key)
        KeyStore.admit(reads, key.id, batch, self.config.max_batch, time.time())
        return None

    def metadata_seen(self, key: ApiKey) -> None:
        """A keyed metadata request is part of a client's record: one audit row."""
        with self.db.write() as connection:
            audit.record(connection, key.id, 0, None, 0, None, endpoint="metadata")

    def _expire_idempotency_keys(self, connection, now: float) -> None:
        # Cheap enough per request: the index on `created` finds the few expired rows.
        connection.execute("DELETE FROM idempotency WHERE created < ?", (now - IDEMPOTENCY_TTL_S,))

    def start(self) -> None:
        # One blank image through the model and the detector before the first client: the
        # detector's compiled kernels load now (about a second), not in a client's request.
        with self._model:
            self.gate.examine(torch.zeros(1, *self.layout.image_shape))
        self.rejected.start()

    def close(self) -> None:
        self.rejected.stop()
