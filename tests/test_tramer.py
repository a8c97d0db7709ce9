"""Classic-ML victims (mea.tabular) and the attacks of Tramèr et al. 2016 (mea.extraction) on small
cases: scikit-learn's bundled datasets, offline; `mea serve` on 127.0.0.1 for HTTP (as a process, and
in this process with its per-client stream detection relaxed, so that every attack can be run over
HTTP to the end); MLServer's scikit-learn runtime serving the user's own scikit-learn model files,
where an `mlserver` executable is found (see `_mlserver_executable`)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli import mea, one_error_line
from mea.errors import ConfigError, DataError, Refused
from mea.extraction.base import ModelClass, QuerySpace
from mea.extraction.equation_solving import EquationSolving
from mea.extraction.functionally_equivalent import FunctionallyEquivalent
from mea.extraction.lowd_meek import LowdMeek
from mea.extraction.metrics import fidelity
from mea.extraction.path_finding import PathFinding
from mea.extraction.retraining import AdaptiveRetraining, LineSearchRetraining, UniformRetraining
from mea.oracle import Label, Rounded, VictimOracle
from mea.serve.process import create_key, start_server, stop_all
from mea.signature import Signature
from mea.tabular.datasets import read_csv
from mea.tabular.models import OneHiddenLayer
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
    "iris-relu": ClassicConfig(dataset="iris", arch="mlp", hidden=4, activation="relu"),
    "cancer-relu": ClassicConfig(dataset="breast-cancer", arch="mlp", hidden=3, activation="relu"),
    "iris-tree": ClassicConfig(dataset="iris", arch="tree", max_depth=3),
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


def test_functionally_equivalent_extraction_recovers_a_relu_mlp(victims):
    for name in ("iris-relu", "cancer-relu"):  # ten classes' centred logits, and a binary model's one logit
        victim, result, close = _attack(victims, name, FunctionallyEquivalent())
        assert close.test_agreement >= 0.99 and close.uniform_agreement >= 0.99, (name, result.details)
        assert close.max_logit_error < 1e-2, (name, result.details)
        assert result.details["units_found"] <= victim.model.hidden
        assert isinstance(result.clone, type(victim.model)) and result.clone.activation.value == "relu"


def test_functionally_equivalent_extraction_reads_around_answers_too_small_to_read(victims):
    # The breast-cancer MLP made steeper: toward the corners of its box of unscaled features, a
    # probability falls below float32's smallest normal number, and its logits cannot be read there.
    # (At the victim's own scale that happens on a few search lines only, depending on BLAS kernels.)
    victim = load_victim(victims["cancer-relu"]).model
    space, rng = QuerySpace(victim.signature), np.random.default_rng(0)
    test = load_victim(victims["cancer-relu"]).test_set().images
    for scale, readable in ((2.0, True), (16.0, False)):
        steep = OneHiddenLayer(
            victim.signature,
            victim.w0.data,
            victim.b0.data,
            scale * victim.w1.data,
            scale * victim.b1.data,
            victim.activation,
        )
        if not readable:  # most answers unreadable: no confidence values to extract from
            with pytest.raises(ConfigError, match=r"of 776 answers hold a probability too small to read"):
                FunctionallyEquivalent().run(VictimOracle(steep), space, ModelClass.of(steep), rng)
            continue
        result = FunctionallyEquivalent().run(VictimOracle(steep), space, ModelClass.of(steep), rng)
        close = fidelity(steep, result.clone, test)
        assert result.details["unreadable_answers"] > 0 and result.details["units_found"] == 3, result.details
        assert close.test_agreement >= 0.99 and close.max_logit_error < 1e-2, result.details


def test_functionally_equivalent_extraction_refuses_what_it_cannot_read(victims, tmp_path):
    with pytest.raises(ConfigError, match=r"extracts ReLU networks .* this MLP uses tanh: use equation-solving"):
        _attack(victims, "iris-mlp", FunctionallyEquivalent())
    with pytest.raises(ConfigError, match="reads kinks in exact confidence values; this oracle rounds them"):
        _attack(victims, "iris-relu", FunctionallyEquivalent(), Rounded(4))
    with pytest.raises(ConfigError, match="this oracle answers label: use lowd-meek"):
        _attack(victims, "iris-relu", FunctionallyEquivalent(), Label())
    options = ("--strategy", "functionally-equivalent", "--out", str(tmp_path / "a"))
    done = mea("attack", "--victim", str(victims["digits-softmax"]), *options)
    assert "functionally-equivalent extracts mlp models; this victim is a softmax" in one_error_line(done)


@contextlib.contextmanager
def _relaxed_service(victim_dir: Path, db: Path):
    """`mea serve`'s app on 127.0.0.1 in this process, its per-client stream detection relaxed (no
    Shapiro-Wilk flag, steps only at L-infinity 1e-9: none), so that an attack runs to its end;
    yields its URL and a function making a key (name, output mode) that returns its token."""
    import uvicorn

    from mea.config import PradaConfig, ServeConfig
    from mea.serve.app import create_app
    from mea.serve.db import Database
    from mea.serve.keys import KeyStore
    from mea.serve.process import free_port

    app = create_app(ServeConfig(db, prada=PradaConfig(threshold=0.0, step_radius=1e-9)), load_victim(victim_dir))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    keys = KeyStore(Database(db))  # keys made in this process (`mea keys create` is a process each)

    def new_key(name: str, output: str | None = None) -> str:
        return keys.create(name, output=output)[1]

    try:
        yield f"http://127.0.0.1:{port}", new_key
    finally:
        server.should_exit = True
        thread.join(30)


# Every attack over HTTP: (victim, strategy, the key's output mode, queries, test and uniform agreement at least).
HTTP_ATTACKS = [
    ("cancer-logreg", "equation-solving", None, None, 1.0),
    ("cancer-logreg", "lowd-meek", "label", None, 0.99),
    ("iris-softmax", "uniform", "label", 300, 0.85),
    ("iris-softmax", "line-search", "label", 300, 0.85),
    ("iris-softmax", "adaptive", "label", 300, 0.85),
    ("iris-relu", "functionally-equivalent", None, None, 0.99),
    ("iris-tree", "path-finding", None, None, 1.0),
    ("iris-tree", "path-finding:incomplete", None, None, 1.0),
]


def test_every_attack_over_http_against_mea_serve(victims, tmp_path):
    from mea import api

    by_victim: dict[str, list] = {}
    for case in HTTP_ATTACKS:
        by_victim.setdefault(case[0], []).append(case)
    for name, cases in by_victim.items():
        db = tmp_path / f"{name}.sqlite"
        victim = load_victim(victims[name])
        with _relaxed_service(victims[name], db) as (url, new_key):
            for _, strategy, output, queries, at_least in cases:
                key = new_key(strategy, output)
                oracle = api.connect(url, key, victim=victim)
                assert oracle.names_nodes == name.endswith("tree")
                result = api.attack(victim, strategy, queries, oracle=oracle)
                assert result.fidelity >= at_least and result.uniform_agreement >= at_least, (strategy, result)
                if strategy.startswith("path-finding"):
                    assert result.metrics["details"]["identified_by"] == "node"
                    assert result.metrics["details"]["leaves"] == victim.model.leaf_count


def test_mea_serve_names_a_tree_s_node_as_an_extra_output_and_nothing_else_does(victims, tmp_path):
    import httpx

    for name in ("iris-tree", "iris-softmax"):
        db = tmp_path / f"{name}.sqlite"
        with _relaxed_service(victims[name], db) as (url, new_key):
            key, label_key = new_key("reader"), new_key("labels", "label")
            metadata = httpx.get(f"{url}/v2/models/lenet-mnist", headers={"X-API-Key": key}).json()
            outputs = [o["name"] for o in metadata["outputs"]]
            tree = name.endswith("tree")
            assert outputs == ["probabilities", "label", *(["node"] if tree else [])]
            assert metadata["parameters"]["missing_features"] is tree
            row = load_victim(victims[name]).test_set().images[:2]
            tensor = {"name": "input", "shape": list(row.shape), "datatype": "FP32", "data": row.flatten().tolist()}
            request = {"inputs": [tensor], "outputs": [{"name": "node"}]}
            infer = f"{url}/v2/models/lenet-mnist/infer"
            answer = httpx.post(infer, json=request, headers={"X-API-Key": key})
            if tree:
                assert answer.status_code == 200, answer.text
                (node,) = answer.json()["outputs"]
                assert node["name"] == "node" and node["data"] == load_victim(victims[name]).model.nodes(row).tolist()
                refused = httpx.post(infer, json=request, headers={"X-API-Key": label_key})
                assert refused.status_code == 400 and "name no node" in refused.json()["error"]
            else:
                assert answer.status_code == 400 and "unknown output 'node'" in answer.json()["error"]


def test_mea_serve_s_step_detector_suspends_a_path_finding_client(victims, tmp_path):
    """Without a defense too, `mea serve` refuses a client whose queries are small steps from its
    earlier ones (mea.defenses.steps): path-finding's bisections are such a stream."""
    server = start_server(victims["cancer-tree"], tmp_path / "db.sqlite", tmp_path / "server.log")
    try:
        key = create_key(server.db, "--name", "thief")
        options = ("--url", server.url, "--api-key", key, "--strategy", "path-finding", "--out", str(tmp_path / "a"))
        done = mea("attack", "--victim", str(victims["cancer-tree"]), *options, threads=1)
        assert "this API key is suspended" in one_error_line(done)
    finally:
        stop_all(server)


