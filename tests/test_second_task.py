"""The second task end to end: a Fashion-MNIST victim trained, attacked with surrogate pools,
defended, served, swept and reported, with no step that assumes MNIST."""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import roc_auc_score

from cli import mea
from mea.config import DetectorConfig, Splits, VictimConfig
from mea.data import load
from mea.experiments.backends import LocalBackend
from mea.experiments.sweep import run_sweep
from mea.experiments.sweep_config import load_sweep
from mea.oracle import VictimOracle
from mea.report import write_report
from mea.training import LabelLoss, TrainConfig
from mea.victim import load_victim, train_victim

# One epoch on 55,000 Fashion-MNIST images: about 83% accurate (a full training reaches 90%).
FASHION_VICTIM = VictimConfig(
    train=TrainConfig(epochs=1, lr=3e-3, batch_size=128, loss=LabelLoss.HARD, temperature=1.0),
    splits=Splits("fashion-mnist"),
)


@pytest.fixture(scope="module")
def fashion_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fashion") / "victim"
    train_victim(FASHION_VICTIM, out, data_dir, progress=False)
    return out


@pytest.fixture(scope="module")
def fashion(fashion_dir):
    return load_victim(fashion_dir)


def test_the_victim_knows_its_task(fashion, fashion_dir, data_dir):
    config = json.loads((fashion_dir / "config.json").read_text())
    assert config["dataset"] == "fashion-mnist" and config["splits"]["evaluation"] == "fashion-mnist test[0:10000]"
    assert fashion.dataset == "fashion-mnist" and fashion.class_names[9] == "Ankle boot"
    metrics = json.loads((fashion_dir / "metrics.json").read_text())
    assert metrics["victim"]["accuracy"] > 0.75  # chance is 0.10
    test = load("fashion-mnist", "test", data_dir)
    assert torch.equal(fashion.test_set(data_dir).labels, test.labels)


def test_an_attack_with_mnist_as_surrogate_is_measured_on_fashion(fashion_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    done = mea(
        "attack", "--victim", str(fashion_dir), "--pool", "mnist-train", "--queries", "2000",
        "--min-steps", "200", "--out", str(out), data_dir=data_dir, threads=2,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Fashion-MNIST test (10,000 images)" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["dataset"] == "fashion-mnist"
    assert metrics["victim"]["accuracy"] > 0.75
    assert metrics["clone"]["fidelity"] > 0.3  # digits teach a good part of the task; chance is 0.1


def test_the_defense_tells_digits_from_clothes(fashion, data_dir, tmp_path):
    from mea.defenses.store import fit_defense, load_defense

    fit_defense(fashion, tmp_path / "defense", DetectorConfig(), data_dir=data_dir)
    defense = load_defense(tmp_path / "defense", fashion)
    record = json.loads((tmp_path / "defense" / "defense-config.json").read_text())
    assert record["calibrated_on"] == "fashion-mnist train[55000:60000]"
    scores = {
        name: defense.detector.score_images(fashion.model, images[:2000]).numpy()
        for name, images in (
            ("clothes", fashion.test_set(data_dir).images),
            ("digits", load("mnist", "test", data_dir).images),
        )
    }
    auroc = roc_auc_score([0] * 2000 + [1] * 2000, [*scores["clothes"], *scores["digits"]])
    flagged = {name: float((s > defense.detector.threshold).mean()) for name, s in scores.items()}
    # Measured with this one-epoch victim: AUROC 0.966, 29% of digits flagged against 0.8% of clothes
    # (the fully trained victim: 0.986, 68% against 1.4%).
    assert auroc > 0.85 and flagged["digits"] > 5 * flagged["clothes"], (auroc, flagged)


def test_sweep_and_report_name_the_task(fashion_dir, data_dir, tmp_path):
    import yaml

    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "victim": str(fashion_dir),
                "base": {"queries": 300, "train": {"epochs": 1, "min_steps": 50}},
                "grid": {"pool": ["uniform", "mnist-train"]},
            }
        )
    )
    result = run_sweep(load_sweep(config), tmp_path / "sweep", LocalBackend(1), data_dir, quiet=True)
    assert result.finished == 2 and not result.failed
    records = [json.loads(line) for line in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert {r["dataset"] for r in records} == {"fashion-mnist"}
    write_report(tmp_path / "sweep", tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "measured on the Fashion-MNIST test images" in text and "MNIST test" not in text.replace("Fashion-MNIST", "")


def test_the_service_answers_as_the_fashion_victim(fashion, fashion_dir, data_dir, tmp_path):
    from mea.serve.client import HttpOracle
    from mea.serve.process import create_key, start_server, stop_all

    server = start_server(fashion_dir, tmp_path / "service.db", tmp_path / "server.log", data_dir=data_dir)
    try:
        oracle = HttpOracle(server.url, api_key=create_key(server.db, "--name", "shop"))
        images = fashion.test_set(data_dir).images[:64]
        served = oracle.query(images)
        assert (served - VictimOracle(fashion.model).query(images)).abs().max() < 1e-5
        assert "Fashion-MNIST classifier" in oracle._client.get("/openapi.json").json()["info"]["description"]
    finally:
        stop_all(server)
