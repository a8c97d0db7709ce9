"""Queries between the pool's images: half the budget drawn from the pool, half blends of two.

A pool of natural digits shows the victim mostly what it answers with near certainty: its own
training distribution.  Where a clone and its victim disagree is near the victim's boundaries, and a
blend (1 - w) a + w b of two pool images, w drawn from [0, `max_weight`], lands between the classes
of a and b (the convex combinations of mixup, Zhang et al. 2018, "mixup: Beyond Empirical Risk
Minimization", ICLR, spent here as queries rather than as training data).  Measured with 60,000
probability answers (benchmarks/fidelity_60k.py, two seeds): fidelity above the pool's at 6 of 8
(loss, epochs) settings, mostly by less than 0.1 point, about the seeds' spread; with logit
matching (`--loss logits`) at 12 epochs 99.56% against the pool's 99.33%, the one setting there
that passes 99.5%.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mea.attacks.strategy import AttackState, Queries
from mea.data.pools import Pool
from mea.errors import ConfigError
from mea.oracle import OutputMode


@dataclass(frozen=True)
class MixupQueries:
    """`budget - budget // 2` distinct pool images as they are, then `budget // 2` blends of two
    random pool images (pool row -1: synthesised); all queried at once."""

    name: str = "mixup"
    max_weight: float = 0.5  # the second image's weight: at most one half, so a blend stays nearer a

    def check(self, pool: Pool, budget: int, output: OutputMode) -> None:
        plain = budget - budget // 2
        if plain > len(pool):
            raise ConfigError(
                f"mixup queries {plain} pool images as they are (half a budget of {budget}), more than the "
                f"{pool.name} pool's {len(pool)}; lower --queries or choose a larger pool"
            )

    def next_queries(self, state: AttackState) -> Queries | None:
        if len(state.transfer) or state.remaining <= 0:
            return None
        blends = state.remaining // 2
        plain = torch.randperm(len(state.pool), generator=state.generator)[: state.remaining - blends]
        first = torch.randint(len(state.pool), (blends,), generator=state.generator)
        second = torch.randint(len(state.pool), (blends,), generator=state.generator)
        weight = self.max_weight * torch.rand(blends, 1, 1, 1, generator=state.generator)
        images = state.pool.images
        mixed = (1 - weight) * images[first] + weight * images[second]
        index = torch.cat([plain, torch.full((blends,), -1, dtype=torch.long)])
        return Queries(torch.cat([images[plain], mixed]), index)
