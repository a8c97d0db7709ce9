"""Path-finding: a decision tree extracted through an API that names the leaf (or node) answering
each query (Tramèr et al. 2016, §4.2, Algorithm 1).

From a query point x in some leaf, every feature is searched along the line through x: where the
answering leaf changes, a split lies, found by bisection down to adjacent float32 values (the
tree compares float32 features with its thresholds, so the threshold is found exactly) or to a
stated `precision`.  The interval around x's own value bounds the leaf's box on that feature; a
point in each other interval is a new query, which may reach a new leaf.  A feature along whose
whole range the leaf does not change is not on the leaf's path.  With `incomplete` queries (an
API that answers vectors with features left out, as BigML's does: the tree stops at the first node
that needs a missing feature), one query with the feature missing says whether it is on the path,
and features off the path are never searched.

Leaf identity: the node identifier when the API gives one (`names_nodes`: in process, and `mea
serve` of a tree without a defense, its `node` output);
otherwise the answer itself (as BigML's confidence values served the paper), which cannot tell
apart two leaves that answer the same; those merge, and the tables say what that costs.
Queries are counted as the paper counts them: distinct points sent (a point asked twice is
answered from the attacker's own cache).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch

from mea.errors import ConfigError
from mea.extraction.base import Extraction, ModelClass, QuerySpace
from mea.oracle import Oracle
from mea.tabular.models import LeafBoxes


class _Identifier:
    """The leaf (or node) identity of points, through the oracle, with the attacker's cache."""

    def __init__(self, oracle: Oracle, space: QuerySpace) -> None:
        self.oracle, self.space = oracle, space
        self.by_node = bool(getattr(oracle, "names_nodes", False))
        self.cache: dict[bytes, tuple[object, np.ndarray]] = {}

    def __call__(self, point: np.ndarray) -> object:
        return self.ask(point)[0]

    def ask(self, point: np.ndarray) -> tuple[object, np.ndarray]:
        point32 = np.asarray(point, dtype=np.float32)
        key = point32.tobytes()
        if key not in self.cache:
            inputs = self.space.as_inputs(point32[None])
            if self.by_node:
                answers, nodes = self.oracle.query_nodes(inputs)  # type: ignore[attr-defined]
                ident: object = int(nodes[0])
            else:
                answers = self.oracle.query(inputs)
                ident = answers[0].numpy().astype(np.float32).tobytes()
            self.cache[key] = (ident, answers[0].double().numpy())
        return self.cache[key]


def _midpoint(a: np.float32, b: np.float32) -> np.float32:
    return np.float32((np.float64(a) + np.float64(b)) / 2)


@dataclass(frozen=True)
class PathFinding:
    """Tramèr et al. 2016's path-finding attack on a decision tree (§4.2, Algorithm 1).

    `incomplete`: use queries with missing features (NaN) to skip features off each leaf's path;
    `precision`: bisect splits to this width (None: to adjacent float32 values, exactly)."""

    incomplete: bool = False
    precision: float | None = None
    name: str = "path-finding"

    def run(self, oracle: Oracle, space: QuerySpace, known: ModelClass, rng: np.random.Generator) -> Extraction:
        known.require(self.name, ("tree",))
        # The API itself must take features left out (an HTTP oracle says whether its server does).
        answers_missing = getattr(getattr(oracle, "signature", None), "missing", known.signature.missing)
        if self.incomplete and not (known.signature.missing and answers_missing):
            raise ConfigError("this victim does not answer queries with missing features; drop incomplete queries")
        if space.low is None or space.high is None:
            raise ConfigError("path-finding searches each feature's range; this victim states none")
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)
        ident = _Identifier(oracle, space)
        before = oracle.queries_used
        start = time.process_time()
        boxes: dict[object, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        queue = [space.uniform(1, rng)[0].astype(np.float32)]
        visits = 0
        while queue:
            x = queue.pop()
            leaf, answer = ident.ask(x)
            if any(np.all((x > b_low) & (x <= b_high)) for b_low, b_high, _ in boxes.get(leaf, [])):
                continue
            visits += 1
            box_low = np.nextafter(low, np.float32(-np.inf))  # every feature's whole range, open below
            box_high = high.copy()
            for j in np.flatnonzero(high > low):
                if self.incomplete:
                    missing = x.copy()
                    missing[j] = np.nan
                    if ident(missing) == leaf:
                        continue
                splits = self._splits(ident, x, j, low[j], high[j])
                # The interval of x[j]: (the split below it, the split at or above it].
                below = [t for t in splits if t < x[j]]
                above = [t for t in splits if t >= x[j]]
                if below:
                    box_low[j] = max(below)
                if above:
                    box_high[j] = min(above)
                edges = [np.nextafter(low[j], np.float32(-np.inf)), *splits, high[j]]
                for left, right in itertools.pairwise(edges):
                    if left < x[j] <= right:
                        continue
                    probe = x.copy()
                    probe[j] = right  # the interval's top point is inside it: (left, right]
                    queue.append(probe)
            boxes.setdefault(leaf, []).append((box_low, box_high, answer))
        found = [box for leaf_boxes in boxes.values() for box in leaf_boxes]
        clone = LeafBoxes(
            known.signature,
            torch.from_numpy(np.stack([b[0] for b in found])),
            torch.from_numpy(np.stack([b[1] for b in found])),
            torch.from_numpy(np.stack([b[2] for b in found])),
        )
        details = {
            "leaves": len(found),
            "identities": len(boxes),
            "identified_by": "node" if ident.by_node else "answer",
            "visits": visits,
        }
        return Extraction(clone.eval(), oracle.queries_used - before, time.process_time() - start, details)

    def _splits(self, ident: _Identifier, x: np.ndarray, j: int, low: np.float32, high: np.float32) -> list:
        """Every split along feature j through x: the largest float32 value on each split's low side."""

        def at(value: np.float32) -> object:
            probe = x.copy()
            probe[j] = value
            return ident(probe)

        found: list[np.float32] = []
        stack = [(low, high, at(low), at(high))]
        while stack:
            a, b, id_a, id_b = stack.pop()
            if id_a == id_b:
                continue  # a leaf is a box: the same leaf at both ends holds the whole segment
            narrow = np.nextafter(a, b) >= b if self.precision is None else float(b) - float(a) <= self.precision
            if narrow:
                found.append(a)
                continue
            middle = _midpoint(a, b)
            if middle <= a or middle >= b:
                found.append(a)
                continue
            id_m = at(middle)
            stack.append((a, middle, id_a, id_m))
            stack.append((middle, b, id_m, id_b))
        return sorted(found)
