"""The evidence store: every flipped answer, append-only, covered by a running hash chain.

Each record holds the client id, the image as the 784 bytes the client's pixels quantise to, the
victim's own class, the watermark class it was answered instead and the answer vector as sent, the
time, and the id of the audit row of the request that carried it (when the service passes one).
The chain starts from a hash of the watermark key's public commitment (so the evidence names the key
it was made with), and record i's hash is SHA-256(hash of record i-1 || the record's canonical
bytes); the head (the last hash) and the count sit in a one-row table updated with every append.
Changing, removing or reordering any record changes every later hash, so `verify` names the first
record that fails; removing records from the end leaves a consistent but shorter chain, which the
stored count and head catch, and which a head written elsewhere beforehand (the service's audit
log, a copy sent to a third party: `records_until`) catches even when the head row was rewritten
too.  The table refuses UPDATE and DELETE (triggers), which keeps honest software honest; the hash
chain is what catches the rest.

The store works over a connection the service hands it (its own database, its own tables; the
caller owns the transaction, so the evidence commits with the audit row) or standalone over a file
of its own.  Per client at most `cap_per_client` records are kept, the oldest: later flipped
answers for that client are still answered the same way, only not stored (and counted).

Disk cost: a record is 784 image bytes, 40 answer bytes, 32 hash bytes and some 30 bytes of
integers and client id, plus SQLite's own overhead; benchmarks/ownership.py (`storage`) measures
it, and the disk cost per million queries is that times the flip rate (0.4%: 4,000 records).

`export` writes one file that `mea verify` reads: the arrays in safetensors (never pickle), the
client names, the commitment and the head in its header; `load_evidence` reads an export or a
service database and checks the chain before anything is used.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
import time as clock
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from mea.data.files import unit_pixels
from mea.errors import ArtifactError, ConfigError, MeaError
from mea.ownership.config import DEFAULT_CAP_PER_CLIENT
from mea.ownership.watermark import quantise

FORMAT = "mea-evidence-v1"
_PIXELS = 784
_CLASSES = 10

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS watermark_evidence (
        seq INTEGER PRIMARY KEY,
        client TEXT NOT NULL,
        time REAL NOT NULL,
        audit_id INTEGER,
        image BLOB NOT NULL,
        victim_label INTEGER NOT NULL,
        watermark_class INTEGER NOT NULL,
        answer BLOB NOT NULL,
        hash BLOB NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS watermark_evidence_head (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        commitment TEXT NOT NULL,
        count INTEGER NOT NULL,
        head BLOB NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS watermark_evidence_clients (
        client TEXT PRIMARY KEY,
        stored INTEGER NOT NULL,
        dropped INTEGER NOT NULL
    )""",
    """CREATE TRIGGER IF NOT EXISTS watermark_evidence_no_update BEFORE UPDATE ON watermark_evidence
    BEGIN SELECT RAISE(ABORT, 'the evidence store is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS watermark_evidence_no_delete BEFORE DELETE ON watermark_evidence
    BEGIN SELECT RAISE(ABORT, 'the evidence store is append-only'); END""",
)


class EvidenceError(MeaError):
    """The evidence fails its hash chain, or cannot be read: nothing in it may be used."""


def record_bytes(
    seq: int, time: float, audit_id: int | None, client: str, image: bytes, victim_label: int, mark: int, answer: bytes
) -> bytes:
    """A record's canonical bytes, the same whether it is read from SQLite or from an export."""
    name = client.encode()
    return (
        struct.pack("<qdqBBI", seq, time, -1 if audit_id is None else audit_id, victim_label, mark, len(name))
        + name
        + image
        + answer
    )


def chain(previous: bytes, record: bytes) -> bytes:
    return hashlib.sha256(previous + record).digest()


def genesis(commitment: str) -> bytes:
    """The chain's first hash: it names the watermark key (its public commitment) the evidence was
    made with, so that neither the key nor the records can be chosen after the fact."""
    return hashlib.sha256(b"mea-evidence-v1\x00" + commitment.encode()).digest()