def test_a_feature_vector_victim_is_defended_as_an_image_victim_is(victims, tmp_path):
    """`mea defend fit` fits a digits softmax (its features on their ranges' [0, 1] scale for the
    step detector and the keyed answers); behind `mea serve --defense` equation-solving from
    uniform points is answered with misinformation or refused, and a benign client sending the
    test digits is never refused and reads nearly the victim's accuracy."""
    from mea import api

    defended = mea("defend", "fit", "--victim", str(victims["digits-softmax"]), "--out", str(tmp_path / "d"), threads=1)
    assert defended.returncode == 0, defended.stderr
    victim = load_victim(victims["digits-softmax"])
    defense = api.load_defense(tmp_path / "d", victim)
    steps = defense.steps
    assert steps is not None and 0 < steps.radius < 0.5 and "shifted repeats" not in steps.streams
    test = victim.test_set()
    undefended = float((VictimOracle(victim.model).query(test.images).argmax(1) == test.labels).float().mean())
    server = start_server(
        victims["digits-softmax"], tmp_path / "db.sqlite", tmp_path / "server.log", "--defense", str(tmp_path / "d")
    )
    try:
        benign = api.connect(server.url, create_key(server.db, "--name", "benign"), victim=victim)
        answers = benign.query(test.images)
        assert float((answers.argmax(1) == test.labels).float().mean()) > undefended - 0.02
        thief = api.connect(server.url, create_key(server.db, "--name", "thief"), victim=victim)
        space, known = QuerySpace(victim.signature), ModelClass.of(victim.model)
        try:
            result = EquationSolving(queries=650).run(thief, space, known, np.random.default_rng(0))
        except Refused:
            return
        assert fidelity(victim.model, result.clone, test.images).test_agreement < 0.5
    finally:
        stop_all(server)


