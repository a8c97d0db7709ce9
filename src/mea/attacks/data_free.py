"""What every data-free attack shares: a query session, a replay memory, zeroth-order gradients.

A data-free attacker (DFME, MAZE, DFMS) owns no images.  It trains a generator that synthesises
queries and the clone at the same time, so, unlike pool strategies, it cannot hand the driver a
batch and wait for a clone trained afterwards: it needs each answer at once.  `steal` therefore
drives the oracle itself through a `Session`, which does the bookkeeping the driver does for pool
strategies: the budget (every image sent counts, forward-difference probes included), refusals
(the attack ends and the clone keeps what it learned), untrusted answers (NaN rows, dropped).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from tqdm.auto import tqdm

from mea import models
from mea.attacks.jbda import SYNTHETIC
from mea.attacks.strategy import Extraction, TransferSet
from mea.data.pools import Pool
from mea.errors import BudgetExhausted, ConfigError, Refused
from mea.oracle import Label, Oracle, OutputMode
from mea.seeding import derive_seed, generator
from mea.training import _progress_disabled

# Zero probabilities (top-k, rounded answers) before the logarithm: ln(1e-8) = -18.4 is far below
# any logit a softmax classifier reports with a non-zero probability in float32.
FLOOR = 1e-8


class AttackStopped(Exception):
    """The service refused the attacker: the attack ends with the clone as it is."""


class Session:
    """The attacker's side of the oracle for one data-free attack.

    `ask` answers a batch and charges it; it raises AttackStopped once the service refuses.  The
    answers go to `memory` (images as float16, half the memory) for strategies that replay them
    and for the run's record.
    """

    def __init__(
        self,
        oracle: Oracle,
        budget: int,
        memory: ReplayMemory,
        progress: bool,
        name: str,
        checkpoints: tuple[int, ...] = (),
        on_checkpoint: Callable[[int, nn.Module], None] | None = None,
    ) -> None:
        self._oracle = oracle
        self._checkpoints = sorted(checkpoints)
        self._on_checkpoint = on_checkpoint
        self._budget = budget
        self._start = oracle.queries_used
        self.query_time_s = 0.0
        self.excluded_time_s = 0.0  # checkpoint evaluations
        self.refused_after: int | None = None
        self.replay = memory
        self._bar = tqdm(total=budget, desc=f"{name} queries", unit="img", disable=not progress or _progress_disabled())

    @property
    def output(self) -> OutputMode:
        return self._oracle.output

    @property
    def used(self) -> int:
        return self._oracle.queries_used - self._start

    @property
    def remaining(self) -> int:
        return self._budget - self.used

    def ask(self, images: torch.Tensor) -> torch.Tensor:
        """The victim's answers to `images` (B, C, H, W) in [0, 1]; NaN rows are answers not to trust."""
        if len(images) > self.remaining:
            raise BudgetExhausted(f"a data-free step asked for {len(images)} queries with {self.remaining} left")
        tick = time.perf_counter()
        before = self.used
        try:
            answers = self._oracle.query(images.detach())
        except Refused as refusal:
            self.refused_after = self.used
            if refusal.answers is not None:
                self.replay.add(images[: len(refusal.answers)], refusal.answers)
            raise AttackStopped from refusal
        finally:
            self.query_time_s += time.perf_counter() - tick
            self._bar.update(self.used - before)
        self.replay.add(images, answers)
        return answers

    def next_round(self, cost: int, clone: nn.Module) -> bool:
        """Whether the budget pays for a round of `cost` queries.  Strategies ask before each round.

        The clone as it stands is what a run whose budget ends before this round would return, so it
        is handed to the checkpoint callback for every checkpoint that the round would overshoot
        (evaluation time is not counted as attack time).
        """
        while self._checkpoints and self.used + cost > self._checkpoints[0]:
            self.checkpoint(self._checkpoints.pop(0), clone)
        return self.remaining >= cost

    def checkpoint(self, budget: int, clone: nn.Module) -> None:
        if self._on_checkpoint is None:
            return
        tick = time.perf_counter()
        self._on_checkpoint(budget, clone)
        clone.train()
        self.excluded_time_s += time.perf_counter() - tick

    def finish(self, clone: nn.Module) -> None:
        """The attack ended (budget spent or refused): checkpoints not reached get the final clone."""
        while self._checkpoints:
            self.checkpoint(self._checkpoints.pop(0), clone)
        self._bar.close()


