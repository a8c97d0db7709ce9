"""Per-client detection of extraction query streams, after PRADA (Juuti et al. 2019, "PRADA:
Protecting Against DNN Model Stealing Attacks", EuroS&P).

For each client and each predicted class, a growing set keeps queries that are far enough from
the ones already kept; every new query's minimum L2 distance to its class's set joins the client's
distance record.  Natural images give roughly normal distances; synthetic streams (small
perturbations of earlier queries, as in Jacobian-based augmentation) do not.  Every 10 queries,
once 100 distances are in, a Shapiro-Wilk test on the distances (outliers beyond 3 deviations
removed) flags the client when its statistic W falls below `threshold`.  (A server sees batches:
the test runs at most once per batch.)

PRADA needs a stream whose distances stop looking normal; cover traffic of natural images keeps
them normal.  Beside it the monitor keeps, per client, the synthetic-step record of
`mea.defenses.steps` (queries within a small L-infinity distance of an earlier query, counted per
window, so that cover traffic cannot average them away) and the out-of-distribution flags of the
query detector, over the whole stream and over its latest `ood_window` queries.  It combines them
into an escalation level: 0 normal, 1 suspect (every answer goes through the response policy),
2 refused.  PRADA alone makes a client suspect; a window full of steps, PRADA with a high OOD rate,
or a very high OOD rate refuses it.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from mea.config import PradaConfig as PradaConfig  # re-exported
from mea.defenses.steps import StepRecord, observe_steps

NORMAL, SUSPECT, REFUSED = 0, 1, 2
LEVEL_NAMES = {NORMAL: "normal", SUSPECT: "suspect", REFUSED: "refused"}


class _GrowingSet:
    """One class's kept queries, in a preallocated buffer with their squared norms."""

    def __init__(self, dim: int, capacity: int) -> None:
        self.buffer = np.empty((min(capacity, 64), dim), dtype=np.float32)
        self.norms = np.empty(min(capacity, 64), dtype=np.float32)
        self.size = 0
        self.capacity = capacity
        self.kept_distances: list[float] = []
        self.threshold = 0.0

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    def add(self, image: np.ndarray, norm: float) -> None:
        if self.size == len(self.buffer):
            grown = min(2 * len(self.buffer), self.capacity)
            self.buffer = np.resize(self.buffer, (grown, self.buffer.shape[1]))
            self.norms = np.resize(self.norms, grown)
        self.buffer[self.size] = image
        self.norms[self.size] = norm
        self.size += 1

    def min_distances(self, images: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """Each image's smallest squared distance to the kept set (inf when empty), one matrix product."""
        if self.size == 0:
            return np.full(len(images), np.inf, dtype=np.float32)
        # min_j |x - k_j|^2 = |x|^2 + min_j (|k_j|^2 - 2 x.k_j): the (B, K) products are updated
        # in place, and the image's own norm is added after the minimum, not to every entry.
        scores = images @ self.buffer[: self.size].T
        scores *= -2
        scores += self.norms[: self.size]
        return np.maximum(norms + scores.min(1), 0.0)


def _walk(kept: _GrowingSet, images: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """PRADA's pass over one class's queries of a batch, in order: each query's distance to the
    set kept so far (NaN for the query that starts an empty set), adding the queries whose distance
    exceeds the set's threshold.  A query that is not kept changes nothing for the ones after it, so
    the loop jumps from one kept query to the next: a batch of queries the set no longer takes costs
    one matrix product, not a Python step per query."""
    squared = kept.min_distances(images, norms).astype(np.float64)
    distances = np.sqrt(squared)
    position = 0
    while position < len(images) and not kept.full:
        above = np.flatnonzero(distances[position:] > kept.threshold)
        if not len(above):
            break
        i = position + int(above[0])
        kept.add(images[i], norms[i])
        if np.isfinite(distances[i]):
            kept.kept_distances.append(float(distances[i]))
            values = np.asarray(kept.kept_distances)
            kept.threshold = max(kept.threshold, float(values.mean() - values.std()))
        else:  # the first query of its class starts the set, without a distance
            distances[i] = np.nan
        later = slice(i + 1, len(images))
        within = norms[later] + (norms[i] - 2 * (images[later] @ images[i]))  # as `min_distances` rounds
        squared[later] = np.minimum(squared[later], np.maximum(within, 0))
        distances[later] = np.sqrt(squared[later])
        position = i + 1
    return distances


@dataclass
class ClientState:
    """What the service knows about one client's stream."""

    sets: dict[int, _GrowingSet] = field(default_factory=dict)
    distances: list[float] = field(default_factory=list)
    queries: int = 0
    distance_count: int = 0  # distances ever recorded (the list keeps the latest `max_distances`)
    tested_at: int = 0
    flagged_ood: int = 0
    statistic: float | None = None
    prada_flagged_at: int | None = None  # the query count when PRADA first flagged the stream
    level: int = NORMAL
    step_record: StepRecord | None = None  # made on the first batch, from the monitor's config
    ood_marks: deque = field(default_factory=deque)  # the latest `ood_window` OOD flags, oldest first

    @property
    def ood_rate(self) -> float:
        return self.flagged_ood / self.queries if self.queries else 0.0

    @property
    def window_ood_rate(self) -> float:
        return sum(self.ood_marks) / len(self.ood_marks) if self.ood_marks else 0.0

    @property
    def steps_flagged_at(self) -> int | None:
        return None if self.step_record is None else self.step_record.flagged_at

    def describe(self) -> str:
        w = "-" if self.statistic is None else f"{self.statistic:.3f}"
        stepped = 0 if self.step_record is None else self.step_record.steps
        return f"{LEVEL_NAMES[self.level]} (W={w}, ood={self.ood_rate:.2f}, steps={stepped}, queries={self.queries})"


class PradaMonitor:
    """Tracks every client's stream in memory; thread-safe.  (The service keeps the same states in
    its database instead: `mea.serve.clients`.)"""

    def __init__(self, config: PradaConfig | None = None) -> None:
        self.config = config or PradaConfig()
        self._clients: dict[str, ClientState] = {}
        # Held while a client's state is read and updated (re-entrant: observe under answer).
        self.lock = threading.RLock()

    def state(self, client: str) -> ClientState:
        with self.lock:
            return self._clients.setdefault(client, ClientState())

    def observe(self, client: str, images: torch.Tensor, classes: torch.Tensor, ood_flags: torch.Tensor) -> ClientState:
        """Add a batch of answered queries to the client's record and update its level."""
        with self.lock:
            return self.update(self._clients.setdefault(client, ClientState()), images, classes, ood_flags)

    def update(
        self, state: ClientState, images: torch.Tensor, classes: torch.Tensor, ood_flags: torch.Tensor
    ) -> ClientState:
        """Add a batch of answered queries to `state` (the caller serialises updates of one client)."""
        flat = images.reshape(len(images), -1).numpy().astype(np.float32, copy=False)  # read only
        norms = (flat * flat).sum(1)  # as `ClientRecords.load` computes a restored image's: bit for bit
        labels = classes.numpy()
        config = self.config
        if state.step_record is None:
            state.step_record = StepRecord(config.step_memory, config.step_window)
        observe_steps(state.step_record, images, config.step_radius, config.step_count, state.queries)
        state.flagged_ood += int(ood_flags.sum())
        state.ood_marks.extend(bool(flag) for flag in ood_flags.tolist())
        while len(state.ood_marks) > config.ood_window:
            state.ood_marks.popleft()
        distances = np.empty(len(flat))
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            kept = state.sets.setdefault(int(label), _GrowingSet(flat.shape[1], self.config.max_per_class))
            distances[rows] = _walk(kept, flat[rows], norms[rows])
        recorded = distances[~np.isnan(distances)]  # in the order the queries came
        state.queries += len(flat)
        state.distance_count += len(recorded)
        state.distances.extend(recorded.tolist())
        del state.distances[: max(len(state.distances) - self.config.max_distances, 0)]
        self._test(state)
        self._escalate(state)
        return state

    def _test(self, state: ClientState) -> None:
        """The Shapiro-Wilk test, at most once per batch, once `test_every` new queries came in."""
        config = self.config
        if state.queries - state.tested_at < config.test_every or len(state.distances) < config.min_distances:
            return
        state.tested_at = state.queries
        distances = np.asarray(state.distances)
        spread = distances.std()
        inliers = distances[np.abs(distances - distances.mean()) < 3 * spread] if spread > 0 else distances
        if len(inliers) >= 3 and np.ptp(inliers) > 0:
            from scipy import stats  # here, not at import: a server's start-up would pay for scipy.stats

            state.statistic = float(stats.shapiro(inliers).statistic)
        else:  # identical distances (repeated queries) are as far from natural as it gets
            state.statistic = 0.0
        if state.statistic < config.threshold and state.prada_flagged_at is None:
            state.prada_flagged_at = state.queries

    def _escalate(self, state: ClientState) -> None:
        config = self.config
        level = NORMAL
        if state.prada_flagged_at is not None:
            level = SUSPECT
        ood = 0.0
        if state.queries >= config.ood_min_queries:
            ood = max(state.ood_rate, state.window_ood_rate)
            if ood >= config.ood_refuse_rate:
                level = REFUSED
            elif ood >= config.ood_suspect_rate:
                level = max(level, SUSPECT)
        if state.prada_flagged_at is not None and level == SUSPECT and ood >= config.ood_suspect_rate:
            level = REFUSED  # both signals agree
        if state.steps_flagged_at is not None:
            level = REFUSED  # a window full of synthetic steps: a benign client has none
        state.level = max(state.level, level)  # escalation is sticky: a client is not forgiven by waiting
