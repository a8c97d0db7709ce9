"""Proof of theft in process: the watermark, the evidence store and its hash chain, the tests, suspects."""

from __future__ import annotations

import itertools
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cli import mea as run_mea
from mea import models
from mea.attacks import extract, make_strategy
from mea.data import load, make_pool
from mea.defenses.store import load_defense
from mea.errors import ConfigError
from mea.oracle import parse_output
from mea.ownership.clients import RecordingClient, SybilClient
from mea.ownership.config import WatermarkConfig
from mea.ownership.evidence import EvidenceError, EvidenceStore, load_evidence, records_until
from mea.ownership.suspects import ModelSuspect, SuspectError, load_suspect
from mea.ownership.verify import (
    calibration_probes,
    keyed_rank_test,
    midranks,
    nearest_neighbours,
    verify_suspect,
)
from mea.ownership.watermark import Watermark, defense_watermark

SECRET = bytes(range(32))


@pytest.fixture(scope="module")
def defense(victim, defense_dir):
    return load_defense(defense_dir, victim)


@pytest.fixture(scope="module")
def mixed(data_dir) -> torch.Tensor:
    """400 MNIST test digits and 100 uniform-noise images (which the gate flags)."""
    digits = load("mnist", "test", data_dir).images[:400]
    noise = torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    return torch.cat([digits, noise])


def watermarked(defense, victim, output: str = "probabilities", rate: float = 0.2):
    oracle = defense.oracle(victim, output=parse_output(output))
    oracle.watermark = Watermark(WatermarkConfig(SECRET, rate=rate))
    return oracle


# --- the watermark --------------------------------------------------------------------------------


def test_watermark_answers_are_repeat_proof(defense, victim, mixed):
    oracle = watermarked(defense, victim)
    first, again = oracle.respond(mixed, "alice"), oracle.respond(mixed.clone(), "alice")
    assert torch.equal(first.answers, again.answers) and torch.equal(first.watermarked, again.watermarked)
    # A jitter below half a grey level is the same 8-bit image: the same decision and answer.
    jittered = mixed + 0.3 / 255 * torch.sign(torch.randn(mixed.shape, generator=torch.Generator().manual_seed(1)))
    jittered = oracle.respond(jittered.clamp(0, 1), "alice")
    assert torch.equal(jittered.watermarked, first.watermarked)
    # (Flagged rows follow the gate, whose severity reads the exact pixels: compare the others.)
    digits = ~first.flagged & ~jittered.flagged
    assert digits.sum() > 350
    assert torch.equal(jittered.answers[digits].argmax(1), first.answers[digits].argmax(1))
    # Another client is watermarked on other images.
    other = oracle.respond(mixed, "bob")
    assert not torch.equal(other.watermarked, first.watermarked)
    assert 40 < int(first.watermarked.sum()) < 120  # about r = 0.2 of the 400 unflagged digits


@pytest.mark.parametrize("output", ["probabilities", "label", "top-k:3", "rounded:0", "rounded:2"])
def test_flipped_answers_name_the_keyed_class_in_every_output_mode(defense, victim, mixed, output):
    oracle = watermarked(defense, victim, output)
    response = oracle.respond(mixed, "alice")
    rows = response.watermarked
    keyed = oracle.watermark.classes(mixed[rows], response.victim_labels[rows])
    assert rows.sum() > 20
    assert torch.equal(response.answers[rows].argmax(1), keyed)
    assert (keyed != response.victim_labels[rows]).all()
    # Unflipped, unflagged rows keep the victim's top class.
    kept = ~rows & ~response.flagged
    assert torch.equal(response.answers[kept].argmax(1), response.victim_labels[kept])


def test_flipped_probabilities_are_the_victims_own_values_not_one_hot(defense, victim, mixed):
    plain = defense.oracle(victim)
    # `answer` names no client, so the defense's own watermark (on by default) stays out of it.
    probabilities = torch.cat([plain.answer(mixed[i : i + 100])[0] for i in range(0, len(mixed), 100)])
    response = watermarked(defense, victim).respond(mixed, "alice")
    rows = response.watermarked & (probabilities.max(1).values >= 0.6)
    assert rows.sum() > 20
    # The same multiset of values, the top one moved: the confidence profile is the victim's.
    flipped_values = response.answers[rows].sort(1).values
    assert torch.allclose(flipped_values, probabilities[rows].sort(1).values, atol=1e-6)
    assert (response.answers[rows].max(1).values < 1).any()