class ReplayMemory:
    """Remembered answered queries for experience replay (MAZE, Kariyappa et al. 2021).

    MAZE keeps the latest answers (a ring buffer).  With `uniform`, the memory keeps a uniform
    sample of every answer so far instead (reservoir sampling, Vitter 1985, Algorithm R; `rng`
    draws which answers stay), so that an attack whose generator drifts does not forget the
    regions its early queries covered.  Which is better depends on the attack (measured: DFMS
    gains ten points at 500,000 queries from the uniform sample, DFME loses two).
    """

    def __init__(self, capacity: int, rng: torch.Generator, uniform: bool = False) -> None:
        self.capacity = capacity
        self.uniform = uniform
        self._rng = rng
        self._images: torch.Tensor | None = None
        self._answers: torch.Tensor | None = None
        self._seen = 0  # answers offered so far (untrusted ones not counted)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, images: torch.Tensor, answers: torch.Tensor) -> None:
        kept = ~answers.isnan().any(1)
        images, answers = images.detach()[kept], answers[kept]
        if self.capacity == 0 or len(images) == 0:
            return
        if self._images is None:
            self._images = torch.empty(self.capacity, *images.shape[1:], dtype=torch.float16)
            self._answers = torch.empty(self.capacity, answers.shape[1])
        order = self._seen + torch.arange(len(images))  # each answer's rank among all answers
        self._seen += len(images)
        if not self.uniform:  # a ring: the latest `capacity` answers, each in its own slot
            rows = order[-self.capacity :] % self.capacity
            self._images[rows] = images[-self.capacity :].to(torch.float16)
            self._answers[rows] = answers[-self.capacity :].float()
            self._size = min(self._seen, self.capacity)
            return
        # Algorithm R: answer i fills a free slot, or replaces slot j drawn uniformly from [0, i]
        # when j < capacity.  Where one batch draws a slot twice, the later answer stays.
        drawn = (torch.rand(len(images), generator=self._rng, dtype=torch.float64) * (order + 1)).long()
        slots = torch.where(order < self.capacity, order, drawn)
        last = {int(slot): i for i, slot in enumerate(slots.tolist()) if slot < self.capacity}
        if last:
            rows, sources = torch.tensor(list(last)), torch.tensor(list(last.values()))
            self._images[rows] = images[sources].to(torch.float16)
            self._answers[rows] = answers[sources].float()
        self._size = min(self._seen, self.capacity)

    def sample(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, self._size, (n,), generator=rng)
        assert self._images is not None
        return self._images[index].float(), self._answers[index]

    def as_transfer_set(self) -> TransferSet:
        transfer = TransferSet()
        if self._images is not None and self._size:
            size = self._size
            transfer.add(self._images[:size].float(), self._answers[:size], torch.full((size,), SYNTHETIC))
        return transfer


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of each probability row (the last dimension)."""
    return -(probabilities * probabilities.clamp_min(FLOOR).log()).sum(-1)


def approximate_logits(answers: torch.Tensor) -> torch.Tensor:
    """Logits recovered from probability answers up to a per-row constant, fixed by a zero mean
    (DFME's "mean" logit correction): log p - mean(log p)."""
    logs = answers.clamp_min(FLOOR).log()
    return logs - logs.mean(1, keepdim=True)


def forward_difference_gradient(
    loss: Callable[[torch.Tensor], torch.Tensor],
    pre_images: torch.Tensor,
    directions: int,
    epsilon: float,
    rng: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroth-order estimate of d loss / d pre-image, per image (Truong et al. 2021, eq. 4; after
    Nesterov & Spokoiny 2017): for `directions` random unit vectors u,
    grad ~ d / m * sum_u (loss(x + eps u) - loss(x)) / eps * u, where d is the input's size.

    `loss` maps a batch of pre-images to one value per image (it queries the victim, so the batch
    costs len(pre_images) * (directions + 1) queries).  Returns (estimate, loss at the images).
    """
    n, size = len(pre_images), pre_images[0].numel()
    u = torch.randn(n, directions, size, generator=rng)
    u /= u.norm(dim=2, keepdim=True)
    u = u.view(n, directions, *pre_images.shape[1:])
    points = torch.cat([pre_images.unsqueeze(1), pre_images.unsqueeze(1) + epsilon * u], dim=1)
    values = loss(points.flatten(0, 1)).view(n, directions + 1)
    differences = (values[:, 1:] - values[:, :1]).nan_to_num(0.0)  # an untrusted answer tells nothing
    estimate = (size / directions) * (differences / epsilon).view(n, directions, *[1] * (pre_images.ndim - 1))
    return (estimate * u).sum(1), values[:, 0]


@runtime_checkable
class DataFreeStrategy(Protocol):
    """An attack that synthesises its own queries and trains the clone while it asks."""

    name: str
    needs_probabilities: bool
    remembers_all: bool  # replay a uniform sample of every answer, not the latest (ReplayMemory)

    def check(self, pool: Pool | None, budget: int, output: OutputMode) -> None: ...

    def steal(self, session: Session, clone: nn.Module, pool: Pool | None, seed: int) -> None:
        """Spend the session's budget, training `clone` in place; return early when refused."""
        ...


def check_output(strategy: DataFreeStrategy, output: OutputMode) -> None:
    if strategy.needs_probabilities and isinstance(output, Label):
        raise ConfigError(
            f"{strategy.name} estimates gradients from probability answers and cannot learn from labels alone; "
            "use the label-only data-free attack (--strategy dfms) or an oracle that returns probabilities"
        )


def check_budget(strategy_name: str, budget: int, per_step: int, what: str) -> None:
    if budget < per_step:
        raise ConfigError(
            f"{strategy_name} spends {per_step:,} queries on {what}; raise --queries to at least {per_step:,}"
        )


def run_data_free(
    oracle: Oracle,
    pool: Pool | None,
    strategy: DataFreeStrategy,
    budget: int,
    clone_arch: str,
    seed: int,
    progress: bool,
    memory: int = 100_000,
    checkpoints: tuple[int, ...] = (),
    on_checkpoint: Callable[[int, nn.Module], None] | None = None,
) -> Extraction:
    """Run a data-free strategy: a fresh clone from the run's seed, trained by the strategy as it queries.

    `on_checkpoint(b, clone)` sees the clone that a run with budget b (one of `checkpoints`) returns.
    """
    strategy.check(pool, budget, oracle.output)
    clone = models.build(clone_arch, derive_seed(seed, "clone-init"), oracle.signature)
    replay = ReplayMemory(memory, generator(seed, "data-free:memory"), uniform=strategy.remembers_all)
    session = Session(oracle, budget, replay, progress, strategy.name, checkpoints, on_checkpoint)
    start = time.perf_counter()
    with contextlib.suppress(AttackStopped):  # refused: the clone keeps what it learned
        strategy.steal(session, clone, pool, seed)
    session.finish(clone)
    clone.eval()
    elapsed = time.perf_counter() - start - session.excluded_time_s
    return Extraction(
        clone,
        session.replay.as_transfer_set(),
        session.used,
        session.query_time_s,
        elapsed - session.query_time_s,
        elapsed,
        session.refused_after,
    )


def doubling_batch(first: int, largest: int, double_every: int, used: int) -> int:
    """`first` images per batch, doubled each time the queries spent double past `double_every`,
    up to `largest`.  Small batches make the first queries count (many rounds to learn from);
    large ones keep millions of queries affordable on a CPU."""
    doublings = int(math.log2(1 + used / double_every))
    return min(largest, first * 2**doublings)


def strategy_rng(seed: int, name: str) -> torch.Generator:
    return generator(seed, f"data-free:{name}")
