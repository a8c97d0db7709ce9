"""Adaptive retraining near the clone's decision boundary.

Tramèr et al. 2016, "Stealing Machine Learning Models via Prediction APIs" (USENIX Security),
Section 6.1 ("adaptive retraining", after Lowd & Meek's line searches): after a random start,
each round trains the clone and queries the points where it is least sure, found by a line search
between two pool images the clone labels differently; the search runs on the attacker's own clone
and costs no queries, only the points it ends on are sent to the victim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mea.attacks.jbda import SYNTHETIC
from mea.attacks.strategy import AttackState, Queries
from mea.data.pools import Pool
from mea.errors import ConfigError
from mea.oracle import OutputMode
from mea.training import predict_logits


def boundary_points(clone: torch.nn.Module, starts: torch.Tensor, ends: torch.Tensor, steps: int) -> torch.Tensor:
    """Bisect each segment start->end (clone labels differ at the ends) to the clone's label change."""
    start_label = predict_logits(clone, starts).argmax(1)
    low, high = torch.zeros(len(starts)), torch.ones(len(starts))
    for _ in range(steps):
        middle = (low + high) / 2
        points = starts + middle.view(-1, 1, 1, 1) * (ends - starts)
        same = predict_logits(clone, points).argmax(1) == start_label
        low = torch.where(same, middle, low)
        high = torch.where(same, high, middle)
    return starts + ((low + high) / 2).view(-1, 1, 1, 1) * (ends - starts)


@dataclass(frozen=True)
class BoundaryRetraining:
    name: str = "boundary"
    initial_fraction: float = 0.2
    rounds: int = 4
    steps: int = 8  # bisection steps: the point lies within 1/256 of the segment from the boundary

    def check(self, pool: Pool, budget: int, output: OutputMode) -> None:
        if budget < 2 * self.rounds:
            raise ConfigError(f"{self.name} needs a budget of at least {2 * self.rounds} queries for its rounds")
        if round(self.initial_fraction * budget) > len(pool):
            raise ConfigError(f"{self.name}'s random start exceeds the {pool.name} pool ({len(pool)} images)")

    def next_queries(self, state: AttackState) -> Queries | None:
        if state.remaining <= 0:
            return None
        budget = len(state.transfer) + state.remaining
        initial = max(2, round(self.initial_fraction * budget))
        generator = state.generator
        if state.round == 0:
            index = torch.randperm(len(state.pool), generator=generator)[:initial]
            return Queries(state.pool.images[index], index)
        size = min(state.remaining, math.ceil((budget - initial) / self.rounds))
        clone = state.train_clone()
        pool = state.pool.images
        # Pairs of pool images with different clone labels; a few spare pairs cover same-label draws.
        draws = 2 * size + 64
        a = torch.randint(len(pool), (draws,), generator=generator)
        b = torch.randint(len(pool), (draws,), generator=generator)
        labels = F.softmax(predict_logits(clone, torch.cat([pool[a], pool[b]])), dim=1).argmax(1)
        differ = (labels[:draws] != labels[draws:]).nonzero().squeeze(1)[:size]
        points = boundary_points(clone, pool[a[differ]], pool[b[differ]], self.steps) if len(differ) else pool[:0]
        # A clone that still gives one label to nearly everything has few boundaries to search:
        # the rest of the round is spent on pool images, which is what it needs.
        extra = torch.randperm(len(pool), generator=generator)[: size - len(points)]
        return Queries(
            torch.cat([points, pool[extra]]),
            torch.cat([torch.full((len(points),), SYNTHETIC, dtype=torch.long), extra]),
        )
