"""Lowd & Meek 2005 ("Adversarial learning", KDD): a two-class linear model from labels alone, the
label-only baseline of Tramèr et al. 2016 (§6).

In the coordinates u = (x - centre) / half-range of the feature box: two points of opposite labels
are bisected to a point x0 within `epsilon` of the boundary w.u + b = 0.  Each feature's sign is
read one step either side of x0 along it; then from x0 + delta e_r, off the boundary along a
reference feature r, the boundary is found again along each other feature i by an exponential
search and bisection to relative width `epsilon`: w_i / w_r = -delta / t_i.  The bias follows from
x0.  Labels fix the hyperplane only up to scale: the clone is a logistic model of that hyperplane
(its probabilities are not the victim's; its labels are).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from mea.errors import ConfigError
from mea.extraction.base import Answers, Extraction, ModelClass, QuerySpace
from mea.oracle import Oracle
from mea.tabular.models import BinaryLogistic

SIGN_STEP = 0.5  # a half-range either side of x0 reads a feature's sign
SEARCH_LIMIT = 2.0**40  # an exponential search past this many half-ranges calls a weight zero


@dataclass(frozen=True)
class LowdMeek:
    """Lowd & Meek's line-search extraction of a two-class linear classifier from labels.

    `epsilon`: the bisections' width (relative, in half-ranges of the features); `witness_tries`:
    uniform points drawn to find one of each label."""

    epsilon: float = 1e-7
    witness_tries: int = 1000
    name: str = "lowd-meek"

    def run(self, oracle: Oracle, space: QuerySpace, known: ModelClass, rng: np.random.Generator) -> Extraction:
        known.require(self.name, ("logreg",))
        assert space.low is not None and space.high is not None
        centre, half = (space.low + space.high) / 2, np.maximum((space.high - space.low) / 2, 1e-12)
        before = oracle.queries_used
        start = time.process_time()

        def label(u: np.ndarray) -> np.ndarray:
            return Answers.labels(oracle, space.as_inputs(centre + half * np.atleast_2d(u))).numpy()

        witnesses = space.uniform(min(self.witness_tries, 100), rng)
        labels = label((witnesses - centre) / half)
        tries = len(witnesses)
        while labels.min() == labels.max() and tries < self.witness_tries:
            more = space.uniform(100, rng)
            witnesses, labels = np.vstack([witnesses, more]), np.concatenate([labels, label((more - centre) / half)])
            tries += 100
        if labels.min() == labels.max():
            raise ConfigError(f"{tries} uniform queries all got label {labels[0]}: no boundary to find in the ranges")
        negative = (witnesses[labels == 0][0] - centre) / half
        positive = (witnesses[labels == 1][0] - centre) / half
        for _ in range(int(np.ceil(np.log2(np.linalg.norm(positive - negative) / self.epsilon)))):
            middle = (negative + positive) / 2
            if label(middle)[0] == 1:
                positive = middle
            else:
                negative = middle
        x0 = (negative + positive) / 2
        d = len(x0)
        steps = np.eye(d) * SIGN_STEP
        up, down = label(x0 + steps), label(x0 - steps)
        signs = np.where(up > down, 1.0, np.where(up < down, -1.0, 0.0))
        if not signs.any():
            raise ConfigError("no feature moves the label within its range; the model looks constant here")
        reference = int(np.flatnonzero(signs)[0])
        weights = np.zeros(d)
        weights[reference] = signs[reference]
        delta = SIGN_STEP * signs[reference]  # off the boundary on the positive side
        offset = x0.copy()
        offset[reference] += delta
        for i in np.flatnonzero(signs):
            if i == reference:
                continue
            # Moving along feature i against its sign crosses back to the boundary at t = -delta w_r / w_i.
            direction = -signs[i]
            low, high = 0.0, SIGN_STEP
            while label(offset + direction * high * np.eye(d)[i])[0] == 1 and high < SEARCH_LIMIT:
                low, high = high, 2 * high
            if high >= SEARCH_LIMIT:
                continue
            while (high - low) > self.epsilon * high:
                middle = (low + high) / 2
                if label(offset + direction * middle * np.eye(d)[i])[0] == 1:
                    low = middle
                else:
                    high = middle
            weights[i] = abs(delta) / ((low + high) / 2) * signs[i] * abs(weights[reference])
        bias_u = -weights @ x0
        # Back to raw features: w.u + b with u = (x - centre) / half.
        weight = weights / half
        bias = bias_u - weight @ centre
        clone = BinaryLogistic(known.signature, torch.from_numpy(weight[None]), torch.from_numpy(np.array([bias])))
        details = {"reference_feature": reference, "zero_weights": int((weights == 0).sum()), "epsilon": self.epsilon}
        return Extraction(clone.eval(), oracle.queries_used - before, time.process_time() - start, details)