@dataclass(frozen=True)
class EvidenceSet:
    """Watermark records as arrays, oldest first; `images` are the 8-bit pixels (N, 784)."""

    seq: np.ndarray  # int64, 1-based position in the chain
    clients: tuple[str, ...]  # per record
    times: np.ndarray  # float64, seconds since the epoch
    audit_ids: np.ndarray  # int64, -1 where none
    images: np.ndarray  # uint8 (N, 784)
    victim_labels: np.ndarray  # int64
    classes: np.ndarray  # int64: the watermark class answered
    answers: np.ndarray  # float32 (N, 10): the answer vector as sent
    head: str  # hex SHA-256 of the last record (of the whole chain read, before any selection)
    commitment: str  # the watermark key's public commitment, the chain's first link

    def __len__(self) -> int:
        return len(self.seq)

    def image_tensor(self) -> torch.Tensor:
        """The images as the model inputs they were sent as, (N, 1, 28, 28) in [0, 1]."""
        return unit_pixels(self.images).reshape(-1, 1, 28, 28)

    def select(self, mask: np.ndarray) -> EvidenceSet:
        return EvidenceSet(
            self.seq[mask],
            tuple(c for c, keep in zip(self.clients, mask, strict=True) if keep),
            self.times[mask],
            self.audit_ids[mask],
            self.images[mask],
            self.victim_labels[mask],
            self.classes[mask],
            self.answers[mask],
            self.head,
            self.commitment,
        )

    def for_clients(self, clients: Sequence[str]) -> EvidenceSet:
        wanted = set(clients)
        return self.select(np.array([c in wanted for c in self.clients], dtype=bool))


def _hashes(evidence: EvidenceSet) -> list[bytes]:
    hashes, previous = [], genesis(evidence.commitment)
    for i in range(len(evidence)):
        previous = chain(
            previous,
            record_bytes(
                int(evidence.seq[i]),
                float(evidence.times[i]),
                None if evidence.audit_ids[i] < 0 else int(evidence.audit_ids[i]),
                evidence.clients[i],
                evidence.images[i].tobytes(),
                int(evidence.victim_labels[i]),
                int(evidence.classes[i]),
                evidence.answers[i].astype("<f4").tobytes(),
            ),
        )
        hashes.append(previous)
    return hashes


def check_chain(evidence: EvidenceSet, stored_hashes: Sequence[bytes], count: int, head: bytes, where: str) -> None:
    """Raise EvidenceError unless the records hash to `stored_hashes`, number `count` and end at `head`."""
    if len(evidence) and not np.array_equal(evidence.seq, np.arange(1, len(evidence) + 1)):
        first = int(np.flatnonzero(evidence.seq != np.arange(1, len(evidence) + 1))[0])
        raise EvidenceError(
            f"{where} fails its hash chain: record {first + 1} is missing or out of order (tampered); "
            "use an untouched copy of the evidence"
        )
    for i, (computed, stored) in enumerate(zip(_hashes(evidence), stored_hashes, strict=True)):
        if computed != stored:
            raise EvidenceError(
                f"{where} fails its hash chain at record {i + 1} of {len(evidence)} (tampered); "
                "use an untouched copy of the evidence"
            )
    last = stored_hashes[-1] if len(stored_hashes) else genesis(evidence.commitment)
    if len(evidence) != count or last != head:
        raise EvidenceError(
            f"{where} holds {len(evidence)} records but its head names {count} (truncated or tampered); "
            "use an untouched copy of the evidence"
        )


