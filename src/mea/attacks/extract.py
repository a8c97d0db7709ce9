"""The attack driver: spends the budget on a strategy's queries, then trains the clone on the answers.

It owns what every attack shares, so that strategies stay small: budget accounting (every query
counts, including those spent exploring), the transfer set, clone training and timing.  Each call
builds a fresh clone from its own seed, so results at different budgets never share weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch import nn

from mea import models
from mea.attacks.strategy import AttackState, Strategy, TransferSet
from mea.data.pools import Pool
from mea.errors import BudgetExhausted, ConfigError
from mea.oracle import Oracle
from mea.seeding import derive_seed, generator
from mea.training import TrainConfig, fit


@dataclass(frozen=True)
class Extraction:
    clone: nn.Module
    transfer: TransferSet
    queries: int
    query_time_s: float
    train_time_s: float
    total_time_s: float


def extract(
    oracle: Oracle,
    pool: Pool,
    strategy: Strategy,
    budget: int,
    clone_arch: str = "lenet5",
    train: TrainConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Extraction:
    """Run `strategy` against `oracle` for at most `budget` queries and train a clone."""
    train = train or TrainConfig()
    models.check_arch(clone_arch)
    if budget <= 0:
        raise ConfigError(f"the query budget must be a positive number of images, got {budget}")
    if oracle.budget is not None and oracle.budget - oracle.queries_used < budget:
        raise BudgetExhausted(
            f"the oracle has {oracle.budget - oracle.queries_used} queries left, fewer than the {budget} asked; "
            "lower --queries or raise the key's quota"
        )
    if train.true_label_weight > 0 and pool.labels is None:
        raise ConfigError(f"true-label weight > 0 needs a labelled pool; {pool.name} has no labels")
    strategy.check(pool, budget, oracle.output)

    start = time.perf_counter()
    transfer = TransferSet()
    training_generator = generator(seed, "training")
    train_time = query_time = 0.0

    def train_clone() -> nn.Module:
        nonlocal train_time
        clone = models.build(clone_arch, derive_seed(seed, "clone-init"))
        labels = None if pool.labels is None or train.true_label_weight == 0 else pool.labels[transfer.pool_index]
        report = fit(
            clone,
            transfer.images,
            transfer.answers,
            train,
            training_generator,
            labels,
            description=f"clone ({len(transfer)} queries)",
            progress=progress,
        )
        train_time += report.time_s
        return clone

    state = AttackState(pool, transfer, budget, oracle.output, generator(seed, "strategy"), train_clone)
    while state.remaining > 0:
        queries = strategy.next_queries(state)
        if queries is None or len(queries) == 0:
            break
        if len(queries) > state.remaining:
            raise RuntimeError(f"strategy {strategy.name} asked for {len(queries)} queries with {state.remaining} left")
        tick = time.perf_counter()
        answers = oracle.query(queries.images)
        query_time += time.perf_counter() - tick
        transfer.add(queries.images, answers, queries.pool_index)
        state.remaining = budget - len(transfer)
    clone = train_clone()
    return Extraction(clone, transfer, len(transfer), query_time, train_time, time.perf_counter() - start)
