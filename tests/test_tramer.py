"""Classic-ML victims (mea.tabular) and the attacks of Tramèr et al. 2016 (mea.extraction) on small
cases: scikit-learn's bundled datasets, offline; one real `mea serve` on 127.0.0.1 for HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.cli import mea, one_error_line

from mea.errors import ConfigError, DataError
from mea.extraction.base import ModelClass, QuerySpace
from mea.extraction.equation_solving import EquationSolving
from mea.extraction.lowd_meek import LowdMeek
from mea.extraction.metrics import fidelity
from mea.extraction.path_finding import PathFinding
from mea.extraction.retraining import AdaptiveRetraining, LineSearchRetraining, UniformRetraining
from mea.oracle import Label, Rounded, VictimOracle
from mea.serve.process import create_key, start_server, stop_all
from mea.signature import Signature
from mea.tabular.datasets import read_csv
from mea.tabular.oracle import NodeOracle
from mea.tabular.train import ClassicConfig, train_classic
from mea.victim import load_victim

VICTIMS = {
    "digits-softmax": ClassicConfig(dataset="digits", arch="softmax"),
    "digits-ovr": ClassicConfig(dataset="digits", arch="ovr"),
    "cancer-logreg": ClassicConfig(dataset="breast-cancer", arch="logreg"),
    "iris-mlp": ClassicConfig(dataset="iris", arch="mlp", hidden=4),
    "cancer-tree": ClassicConfig(dataset="breast-cancer", arch="tree", max_depth=6),
    "wine-forest": ClassicConfig(dataset="wine", arch="forest", max_depth=4, trees=3),
    "iris-softmax": ClassicConfig(dataset="iris", arch="softmax"),
}


@pytest.fixture(scope="module")
def victims(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classic")
    for name, config in VICTIMS.items():
        train_classic(config, root / name)
    return {name: root / name for name in VICTIMS}


def _attack(victims, name, strategy, output=None, seed=0):
    victim = load_victim(victims[name])
    oracle = NodeOracle(victim.model, output) if name.endswith("tree") else VictimOracle(victim.model, output)
    result = strategy.run(
        oracle, QuerySpace(victim.signature), ModelClass.of(victim.model), np.random.default_rng(seed)
    )
    return victim, result, fidelity(victim.model, result.clone, victim.test_set().images)


def test_signature_of_a_feature_vector_round_trips_and_images_are_unchanged():
    features = Signature((3,), 2, ((0, 1), (-2, 2), (5, 5)), missing=True)
    assert Signature.from_metadata(features.to_metadata()) == features
    assert features.describe() == "3 features, 2 classes" and not features.is_image
    image = Signature((1, 28, 28), 10)
    assert Signature.from_metadata(image.to_metadata()) == image and image.image_shape == (1, 28, 28)
    assert Signature.of_input([784], 10, "m") == image and Signature.of_input([64], 10, "m").input_shape == (64,)
    with pytest.raises(ConfigError, match="takes 3 features, 2 classes, not images"):
        _ = features.image_shape
    with pytest.raises(ConfigError, match="3 finite"):
        Signature((3,), 2, ((0, 1),))


def test_every_classic_victim_loads_as_it_was_saved_and_answers_through_the_oracle(victims):
    for name in VICTIMS:
        victim = load_victim(victims[name])
        test = victim.test_set()
        assert test.images.shape[1:] == victim.signature.input_shape
        answers = VictimOracle(victim.model).query(test.images)
        assert answers.dtype == torch.float32 and torch.allclose(answers.sum(1), torch.ones(len(test)), atol=1e-5)
        accuracy = float((answers.argmax(1) == test.labels).float().mean())
        assert accuracy > 0.8, (name, accuracy)
    tree = load_victim(victims["cancer-tree"]).model
    row = load_victim(victims["cancer-tree"]).test_set().images[:1].clone()
    row[0, int(tree.feature[0])] = float("nan")  # the root's feature missing: the root answers
    assert int(tree.nodes(row)[0]) == 0


def test_csv_tasks_take_numbers_and_categories_and_refuse_text_in_a_number_column(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("size,colour,kind\n1.5,red,a\n2,blue,b\n3,red,a\n4,green,b\n")
    table = read_csv(good, "kind")
    assert table.feature_names == ("size", "colour=blue", "colour=green", "colour=red")
    assert table.features.shape == (4, 4) and list(table.labels) == [0, 1, 0, 1]
    bad = tmp_path / "bad.csv"
    bad.write_text("size,kind\n1,a\nsmall,b\n3,a\n")
    with pytest.raises(DataError, match=r"column 'size' mixes numbers .* and text \(line 3: 'small'\)"):
        read_csv(bad, "kind")
    done = mea(
        "train-victim", "--dataset", f"csv:{bad}", "--target", "kind", "--arch", "tree", "--out", str(tmp_path / "v")
    )
    assert "mixes numbers" in one_error_line(done) and not (tmp_path / "v").exists()


def test_equation_solving_recovers_logreg_exactly_with_d_plus_one_queries(victims):
    victim, result, close = _attack(victims, "cancer-logreg", EquationSolving())
    assert result.queries == victim.signature.features + 1
    assert close.relative_parameter_error < 1e-5 and close.test_agreement == close.uniform_agreement == 1.0


def test_equation_solving_recovers_softmax_and_ovr(victims):
    _, result, close = _attack(victims, "digits-softmax", EquationSolving())
    assert result.queries == 65 and close.test_agreement == close.uniform_agreement == 1.0
    assert close.relative_parameter_error < 1e-5
    _, result, close = _attack(victims, "digits-ovr", EquationSolving())
    assert close.test_agreement == close.uniform_agreement == 1.0 and close.relative_parameter_error < 1e-5


def test_equation_solving_through_rounding_and_its_refusal_of_labels(victims):
    _, _, close = _attack(victims, "digits-softmax", EquationSolving(queries=650), Rounded(3))
    assert close.test_agreement > 0.97
    with pytest.raises(ConfigError, match="this oracle answers label: use lowd-meek"):
        _attack(victims, "digits-softmax", EquationSolving(), Label())
    with pytest.raises(ConfigError, match="equation-solving extracts logreg or softmax or ovr or mlp models"):
        _attack(victims, "cancer-tree", EquationSolving())


def test_equation_solving_fits_an_mlp(victims):
    _, result, close = _attack(victims, "iris-mlp", EquationSolving())
    assert close.test_agreement >= 0.95 and close.uniform_agreement >= 0.95, result.details


def test_path_finding_extracts_a_tree_and_incomplete_queries_save_some(victims):
    victim, full, close = _attack(victims, "cancer-tree", PathFinding())
    assert close.test_agreement == close.uniform_agreement == 1.0
    assert full.details["leaves"] == victim.model.leaf_count
    _, incomplete, close = _attack(victims, "cancer-tree", PathFinding(incomplete=True))
    assert close.test_agreement == close.uniform_agreement == 1.0 and incomplete.queries < full.queries


def test_lowd_meek_finds_a_linear_boundary_from_labels(victims):
    victim, result, close = _attack(victims, "cancer-logreg", LowdMeek(epsilon=1e-6), Label())
    truth = torch.cat([victim.model.weight[0], victim.model.bias]).numpy()
    found = torch.cat([result.clone.weight[0], result.clone.bias]).numpy()
    assert np.abs(found / np.abs(found).max() - truth / np.abs(truth).max()).max() < 1e-4
    assert close.test_agreement == 1.0


@pytest.mark.parametrize("strategy", [UniformRetraining, LineSearchRetraining, AdaptiveRetraining])
def test_label_only_retraining_learns_the_victim(victims, strategy):
    _, result, close = _attack(victims, "iris-softmax", strategy(queries=300), Label())
    assert result.queries == 300 and close.test_agreement >= 0.85


def test_a_strategy_that_cannot_apply_is_one_error_line(victims, tmp_path):
    done = mea(
        "attack", "--victim", str(victims["digits-softmax"]), "--strategy", "path-finding", "--out", str(tmp_path / "a")
    )
    assert "path-finding extracts tree models; this victim is a softmax" in one_error_line(done)
    done = mea(
        "attack", "--victim", str(victims["wine-forest"]), "--strategy", "lowd-meek", "--out", str(tmp_path / "b")
    )
    assert "lowd-meek extracts logreg models; this victim is a forest" in one_error_line(done)
    done = mea(
        "attack",
        "--victim",
        str(victims["digits-softmax"]),
        "--strategy",
        "equation-solving",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "c"),
    )
    assert "--epochs trains a neural clone" in one_error_line(done)


def test_equation_solving_over_http_against_mea_serve(victims, tmp_path):
    server = start_server(victims["digits-softmax"], tmp_path / "db.sqlite", tmp_path / "server.log")
    try:
        key = create_key(server.db, "--name", "thief", "--quota", "100")

        def steal(out: str):
            victim = str(victims["digits-softmax"])
            options = ("--url", server.url, "--api-key", key, "--strategy", "equation-solving")
            return mea("attack", "--victim", victim, *options, "--out", str(tmp_path / out), threads=1)

        done = steal("run")
        assert done.returncode == 0, done.stderr
        metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert metrics["queries"] == 65 and metrics["clone"]["fidelity"] == 1.0
        assert metrics["clone"]["relative_parameter_error"] < 1e-5 and metrics["config"]["oracle"] == server.url
        # The quota counts feature vectors as it counts images: 35 of 100 left, 65 more refused.
        assert "query budget exhausted: 0 of 35 queries used, 65 more asked" in one_error_line(steal("again"))
    finally:
        stop_all(server)