class EvidenceStore:
    """Append-only watermark evidence in SQLite.

    Over a connection the caller owns (`commit=False`, the default): `append` issues no BEGIN or
    COMMIT, so the caller commits the evidence in the same transaction as its audit row, and
    serialises appends (SQLite serialises writers; the head read-modify-write needs the caller's lock
    across threads).  `EvidenceStore.open(path)` is standalone: its own file, a commit per append.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        commitment: str | None,
        cap_per_client: int = DEFAULT_CAP_PER_CLIENT,
        commit: bool = False,
    ) -> None:
        if cap_per_client <= 0:
            raise ConfigError(f"the evidence cap per client must be positive, got {cap_per_client}")
        self.connection = connection
        self.cap_per_client = cap_per_client
        self._commit = commit
        if commitment is None:  # a reader: the tables must exist
            return
        # Statement by statement: executescript would commit a transaction the caller has open.
        for statement in SCHEMA:
            connection.execute(statement)
        row = connection.execute("SELECT commitment FROM watermark_evidence_head WHERE id = 0").fetchone()
        if row is None:
            connection.execute(
                "INSERT INTO watermark_evidence_head (id, commitment, count, head) VALUES (0, ?, 0, ?)",
                (commitment, genesis(commitment)),
            )
        elif row[0] != commitment:
            raise ConfigError(
                "this evidence store was made with another watermark key; keep one store per key "
                "(a new key needs a new store)"
            )

    @classmethod
    def open(cls, path: Path, commitment: str, cap_per_client: int = DEFAULT_CAP_PER_CLIENT) -> EvidenceStore:
        """A standalone store in its own SQLite file (created if missing), committing every append."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        return cls(connection, commitment, cap_per_client, commit=True)

    def close(self) -> None:
        self.connection.close()

    def head(self) -> tuple[int, str]:
        """(records stored, head hash as hex)."""
        count, head = self._head()
        return count, head.hex()

    def _head(self) -> tuple[int, bytes]:
        row = self.connection.execute("SELECT count, head FROM watermark_evidence_head WHERE id = 0").fetchone()
        if row is None:
            raise EvidenceError("the evidence store has lost its head record (tampered); use an untouched copy")
        return int(row[0]), bytes(row[1])

    @property
    def commitment(self) -> str:
        row = self.connection.execute("SELECT commitment FROM watermark_evidence_head WHERE id = 0").fetchone()
        if row is None:
            raise EvidenceError("the evidence store has lost its head record (tampered); use an untouched copy")
        return str(row[0])

    def record(self, client: str, images: torch.Tensor, response, audit_id: int | None = None) -> str:
        """Append the watermarked rows of one `Response` to `images`; returns the head (hex)."""
        rows = response.watermarked
        if not rows.any():
            return self._head()[1].hex()
        return self.append(client, images[rows], response.answers[rows], response.victim_labels[rows], audit_id)

    def append(
        self,
        client: str,
        images: torch.Tensor,
        answers: torch.Tensor,
        victim_labels: torch.Tensor,
        audit_id: int | None = None,
        time: float | None = None,
    ) -> str:
        """Append one record per image (the watermark class is the answer's top class); returns the
        new head (hex), for the caller's audit row.  Rows past the client's cap are counted, not kept."""
        if not len(images) == len(answers) == len(victim_labels):
            raise ValueError(f"{len(images)} images, {len(answers)} answers, {len(victim_labels)} labels")
        if len(images) == 0:
            return self._head()[1].hex()
        pixels = quantise(images)
        answer_rows = answers.detach().float().numpy().astype("<f4")
        marks = answers.argmax(1).tolist()
        labels = victim_labels.tolist()
        now = clock.time() if time is None else float(time)
        if self._commit:
            self.connection.execute("BEGIN IMMEDIATE")
        try:
            head = self._append(client, pixels, answer_rows, marks, labels, audit_id, now)
        except BaseException:
            if self._commit:
                self.connection.execute("ROLLBACK")
            raise
        if self._commit:
            self.connection.execute("COMMIT")
        return head.hex()

    def _append(self, client, pixels, answer_rows, marks, labels, audit_id, now) -> bytes:
        db = self.connection
        count, head = self._head()
        row = db.execute("SELECT stored FROM watermark_evidence_clients WHERE client = ?", (client,)).fetchone()
        stored = 0 if row is None else int(row[0])
        keep = max(0, min(len(pixels), self.cap_per_client - stored))
        inserts = []
        for i in range(keep):
            count += 1
            image, answer = pixels[i].tobytes(), answer_rows[i].tobytes()
            head = chain(head, record_bytes(count, now, audit_id, client, image, labels[i], marks[i], answer))
            inserts.append((count, client, now, audit_id, image, labels[i], marks[i], answer, head))
        db.executemany(
            "INSERT INTO watermark_evidence (seq, client, time, audit_id, image, victim_label, watermark_class, "
            "answer, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            inserts,
        )
        db.execute("UPDATE watermark_evidence_head SET count = ?, head = ? WHERE id = 0", (count, head))
        db.execute(
            "INSERT INTO watermark_evidence_clients (client, stored, dropped) VALUES (?, ?, ?) "
            "ON CONFLICT (client) DO UPDATE SET stored = stored + excluded.stored, "
            "dropped = dropped + excluded.dropped",
            (client, keep, len(pixels) - keep),
        )
        return head

    def clients(self) -> dict[str, tuple[int, int]]:
        """Per client: (records stored, watermarked answers not stored because of the cap)."""
        rows = self.connection.execute("SELECT client, stored, dropped FROM watermark_evidence_clients").fetchall()
        return {client: (int(stored), int(dropped)) for client, stored, dropped in rows}

    def read(self) -> tuple[EvidenceSet, list[bytes]]:
        """Every record and its stored hash, unverified (see `verify`)."""
        rows = self.connection.execute(
            "SELECT seq, client, time, audit_id, image, victim_label, watermark_class, answer, hash "
            "FROM watermark_evidence ORDER BY seq"
        ).fetchall()
        _, head = self._head()
        for row in rows:
            if len(row[4]) != _PIXELS or len(row[7]) != 4 * _CLASSES:
                raise EvidenceError(f"evidence record {row[0]} is malformed (tampered); use an untouched copy")
        evidence = EvidenceSet(
            np.array([r[0] for r in rows], dtype=np.int64),
            tuple(r[1] for r in rows),
            np.array([r[2] for r in rows], dtype=np.float64),
            np.array([-1 if r[3] is None else r[3] for r in rows], dtype=np.int64),
            np.frombuffer(b"".join(r[4] for r in rows), dtype=np.uint8).reshape(-1, _PIXELS).copy(),
            np.array([r[5] for r in rows], dtype=np.int64),
            np.array([r[6] for r in rows], dtype=np.int64),
            np.frombuffer(b"".join(r[7] for r in rows), dtype="<f4").reshape(-1, _CLASSES).copy(),
            head.hex(),
            self.commitment,
        )
        return evidence, [bytes(r[8]) for r in rows]

    def verify(self) -> EvidenceSet:
        """Every record, after checking the whole chain against the stored count and head."""
        evidence, hashes = self.read()
        count, head = self._head()
        check_chain(evidence, hashes, count, head, "the evidence store")
        return evidence

    def export(self, path: Path) -> str:
        """Write the verified evidence to one safetensors file (atomically); returns the head (hex)."""
        evidence = self.verify()
        if len(evidence) == 0:
            raise EvidenceError("the evidence store is empty: no watermarked answer has been recorded yet")
        _, hashes = self.read()
        write_export(evidence, hashes, Path(path))
        return evidence.head


