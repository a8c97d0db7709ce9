"""The attack driver: spends the budget on a strategy's queries, then trains the clone on the answers.

It owns what every attack shares, so that strategies stay small: budget accounting (every query
counts, including those spent exploring), the transfer set, clone training and timing.  Each call
builds a fresh clone from its own seed, so results at different budgets never share weights.
"""

from __future__ import annotations

import time

from torch import nn

from mea import models
from mea.attacks.data_free import DataFreeStrategy, run_data_free
from mea.attacks.pseudo_labels import self_train
from mea.attacks.strategy import AttackState, Extraction, Strategy, TransferSet
from mea.data.pools import Pool
from mea.errors import BudgetExhausted, ConfigError, Refused
from mea.oracle import Oracle
from mea.seeding import derive_seed, generator
from mea.training import TrainConfig, fit


def extract(
    oracle: Oracle,
    pool: Pool | None,
    strategy: Strategy | DataFreeStrategy,
    budget: int,
    clone_arch: str = "lenet5",
    train: TrainConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Extraction:
    """Run `strategy` against `oracle` for at most `budget` queries and train a clone.

    A data-free strategy needs no pool (None) and trains the clone itself as it queries; `train`
    does not apply to it.
    """
    train = train or TrainConfig()
    models.check_arch(clone_arch)
    if budget <= 0:
        raise ConfigError(f"the query budget must be a positive number of images, got {budget}")
    if oracle.budget is not None and oracle.budget - oracle.queries_used < budget:
        raise BudgetExhausted(
            f"the oracle has {oracle.budget - oracle.queries_used} queries left, fewer than the {budget} asked; "
            "lower --queries or raise the key's quota"
        )
    if isinstance(strategy, DataFreeStrategy):
        return run_data_free(oracle, pool, strategy, budget, clone_arch, seed, progress)
    if pool is None:
        raise ConfigError(f"{strategy.name} chooses its queries from a pool; name one with --pool")
    signature = oracle.signature
    if tuple(pool.images.shape[1:]) != signature.image_shape:
        raise ConfigError(
            f"the pool {pool.name} holds {'x'.join(map(str, pool.images.shape[1:]))} images, but the victim takes "
            f"{signature.shape_text}; give a pool of its shape"
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
        clone = models.build(clone_arch, derive_seed(seed, "clone-init"), signature)
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

    # The budget is counted where it is spent, at the oracle: a wrapper that asks several times per
    # image (an attacker averaging noise) pays for every copy.
    per_image = getattr(oracle, "queries_per_image", 1)
    spent_before = oracle.queries_used

    def remaining() -> int:
        return (budget - (oracle.queries_used - spent_before)) // per_image

    refused_after = None
    state = AttackState(pool, transfer, remaining(), oracle.output, generator(seed, "strategy"), train_clone)
    while state.remaining > 0:
        queries = strategy.next_queries(state)
        if queries is None or len(queries) == 0:
            break
        if len(queries) > state.remaining:
            raise RuntimeError(f"strategy {strategy.name} asked for {len(queries)} queries with {state.remaining} left")
        tick = time.perf_counter()
        try:
            answers = oracle.query(queries.images)
        except Refused as refusal:
            # A service that stops answering ends the attack; the clone learns from what it got.
            refused_after = oracle.queries_used - spent_before
            if refusal.answers is not None:
                got = len(refusal.answers)
                transfer.add(queries.images[:got], refusal.answers, queries.pool_index[:got])
            break
        finally:
            query_time += time.perf_counter() - tick
        # An answer the attacker does not trust comes back as a row of NaNs: paid for, then dropped.
        kept = ~answers.isnan().any(1)
        transfer.add(queries.images[kept], answers[kept], queries.pool_index[kept])
        state.remaining = remaining()
        state.round += 1
    if len(transfer) == 0:
        why = "the service refused it at once" if refused_after is not None else f"it kept none of its {budget} answers"
        raise ConfigError(f"the attacker has nothing to train a clone on: {why}")
    clone = train_clone()
    if train.pseudo_label_rounds:
        unqueried = ~transfer.queried(len(pool))
        clone, seconds = self_train(
            lambda round_: models.build(clone_arch, derive_seed(seed, f"student-{round_}"), signature),
            clone,
            transfer.images,
            transfer.answers,
            pool.images[unqueried],
            train,
            training_generator,
            progress,
        )
        train_time += seconds
    spent = oracle.queries_used - spent_before
    return Extraction(clone, transfer, spent, query_time, train_time, time.perf_counter() - start, refused_after)