def _mlserver_executable() -> str | None:
    """MLServer cannot be installed beside the dev extras (mlserver 1.7 pins starlette < 0.47; KServe
    needs >= 1.3.1), so it lives in an environment of its own: $MEA_MLSERVER, else
    .venv-mlserver/bin/mlserver at the repository root (pip install 'model-extraction-attack[mlserver]'
    there), else `mlserver` on the PATH."""
    import os
    import shutil

    beside = Path(__file__).resolve().parent.parent / ".venv-mlserver" / "bin" / "mlserver"
    found = os.environ.get("MEA_MLSERVER") or (str(beside) if beside.exists() else shutil.which("mlserver"))
    return found if found and Path(found).exists() else None


def _user_models(victims) -> dict[str, tuple[object, str, int]]:
    """The user's own scikit-learn estimators, equal to the mea victims they stand for: (estimator,
    the output MLServer's runtime answers, its width).  Built from the victims' parameters, the tree
    refitted as `mea train-victim` fits it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.tree import DecisionTreeClassifier

    from mea.tabular.datasets import read_table

    def linear(name: str):
        model = load_victim(victims[name]).model
        estimator = LogisticRegression()
        estimator.classes_ = np.arange(model.signature.classes)
        estimator.coef_, estimator.intercept_ = model.weight.numpy().copy(), model.bias.numpy().copy()
        estimator.n_features_in_ = model.signature.features
        return estimator

    relu = load_victim(victims["iris-relu"]).model
    mlp = MLPClassifier(hidden_layer_sizes=(relu.hidden,), activation="relu")
    mlp.coefs_ = [relu.w0.numpy().T.copy(), relu.w1.numpy().T.copy()]
    mlp.intercepts_ = [relu.b0.numpy().copy(), relu.b1.numpy().copy()]
    mlp.n_layers_, mlp.n_outputs_, mlp.out_activation_ = 3, relu.w1.shape[0], "softmax"
    mlp.classes_, mlp.n_features_in_ = np.arange(relu.signature.classes), relu.signature.features
    table = read_table("breast-cancer")
    train = table.split()["train"]
    tree = DecisionTreeClassifier(max_depth=VICTIMS["cancer-tree"].max_depth, random_state=0)
    tree.fit(table.features[train], table.labels[train])
    model = load_victim(victims["cancer-tree"]).model
    test = load_victim(victims["cancer-tree"]).test_set().images.double()
    assert np.allclose(tree.predict_proba(test.numpy()), torch.softmax(model(test), 1).numpy()), "not the same tree"
    return {
        "digits-softmax": (linear("digits-softmax"), "predict_proba", 10),
        "cancer-logreg": (linear("cancer-logreg"), "predict_proba", 2),
        "cancer-logreg-labels": (linear("cancer-logreg"), "predict", 1),
        "iris-softmax-labels": (linear("iris-softmax"), "predict", 1),
        "iris-relu": (mlp, "predict_proba", 3),
        "cancer-tree": (tree, "predict_proba", 2),
    }


@pytest.fixture(scope="module")
def mlserver(victims, tmp_path_factory):
    """MLServer's scikit-learn runtime on 127.0.0.1, loading the user's joblib files (MLServer
    unpickles them, as it does any user's model: mea itself never does)."""
    import os
    import subprocess

    import httpx
    import joblib

    from mea.serve.process import free_port

    executable = _mlserver_executable()
    if executable is None:
        pytest.skip("no mlserver executable (set $MEA_MLSERVER or make .venv-mlserver; see _mlserver_executable)")
    root = tmp_path_factory.mktemp("mlserver")
    for name, (estimator, output, width) in _user_models(victims).items():
        folder = root / name
        folder.mkdir()
        joblib.dump(estimator, folder / "model.joblib")
        features = load_victim(victims[name.removesuffix("-labels")]).signature.features
        settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "v1"},
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, features]}],
            "outputs": [{"name": output, "datatype": "INT64" if output == "predict" else "FP64", "shape": [-1, width]}],
        }
        (folder / "model-settings.json").write_text(json.dumps(settings))
    port = free_port()
    ports = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port()}
    (root / "settings.json").write_text(json.dumps({**ports, "host": "127.0.0.1", "parallel_workers": 0}))
    log = (root / "mlserver.log").open("w")
    process = subprocess.Popen(
        [executable, "start", str(root)], cwd=root, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            assert process.poll() is None and time.monotonic() < deadline, (root / "mlserver.log").read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


# (MLServer model, the mea victim it stands for, strategy, queries, test and uniform agreement at least)
MLSERVER_ATTACKS = [
    ("digits-softmax", "digits-softmax", "equation-solving", None, 1.0),
    ("cancer-logreg", "cancer-logreg", "equation-solving", None, 1.0),
    ("cancer-logreg-labels", "cancer-logreg", "lowd-meek", None, 0.99),
    ("iris-softmax-labels", "iris-softmax", "uniform", 300, 0.85),
    ("iris-softmax-labels", "iris-softmax", "line-search", 300, 0.85),
    ("iris-softmax-labels", "iris-softmax", "adaptive", 300, 0.85),
    ("iris-relu", "iris-relu", "functionally-equivalent", None, 0.99),
    ("cancer-tree", "cancer-tree", "path-finding", None, 0.5),  # answers as leaf identities: leaves merge
]


@pytest.mark.slow
def test_every_attack_over_http_against_mlserver(mlserver, victims):
    from mea import api

    for model, name, strategy, queries, at_least in MLSERVER_ATTACKS:
        victim = load_victim(victims[name])
        oracle = api.connect(mlserver, model=model, victim=victim)
        assert not oracle.names_nodes
        result = api.attack(victim, strategy, queries, oracle=oracle)
        assert result.fidelity >= at_least and result.uniform_agreement >= at_least, (model, strategy, result)
        if strategy == "equation-solving":
            assert result.metrics["clone"]["relative_parameter_error"] < 1e-5
        if strategy == "path-finding":
            assert result.metrics["details"]["identified_by"] == "answer"
    victim = load_victim(victims["cancer-tree"])
    with pytest.raises(ConfigError, match="does not answer queries with missing features"):
        api.attack(victim, "path-finding:incomplete", oracle=api.connect(mlserver, model="cancer-tree", victim=victim))