def write_export(evidence: EvidenceSet, hashes: Sequence[bytes], path: Path) -> None:
    names = sorted(set(evidence.clients))
    index = {name: i for i, name in enumerate(names)}
    tensors = {
        "seq": evidence.seq,
        "time": evidence.times,
        "audit_id": evidence.audit_ids,
        "image": evidence.images,
        "victim_label": evidence.victim_labels,
        "watermark_class": evidence.classes,
        "answer": evidence.answers.astype(np.float32),
        "client_index": np.array([index[c] for c in evidence.clients], dtype=np.int64),
        "hash": np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(-1, 32),
    }
    metadata = {
        "format": FORMAT,
        "clients": json.dumps(names),
        "count": str(len(evidence)),
        "head": evidence.head,
        "commitment": evidence.commitment,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(partial), metadata=metadata)
    partial.replace(path)


_SQLITE_MAGIC = b"SQLite format 3\x00"


def load_evidence(path: Path) -> EvidenceSet:
    """Read evidence from an export (`mea evidence export`) or a service database, chain checked."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no evidence at {path}; pass the service database or an export (`mea evidence export`)")
    with path.open("rb") as handle:
        magic = handle.read(len(_SQLITE_MAGIC))
    if magic == _SQLITE_MAGIC:
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "watermark_evidence" not in tables:
                    raise EvidenceError(f"{path} is a database without watermark evidence; was the watermark on?")
                evidence = EvidenceStore(connection, None).verify()
            finally:
                connection.close()
        except sqlite3.DatabaseError as exc:
            raise EvidenceError(f"{path} is a damaged database ({exc}); use an untouched copy") from None
        return evidence
    return _load_export(path)


def _load_export(path: Path) -> EvidenceSet:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EvidenceError(
            f"{path} is neither an evidence export nor a service database ({exc}); "
            "export evidence with `mea evidence export`"
        ) from None
    if metadata.get("format") != FORMAT:
        raise EvidenceError(f"{path} is not an evidence export (format {metadata.get('format')!r})")
    try:
        names = json.loads(metadata["clients"])
        count, head = int(metadata["count"]), bytes.fromhex(metadata["head"])
        n = len(tensors["seq"])
        images, answers, hashes = tensors["image"], tensors["answer"], tensors["hash"]
        if images.shape != (n, _PIXELS) or answers.shape != (n, _CLASSES) or hashes.shape != (n, 32):
            raise ValueError("array shapes disagree")
        evidence = EvidenceSet(
            tensors["seq"].astype(np.int64),
            tuple(names[i] for i in tensors["client_index"]),
            tensors["time"].astype(np.float64),
            tensors["audit_id"].astype(np.int64),
            images.astype(np.uint8),
            tensors["victim_label"].astype(np.int64),
            tensors["watermark_class"].astype(np.int64),
            answers.astype(np.float32),
            metadata["head"],
            metadata["commitment"],
        )
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise EvidenceError(f"{path} is a damaged evidence export ({exc}); use an untouched copy") from None
    check_chain(evidence, [bytes(h) for h in hashes], count, head, str(path))
    return evidence


def records_until(evidence: EvidenceSet, head: str) -> EvidenceSet:
    """The records up to the one whose hash is `head` (a head recorded earlier, e.g. in the audit
    log or by a third party): evidence added after that moment is not used."""
    hashes = [h.hex() for h in _hashes(evidence)]
    wanted = head.strip().lower()
    if wanted not in hashes:
        raise EvidenceError(
            f"the evidence chain does not pass through the head {head} recorded earlier "
            "(truncated or rewritten since); use an untouched copy"
        )
    return evidence.select(np.arange(len(evidence)) <= hashes.index(wanted))


def export_evidence(source: Path, out: Path) -> EvidenceSet:
    """Check the chain of a service database or store and write it to one export file."""
    evidence = load_evidence(source)
    if len(evidence) == 0:
        raise EvidenceError(f"{source} holds no evidence records yet: nothing to export")
    write_export(evidence, _hashes(evidence), Path(out))
    return evidence
