"""A victim of another shape and class count: 3x32x32 colour images of 5 classes, trained on the
user's own .npz task, exported to ONNX, then attacked (from its own data, from MNIST digits made
to its shape, from noise, with JBDA and data-free), defended and served over HTTP like the default
LeNet on 28x28 digits.  Nothing here is special-cased: the shape and classes come from the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cli import mea
from mea.attacks import extract, make_strategy
from mea.config import DetectorConfig, LabelLoss, Splits, TrainConfig, VictimConfig
from mea.data import make_pool
from mea.defenses.store import fit_defense
from mea.errors import ConfigError
from mea.model_files import export_onnx
from mea.oracle import TopK, VictimOracle
from mea.ownership.config import check_victim_signature
from mea.signature import Signature
from mea.victim import load_victim, train_victim, write_sidecar

pytest.importorskip("onnxruntime")
SHAPE = (3, 32, 32)
PALETTE = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], np.float32)


def colour_squares(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(count, 32, 32, 3) uint8 images, channels last as numpy users store them: a square of the
    class's colour at a random place and size on a dim noisy background."""
    labels = rng.integers(0, len(PALETTE), count)
    images = rng.uniform(0, 0.3, (count, 32, 32, 3)).astype(np.float32)
    for i, label in enumerate(labels):
        y, x = rng.integers(0, 22, 2)
        side = rng.integers(6, 11)
        images[i, y : y + side, x : x + side] = PALETTE[label] * rng.uniform(0.6, 1.0)
    return (images * 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(0)
    (x_train, y_train), (x_test, y_test) = colour_squares(2500, rng), colour_squares(500, rng)
    np.savez(root / "task.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return root


@pytest.fixture(scope="module")
def onnx_victim(task, data_dir):
    """`mea train-victim --dataset task.npz --arch small-cnn`, then `mea export`, in-process."""
    train = TrainConfig(epochs=2, lr=3e-3, batch_size=128, loss=LabelLoss.HARD, temperature=1.0)
    config = VictimConfig(arch="small-cnn", train=train, splits=Splits(str(task / "task.npz"), 500))
    metrics = train_victim(config, task / "victim", data_dir, progress=False)
    assert metrics["config"]["dataset"] == str(task / "task.npz")
    victim = load_victim(task / "victim")
    export_onnx(victim.model, task / "colour.onnx")
    write_sidecar(victim, task / "colour.onnx")
    return task / "colour.onnx"


def test_the_model_file_says_its_shape_and_classes(onnx_victim, task):
    victim = load_victim(onnx_victim)
    assert victim.signature == Signature(SHAPE, 5)
    sidecar = json.loads(onnx_victim.with_suffix(".json").read_text())
    assert sidecar["calibration_size"] == 500 and len(sidecar["class_names"]) == 5
    test = victim.test_set()
    assert test.images.shape[1:] == SHAPE
    accuracy = float((VictimOracle(victim.model).query(test.images).argmax(1) == test.labels).float().mean())
    assert accuracy > 0.9  # chance is 0.2


def test_every_attack_runs_against_it_from_pools_of_any_shape(onnx_victim, task, data_dir):
    victim = load_victim(onnx_victim)
    test = victim.test_set()
    truth = VictimOracle(victim.model).query(test.images).argmax(1)
    train = TrainConfig(epochs=5, min_steps=100)

    def fidelity(strategy: str, pool_name: str | None, queries: int) -> float:
        pool = None if pool_name is None else make_pool(pool_name, data_dir, seed=0, image_shape=SHAPE)
        oracle = VictimOracle(victim.model, budget=queries)
        clone = extract(oracle, pool, make_strategy(strategy), queries, "small-cnn", train, 0, False).clone
        assert oracle.queries_used <= queries
        with torch.no_grad():
            return float((clone(test.images).argmax(1) == truth).float().mean())

    # The attacker holding the task's own images copies the victim; MNIST digits, made RGB and
    # resized to 32x32, and uniform noise are pools of the right shape that teach it little.
    own = str(task / "task.npz")
    assert fidelity("random", own, 800) > 0.9
    assert fidelity("jbda", own, 600) > 0.6
    assert make_pool("mnist-train", data_dir, size=10, image_shape=SHAPE).images.shape == (10, *SHAPE)
    assert fidelity("random", "mnist-train", 800) < fidelity("random", own, 800)
    # A data-free generator makes 3x32x32 images for it (a small budget: it runs, it is no copy).
    assert 0.0 <= fidelity("dfme", None, 600) <= 1.0


def test_it_is_defended_and_served_like_the_default_victim(onnx_victim, task, data_dir, tmp_path):
    pytest.importorskip("httpx")
    from mea.serve.client import HttpOracle
    from mea.serve.process import create_key, start_server, stop_all

    victim = load_victim(onnx_victim)
    defense = fit_defense(victim, tmp_path / "defense", DetectorConfig(), data_dir=data_dir)
    assert defense.watermark is None  # the watermark keys 28x28 digits: not applied here
    test = victim.test_set()
    scores_in = defense.detector.score_images(victim.model, test.images)
    for pool in ("mnist-train", "uniform"):
        scores_out = defense.detector.score_images(victim.model, make_pool(pool, data_dir, 1000, 0, SHAPE).images)
        truth = np.r_[np.zeros(len(scores_in)), np.ones(len(scores_out))]
        assert roc_auc_score(truth, np.r_[scores_in.numpy(), scores_out.numpy()]) > 0.95, pool

    db = tmp_path / "service.db"
    server = start_server(onnx_victim, db, tmp_path / "server.log", "--defense", str(tmp_path / "defense"))
    try:
        http = HttpOracle(server.url, create_key(db, "--name", "alice"))
        assert http.signature == Signature(SHAPE, 5)
        pool = make_pool(str(task / "task.npz"), image_shape=SHAPE)
        train = TrainConfig(epochs=2)
        served = extract(http, pool, make_strategy("random"), 300, "small-cnn", train, 0, False).clone
        local = extract(defense.oracle(victim), pool, make_strategy("random"), 300, "small-cnn", train, 0, False).clone
        for (name, a), b in zip(served.state_dict().items(), local.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        with pytest.raises(ValueError, match=r"queries must have shape \(B, 3, 32, 32\)"):
            http.query(torch.zeros(2, 1, 28, 28))
    finally:
        stop_all(server)


def test_what_does_not_fit_it_is_one_line(onnx_victim, task, data_dir, tmp_path):
    np.savez(tmp_path / "wide.npz", images=np.zeros((4, 32, 48, 3), np.uint8))
    cases = [
        (("attack", "--victim", str(onnx_victim), "--pool", str(tmp_path / "wide.npz"), "--queries", "50"),
         "images of 48x32 are not square; the victim takes 32x32: crop them to its aspect ratio first"),
        (("train-victim", "--dataset", str(tmp_path / "nowhere.npz")), "nor a .npz file or image folder that exists"),
    ]  # fmt: skip
    for args, message in cases:
        out = tmp_path / "out"
        done = mea(*args, "--out", str(out), data_dir=data_dir, threads=1)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and message in lines[-1], (args, done.stderr)
        assert not out.exists(), args
    victim = load_victim(onnx_victim)
    with pytest.raises(ConfigError, match="the watermark keys 1x28x28 images of 10 classes; this victim takes "
                                          "3x32x32 images, 5 classes: drop --watermark-rate"):  # fmt: skip
        fit_defense(victim, tmp_path / "defense", DetectorConfig(), data_dir=data_dir, watermark_rate=0.01)
    with pytest.raises(ConfigError, match="ownership verification supports victims of 1x28x28 images, 10 classes"):
        check_victim_signature(victim.signature)
    with pytest.raises(ConfigError, match="top-k needs k <= the victim's 5 classes, got 6"):
        VictimOracle(victim.model, TopK(6))
    assert not (tmp_path / "defense").exists()
