"""The service without HTTP: detector state shared by several processes and restored after a
restart is exactly the state one uninterrupted process would hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mea.config import PradaConfig, ServeConfig
from mea.data import load
from mea.defenses.gate import ClientGate
from mea.defenses.prada import REFUSED, ClientState, PradaMonitor
from mea.defenses.store import load_defense
from mea.ownership.evidence import load_evidence
from mea.serve.clients import ClientRecords
from mea.serve.keys import KeyStore
from mea.serve.protocol import InferRequest
from mea.serve.service import Answered, Refusal, Service


def request(images: torch.Tensor) -> InferRequest:
    return InferRequest(None, images, images.numpy().tobytes(), ("probabilities",), frozenset())


@pytest.fixture(scope="module")
def stream(data_dir) -> list[torch.Tensor]:
    """A natural stream with a tenth of Fashion-MNIST mixed in: some flags, never suspect."""
    mnist = load("mnist", "test", data_dir).images[:900]
    fashion = load("fashion-mnist", "test", data_dir).images[:100]
    images = torch.cat([mnist, fashion])[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    return list(images.split(50))


def assert_same_state(actual: ClientState, expected: ClientState) -> None:
    for name in ("queries", "distance_count", "tested_at", "flagged_ood", "statistic", "prada_flagged_at", "level"):
        assert getattr(actual, name) == getattr(expected, name), name
    assert actual.distances == expected.distances
    assert list(actual.ood_marks) == list(expected.ood_marks)
    mine, theirs = actual.step_record, expected.step_record
    assert (mine.steps, mine.flagged_at, list(mine.marks)) == (theirs.steps, theirs.flagged_at, list(theirs.marks))
    assert np.array_equal(mine.latest(mine.memory), theirs.latest(theirs.memory))
    assert sorted(actual.sets) == sorted(expected.sets)
    for label, kept in expected.sets.items():
        mine = actual.sets[label]
        assert (mine.size, mine.threshold, mine.kept_distances) == (kept.size, kept.threshold, kept.kept_distances)
        assert np.array_equal(mine.buffer[: mine.size], kept.buffer[: kept.size])
        assert np.array_equal(mine.norms[: mine.size], kept.norms[: kept.size])


def test_processes_sharing_a_database_and_a_restart_keep_the_exact_detector_state(
    victim, defense_dir, stream, tmp_path
):
    defense = load_defense(defense_dir, victim)
    config = ServeConfig(db=tmp_path / "service.db", shared_db=True)
    first, second = Service(config, victim, defense), Service(config, victim, defense)
    key = KeyStore(first.db).create("alternating")[0]
    # One uninterrupted in-memory gate sees the whole stream: the reference.
    reference = ClientGate(defense.oracle(victim), PradaMonitor(defense.stream_config(config.prada)))
    for i, images in enumerate(stream):
        service = (first, second)[i % 2]  # two "processes" take turns, as workers behind one port do
        outcome = service.infer(key, request(images), None)
        assert isinstance(outcome, Answered)
        expected_answers, _, _ = reference.answer(key.id, images)
        assert torch.equal(outcome.answers, expected_answers)
    expected = reference.monitor.state(key.id)
    assert expected.statistic is not None and expected.flagged_ood > 0  # the stream exercised the detector
    with first.db.write() as connection:
        assert_same_state(first.clients.load(connection, key.id), expected)
    # A restarted server reads everything back from the database.
    restarted = Service(config, victim, defense)
    with restarted.db.write() as connection:
        assert_same_state(restarted.clients.load(connection, key.id), expected)


def test_a_synthetic_step_stream_is_refused_across_processes_and_a_restart(victim, defense_dir, data_dir, tmp_path):
    """Seeds, then signed steps of 0.1 from them (as Jacobian-based augmentation makes its queries),
    sent through two processes in turn with a restart between: refused where one process would."""
    defense = load_defense(defense_dir, victim)
    config = ServeConfig(db=tmp_path / "service.db", shared_db=True, prada=PradaConfig(step_memory=64))
    seeds = load("mnist", "train", data_dir).images[:40]
    steps = (seeds + 0.1 * torch.randn(seeds.shape, generator=torch.Generator().manual_seed(0)).sign()).clamp(0, 1)
    batches = list(torch.cat([seeds, steps, steps.flip(0)]).split(10))  # the second half: steps seen before
    reference = ClientGate(defense.oracle(victim), PradaMonitor(defense.stream_config(config.prada)))
    first, second = Service(config, victim, defense), Service(config, victim, defense)
    key = KeyStore(first.db).create("stepper")[0]
    refused_at = None
    for i, images in enumerate(batches):
        if i == 3:  # a restart before the steps: the seeds they step from come back from the database
            second = Service(config, victim, defense)
        outcome = (first, second)[i % 2].infer(key, request(images), None)
        reference.answer(key.id, images)
        if isinstance(outcome, Refusal):
            refused_at = i
            break
    expected = reference.monitor.state(key.id)
    assert expected.steps_flagged_at == 40 + defense.stream_config().step_count
    assert refused_at == 4  # the batch in which the window filled is not answered
    with second.db.write() as connection:
        assert_same_state(second.clients.load(connection, key.id), expected)
        kept = connection.execute("SELECT COUNT(*) FROM step_memory WHERE key_id = ?", (key.id,)).fetchone()[0]
    assert kept == min(64, expected.queries)


def test_quota_and_rate_are_checked_and_charged_in_one_transaction(victim, stream, tmp_path):
    service = Service(ServeConfig(db=tmp_path / "service.db", max_batch=50), victim)
    key = KeyStore(service.db).create("limited", quota=120, rate=10.0)[0]
    examined: list[int] = []  # the batches that reached the model
    examine = service.gate.examine
    service.gate.examine = lambda images: examined.append(len(images)) or examine(images)
    first = service.infer(key, request(stream[0]), None)
    assert isinstance(first, Answered) and first.key.remaining == 70
    # The bucket held one full batch (50 images at 10/s): the next batch must wait about 5 s.
    limited = service.infer(key, request(stream[1]), None)
    assert isinstance(limited, Refusal) and limited.status == 429 and "rate limit" in limited.message
    over = service.infer(key, request(torch.cat(stream[2:4])), None)
    assert isinstance(over, Refusal) and over.status == 429 and "quota exhausted" in over.message
    with service.db.write() as connection:
        assert connection.execute("SELECT used FROM api_keys WHERE id = ?", (key.id,)).fetchone()[0] == 50
        assert connection.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 1
    assert examined == [50]  # a refused request never makes the server run the model


def test_a_reused_idempotency_key_or_a_suspended_client_never_reaches_the_model(victim, stream, tmp_path):
    service = Service(ServeConfig(db=tmp_path / "service.db", max_batch=50), victim)
    key = KeyStore(service.db).create("spent", quota=50)[0]
    examined: list[int] = []  # the batches that reached the model
    examine = service.gate.examine
    service.gate.examine = lambda images: examined.append(len(images)) or examine(images)
    assert isinstance(service.infer(key, request(stream[0]), "first"), Answered)
    # The quota is spent: a retry is answered again, uncharged; the same key with other images is not.
    again = service.infer(key, request(stream[0]), "first")
    assert isinstance(again, Answered) and again.replayed and again.key.remaining == 0
    reused = service.infer(key, request(stream[1]), "first")
    assert isinstance(reused, Refusal) and reused.status == 422
    with service.db.write() as connection:
        ClientRecords.set_level(connection, key.id, REFUSED)  # the operator suspends the client
    suspended = service.infer(key, request(stream[0]), "first")
    assert isinstance(suspended, Refusal) and suspended.status == 403
    assert examined == [50, 50]  # the answer and its replay


def test_watermarked_answers_are_kept_as_evidence_bound_to_their_audit_rows(victim, defense_dir, data_dir, tmp_path):
    defense = load_defense(defense_dir, victim)
    assert defense.watermark is not None  # `mea defend fit` watermarks by default
    config = ServeConfig(db=tmp_path / "service.db")
    service = Service(config, victim, defense)
    key = KeyStore(service.db).create("reader")[0]
    images = load("mnist", "test", data_dir).images[:3000]
    marked = 0
    for batch in images.split(250):
        outcome = service.infer(key, request(batch), None)
        assert isinstance(outcome, Answered)
        marked += int(defense.oracle(victim).respond(batch, key.id).watermarked.sum())
    assert marked > 0  # about 0.4% of 3,000 in-distribution answers
    evidence = load_evidence(config.db)  # checks the whole hash chain
    assert len(evidence) == marked and set(evidence.clients) == {key.id}
    with service.db.write() as connection:
        rows = dict(connection.execute("SELECT id, evidence_head FROM audit").fetchall())
    # Each record names the audit row of its request, which holds the chain's head after it.
    assert set(evidence.audit_ids.tolist()) <= set(rows)
    last = int(evidence.audit_ids[-1])
    assert rows[last] == evidence.head
