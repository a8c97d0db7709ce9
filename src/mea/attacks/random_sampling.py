"""The study's attack: query a uniform random sample of the attacker's pool, all at once.

Tramèr et al. 2016, "Stealing Machine Learning Models via Prediction APIs", Section 6 (retraining
with uniform queries); the study this project starts from drew its queries from public MNIST.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mea.attacks.strategy import AttackState, Queries
from mea.data.pools import Pool
from mea.errors import ConfigError
from mea.oracle import OutputMode


@dataclass(frozen=True)
class RandomSampling:
    """Draw the whole budget uniformly without replacement from the pool; works with every output."""

    name: str = "random"

    def check(self, pool: Pool, budget: int, output: OutputMode) -> None:
        if budget > len(pool):
            raise ConfigError(
                f"a budget of {budget} queries exceeds the {pool.name} pool ({len(pool)} images); "
                "lower --queries or choose a larger pool"
            )

    def next_queries(self, state: AttackState) -> Queries | None:
        if len(state.transfer) or state.remaining <= 0:
            return None
        index = torch.randperm(len(state.pool), generator=state.generator)[: state.remaining]
        return Queries(state.pool.images[index], index)
