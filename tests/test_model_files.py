"""Victims as model files: `mea export --format onnx`, and `--victim MODEL.onnx` / `.safetensors`."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from cli import mea as run_mea
from mea.data import load
from mea.errors import ArtifactError, ConfigError
from mea.model_files import OnnxClassifier, load_classifier
from mea.oracle import VictimOracle
from mea.signature import Signature
from mea.training import predict_logits
from mea.victim import load_victim

pytest.importorskip("onnxruntime")


def mea(*args: str) -> subprocess.CompletedProcess:
    return run_mea(*args, threads=1)


@pytest.fixture(scope="module")
def onnx_victim(victim_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "victim.onnx"
    done = mea("export", "--victim", str(victim_dir), "--format", "onnx", "--out", str(path))
    assert done.returncode == 0, done.stderr
    return path


def test_the_export_answers_as_the_victim_does(onnx_victim, victim, data_dir):
    images = load("mnist", "test", data_dir).images[:2000]
    exported = load_victim(onnx_victim)
    assert exported.arch == "onnx" and exported.directory == onnx_victim
    ours, theirs = VictimOracle(victim.model).query(images), VictimOracle(exported.model).query(images)
    assert (ours - theirs).abs().max() < 1e-5
    assert torch.equal(ours.argmax(1), theirs.argmax(1))


def test_an_attack_on_the_onnx_file_steals_the_victim(onnx_victim, victim, data_dir, tmp_path):
    out = tmp_path / "run"
    done = mea("attack", "--victim", str(onnx_victim), "--queries", "1000", "--min-steps", "100", "--out", str(out))
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["victim"] == str(onnx_victim)
    test = load("mnist", "test", data_dir)
    in_process = float((predict_logits(victim.model, test.images).argmax(1) == test.labels).float().mean())
    assert metrics["victim"]["accuracy"] == pytest.approx(in_process, abs=2e-4)  # equal to float rounding
    assert metrics["clone"]["accuracy"] > 0.8


def test_a_mea_safetensors_file_is_a_victim_too(victim_dir, victim):
    from_file = load_victim(victim_dir / "model.safetensors")
    assert from_file.arch == victim.arch and from_file.fingerprint == victim.fingerprint
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(VictimOracle(from_file.model).query(images), VictimOracle(victim.model).query(images))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript ONNX exporter
def test_model_files_that_are_not_classifiers_of_the_task_are_refused(tmp_path):
    colour = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    colour(torch.zeros(1, 3, 32, 32))
    torch.onnx.export(colour, (torch.zeros(1, 3, 32, 32),), str(tmp_path / "colour.onnx"), dynamo=False)
    # Another task's shape is read from the graph (tests/test_any_shape.py attacks one).
    assert OnnxClassifier(tmp_path / "colour.onnx").signature == Signature((3, 32, 32), 10)
    two = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    two(torch.zeros(1, 2, 28, 28))
    torch.onnx.export(two, (torch.zeros(1, 2, 28, 28),), str(tmp_path / "two-channel.onnx"), dynamo=False)
    with pytest.raises(ArtifactError, match=r"not images \[B, C, H, W\] with 1 or 3 channels"):
        OnnxClassifier(tmp_path / "two-channel.onnx")
    sized = tmp_path / "any-size.onnx"
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    torch.onnx.export(
        torch.nn.Conv2d(1, 10, 28),
        (torch.zeros(1, 1, 28, 28),),
        str(sized),
        dynamo=False,
        input_names=["images"],
        dynamic_axes=axes,
    )
    with pytest.raises(ArtifactError, match="export it with a fixed image size"):
        OnnxClassifier(sized)

    class TwoInputs(torch.nn.Module):
        def forward(self, images, scale):
            return images.flatten(1)[:, :10] * scale

    pair = (torch.zeros(1, 1, 28, 28), torch.ones(1, 1))
    torch.onnx.export(TwoInputs(), pair, str(tmp_path / "two.onnx"), dynamo=False)
    with pytest.raises(ArtifactError, match="takes 2 inputs; a classifier must take one image batch"):
        OnnxClassifier(tmp_path / "two.onnx")
    torch.onnx.export(torch.nn.Linear(5, 10), (torch.zeros(1, 5),), str(tmp_path / "table.onnx"), dynamo=False)
    with pytest.raises(ArtifactError, match="takes 5 features, 2 classes, not images"):
        OnnxClassifier(tmp_path / "table.onnx")
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="is not a readable ONNX model"):
        load_classifier(tmp_path / "model.onnx")
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.safetensors")  # a pickle under a safetensors name
    with pytest.raises(ArtifactError, match="is a pickle; mea never unpickles"):
        load_victim(tmp_path / "model.safetensors")


def test_cli_mistakes_with_model_files_are_one_line(onnx_victim, victim_dir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    cases = [
        (("attack", "--victim", str(notes), "--out", str(tmp_path / "a")), "is not a victim: pass a victim directory"),
        (
            ("defend", "fit", "--victim", str(onnx_victim), "--layers", "fc9", "--out", str(tmp_path / "d")),
            "the victim has no layer fc9; its layers: ",
        ),
        (("export", "--victim", str(victim_dir), "--out", str(onnx_victim)), "exists; choose another --out"),
        (("export", "--victim", str(onnx_victim), "--out", str(tmp_path / "v.onnx")), "is already an ONNX model"),
    ]
    for args, message in cases:
        done = mea(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1 and message in lines[0], (args, done.stderr)
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


def test_any_victim_is_defended_by_its_convolutions(onnx_victim, victim, data_dir, tmp_path):
    """An ONNX graph shows its convolutions' outputs, a PyTorch model without `features` is read
    through hooks: `--layers auto` fits the detector on either, and it tells clothes from digits."""
    from sklearn.metrics import roc_auc_score

    from mea.config import DetectorConfig
    from mea.defenses.detector import OodDetector
    from mea.defenses.features import TappedClassifier

    train = load("mnist", "train", data_dir).subset(slice(0, 20_000))
    calibration = victim.calibration_set(data_dir).images
    digits = load("mnist", "test", data_dir).images[:2000]
    clothes = load("fashion-mnist", "test", data_dir).images[:2000]

    class Plain(torch.nn.Module):  # a PyTorch classifier that shows no layers of its own
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.inner(images)

    found = {}
    for name, model in (("onnx", load_victim(onnx_victim).model), ("hooked", TappedClassifier(Plain(victim.model)))):
        detector = OodDetector.fit(model, train.images, train.labels, calibration, DetectorConfig())
        assert len(detector.config.layers) == len(model.block_names) == 2
        found[name] = [detector.score_images(model, images).numpy() for images in (digits, clothes)]
        auroc = roc_auc_score([0] * 2000 + [1] * 2000, [*found[name][0], *found[name][1]])
        assert auroc > 0.95, (name, auroc)
    # Both read the same two convolutions (before ReLU and pooling): the same scores, up to how float
    # rounding in two runtimes moves the whitened distances (measured: correlation 0.99999, largest
    # difference 0.16).
    both = np.r_[found["onnx"][0], found["onnx"][1]], np.r_[found["hooked"][0], found["hooked"][1]]
    assert np.corrcoef(*both)[0, 1] > 0.999 and np.abs(both[0] - both[1]).max() < 0.5
    exported = load_victim(onnx_victim).model
    assert exported.block_names == tuple(n for n in exported.feature_names if n != "logits")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript ONNX exporter
def test_a_fully_connected_victim_shows_its_hidden_layers(tmp_path):
    from mea import models
    from mea.config import DetectorConfig
    from mea.defenses.detector import OodDetector
    from mea.defenses.features import with_features

    mlp = models.build("mlp", 0).eval()
    hooked = with_features(mlp)
    assert hooked.block_names == ("net.1", "net.3")  # the linear layers but the last, which gives the logits
    batch = {"input_names": ["images"], "dynamic_axes": {"images": {0: "batch"}}}
    torch.onnx.export(mlp, (torch.zeros(1, 1, 28, 28),), str(tmp_path / "mlp.onnx"), dynamo=False, **batch)
    graph = OnnxClassifier(tmp_path / "mlp.onnx")
    assert len(graph.block_names) == 2
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    ours, theirs = hooked.features(images), graph.features(images)
    for name, tensor in zip(graph.block_names, (ours["net.1"], ours["net.3"]), strict=True):
        assert torch.allclose(theirs[name], tensor, atol=1e-4)
    assert torch.allclose(theirs["logits"], ours["logits"], atol=1e-4)
    # A classifier with no block at all: only the output-based score applies, and saying so is the error.
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    labels = torch.arange(16) % 10
    with pytest.raises(ConfigError, match="only the output-based score applies: keep --confidence"):
        OodDetector.fit(linear, images, labels, images, DetectorConfig(use_confidence=False))
    assert OodDetector.fit(linear, images, labels, images, DetectorConfig()).config.layers == ()
