"""The examples in examples/ run as a user runs them (a fresh process each, small budgets) and say
what they should: a clone over HTTP, a defense that costs the attacker more than the user, a
theft proven and an innocent model not accused, an ONNX model of one's own stolen."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli import python

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, tmp_path: Path, data_dir: Path, *args: str) -> str:
    # 150 optimiser steps for each clone instead of mea's 500: the examples' small budgets need no more.
    done = python(
        str(EXAMPLES / name),
        *("--work", str(tmp_path / "work"), "--steps", "150", *args),
        cwd=tmp_path,
        env={"CI": "true", "MEA_DATA_DIR": str(data_dir), "MEA_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def percentages(text: str) -> list[float]:
    return [float(value) / 100 for value in re.findall(r"(\d+\.\d+)%", text)]


@pytest.mark.slow
def test_steal_a_served_model_over_http(victim_dir, data_dir, tmp_path):
    out = run_example("steal_over_http.py", tmp_path, data_dir, "--victim", str(victim_dir), "--queries", "500")
    accuracy, fidelity = percentages(out)
    assert "500 queries over HTTP" in out and accuracy > 0.8 and fidelity > 0.8


@pytest.mark.slow
def test_defend_and_measure_the_trade_off(victim_dir, data_dir, tmp_path):
    out = run_example("defend_and_measure.py", tmp_path, data_dir, "--victim", str(victim_dir), "--queries", "500")
    benign, undefended, defended = percentages(out)
    assert benign > 0.9 and defended < undefended - 0.1


@pytest.mark.slow
def test_prove_a_theft_and_accuse_no_innocent(victim_dir, data_dir, tmp_path):
    out = run_example("prove_theft.py", tmp_path, data_dir, "--victim", str(victim_dir), "--queries", "1000")
    thief, innocent = out.strip().splitlines()[-2:]
    assert thief.startswith("the thief's clone: derived from the victim"), out
    assert innocent.startswith("an innocent model: not shown"), out


@pytest.mark.slow
def test_bring_your_own_onnx_model(data_dir, tmp_path):
    out = run_example("bring_your_own_onnx.py", tmp_path, data_dir, "--queries", "500")
    victim, clone, fidelity = percentages(out)
    assert victim > 0.9 and clone > 0.7 and fidelity > 0.7