def test_runner_up_mark_keeps_top_class_and_values(defense, victim, mixed):
    plain = defense.oracle(victim).answer(mixed)[0]  # no client: no watermark
    response = watermarked(defense, victim).respond(mixed, "alice")
    rows = ~response.watermarked & ~response.flagged
    answers = response.answers[rows]
    assert torch.equal(answers.argmax(1), plain[rows].argmax(1))
    assert torch.allclose(answers.sort(1).values, plain[rows].sort(1).values)
    runner_up = answers.clone()
    runner_up[torch.arange(len(answers)), answers.argmax(1)] = -1
    keyed = Watermark(WatermarkConfig(SECRET)).classes(mixed[rows], response.victim_labels[rows])
    distinct = plain[rows].sort(1).values[:, -2] > plain[rows].sort(1).values[:, -3]  # no tie for second place
    assert torch.equal(runner_up.argmax(1)[distinct], keyed[distinct])


def test_a_batch_is_watermarked_as_its_images_one_by_one(defense, victim, mixed):
    """`respond` keys a batch once (one quantisation, one keyed state); every image still gets what
    the per-image functions give it alone: the batch around it changes nothing."""
    # A uniform image lies on every keyed hyperplane (they are orthogonal to the constant image):
    # its cell is the same alone and among others, in batches that BLAS blocks differently.
    grey = torch.arange(256, dtype=torch.float32).div(255).reshape(256, 1, 1, 1).expand(256, 1, 28, 28)
    cells = Watermark(WatermarkConfig(SECRET)).cells
    assert (torch.cat([cells(grey[i : i + 1]) for i in range(256)]) == 0).all()
    for size in (2, 8, 1000):
        batch = torch.cat([mixed[: size // 2], grey.repeat(4, 1, 1, 1)[: size - size // 2]])
        assert (cells(batch)[size // 2 :] == 0).all()
    mark = Watermark(WatermarkConfig(SECRET, rate=0.3))
    images = mixed[:80]
    probabilities = defense.oracle(victim).answer(images)[0]
    answers, chosen = mark.respond("alice", probabilities, images)
    assert 5 < int(chosen.sum()) < 60
    for i in range(len(images)):
        one, row = images[i : i + 1], probabilities[i : i + 1]
        assert bool(mark.select("alice", one)) == bool(chosen[i])
        alone = mark.answer(row, one) if chosen[i] else mark.mark(row, one)
        assert torch.equal(answers[i], alone[0])


def test_watermark_never_changes_an_ood_gated_answer(defense, victim, mixed):
    oracle = watermarked(defense, victim, rate=0.5)
    gate_only = defense.oracle(victim)
    response = oracle.respond(mixed, "alice")
    gated_answers, flags = gate_only.answer(mixed)
    assert torch.equal(response.flagged, flags) and flags[400:].all()
    assert not (response.watermarked & response.flagged).any()
    assert torch.equal(response.answers[flags], gated_answers[flags])
    # A suspected client (severity floor) gets every answer from the policy, none watermarked.
    suspected = oracle.respond(mixed, "alice", severity_floor=0.5)
    assert not suspected.watermarked.any()
    assert torch.equal(suspected.answers, gate_only.answer(mixed, severity_floor=0.5)[0])
    # The existing interface is unchanged: no client, no watermark.
    assert torch.equal(oracle.answer(mixed)[0], gated_answers)


def test_watermark_config_checks_and_hides_its_secret():
    with pytest.raises(ConfigError, match="16 bytes"):
        WatermarkConfig(b"short")
    with pytest.raises(ConfigError, match="rate"):
        WatermarkConfig(SECRET, rate=0)
    assert SECRET.hex() not in repr(WatermarkConfig(SECRET)) and "32 bytes" in repr(WatermarkConfig(SECRET))
    assert WatermarkConfig(SECRET).commitment != WatermarkConfig(bytes(32)).commitment


# --- the evidence store -------------------------------------------------------------------------------


def fill(store: EvidenceStore, oracle, images: torch.Tensor, client: str) -> int:
    client = RecordingClient(oracle, client, store, batch_size=100)
    client.query(images)
    return client.watermarked


def test_evidence_round_trip_through_sqlite_and_export(defense, victim, mixed, tmp_path):
    oracle = watermarked(defense, victim)
    store = EvidenceStore.open(tmp_path / "evidence.db", oracle.watermark.config.commitment)
    flipped = fill(store, oracle, mixed, "alice") + fill(store, oracle, mixed[:200], "bob")
    count, head = store.head()
    assert count == flipped > 0
    exported = tmp_path / "evidence.safetensors"
    assert store.export(exported) == head
    store.close()
    from_db, from_file = load_evidence(tmp_path / "evidence.db"), load_evidence(exported)
    for name in ("seq", "times", "audit_ids", "images", "victim_labels", "classes", "answers"):
        assert np.array_equal(getattr(from_db, name), getattr(from_file, name))
    assert from_db.clients == from_file.clients and from_file.head == head
    assert set(from_file.clients) == {"alice", "bob"}
    # The stored pixels are the queries as sent, and the classes follow the key.
    alice = from_file.for_clients(["alice"])
    response = oracle.respond(mixed, "alice")
    assert np.array_equal(alice.images, (mixed[response.watermarked].reshape(-1, 784) * 255).round().numpy())
    assert torch.equal(
        oracle.watermark.classes(alice.image_tensor(), torch.from_numpy(alice.victim_labels)),
        torch.from_numpy(alice.classes),
    )
    # A head recorded earlier keeps only the records made up to it.
    assert len(records_until(from_file, from_file.head)) == len(from_file)


def _store_with_records(defense, victim, mixed, path: Path) -> Path:
    oracle = watermarked(defense, victim)
    store = EvidenceStore.open(path, oracle.watermark.config.commitment)
    fill(store, oracle, mixed, "alice")
    store.close()
    return path


def _tamper(path: Path, sql: str) -> None:
    connection = sqlite3.connect(path)
    connection.execute("DROP TRIGGER watermark_evidence_no_update")
    connection.execute("DROP TRIGGER watermark_evidence_no_delete")
    connection.execute(sql)
    connection.commit()
    connection.close()


def test_evidence_store_is_append_only(defense, victim, mixed, tmp_path):
    path = _store_with_records(defense, victim, mixed, tmp_path / "evidence.db")
    connection = sqlite3.connect(path)
    for sql in ("UPDATE watermark_evidence SET watermark_class = 0", "DELETE FROM watermark_evidence"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            connection.execute(sql)
    connection.close()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE watermark_evidence SET watermark_class = (watermark_class + 1) % 10 WHERE seq = 5", "at record 5"),
        ("UPDATE watermark_evidence SET time = time - 86400 WHERE seq = 2", "at record 2"),
        ("DELETE FROM watermark_evidence WHERE seq = 3", "record 3 is missing"),
        ("DELETE FROM watermark_evidence WHERE seq = (SELECT MAX(seq) FROM watermark_evidence)", "truncated"),
    ],
)
def test_tampered_or_truncated_evidence_is_detected(defense, victim, mixed, tmp_path, sql, message):
    path = _store_with_records(defense, victim, mixed, tmp_path / "evidence.db")
    assert len(load_evidence(path)) > 5
    _tamper(path, sql)
    with pytest.raises(EvidenceError, match=message):
        load_evidence(path)


def test_truncation_with_a_rewritten_head_is_caught_by_a_head_recorded_earlier(defense, victim, mixed, tmp_path):
    path = _store_with_records(defense, victim, mixed, tmp_path / "evidence.db")
    earlier = load_evidence(path).head
    last = len(load_evidence(path))
    previous = (
        sqlite3.connect(path).execute("SELECT hash FROM watermark_evidence WHERE seq = ?", (last - 1,)).fetchone()
    )
    _tamper(path, f"DELETE FROM watermark_evidence WHERE seq = {last}")
    _tamper_head = sqlite3.connect(path)
    _tamper_head.execute("UPDATE watermark_evidence_head SET count = count - 1, head = ?", (previous[0],))
    _tamper_head.commit()
    _tamper_head.close()
    shortened = load_evidence(path)  # consistent on its own: only the earlier head shows the cut
    assert len(shortened) == last - 1
    with pytest.raises(EvidenceError, match="does not pass through the head"):
        records_until(shortened, earlier)


def test_tampered_export_is_detected(defense, victim, mixed, tmp_path):
    path = _store_with_records(defense, victim, mixed, tmp_path / "evidence.db")
    store = EvidenceStore(sqlite3.connect(path), None)
    exported = tmp_path / "evidence.safetensors"
    store.export(exported)
    data = bytearray(exported.read_bytes())
    data[-5000] ^= 0xFF  # somewhere in the arrays
    exported.write_bytes(bytes(data))
    with pytest.raises(EvidenceError):
        load_evidence(exported)


def test_evidence_over_a_service_connection_commits_with_the_callers_transaction(defense, victim, mixed, tmp_path):
    oracle = watermarked(defense, victim)
    connection = sqlite3.connect(tmp_path / "service.db", isolation_level=None)
    connection.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, head TEXT)")
    store = EvidenceStore(connection, oracle.watermark.config.commitment, cap_per_client=5)
    response = oracle.respond(mixed, "alice")
    connection.execute("BEGIN")
    head = store.record("alice", mixed, response, audit_id=1)
    connection.execute("INSERT INTO audit (id, head) VALUES (1, ?)", (head,))
    connection.execute("ROLLBACK")  # the request failed: neither the audit row nor the evidence stays
    assert store.head()[0] == 0
    connection.execute("BEGIN")
    head = store.record("alice", mixed, response, audit_id=1)
    connection.execute("INSERT INTO audit (id, head) VALUES (1, ?)", (head,))
    connection.execute("COMMIT")
    assert store.head() == (5, head)  # the cap: the oldest 5 kept, the rest counted
    assert store.clients() == {"alice": (5, int(response.watermarked.sum()) - 5)}
    assert load_evidence(tmp_path / "service.db").audit_ids.tolist() == [1] * 5
    with pytest.raises(ConfigError, match="another watermark key"):
        EvidenceStore(connection, WatermarkConfig(bytes(32)).commitment)


# --- the tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [None, np.array([100, 10, 1, 100, 10, 1])])
def test_keyed_rank_test_matches_brute_force_enumeration(weights):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 10, generator=generator)
    victim_labels = torch.tensor([0, 0, 0, 3, 3, 3])
    groups = torch.tensor([0, 0, 1, 6, 6, 6])  # 2 cells per class: groups 0, 1 are class 0's, 6 class 3's
    group_classes = torch.tensor([4, 7, 5, 5, 5, 5, 5, 9, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    result = keyed_rank_test("t", scores, victim_labels, groups, group_classes, weights=weights)
    ranks = midranks(scores, victim_labels)
    w = np.ones(6) if weights is None else weights
    observed = sum(w[i] * ranks[i, group_classes[g]] for i, g in enumerate(groups.tolist()))
    used = sorted(set(groups.tolist()))
    choices = [[c for c in range(10) if c != g // 2] for g in used]  # g // 2: the group's victim class
    totals = [
        sum(w[i] * ranks[i, combo[used.index(g)]] for i, g in enumerate(groups.tolist()))
        for combo in itertools.product(*choices)
    ]
    assert result.p_value == pytest.approx(np.mean(np.array(totals) <= observed + 1e-9))


@pytest.mark.parametrize("label_only", [False, True])
def test_keyed_rank_test_holds_its_level_for_models_that_never_saw_the_key(label_only):
    """Weighted as verification weighs records, neighbours and probes; also on one-hot answers (a
    label-only API), where most images tie all nine classes."""
    generator = torch.Generator().manual_seed(1)
    p_values = []
    for _ in range(300):
        scores = torch.randn(60, 10, generator=generator)
        labels = torch.randint(0, 10, (60,), generator=generator)
        if label_only:  # answers the victim's class on half the images, another class on the rest
            answered = torch.where(torch.rand(60, generator=generator) < 0.5, labels, scores.argmax(1))
            scores = F.one_hot(answered, 10).float()
        groups = labels * 4 + torch.randint(0, 4, (60,), generator=generator)
        keyed = (torch.arange(40) // 4 + torch.randint(1, 10, (40,), generator=generator)) % 10
        weights = np.repeat([100, 10, 1], 20)
        p_values.append(keyed_rank_test("t", scores, labels, groups, keyed, weights=weights).p_value)
    assert 0.02 < np.mean(np.array(p_values) < 0.1) <= 0.1 + 0.05
    assert min(p_values) > 1e-4


def test_keyed_rank_test_refuses_images_counted_in_another_class_group():
    scores = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))
    keyed = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0])  # one cell per class
    with pytest.raises(ConfigError, match="another victim class"):
        keyed_rank_test("t", scores, torch.tensor([0, 1]), torch.tensor([0, 0]), keyed)
    with pytest.raises(ConfigError, match="positive integer weight"):
        keyed_rank_test("t", scores, torch.tensor([0, 1]), torch.tensor([0, 1]), keyed, weights=np.array([1, 0]))


def test_nearest_neighbours_are_the_nearest_of_the_same_class_and_never_a_record():
    generator = np.random.default_rng(0)
    pool = generator.integers(0, 256, (200, 784)).astype(np.uint8)
    pool_labels = generator.integers(0, 3, 200)
    records = np.concatenate([pool[:2], generator.integers(0, 256, (3, 784)).astype(np.uint8)])
    record_labels = np.concatenate([pool_labels[:2], generator.integers(0, 3, 3)])
    found = nearest_neighbours(records, record_labels, pool, pool_labels, 4)
    for record, label, near in zip(records, record_labels, found, strict=True):
        candidates = [i for i in range(2, 200) if pool_labels[i] == label]  # pool 0 and 1 are records
        distance = {i: float(((record.astype(float) - pool[i]) ** 2).sum()) for i in candidates}
        assert list(near) == sorted(candidates, key=lambda i: (distance[i], i))[:4]


@pytest.fixture(scope="module")
def theft(defense, victim, data_dir, tmp_path_factory):
    """A label-only clone stolen with 3,000 queries through a watermarking defense (r = 2%)."""
    root = tmp_path_factory.mktemp("theft")
    oracle = defense.oracle(victim, output=parse_output("label"))
    oracle.watermark = defense_watermark(defense.secret, rate=0.02)
    store = EvidenceStore.open(root / "evidence.db", oracle.watermark.config.commitment)
    client = RecordingClient(oracle, "thief", store)
    clone = extract(client, make_pool("mnist-train", data_dir), make_strategy("random"), 3000, progress=False).clone
    models.save(clone, "lenet5", root / "clone.safetensors")
    store.export(root / "evidence.safetensors")
    store.close()
    return root


@pytest.fixture(scope="module")
def innocent(data_dir, tmp_path_factory) -> Path:
    """Issue 32's innocent: the tests' victim recipe (one epoch, no shifts) with another seed, trained by
    `mea train-victim` as any owner of a digit reader would; it never sent the victim a query."""
    out = tmp_path_factory.mktemp("innocent") / "victim"
    done = mea(
        "train-victim", "--out", str(out), "--epochs", "1", "--shift", "0", "--seed", "7", "--data-dir", str(data_dir)
    )
    assert done.returncode == 0, done.stderr
    return out


def test_a_clone_is_verified_and_an_independent_model_is_not(theft, innocent, victim, defense, data_dir):
    watermark = defense_watermark(defense.secret, rate=0.02)
    records = load_evidence(theft / "evidence.safetensors")
    probes = calibration_probes(victim, 300, data_dir)
    clone = verify_suspect(
        ModelSuspect.load(theft / "clone.safetensors"), watermark=watermark, records=records, probes=probes
    )
    independent = verify_suspect(
        ModelSuspect.load(innocent / "model.safetensors"), watermark=watermark, records=records, probes=probes
    )
    assert clone.derived and clone.p_value < 1e-8
    assert not independent.derived and independent.p_value > 1e-3
    watermark_test = clone.tests[0]
    assert watermark_test.name == "watermark" and set(watermark_test.parts) == {"records", "neighbours", "probes"}
    # Every pool image is asked at most once (neighbours shared by records too), within the budget.
    assert watermark_test.parts["probes"]["images"] + len(records) < clone.queries <= len(records) + 300
    assert watermark_test.parts["records"]["weight"] == 100 and watermark_test.parts["neighbours"]["weight"] == 10


def test_sybil_clients_through_the_defended_oracle(defense, victim, data_dir, tmp_path):
    oracle = watermarked(defense, victim, "label", rate=0.05)
    store = EvidenceStore.open(tmp_path / "evidence.db", oracle.watermark.config.commitment)
    keys = [f"sybil-{i}" for i in range(4)]
    sybil = SybilClient(oracle, keys, store, batch_size=50)
    images = load("mnist", "train", data_dir).images[:800]
    answers = sybil.query(images)
    assert answers.shape == (800, 10)
    evidence = store.verify()
    assert set(evidence.clients) == set(keys)
    # Each key saw only its own batches: its records are among the images it sent.
    for i, key in enumerate(keys):
        sent = torch.cat([images[j : j + 50] for j in range(i * 50, 800, 200)])
        sent_pixels = {row.tobytes() for row in (sent.reshape(-1, 784) * 255).round().byte().numpy()}
        assert all(row.tobytes() in sent_pixels for row in evidence.for_clients([key]).images)
    assert sum(k.watermarked for k in sybil.keys) == len(evidence)


# --- suspects --------------------------------------------------------------------------------------


def test_a_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(SuspectError, match="pickle"):
        load_suspect(path)
    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(b"\x80\x04\x95" + bytes(20))
    with pytest.raises(SuspectError, match="pickle"):
        load_suspect(legacy)


def test_a_file_that_is_not_a_model_is_refused(tmp_path, defense_dir):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(SuspectError, match="not a model file"):
        load_suspect(junk)
    with pytest.raises(SuspectError, match="not a mea model"):
        load_suspect(defense_dir / "detector.safetensors")


def test_onnx_suspects_are_run_and_wrong_shapes_refused(tmp_path, victim):
    pytest.importorskip("onnxruntime")

    def export(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> Path:
        torch.onnx.export(
            model.eval(),
            torch.zeros(1, *shape),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
            dynamo=False,
        )
        return path

    with pytest.warns(DeprecationWarning):
        good = export(victim.model, (1, 28, 28), tmp_path / "victim.onnx")
    suspect = load_suspect(good)
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(suspect.scores(images), ModelSuspect(victim.model, "lenet5", "").scores(images), atol=1e-4)
    colour = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with pytest.warns(DeprecationWarning):
        wrong_input = export(colour, (3, 32, 32), tmp_path / "colour.onnx")
    with pytest.raises(SuspectError, match="not a model of 28x28"):
        load_suspect(wrong_input)
    five = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5))
    with pytest.warns(DeprecationWarning):
        wrong_classes = export(five, (1, 28, 28), tmp_path / "five.onnx")
    with pytest.raises(SuspectError, match="10-class"):
        load_suspect(wrong_classes)


def test_a_suspect_with_another_class_count_is_refused(tmp_path):
    model = models.build("mlp", 0)
    state = {k: v for k, v in model.state_dict().items()}
    state["net.5.weight"], state["net.5.bias"] = state["net.5.weight"][:5], state["net.5.bias"][:5]
    from safetensors.torch import save_file

    path = tmp_path / "five.safetensors"
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(path), metadata={"arch": "mlp", "format": "mea-model-v1"}
    )
    with pytest.raises(SuspectError, match="10 classes"):
        load_suspect(path)


def test_empty_evidence_is_refused(theft, defense):
    records = load_evidence(theft / "evidence.safetensors").for_clients(["nobody"])
    with pytest.raises(EvidenceError, match="empty"):
        verify_suspect(
            ModelSuspect.load(theft / "clone.safetensors"),
            watermark=defense_watermark(defense.secret, rate=0.02),
            records=records,
        )


def test_evidence_made_with_another_key_is_refused(theft):
    records = load_evidence(theft / "evidence.safetensors")
    with pytest.raises(EvidenceError, match="another watermark key"):
        verify_suspect(
            ModelSuspect.load(theft / "clone.safetensors"),
            watermark=Watermark(WatermarkConfig(bytes(32))),
            records=records,
        )


def test_scores_of_suspects_are_logits_of_the_weights(victim):
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    suspect = ModelSuspect(victim.model, "lenet5", "memory")
    assert torch.allclose(F.softmax(suspect.scores(images), 1).sum(1), torch.ones(4))
    assert suspect.queries == 4


# --- the command line, against a real server -------------------------------------------------------


def mea(*args: str) -> subprocess.CompletedProcess:
    return run_mea(*args, threads=1)


def assert_refused(done: subprocess.CompletedProcess, out: Path, *words: str) -> None:
    """One `error:` line naming the problem, exit status 2, nothing written."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists()


@pytest.fixture(scope="module")
def served_clone(theft, victim_dir, data_dir, tmp_path_factory):
    """The stolen clone, published by its thief behind `mea serve` (a victim directory of its own)."""
    from mea.serve.process import create_key, start_server, stop_all

    root = tmp_path_factory.mktemp("served")
    shutil.copy(theft / "clone.safetensors", root / "model.safetensors")
    shutil.copy(victim_dir / "config.json", root / "config.json")
    server = start_server(root, root / "service.db", root / "server.log", data_dir=data_dir)
    try:
        yield server, create_key(root / "service.db", "--name", "owner-audit")
    finally:
        stop_all(server)


def owner_material(theft: Path, victim_dir: Path, defense_dir: Path) -> list[str]:
    return [
        "--evidence",
        str(theft / "evidence.safetensors"),
        "--victim",
        str(victim_dir),
        "--defense",
        str(defense_dir),
        "--probes",
        "200",
    ]


@pytest.mark.slow
def test_verify_a_served_suspect_over_http(served_clone, theft, victim_dir, defense_dir, tmp_path):
    server, key = served_clone
    out = tmp_path / "verdict"
    done = mea(
        "verify",
        "--url",
        server.url,
        "--api-key",
        key,
        *owner_material(theft, victim_dir, defense_dir),
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["derived"] and verdict["p_value"] < 1e-8
    assert verdict["suspect"]["kind"] == "mea-serve" and verdict["queries"] <= 1000
    assert [t["name"] for t in verdict["tests"]] == ["watermark"]
    assert set(verdict["tests"][0]["parts"]) == {"records", "neighbours", "probes"}
    assert verdict["tests"][0]["parts"]["probes"]["images"] <= 200
    assert key not in json.dumps(verdict) and key not in done.stdout
    assert "derived from the victim" in done.stdout
    # Any Open Inference Protocol v2 server: the generic JSON client reads the same answers.
    from mea.ownership.suspects import OipSuspect, http_suspect

    images = load_evidence(theft / "evidence.safetensors").image_tensor()[:10]
    generic = OipSuspect(
        server.url,
        key,
        "lenet-mnist",
        {"inputs": [{"name": "input", "shape": [-1, 1, 28, 28]}], "outputs": [{"name": "probabilities"}]},
        4,
    )
    expected = F.softmax(ModelSuspect.load(theft / "clone.safetensors").scores(images), 1)
    assert torch.allclose(generic.scores(images), expected, atol=1e-5)
    assert torch.allclose(http_suspect(server.url, key).scores(images), expected, atol=1e-5)


@pytest.mark.slow
def test_verify_refuses_bad_suspects_and_urls(served_clone, theft, victim_dir, defense_dir, tmp_path):
    from mea.serve.process import free_port

    server, _ = served_clone
    material = owner_material(theft, victim_dir, defense_dir)
    out = tmp_path / "verdict"
    pickle = tmp_path / "clone.pt"
    torch.save(models.build("lenet5", 0).state_dict(), pickle)
    assert_refused(mea("verify", "--suspect", str(pickle), *material, "--out", str(out)), out, "pickle")
    junk = tmp_path / "notes.txt"
    junk.write_text("weights? no")
    assert_refused(mea("verify", "--suspect", str(junk), *material, "--out", str(out)), out, "not a model file")
    assert_refused(
        mea("verify", "--suspect", str(defense_dir / "detector.safetensors"), *material, "--out", str(out)),
        out,
        "not a mea model",
    )
    unreachable = f"http://127.0.0.1:{free_port()}"
    assert_refused(mea("verify", "--url", unreachable, *material, "--out", str(out)), out, "cannot reach")
    refused = mea(
        "verify", "--url", server.url, "--api-key", "mea_000000000000_not-a-key", *material, "--out", str(out)
    )
    assert_refused(refused, out, "401")
    assert_refused(mea("verify", *material, "--out", str(out)), out, "--suspect")


@pytest.mark.slow
def test_verify_refuses_bad_evidence(theft, victim_dir, defense_dir, tmp_path):
    out = tmp_path / "verdict"
    clone = str(theft / "clone.safetensors")
    owner = ["--victim", str(victim_dir), "--defense", str(defense_dir)]
    tampered = tmp_path / "tampered.safetensors"
    data = bytearray((theft / "evidence.safetensors").read_bytes())
    data[-3000] ^= 0x01
    tampered.write_bytes(bytes(data))
    assert_refused(
        mea("verify", "--suspect", clone, "--evidence", str(tampered), *owner, "--out", str(out)), out, "tampered"
    )
    truncated = tmp_path / "truncated.db"
    shutil.copy(theft / "evidence.db", truncated)
    _tamper(truncated, "DELETE FROM watermark_evidence WHERE seq = (SELECT MAX(seq) FROM watermark_evidence)")
    done = mea("verify", "--suspect", clone, "--evidence", str(truncated), *owner, "--out", str(out))
    assert_refused(done, out, "truncated")
    empty = mea(
        "verify",
        "--suspect",
        clone,
        "--evidence",
        str(theft / "evidence.db"),
        "--client",
        "nobody",
        *owner,
        "--out",
        str(out),
    )
    assert_refused(empty, out, "empty")
    # Evidence recorded after the suspect was published is not used: here, all of it.
    late = mea(
        "verify",
        "--suspect",
        clone,
        "--evidence",
        str(theft / "evidence.db"),
        "--before",
        "2000-01-01",
        *owner,
        "--out",
        str(out),
    )
    assert_refused(late, out, "empty")
    unknown_head = mea(
        "verify",
        "--suspect",
        clone,
        "--evidence",
        str(theft / "evidence.db"),
        "--expect-head",
        "00" * 32,
        *owner,
        "--out",
        str(out),
    )
    assert_refused(unknown_head, out, "does not pass through")


@pytest.mark.slow
def test_an_innocent_trained_as_the_victim_was_is_not_called_derived(
    theft, innocent, victim_dir, defense_dir, tmp_path, data_dir
):
    """Issue 32: models trained with the victim's own recipe and another seed were called derived on the
    strength of the passive fingerprint.  The command line end to end: export the evidence, make a
    fingerprint, train such a model with `mea train-victim` (the `innocent` fixture), verify it and the
    thief's clone."""
    exported = tmp_path / "evidence.safetensors"
    done = mea("evidence", "export", "--db", str(theft / "evidence.db"), "--out", str(exported))
    assert done.returncode == 0, done.stderr
    assert load_evidence(exported).head == load_evidence(theft / "evidence.db").head
    fingerprint = tmp_path / "fingerprint.safetensors"
    # The fewest models a fingerprint takes (one reference in each half), each trained for 1 epoch: the
    # fingerprint is only indicative here, and its statistics are tested on their own below.
    small = ["--references", "2", "--surrogates", "1", "--candidates", "300", "--size", "20", "--epochs", "1"]
    done = mea(
        "fingerprint",
        "make",
        "--victim",
        str(victim_dir),
        "--out",
        str(fingerprint),
        *small,
        "--data-dir",
        str(data_dir),
    )
    assert done.returncode == 0, done.stderr
    from mea.ownership.fingerprint import Fingerprint

    made = Fingerprint.load(fingerprint)
    assert len(made.reference_matches) == 1 and 0 < len(made) <= 20 + made.meta["errors"]
    # The victim's own recipe comes first among the references, in both halves.
    recipe = json.loads((victim_dir / "config.json").read_text())["train"]
    assert made.meta["reference_recipes"][:2] == [f"lenet5, {recipe['epochs']} epochs"] * 2
    # The victim itself gives every fingerprint label (it made them).
    assert bool(
        (ModelSuspect(load_victim_model(victim_dir), "lenet5", "").scores(made.images).argmax(1) == made.labels).all()
    )
    owner = ["--evidence", str(exported), "--fingerprint", str(fingerprint), "--victim", str(victim_dir)]
    owner += ["--defense", str(defense_dir), "--data-dir", str(data_dir)]
    verdicts = {}
    for name, suspect in (("innocent", innocent / "model.safetensors"), ("clone", theft / "clone.safetensors")):
        done = mea("verify", "--suspect", str(suspect), *owner, "--out", str(tmp_path / f"verdict-{name}"))
        assert done.returncode == 0, done.stderr
        verdicts[name] = json.loads((tmp_path / f"verdict-{name}" / "verdict.json").read_text())
        assert "indicative only" in done.stdout
    innocent_verdict, clone_verdict = verdicts["innocent"], verdicts["clone"]
    assert not innocent_verdict["derived"] and innocent_verdict["p_value"] > 1e-3
    assert clone_verdict["derived"] and clone_verdict["p_value"] < 1e-8
    for verdict in verdicts.values():
        tests = {t["name"]: t for t in verdict["tests"]}
        assert tests["watermark"]["counted"] and not tests["fingerprint"]["counted"]
        assert verdict["p_value"] == tests["watermark"]["p_value"]  # the decision is the exact test's alone
        assert tests["fingerprint"]["null"]["smallest_p_value"] == pytest.approx(1 / 2)  # one held-out reference


def load_victim_model(directory: Path) -> torch.nn.Module:
    return models.load(directory / "model.safetensors")[0]


def test_the_decision_rests_on_the_exact_test_alone():
    from mea.ownership.verify import TestResult, decision_p

    def result(name: str, p: float, counted: bool = True) -> TestResult:
        return TestResult(name, "", 1, 1, 0, 0.0, 0.0, 0.0, 0.0, p, counted=counted)

    # However small the fingerprint's p, it never moves the decision; without an exact test there is none.
    assert decision_p([result("watermark", 0.3), result("fingerprint", 1e-12, counted=False)]) == 0.3
    assert decision_p([result("fingerprint", 1e-12, counted=False)]) is None
    assert decision_p([result("watermark", 1e-9), result("fingerprint", 0.9, counted=False)]) == 1e-9


def test_the_fingerprint_rank_is_an_empirical_p_value():
    from mea.ownership.verify import reference_rank_test

    rank = reference_rank_test("fingerprint", 30, 100, [10, 20, 30, 40])
    assert rank.p_value == pytest.approx(3 / 5) and not rank.counted  # 30 and 40 match at least as often
    assert reference_rank_test("fingerprint", 41, 100, [10, 20, 30, 40]).p_value == pytest.approx(1 / 5)
    assert rank.null["smallest_p_value"] == pytest.approx(1 / 5) and "indicative only" in rank.note
    # Valid when the suspect is exchangeable with the references: P(p <= t) <= t, near t.
    generator = np.random.default_rng(0)
    counts = generator.binomial(100, generator.uniform(0.1, 0.5, size=(20_000, 20)))
    p_values = np.array([reference_rank_test("f", int(row[0]), 100, list(row[1:])).p_value for row in counts])
    for t in (0.05, 0.1, 0.25):
        assert t - 0.03 < np.mean(p_values <= t) <= t + 0.01
    with pytest.raises(ConfigError, match="at least one held-out reference"):
        reference_rank_test("fingerprint", 3, 10, [])
