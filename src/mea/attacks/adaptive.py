"""Adaptive attackers: what an attacker who knows about the defense does about it.

Each one is a small wrapper, so it combines with every strategy and output mode:

- `RepeatAveraging` (an oracle wrapper) asks every image `repeats` times and averages the answers.
  It removes noise drawn fresh per call (ART's GaussianNoise postprocessor) and pays `repeats`
  queries per image for it; against noise keyed on the image it gains nothing.
- `JitterConsensus` (an oracle wrapper) asks `copies` slightly jittered versions of every image,
  keeps the mean answer where all copies agree on the top class and drops the image where they do
  not: misinformation keyed per exact input gives a different wrong class to each copy, and so
  betrays itself (after the consistency checks discussed by Kariyappa & Qureshi 2020, Section 6).
  Against noise keyed on a coarse code of the image (`mea.keying`) an attacker who knows the scheme
  jitters harder, or shifts each copy by up to `shift` pixels, to push copies into other codes.
- `CoverTraffic` (a strategy wrapper) mixes natural pool images into another strategy's batches so
  that the client's out-of-distribution rate stays under the service's suspicion threshold; the
  cover images are answered honestly and train the clone too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mea.attacks.strategy import AttackState, Queries, Strategy
from mea.data.pools import Pool
from mea.errors import ConfigError
from mea.oracle import Oracle, OracleWrapper, OutputMode
from mea.training import random_shift


class _AskingSeveralTimes(OracleWrapper):
    """An attacker-side oracle that spends `queries_per_image` queries on every image it is given."""

    def __init__(self, oracle: Oracle, queries_per_image: int) -> None:
        super().__init__(oracle)
        self.queries_per_image = queries_per_image


class RepeatAveraging(_AskingSeveralTimes):
    def __init__(self, oracle: Oracle, repeats: int = 4) -> None:
        if repeats < 2:
            raise ConfigError(f"repeat averaging needs at least 2 repeats, got {repeats}")
        super().__init__(oracle, repeats)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        answers = self._oracle.query(images.repeat_interleave(self.queries_per_image, dim=0))
        return answers.view(len(images), self.queries_per_image, -1).mean(1)


class JitterConsensus(_AskingSeveralTimes):
    def __init__(self, oracle: Oracle, copies: int = 3, jitter: float = 2 / 255, seed: int = 0, shift: int = 0) -> None:
        if copies < 2:
            raise ConfigError(f"jitter consensus needs at least 2 copies, got {copies}")
        if not 0 < jitter <= 0.1:
            raise ConfigError(f"the jitter must lie in (0, 0.1], got {jitter}")
        if not 0 <= shift <= 4:
            raise ConfigError(f"the shift must lie in [0, 4] pixels, got {shift}")
        super().__init__(oracle, copies)
        self._jitter = jitter
        self._shift = shift
        self._generator = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        copies = images.repeat_interleave(self.queries_per_image, dim=0)
        if self._shift:  # every copy moved by its own offset (the first one too), filled with zeros
            copies = random_shift(copies, self._shift, self._generator)
        # Jitter of a couple of grey levels: invisible to the victim, enough to change every exact hash.
        noise = (torch.rand(copies.shape, generator=self._generator) * 2 - 1) * self._jitter
        answers = self._oracle.query((copies + noise).clamp(0, 1))
        answers = answers.view(len(images), self.queries_per_image, -1)
        top = answers.argmax(2)
        agree = (top == top[:, :1]).all(1)
        mean = answers.mean(1)
        mean[~agree] = float("nan")  # paid for, then dropped by the driver
        return mean


@dataclass(frozen=True)
class CoverTraffic:
    """Adds `cover` natural pool images per synthetic or chosen image of the wrapped strategy."""

    inner: Strategy
    cover: float = 4.0  # cover images per inner query: 4 keeps an all-OOD stream at a 20% OOD rate

    @property
    def name(self) -> str:
        return f"{self.inner.name}+cover"

    def check(self, pool: Pool, budget: int, output: OutputMode) -> None:
        if not self.cover > 0:
            raise ConfigError(f"cover traffic needs a positive ratio, got {self.cover}")
        self.inner.check(pool, math.floor(budget / (1 + self.cover)), output)

    def next_queries(self, state: AttackState) -> Queries | None:
        inner_share = max(1, math.floor(state.remaining / (1 + self.cover)))
        # The wrapped strategy sees the whole transfer set: cover answers are real answers too.
        inner_state = AttackState(
            state.pool,
            state.transfer,
            inner_share,
            state.output,
            state.generator,
            state.train_clone,
            state.round,
        )
        chosen = self.inner.next_queries(inner_state)
        if chosen is None or len(chosen) == 0:
            return None
        count = min(state.remaining - len(chosen), math.ceil(self.cover * len(chosen)))
        cover = torch.randperm(len(state.pool), generator=state.generator)[:count]
        images = torch.cat([chosen.images, state.pool.images[cover]])
        pool_index = torch.cat([chosen.pool_index, cover])
        order = torch.randperm(len(images), generator=state.generator)  # interleave: no tell-tale blocks
        return Queries(images[order], pool_index[order])
