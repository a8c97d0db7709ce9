"""Active selection from the attacker's pool: query what the current clone knows least about.

Pal et al. 2020, "ActiveThief: Model Extraction Using Active Learning and Unannotated Public Data"
(AAAI): a random initial set, then rounds in which the clone trained so far scores the unqueried
pool and a selector picks the next batch.  Selectors, each as ActiveThief uses them:

- uncertainty: the smallest margin between the clone's two most probable classes (or the largest
  entropy of its answer), Lewis & Gale 1994;
- k-center: greedy farthest-first traversal in the clone's probability space, away from everything
  queried so far, the core-set approach of Sener & Savarese 2018;
- uncertainty + k-center: k-center among a shortlist of the most uncertain candidates, so that a
  batch is both informative and diverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from mea.attacks.strategy import AttackState, Queries
from mea.data.pools import Pool
from mea.errors import ConfigError
from mea.oracle import OutputMode
from mea.training import predict_logits


class Selector(Protocol):
    """Picks `count` of the candidates from the clone's probabilities on them and on the queried set."""

    def select(self, candidates: torch.Tensor, queried: torch.Tensor, count: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class Margin:
    def select(self, candidates: torch.Tensor, queried: torch.Tensor, count: int) -> torch.Tensor:
        top2 = candidates.topk(2, dim=1).values
        return (top2[:, 0] - top2[:, 1]).argsort()[:count]


@dataclass(frozen=True)
class Entropy:
    def select(self, candidates: torch.Tensor, queried: torch.Tensor, count: int) -> torch.Tensor:
        entropy = -(candidates * candidates.clamp_min(1e-12).log()).sum(1)
        return entropy.argsort(descending=True)[:count]


def _min_sq_distances(points: torch.Tensor, centres: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """For each point, the squared distance to its nearest centre."""
    if len(centres) == 0:
        return torch.full((len(points),), float("inf"))
    best = torch.full((len(points),), float("inf"))
    for start in range(0, len(centres), chunk):
        best = torch.minimum(best, torch.cdist(points, centres[start : start + chunk]).square().min(1).values)
    return best


@dataclass(frozen=True)
class KCenter:
    def select(self, candidates: torch.Tensor, queried: torch.Tensor, count: int) -> torch.Tensor:
        distance = _min_sq_distances(candidates, queried)
        chosen = []
        for _ in range(min(count, len(candidates))):
            pick = int(distance.argmax())
            chosen.append(pick)
            distance = torch.minimum(distance, (candidates - candidates[pick]).square().sum(1))
            distance[pick] = -1.0  # never twice
        return torch.tensor(chosen, dtype=torch.long)


@dataclass(frozen=True)
class UncertainKCenter:
    shortlist: int = 4  # k-center among the `shortlist` x count most uncertain candidates

    def select(self, candidates: torch.Tensor, queried: torch.Tensor, count: int) -> torch.Tensor:
        uncertain = Margin().select(candidates, queried, self.shortlist * count)
        return uncertain[KCenter().select(candidates[uncertain], queried, count)]


@dataclass(frozen=True)
class ActiveSelection:
    """A random start of `initial_fraction` of the budget, then `rounds` selected batches."""

    name: str
    selector: Selector
    initial_fraction: float = 0.2
    rounds: int = 4
    candidates: int = 20_000  # unqueried pool images the clone scores per round (a random subset)

    def check(self, pool: Pool, budget: int, output: OutputMode) -> None:
        if budget > len(pool):
            raise ConfigError(
                f"a budget of {budget} queries exceeds the {pool.name} pool ({len(pool)} images); "
                "lower --queries or choose a larger pool"
            )
        if budget < 2 * self.rounds:
            raise ConfigError(f"{self.name} needs a budget of at least {2 * self.rounds} queries for its rounds")

    def next_queries(self, state: AttackState) -> Queries | None:
        if state.remaining <= 0:
            return None
        budget = len(state.transfer) + state.remaining
        initial = max(1, round(self.initial_fraction * budget))
        if state.round == 0:
            index = torch.randperm(len(state.pool), generator=state.generator)[:initial]
            return Queries(state.pool.images[index], index)
        size = min(state.remaining, math.ceil((budget - initial) / self.rounds))
        unqueried = ~state.transfer.queried(len(state.pool))
        rows = unqueried.nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=state.generator)[: max(self.candidates, size)]]
        clone = state.train_clone()
        candidates = F.softmax(predict_logits(clone, state.pool.images[rows]), dim=1)
        queried = F.softmax(predict_logits(clone, state.transfer.images), dim=1)
        index = rows[self.selector.select(candidates, queried, size)]
        return Queries(state.pool.images[index], index)
