"""Sweeps: the schema refuses mistakes by file and key; results are resumable after a SIGKILL; a torn
last line is cut off; the local and Ray backends write the same records.  Tiny trials (an MLP clone,
a few hundred queries, one short epoch): the machinery is under test here, not the attack."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli import mea
from mea.errors import ArtifactError, ConfigError
from mea.experiments.backends import LocalBackend
from mea.experiments.presets import PRESETS
from mea.experiments.records import open_results, read_results
from mea.experiments.sweep import run_sweep
from mea.experiments.sweep_config import load_sweep
from sweeps import write_sweep

VOLATILE = ("time_s", "run")  # where and when a trial ran: all that may differ between backends


def stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


# --- the schema ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("base: {train: {epochz: 1}}\ngrid: {seed: [0]}", r"base\.train\.epochz: unknown key; allowed: epochs, lr"),
        ("base: {queries: many}\ngrid: {seed: [0]}", r"base\.queries: input should be a valid integer \(got str"),
        ("grid: {seed: [0], queries: [300, 1.5]}", r"grid\.queries\[1\]: input should be a valid integer"),
        ("grid: {strategy: [random, greedy]}", r"grid\.strategy\[1\]: unknown strategy 'greedy'; choose one of"),
        ("trials: [{pool: cifar}]", r"trials\[0\]\.pool: unknown pool 'cifar'"),
        ("trials: [{defense: {policy: nope}}]", r"trials\[0\]\.defense\.policy: unknown policy 'nope'"),
        ("grid: {}", r"grid: the grid is empty"),
        ("grid: {seed: []}", r"grid\.seed: the list is empty"),
        ("base: {queries: 300}", r"no trials: add a `grid` of lists or a `trials` list"),
        ("grid: {seed: [0]}\nextra: 1", r"extra: unknown key; allowed: name, victim, defense_dir, base, grid, trials"),
        ("base: {queries: 3\n", r"not valid YAML \(line 2, column 1\)"),
        ("- 1\n- 2", r"the top level must be a mapping"),
        ("trials: [{queries: 300, train: {lr: 0}}]", r"trials\[0\]\.train\.lr: input should be greater than 0"),
    ],
)
def test_sweep_file_mistakes_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": .*" + message) as info:
        load_sweep(path)
    assert "\n" not in str(info.value)


def test_grid_expands_over_base_and_dedupes(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "victim: v\nbase: {queries: 300, train: {epochs: 2, lr: 1e-3}}\n"
        "grid: {output: [label, top-k], seed: [0, 1], defense: [false, {target_fpr: 0.05}]}\n"
        "trials: [{output: label, seed: 0}, {train: {epochs: 1}}]\n"
    )
    spec = load_sweep(path)
    assert len(spec.trials) == 2 * 2 * 2 + 1  # the first listed trial repeats a grid point
    assert spec.victim_dir == tmp_path / "v"
    assert {t.attack.output for t in spec.trials} == {"label", "top-k:3", "probabilities"}
    assert {t.attack.train.lr for t in spec.trials} == {1e-3}  # `1e-3` is a number, merged under `train`
    assert spec.trials[-1].attack.train.epochs == 1 and spec.needs_defense
    assert len({t.hash for t in spec.trials}) == len(spec.trials)
    assert len(PRESETS["seed-table"].build(3).trials) == 5
    example = load_sweep(Path(__file__).parent.parent / "docs" / "sweeps" / "budgets.yaml")
    assert len(example.trials) == 36 and example.victim_dir is None


def test_cli_refuses_a_bad_sweep_file_in_one_line(tmp_path, data_dir):
    path = tmp_path / "bad.yaml"
    path.write_text("base: {strategy: greedy}\ngrid: {seed: [0]}\n")
    done = mea("sweep", str(path), "--out", str(tmp_path / "out"), data_dir=data_dir)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: base.strategy: unknown strategy"), done.stderr
    assert not (tmp_path / "out").exists()


# --- the results file ------------------------------------------------------------------------


def test_torn_last_line_is_cut_off_and_its_trial_rerun(tmp_path, victim_dir, data_dir):
    config = write_sweep(tmp_path / "s.yaml", victim_dir, grid={"seed": [0, 1]})
    out = tmp_path / "out"
    first = run_sweep(load_sweep(config), out, LocalBackend(1), data_dir, quiet=True)
    assert first.finished == 2 and not first.failed
    path = out / "results.jsonl"
    clean = path.read_bytes()
    lines = clean.splitlines(keepends=True)
    # A crash in the middle of appending the second line: only part of it reached the disk.
    path.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])
    contents = read_results(path)
    assert contents.torn and len(contents.records) == 1

    again = run_sweep(load_sweep(config), out, LocalBackend(1), data_dir, quiet=True)
    assert (again.skipped, again.finished) == (1, 1)
    after = path.read_bytes().splitlines(keepends=True)
    assert after[0] == lines[0] and len(after) == 2  # the finished line kept byte for byte
    assert stable(json.loads(after[1])) == stable(json.loads(lines[1]))  # the rerun: the same trial, same numbers
    assert not read_results(path).torn


def test_damaged_or_foreign_results_are_refused(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"hash": "a", "format": 1}\nnot json\n{"hash": "b", "format": 1}\n')
    with pytest.raises(ArtifactError, match=re.escape(f"{path}:2: not a result record")):
        read_results(path)
    path.write_text('{"hash": "a", "format": 99}\n')
    with pytest.raises(ArtifactError, match=re.escape(f"{path}:1: written by an incompatible mea")):
        read_results(path)
    path.write_text("")
    with open_results(path), pytest.raises(ArtifactError, match="in use by another sweep"):  # noqa: SIM117
        with open_results(path):
            pass


@pytest.mark.slow
def test_sigkill_midway_then_rerun_loses_and_redoes_nothing(tmp_path, victim_dir, data_dir):
    config = write_sweep(tmp_path / "s.yaml", victim_dir, grid={"seed": list(range(4))})
    hashes = {t.hash for t in load_sweep(config).trials}
    out = tmp_path / "out"
    path = out / "results.jsonl"
    env = {**os.environ, "CI": "true", "MEA_DATA_DIR": str(data_dir)}
    # Its own session, so the kill takes any worker processes with it, as a machine crash would.
    process = subprocess.Popen(
        [sys.executable, "-m", "mea", "sweep", str(config), "--out", str(out), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while not (path.is_file() and path.read_bytes().count(b"\n") >= 1):
            assert process.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    before = read_results(path)
    assert 1 <= len(before.records) < len(hashes)
    prefix = path.read_bytes()[: before.good_bytes]

    done = mea("sweep", str(config), "--out", str(out), data_dir=data_dir)
    assert done.returncode == 0, done.stderr
    assert f"{len(before.records)} already in" in done.stderr
    after = read_results(path)
    assert sorted(r["hash"] for r in after.records) == sorted(hashes)  # each trial exactly once
    assert path.read_bytes().startswith(prefix)  # lines finished before the kill: untouched, not redone


# --- backends --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_records(twenty_trials) -> list[dict]:
    return list(read_results(twenty_trials / "out" / "results.jsonl").records)


@pytest.mark.slow
def test_twenty_trial_sweep_records_everything(local_records):
    assert len({r["hash"] for r in local_records}) == 20
    record = local_records[0]
    assert {"config", "hash", "seed", "metrics", "time_s", "versions", "victim_fingerprint", "run"} <= set(record)
    assert {"accuracy", "f1", "fidelity", "confusion_matrix"} <= set(record["metrics"]["clone"])
    assert set(record["versions"]) >= {"mea", "torch", "python"}
    defended = [r for r in local_records if r["config"]["defense"]]
    assert len(defended) == 10 and all(r["metrics"]["flagged_rate"] is not None for r in defended)
    assert all(r["defense_fingerprint"] for r in defended)
    # The defense costs honest users something at a 5% false-positive rate; the attack still works.
    assert defended[0]["metrics"]["benign_accuracy"] < local_records[0]["metrics"]["benign_accuracy"]
    assert all(r["metrics"]["clone"]["fidelity"] > 0.3 for r in local_records)
    assert {r["run"]["backend"] for r in local_records} == {"local"}
