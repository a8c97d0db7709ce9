"""The rows of benchmarks.tramer that go beyond Tramèr et al. 2016 (issue 33, part 4):

- (a) functionally-equivalent extraction of a ReLU MLP (Jagielski et al. 2020; Carlini et al.
  2020), mea's (`mea.extraction.functionally_equivalent`) beside IBM ART's
  `FunctionallyEquivalentExtraction` on the same victim, same run: queries, agreement, largest
  logit error;
- (b) equation-solving through the deployed defense: a feature-vector victim (digits softmax) and
  a softmax regression on MNIST's pixels (7,850 unknowns), each behind `mea serve --defense`, with
  uniform query points and natural ones, and a benign client beside them;
- (c) the watermark against an exact solver: `mea.verify` on the clones of (b).

ART is imported here only (the `bench` extra); the tests never need it.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import numpy as np
import torch

FE_SEEDS = 5
ART_LIMIT_S = 600.0


def _error(exc: BaseException) -> str:
    """An exception as one line: its type, its message's first line, and where it was raised."""
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno}, {frame.name})" if frame else ""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}"


def _score(victim, clone) -> dict:
    from mea.extraction.metrics import fidelity

    return fidelity(victim.model, clone, victim.test_set().images).to_dict()


def mea_functionally_equivalent(victim, seed: int, polish: bool = True) -> dict:
    from mea.extraction.base import ModelClass, QuerySpace
    from mea.extraction.functionally_equivalent import FunctionallyEquivalent
    from mea.oracle import VictimOracle

    oracle = VictimOracle(victim.model)
    started = time.perf_counter()
    result = FunctionallyEquivalent(polish=polish).run(
        oracle, QuerySpace(victim.signature), ModelClass.of(victim.model), np.random.default_rng(seed)
    )
    wall = time.perf_counter() - started
    details = {k: v for k, v in result.details.items() if isinstance(v, int | float | str)}
    return {
        "attack": "mea",
        "answers": "float32 probabilities",
        "seed": seed,
        "polish": polish,
        "status": "extracted",
        "queries": result.queries,
        "compute_s": result.compute_s,
        "wall_s": wall,
        **_score(victim, result.clone),
        "details": details,
    }


