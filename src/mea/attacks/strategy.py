"""The attack strategy interface: given what the attacker has seen so far, choose the next queries.

A strategy only decides *which* images to query.  The driver (`mea.attacks.extract`) owns what
every attack shares: budget accounting, the transfer set, training and evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from mea.data.pools import Pool
from mea.oracle import OutputMode


@dataclass
class TransferSet:
    """Every query the attacker made and the answer it got, in order.

    `pool_index` is the query's row in the attacker's pool, or -1 for a synthesised image.
    """

    images: torch.Tensor = field(default_factory=lambda: torch.empty(0, 1, 28, 28))
    answers: torch.Tensor = field(default_factory=lambda: torch.empty(0, 10))
    pool_index: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.images)

    def add(self, images: torch.Tensor, answers: torch.Tensor, pool_index: torch.Tensor) -> None:
        if len(self) == 0:  # the first batch sets the victim's image shape and class count
            self.images, self.answers, self.pool_index = images, answers, pool_index
            return
        self.images = torch.cat([self.images, images])
        self.answers = torch.cat([self.answers, answers])
        self.pool_index = torch.cat([self.pool_index, pool_index])

    def queried(self, pool_size: int) -> torch.Tensor:
        """A boolean mask over the attacker's pool: True where that image has been queried."""
        mask = torch.zeros(pool_size, dtype=torch.bool)
        mask[self.pool_index[self.pool_index >= 0]] = True
        return mask


@dataclass(frozen=True)
class Extraction:
    """What an attack ends with: the clone, what it was trained on, and what it cost."""

    clone: nn.Module
    transfer: TransferSet
    queries: int
    query_time_s: float
    train_time_s: float
    total_time_s: float
    refused_after: int | None = None  # queries answered before the service refused the attacker


@dataclass(frozen=True)
class Queries:
    """Images a strategy wants answered, with their pool rows (-1 where synthesised)."""

    images: torch.Tensor
    pool_index: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.images) != len(self.pool_index):
            raise ValueError(f"{len(self.images)} images but {len(self.pool_index)} pool indices")

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class AttackState:
    """What a strategy may look at when it chooses: never the victim, only its answers."""

    pool: Pool
    transfer: TransferSet
    remaining: int  # images the budget still pays for; a strategy must not ask for more
    output: OutputMode
    generator: torch.Generator
    train_clone: Callable[[], nn.Module]  # trains a fresh clone on the transfer set so far
    round: int = 0  # how many batches of queries have been answered


class Strategy(Protocol):
    """Chooses queries in rounds until the budget is spent or it has nothing more to ask."""

    name: str

    def check(self, pool: Pool, budget: int, output: OutputMode) -> None:
        """Raise a ConfigError if this strategy cannot run with this pool, budget or output mode."""
        ...

    def next_queries(self, state: AttackState) -> Queries | None:
        """The next batch of at most `state.remaining` images, or None when done."""
        ...
