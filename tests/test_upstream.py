"""A victim served elsewhere, defended by `mea serve` in front of it: the upstream is a real
`mea serve` on loopback that shows only its answers; the defense reads the operator's own feature
extractor's layers beside them (or, without one, the confidence score alone)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cli import mea
from mea import models
from mea.config import DetectorConfig, TrainConfig
from mea.data import load, make_pool
from mea.defenses.store import fit_defense, load_defense
from mea.errors import MeaError
from mea.seeding import generator
from mea.training import fit
from mea.victim import load_victim

pytest.importorskip("httpx")
from mea.serve.client import HttpOracle
from mea.serve.process import create_key, start_server, stop_all


@pytest.fixture(scope="module")
def upstream(victim_dir, data_dir, tmp_path_factory, monkeypatch_module):
    """The upstream server (no defense) and the operator's files: a served-victim file with a
    feature extractor, one without, and a small owner's dataset to fit and calibrate on."""
    root = tmp_path_factory.mktemp("upstream")
    train, test = load("mnist", "train", data_dir), load("mnist", "test", data_dir)
    np.savez(
        root / "owner.npz",
        x_train=(train.images[-4000:, 0] * 255).round().byte().numpy(),
        y_train=train.labels[-4000:].numpy(),
        x_test=(test.images[:1000, 0] * 255).round().byte().numpy(),
        y_test=test.labels[:1000].numpy(),
    )
    # The operator's own network, trained on its own images: not the victim, never seen by clients.
    extractor = models.build("small-cnn", 1)
    one_hot = torch.nn.functional.one_hot(train.labels[-4000:], 10).float()
    fit(extractor, train.images[-4000:], one_hot, TrainConfig(epochs=2), generator(1, "extractor"), progress=False)
    models.save(extractor, "small-cnn", root / "extractor.safetensors")
    server = start_server(victim_dir, root / "upstream.db", root / "upstream.log", data_dir=data_dir)
    monkeypatch_module.setenv("UPSTREAM_KEY", create_key(root / "upstream.db", "--name", "proxy"))
    record = {"url": server.url, "api_key_env": "UPSTREAM_KEY", "dataset": "owner.npz", "calibration_size": 1000}
    (root / "upstream.json").write_text(json.dumps({**record, "features": "extractor.safetensors"}))
    (root / "plain.json").write_text(json.dumps(record))
    yield server, root
    stop_all(server)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_defense_reads_the_operators_extractor_beside_the_upstreams_answers(upstream, data_dir):
    _, root = upstream
    done = mea("defend", "fit", "--victim", str(root / "upstream.json"), "--out", str(root / "defense"), threads=2)
    assert done.returncode == 0, done.stderr
    assert "layers conv1, conv2 + confidence" in done.stdout
    plain = fit_defense(load_victim(root / "plain.json"), root / "plain", DetectorConfig())
    assert plain.detector.config.layers == ()  # the upstream shows no layers: the confidence score alone
    key = os.environ["UPSTREAM_KEY"]  # read from the environment, never written
    for path in [*(root / "defense").iterdir(), root / "upstream.json"]:
        assert key.encode() not in path.read_bytes(), path

    victim = load_victim(root / "upstream.json")
    defense = load_defense(root / "defense", victim)
    test = victim.test_set()
    scores_in = defense.detector.score_images(victim.model, test.images)
    for pool in ("fashion-mnist", "uniform"):
        scores_out = defense.detector.score_images(victim.model, make_pool(pool, data_dir, 1000).images)
        truth = np.r_[np.zeros(len(scores_in)), np.ones(len(scores_out))]
        assert roc_auc_score(truth, np.r_[scores_in.numpy(), scores_out.numpy()]) > 0.95, pool
    with pytest.raises(Exception, match="fitted for another victim"):
        load_defense(root / "defense", load_victim(root / "plain.json"))
    # A file that names five classes for a ten-class upstream, or names no url: one line each.
    record = json.loads((root / "plain.json").read_text())
    (root / "five.json").write_text(json.dumps({**record, "class_names": list("abcde")}))
    with pytest.raises(MeaError, match=r"neither class scores \[-1, 5\] nor labels"):
        load_victim(root / "five.json")
    (root / "nourl.json").write_text(json.dumps({"dataset": "mnist"}))
    with pytest.raises(MeaError, match="names no served victim"):
        load_victim(root / "nourl.json")


def test_mea_serve_defends_the_upstream_over_http(upstream, data_dir, tmp_path):
    server, root = upstream
    if not (root / "defense").exists():
        pytest.skip("needs the defense the previous test fits")
    proxy = start_server(root / "upstream.json", tmp_path / "proxy.db", tmp_path / "proxy.log", "--defense",
                         str(root / "defense"), data_dir=data_dir)  # fmt: skip
    try:
        client = HttpOracle(proxy.url, create_key(tmp_path / "proxy.db", "--name", "alice"))
        direct = HttpOracle(server.url, create_key(root / "upstream.db", "--name", "bob"))
        digits = load("mnist", "test", data_dir).images[1000:1500]
        noise = make_pool("uniform", size=300, seed=3).images
        through, exact = client.query(digits), direct.query(digits)
        # Digits pass with the upstream's labels (bar the calibrated false positives and the
        # watermark's few flips; its runner-up mark reorders the classes below the top).
        assert (through.argmax(1) == exact.argmax(1)).float().mean() > 0.95
        # ... and the upstream's own probability values: the mark swaps two of them, adds none.
        same_values = (through.sort(1).values - exact.sort(1).values).abs().max(1).values < 1e-4
        assert same_values.float().mean() > 0.9
        # Noise is flagged and answered with misinformation: its top class is not the upstream's.  (A
        # client of its own: after 200 queries a client whose latest queries are mostly noise is refused.)
        noisy = HttpOracle(proxy.url, create_key(tmp_path / "proxy.db", "--name", "carol"))
        moved = noisy.query(noise[:150]).argmax(1) != direct.query(noise[:150]).argmax(1)
        assert moved.float().mean() > 0.8
    finally:
        stop_all(proxy)
