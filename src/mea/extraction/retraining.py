"""Retraining from labels: the known model class fitted to the victim's top-1 answers at points
chosen three ways (Tramèr et al. 2016, §6.1), for any output mode (only the label is used).

- `uniform`: every point uniform in the feature ranges (or from the attacker's pool).
- `line-search`: a quarter of the budget uniform, the rest spent bisecting segments between
  points of different labels, each midpoint a query: points ever closer to the boundaries.
- `adaptive`: in rounds, a fresh clone picks, from ten uniform candidates per query, those it is
  least sure of (smallest margin between its two likeliest classes), after Cohn et al.'s active
  learning as Tramèr et al. use it.

The clone is the victim's model class fitted by L-BFGS on cross-entropy to the labels
(mea.extraction.fitting, Loss.HARD).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from mea.errors import ConfigError
from mea.extraction.base import Answers, Extraction, ModelClass, QuerySpace
from mea.extraction.fitting import Loss, fit_model_class
from mea.oracle import Oracle

RETRAINABLE = ("logreg", "softmax", "ovr", "mlp")


def _budget(queries: int | None, known: ModelClass) -> int:
    return queries or known.unknowns


def _fit(points: np.ndarray, labels: np.ndarray, known: ModelClass, iterations: int, rng) -> tuple:
    return fit_model_class(points, labels, Loss.HARD, known, 1, iterations, rng)


@dataclass(frozen=True)
class UniformRetraining:
    """Label-only retraining on uniform points (or the pool's). `queries` None: as many as unknowns."""

    queries: int | None = None
    iterations: int = 500
    name: str = "uniform"

    def run(self, oracle: Oracle, space: QuerySpace, known: ModelClass, rng: np.random.Generator) -> Extraction:
        known.require(self.name, RETRAINABLE)
        before = oracle.queries_used
        points = space.sample(_budget(self.queries, known), rng)
        labels = Answers.labels(oracle, space.as_inputs(points)).numpy()
        start = time.process_time()
        clone, details = _fit(points, labels, known, self.iterations, rng)
        return Extraction(clone, oracle.queries_used - before, time.process_time() - start, details)


@dataclass(frozen=True)
class LineSearchRetraining:
    """Label-only retraining on uniform points and bisections between differently labelled ones."""

    queries: int | None = None
    iterations: int = 500
    uniform_share: float = 0.25
    steps: int = 8  # bisection steps per segment
    name: str = "line-search"

    def run(self, oracle: Oracle, space: QuerySpace, known: ModelClass, rng: np.random.Generator) -> Extraction:
        known.require(self.name, RETRAINABLE)
        budget = _budget(self.queries, known)
        before = oracle.queries_used
        points = space.sample(max(2, int(budget * self.uniform_share)), rng)
        labels = Answers.labels(oracle, space.as_inputs(points)).numpy()
        while len(points) < budget:
            pairs = min((budget - len(points)) // self.steps + 1, 256)
            a, b = rng.integers(len(points), size=(2, pairs))
            differ = labels[a] != labels[b]
            if not differ.any():
                extra = space.sample(min(pairs, budget - len(points)), rng)
                points = np.vstack([points, extra])
                labels = np.concatenate([labels, Answers.labels(oracle, space.as_inputs(extra)).numpy()])
                continue
            low, high = points[a[differ]], points[b[differ]]
            low_label = labels[a[differ]]
            for _ in range(self.steps):
                take = min(len(low), budget - len(points))
                if take <= 0:
                    break
                low, high, low_label = low[:take], high[:take], low_label[:take]
                middle = (low + high) / 2
                middle_label = Answers.labels(oracle, space.as_inputs(middle)).numpy()
                points, labels = np.vstack([points, middle]), np.concatenate([labels, middle_label])
                same = middle_label == low_label
                low = np.where(same[:, None], middle, low)
                high = np.where(same[:, None], high, middle)
        start = time.process_time()
        clone, details = _fit(points, labels, known, self.iterations, rng)
        return Extraction(clone, oracle.queries_used - before, time.process_time() - start, details)


@dataclass(frozen=True)
class AdaptiveRetraining:
    """Label-only retraining in `rounds`, each round's points those the current clone is least sure of."""

    queries: int | None = None
    iterations: int = 300
    rounds: int = 10
    candidates: int = 10  # uniform candidates per query
    name: str = "adaptive"

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.candidates < 1:
            raise ConfigError("adaptive retraining needs at least one round and one candidate per query")

    def run(self, oracle: Oracle, space: QuerySpace, known: ModelClass, rng: np.random.Generator) -> Extraction:
        known.require(self.name, RETRAINABLE)
        budget = _budget(self.queries, known)
        per_round = max(1, budget // self.rounds)
        before = oracle.queries_used
        points = space.sample(per_round, rng)
        labels = Answers.labels(oracle, space.as_inputs(points)).numpy()
        compute = 0.0
        while len(points) < budget:
            started = time.process_time()
            clone, _ = _fit(points, labels, known, self.iterations, rng)
            candidates = space.uniform(self.candidates * per_round, rng)
            with torch.inference_mode():
                top2 = torch.softmax(clone(space.as_inputs(candidates)).double(), 1).topk(2, 1).values
            chosen = candidates[np.argsort((top2[:, 0] - top2[:, 1]).numpy())[: min(per_round, budget - len(points))]]
            compute += time.process_time() - started
            points = np.vstack([points, chosen])
            labels = np.concatenate([labels, Answers.labels(oracle, space.as_inputs(chosen)).numpy()])
        started = time.process_time()
        clone, details = _fit(points, labels, known, self.iterations, rng)
        compute += time.process_time() - started
        return Extraction(clone, oracle.queries_used - before, compute, details | {"rounds": self.rounds})