class _Answers(torch.nn.Module):
    """The victim's prediction API as ART's PyTorchClassifier sees it: a module answering logits,
    counting the rows it is asked.  `exact`: the victim's float64 logits (ART's assumed API);
    otherwise the centred logs of mea's float32 probability answers (what mea's attack reads)."""

    def __init__(self, victim, exact: bool, rows) -> None:
        from mea.oracle import VictimOracle

        super().__init__()
        self.model, self.exact, self.counter = victim.model, exact, rows
        self.oracle = VictimOracle(victim.model)
        self.placeholder = torch.nn.Parameter(torch.zeros(1))  # ART's wrapper expects parameters

    @property
    def rows(self) -> int:
        return int(self.counter.value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counter.value += len(x)
        with torch.no_grad():
            if self.exact:
                return self.model(x.double())
            logs = torch.log(self.oracle.query(x.float()).double())
            return logs - logs.mean(1, keepdim=True)


def art_functionally_equivalent(
    victim, seed: int, exact: bool, points: int = 500, limit_s: float = ART_LIMIT_S
) -> dict:
    """ART 1.20's FunctionallyEquivalentExtraction with its defaults, `points` uniform points for its
    output-layer fit (its `x`), in a child process stopped after `limit_s` seconds (its weight
    recovery widens a finite-difference step by 0.01 up to 50 for every weight it reads as zero:
    minutes per unit on a victim with constant features).  ART draws its search line from numpy's
    global generator: seeded."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    rows = context.Value("q", 0)
    results = context.Queue()
    child = context.Process(target=_art_child, args=(victim, seed, exact, points, rows, results))
    started = time.perf_counter()
    child.start()
    child.join(limit_s)
    if child.is_alive():
        child.kill()
        child.join()
        return {
            "attack": "ART",
            "answers": _art_answers(exact),
            "seed": seed,
            "status": "stopped",
            "error": f"stopped after {limit_s:.0f} s",
            "queries": int(rows.value),
            "wall_s": time.perf_counter() - started,
        }
    return results.get(timeout=10)


def _art_answers(exact: bool) -> str:
    return "float64 logits (exact)" if exact else "float32 probabilities, as centred logs"


def _art_child(victim, seed: int, exact: bool, points: int, rows, results) -> None:
    torch.set_num_threads(1)
    results.put(_art_run(victim, seed, exact, points, rows))


def _art_run(victim, seed: int, exact: bool, points: int, rows) -> dict:
    from art.attacks.extraction import FunctionallyEquivalentExtraction
    from art.estimators.classification import PyTorchClassifier

    from mea.tabular.models import Activation, OneHiddenLayer

    answers = _Answers(victim, exact, rows)
    signature = victim.signature
    classifier = PyTorchClassifier(
        answers, loss=torch.nn.CrossEntropyLoss(), input_shape=signature.input_shape, nb_classes=signature.classes
    )
    np.random.seed(seed)
    attack = FunctionallyEquivalentExtraction(classifier, num_neurons=victim.model.hidden)
    low, high = (np.asarray(b) for b in signature.bounds())
    x = low + (high - low) * np.random.default_rng(seed).random((points, signature.features))
    row = {
        "attack": "ART",
        "answers": _art_answers(exact),
        "seed": seed,
    }
    started = time.perf_counter()
    try:
        attack.extract(x)
    except Exception as exc:  # ART raises AssertionError when its line search miscounts the units
        return {**row, "status": "failed", "error": _error(exc), "queries": answers.rows,
                "wall_s": time.perf_counter() - started}  # fmt: skip
    wall = time.perf_counter() - started
    tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)) for a in
               (attack.w_0.T, attack.b_0[:, 0], attack.w_1.T, attack.b_1[:, 0])]  # fmt: skip
    clone = OneHiddenLayer(signature, *tensors, Activation.RELU).eval()
    return {**row, "status": "extracted", "queries": answers.rows, "wall_s": wall, **_score(victim, clone)}


def functionally_equivalent_rows(victim, seeds: int = FE_SEEDS) -> list[dict]:
    rows = [mea_functionally_equivalent(victim, seed) for seed in range(seeds)]
    rows.append(mea_functionally_equivalent(victim, 0, polish=False))
    rows += [art_functionally_equivalent(victim, seed, exact=True) for seed in range(seeds)]
    rows.append(art_functionally_equivalent(victim, 0, exact=False))
    return rows


# --- (b) and (c): through the deployed defense ------------------------------------------------------


def _steal(victim, oracle, space, queries: int, seed: int, drop_inconsistent: bool = True):
    from mea.extraction.base import ModelClass
    from mea.extraction.equation_solving import EquationSolving

    strategy = EquationSolving(queries=queries, drop_inconsistent=drop_inconsistent)
    return strategy.run(oracle, space, ModelClass.of(victim.model), np.random.default_rng(seed))


def _flagged(detector, victim, space, queries: int, seed: int) -> float:
    """The share of the attack's points the detector flags (the attack draws them first, with its seed)."""
    points = space.as_inputs(space.sample(queries, np.random.default_rng(seed)))
    return float((detector.score_images(victim.model, points) > detector.threshold).float().mean())


DIGITS_RUNS = (  # (points, queries, the solver drops inconsistent answers)
    ("uniform", 65, True),
    ("uniform", 650, True),
    ("digits", 65, True),
    ("digits", 650, True),
)
MNIST_RUNS = (
    ("mnist-train", 785, True),
    ("mnist-train", 7850, True),
    ("mnist-train", 7850, False),
    ("uniform", 785, True),
)


def _benign(victim, server, db: Path) -> dict:
    """The victim's test set, in order, from a client of its own: refused or not, and its accuracy
    through the service beside the undefended victim's."""
    from mea import api
    from mea.errors import Refused
    from mea.serve.process import create_key

    test = victim.test_set()
    key = create_key(db, "--name", "benign", "--quota", str(10 * len(test.images)))
    oracle = api.connect(server.url, key, victim=victim)
    from mea.oracle import VictimOracle

    undefended = float((VictimOracle(victim.model).query(test.images).argmax(1) == test.labels).float().mean())
    try:
        answers = oracle.query(test.images)
    except Refused as refusal:
        answered = 0 if refusal.answers is None else len(refusal.answers)
        return {"queries": len(test.images), "refused_after": answered, "undefended_accuracy": undefended}
    accuracy = float((answers.argmax(1) == test.labels).float().mean())
    return {"queries": len(test.images), "refused_after": None, "accuracy": accuracy, "undefended_accuracy": undefended}


def service_rows(victim_dir: Path, scratch: Path, pools: tuple[str, ...], runs, seed: int = 0) -> dict:
    """A victim behind `mea serve --defense` (fitted by `mea.fit_defense`, with the watermark where
    it applies), stolen by equation-solving over HTTP, each clone from the service then put to
    `mea.verify` where the defense has a watermark; and a benign client beside the thieves."""
    from mea import api
    from mea.errors import Refused
    from mea.extraction.base import QuerySpace
    from mea.extraction.run import pool_points
    from mea.oracle import VictimOracle
    from mea.serve.process import create_key

    victim = api.load_victim(victim_dir)
    started = time.perf_counter()
    defense_dir = scratch / f"{victim_dir.name}-defense"
    defense = api.fit_defense(victim, defense_dir)
    record: dict = {
        "victim": victim_dir.name,
        "fit_s": time.perf_counter() - started,
        "watermark_rate": None if defense.watermark is None else defense.watermark.rate,
        "steps": None if defense.steps is None else {"radius": defense.steps.radius, "count": defense.steps.count},
        "test_flagged": float(
            (defense.detector.score_images(victim.model, victim.test_set().images) > defense.detector.threshold)
            .float()
            .mean()
        ),
    }
    spaces = {"uniform": QuerySpace(victim.signature)}
    spaces |= {pool: QuerySpace(victim.signature, pool_points(pool, victim), pool) for pool in pools}
    rows = []
    db = scratch / f"{victim_dir.name}-service.sqlite"
    with api.start_server(victim_dir, db, defense=defense_dir) as server:
        record["benign"] = _benign(victim, server, db)
        print(victim_dir.name, "benign client", record["benign"], flush=True)
        for index, (points, queries, robust) in enumerate(runs):
            space = spaces[points]
            key = create_key(db, "--name", f"thief-{index}", "--quota", str(10 * queries))
            client = _key_id(db, key)  # the evidence names a client by its key's id
            flagged = _flagged(defense.detector, victim, space, queries, seed)
            for served in (True, False):
                row = {
                    "points": space.name,
                    "queries": queries,
                    "robust_solver": robust,
                    "defended_service": served,
                    "flagged": flagged,
                }
                oracle = api.connect(server.url, key, victim=victim) if served else VictimOracle(victim.model)
                try:
                    result = _steal(victim, oracle, space, queries, seed, robust)
                except Refused as refusal:  # the service stops answering a client it judges an attacker
                    answered = 0 if refusal.answers is None else len(refusal.answers)
                    rows.append({**row, "status": "refused", "answered": answered, "error": str(refusal)})
                    print(victim_dir.name, space.name, queries, robust, served, "refused", flush=True)
                    continue
                except Exception as exc:
                    rows.append({**row, "status": "failed", "error": _error(exc)})
                    continue
                row |= {
                    "status": "extracted",
                    "queries": result.queries,
                    **_score(victim, result.clone),
                    "details": {k: v for k, v in result.details.items() if isinstance(v, int | float | str)},
                }
                if served and defense.watermark is not None:
                    row["verify"] = _verify(result.clone, victim, defense, db, client)
                rows.append(row)
                print(victim_dir.name, space.name, queries, robust, served, row["test_agreement"], flush=True)
    record["rows"] = rows
    return record


def _key_id(db: Path, key: str) -> str:
    from mea.serve.db import Database
    from mea.serve.keys import KeyStore

    found = KeyStore(Database(db)).authenticate(key)
    assert found is not None, "a key just created is unknown"
    return found.id


def _verify(clone, victim, defense, db: Path, client: str) -> dict:
    """`mea verify` on a clone: with the service's evidence for its client, and on the probes alone."""
    from mea import api

    verdicts = {}
    for name, options in (("evidence", {"evidence": db, "clients": (client,)}), ("probes", {})):
        try:
            verdict = api.verify(clone, victim=victim, defense=defense, **options)
            verdicts[name] = {"derived": verdict.derived, "p_value": verdict.p_value, "decision": verdict.decision}
        except Exception as exc:
            verdicts[name] = {"derived": None, "p_value": None, "decision": _error(exc)}
    return verdicts
