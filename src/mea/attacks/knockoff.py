"""Knockoff Nets' adaptive strategy: a gradient bandit over the classes of a surrogate pool.

Orekondy et al. 2019, "Knockoff Nets: Stealing Functionality of Black-Box Models" (CVPR), Section
4.1.2: each class of the attacker's labelled surrogate data is an arm; an image is drawn from the
arm chosen by a softmax policy over preferences H, and the policy is updated with the gradient
bandit rule (Sutton & Barto 2018, Section 2.8),
    H_a <- H_a + lr (r - mean r) (1{a = chosen} - pi_a),
rewarding the victim's certainty (margin of its top two probabilities), diversity (how far the
answer lies from the recent mean answer) and the clone's loss on the answer (what it has yet to
learn), each normalised to [0, 1] by its running range.  The pool's labels only group images into
arms; they never reach the clone.  One simplification: the loss reward is the loss of the clone
trained on every answer so far (the paper updates the clone online).  The public Knockoff
repository leaves this policy unimplemented and users report ART's as no better than random; this
one is measured beside random selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mea.attacks.strategy import AttackState, Queries
from mea.data.pools import Pool
from mea.errors import ConfigError
from mea.oracle import Label, OutputMode
from mea.training import predict_logits


@dataclass
class _Bandit:
    arms: int
    lr: float
    preferences: torch.Tensor = field(init=False)
    reward_sum: float = 0.0
    pulls: int = 0
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.preferences = torch.zeros(self.arms, dtype=torch.float64)

    def policy(self) -> torch.Tensor:
        return F.softmax(self.preferences, dim=0)

    def normalised(self, name: str, values: torch.Tensor) -> torch.Tensor:
        low, high = self.ranges.get(name, (math.inf, -math.inf))
        low, high = min(low, float(values.min())), max(high, float(values.max()))
        self.ranges[name] = (low, high)
        return (values - low) / (high - low) if high > low else torch.zeros_like(values)

    def update(self, arm: int, reward: float) -> None:
        self.pulls += 1
        self.reward_sum += reward
        baseline = self.reward_sum / self.pulls
        pi = self.policy()
        indicator = torch.zeros(self.arms, dtype=torch.float64)
        indicator[arm] = 1.0
        self.preferences += self.lr * (reward - baseline) * (indicator - pi)


@dataclass(frozen=True)
class AdaptiveKnockoff:
    name: str = "knockoff-adaptive"
    rounds: int = 8  # the clone is retrained for the loss reward between rounds
    lr: float = 0.1

    def check(self, pool: Pool, budget: int, output: OutputMode) -> None:
        if pool.labels is None:
            raise ConfigError(
                f"{self.name} draws from the classes of a labelled surrogate pool; {pool.name} has no labels, "
                "use a built-in dataset's pool (see `mea attack --help`) or your own labelled images by path"
            )
        if isinstance(output, Label):
            raise ConfigError(
                f"{self.name} rewards the victim's certainty, which a label-only answer does not show; it runs with "
                "probabilities, top-k or rounded outputs"
            )
        if budget > len(pool):
            raise ConfigError(f"a budget of {budget} queries exceeds the {pool.name} pool ({len(pool)} images)")

    def next_queries(self, state: AttackState) -> Queries | None:
        if state.remaining <= 0:
            return None
        pool, transfer = state.pool, state.transfer
        assert pool.labels is not None
        arms = int(pool.labels.max()) + 1
        bandit = self._replay(state, arms)
        budget = len(transfer) + state.remaining
        size = min(state.remaining, math.ceil(budget / self.rounds))
        unqueried = ~transfer.queried(len(pool))
        # Each arm's unqueried pool rows, ascending; a pick is removed from its arm's list.
        free_rows = [((pool.labels == arm) & unqueried).nonzero().squeeze(1) for arm in range(arms)]
        chosen = []
        for _ in range(size):
            pi = bandit.policy()
            while True:  # an exhausted arm is never drawn again
                arm = int(torch.multinomial(pi, 1, generator=state.generator))
                free = free_rows[arm]
                if len(free):
                    break
                pi = pi.clone()
                pi[arm] = 0.0
            position = int(torch.randint(len(free), (1,), generator=state.generator))
            chosen.append(int(free[position]))
            free_rows[arm] = torch.cat([free[:position], free[position + 1 :]])
            # Within a round the answers are not known yet: rewards arrive with the next round's replay.
        index = torch.tensor(chosen, dtype=torch.long)
        return Queries(pool.images[index], index)

    def _replay(self, state: AttackState, arms: int) -> _Bandit:
        """The bandit's state after every answer so far, recomputed from the transfer set (no hidden state)."""
        bandit = _Bandit(arms, self.lr)
        transfer = state.transfer
        if len(transfer) == 0:
            return bandit
        clone = state.train_clone()
        answers = transfer.answers.clamp_min(1e-12)
        top2 = answers.topk(2, dim=1).values
        certainty = bandit.normalised("certainty", top2[:, 0] - top2[:, 1])
        # Diversity: distance of each answer from the mean of the answers before it.
        running = answers.cumsum(0) / torch.arange(1, len(answers) + 1).unsqueeze(1)
        previous = torch.cat([answers[:1], running[:-1]])
        diversity = bandit.normalised("diversity", (answers - previous).norm(dim=1))
        clone_log = F.log_softmax(predict_logits(clone, transfer.images), dim=1)
        loss = bandit.normalised("loss", -(answers * clone_log).sum(1))
        rewards = (certainty + diversity + loss).double()
        assert state.pool.labels is not None
        for arm, reward in zip(state.pool.labels[transfer.pool_index].tolist(), rewards.tolist(), strict=True):
            bandit.update(arm, reward)
        return bandit
