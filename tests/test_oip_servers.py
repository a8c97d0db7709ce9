"""`mea attack --url` against a third-party Open Inference Protocol v2 server: KServe's Python model
server, run for real on 127.0.0.1, serving the victim exported to ONNX (examples/kserve_onnx.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from cli import mea
from mea.config import AttackConfig, TrainConfig
from mea.data import load
from mea.experiments.attack import run_attack
from mea.model_files import export_onnx
from mea.oracle import Label, Probabilities, VictimOracle
from mea.serve.client import HttpOracle, ServiceError
from mea.serve.process import free_port
from mea.victim import load_victim

pytest.importorskip("kserve")
SERVER = Path(__file__).resolve().parent.parent / "examples" / "kserve_onnx.py"


@pytest.fixture(scope="module")
def onnx_file(victim, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "victim.onnx"
    export_onnx(victim.model, path)
    return path


def start_kserve(onnx_file: Path, answer: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(SERVER),
            "--onnx",
            str(onnx_file),
            "--name",
            "lenet",
            "--answer",
            answer,
            "--http_port",
            str(port),
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"KServe exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/v2/models/lenet/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"KServe did not come up: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def kserve(onnx_file, tmp_path_factory):
    """KServe answering logits ([B, 10] FP32)."""
    log = tmp_path_factory.mktemp("kserve") / "server.log"
    process, url = start_kserve(onnx_file, "logits", log)
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_the_clone_through_kserve_is_the_in_process_clone(kserve, onnx_file, data_dir):
    oracle = HttpOracle(kserve, model="lenet")
    assert oracle.output == Probabilities()
    victim = load_victim(onnx_file)
    config = AttackConfig(queries=800, output=oracle.output.spec, train=TrainConfig(epochs=2, min_steps=60), seed=3)
    over_http = run_attack(config, victim, data_dir, oracle=oracle, progress=False)
    in_process = run_attack(config, victim, data_dir, progress=False)
    assert over_http["queries"] == in_process["queries"] == 800
    # The same images, the same exact answers (KServe runs the same ONNX graph): the same clone.
    for metric in ("accuracy", "fidelity", "uniform_agreement", "loss"):
        assert over_http["clone"][metric] == in_process["clone"][metric], metric
    assert over_http["clone"]["accuracy"] > 0.7


@pytest.mark.parametrize("answer", ["probabilities", "labels"])
def test_answers_are_read_as_the_server_gives_them(answer, onnx_file, data_dir, tmp_path):
    process, url = start_kserve(onnx_file, answer, tmp_path / "server.log")
    try:
        images = load("mnist", "test", data_dir).images[:300]
        oracle = HttpOracle(url, model="lenet", batch_size=128)
        expected = VictimOracle(load_victim(onnx_file).model, Label() if answer == "labels" else Probabilities())
        assert oracle.output == expected.output
        # numpy's softmax on the server, torch's here: equal to float rounding; labels exactly.
        assert torch.allclose(oracle.query(images), expected.query(images), atol=1e-6)
        assert oracle.queries_used == 300
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_cli_attacks_kserve_with_a_header_it_never_records(kserve, victim_dir, tmp_path):
    url = kserve
    out = tmp_path / "run"
    secret = "Bearer s3cret-token-for-the-test"
    options = ["--model", "lenet", "--header", f"Authorization: {secret}", "--queries", "500", "--min-steps", "50"]
    done = mea("attack", "--victim", str(victim_dir), "--url", url, *options, "--out", str(out), threads=1)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["queries"] == 500 and metrics["clone"]["accuracy"] > 0.5
    assert metrics["config"]["output"] == "probabilities"
    for path in out.iterdir():
        if path.suffix in (".json", ".csv", ".txt"):
            assert "s3cret" not in path.read_text(), path


def test_server_mistakes_are_clear(kserve):
    url = kserve
    with pytest.raises(ServiceError, match=r"serves no model 'lenet-mnist'; name the model with --model"):
        HttpOracle(url)
    with pytest.raises(ServiceError, match="cannot reach"):
        HttpOracle(f"http://127.0.0.1:{free_port()}", model="lenet", timeout_s=2)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"outputs": [{"name": "p"}]}, "declares 0 inputs in its metadata; mea sends one batch of images"),
        (
            {"inputs": [{"name": "x", "shape": [-1, 2, 28, 28]}], "outputs": [{"name": "p"}]},
            r"takes input of shape \[-1, 2, 28, 28\]: .*not images \[B, C, H, W\] with 1 or 3 channels",
        ),
        (
            {"inputs": [{"name": "x", "shape": [-1, 784], "datatype": "BYTES"}], "outputs": [{"name": "p"}]},
            "takes BYTES input",
        ),
        ({"inputs": [{"name": "x", "shape": [-1, 784]}]}, "declares no outputs in its metadata"),
        (
            {"inputs": [{"name": "x", "shape": [-1, 784]}], "outputs": [{"name": "p", "shape": [-1, 5, 2]}]},
            r"neither class scores \[-1, K\] nor labels",
        ),
    ],
)
def test_metadata_that_lacks_what_mea_needs_is_named(metadata, message):
    from mea.serve.client import ServedModel

    with pytest.raises(ServiceError, match=message):
        ServedModel.from_metadata(metadata, "http://127.0.0.1:1", "lenet")


def test_the_served_models_shape_and_classes_come_from_its_metadata():
    from mea.serve.client import ServedModel
    from mea.signature import Signature

    colour = {"inputs": [{"name": "x", "shape": [-1, 3, 32, 32]}], "outputs": [{"name": "p", "shape": [-1, 5]}]}
    assert ServedModel.from_metadata(colour, "http://h", "m").signature == Signature((3, 32, 32), 5)
    flat = {
        "inputs": [{"name": "x", "shape": [-1, 1024]}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
    }
    served = ServedModel.from_metadata(flat, "http://h", "m", classes=4)
    assert served.signature == Signature((1, 32, 32), 4) and served.labels
    # The local victim the clone is scored against says 10 classes; a server of 5 is another model.
    with pytest.raises(ServiceError, match=r"neither class scores \[-1, 10\] nor labels"):
        ServedModel.from_metadata(colour, "http://h", "m", classes=10)
