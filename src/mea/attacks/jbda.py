"""Jacobian-based dataset augmentation (JBDA).

Papernot et al. 2017, "Practical Black-Box Attacks against Machine Learning" (AsiaCCS), Algorithm 1:
start from a small seed set (150 images for MNIST), label it with the victim, train the substitute,
then grow the set by stepping every image along the sign of the substitute's gradient of the
victim's label, S <- S u {x + lambda * sign(dF_y(x)/dx)}, and repeat.  Each round doubles the set.
Section 6.2's refinement, periodic step size, flips the sign of lambda every `reversal_period`
rounds so that the set oscillates around the boundary instead of drifting away from the data.
The targeted variant (`jbda-tr`, after Juuti et al. 2019, "PRADA", T-RND) steps towards a random
other class instead, which spreads the synthetic points over more decision boundaries.

Only the victim's top-1 label is used, so JBDA runs in every output mode, label-only included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mea.attacks.strategy import AttackState, Queries
from mea.data.pools import Pool
from mea.errors import ConfigError
from mea.models import as_input
from mea.oracle import OutputMode

SYNTHETIC = -1  # pool_index of an image the attacker made


def jacobian_step(clone: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor, step: float) -> torch.Tensor:
    """images + step * sign(d clone_logit[class] / d image), clipped to the valid pixel range."""
    clone.eval()
    x = as_input(images.clone()).requires_grad_(True)
    (gradient,) = torch.autograd.grad(clone(x).gather(1, classes.view(-1, 1)).sum(), x)
    return (images + step * gradient.sign()).clamp_(0.0, 1.0).contiguous()


@dataclass(frozen=True)
class JacobianAugmentation:
    """Seed set from the pool, then Jacobian-augmented synthetic rounds until the budget is spent."""

    name: str = "jbda"
    seed_size: int = 150
    step: float = 0.1  # lambda, in pixel units of [0, 1]
    reversal_period: int = 3  # tau: lambda changes sign every tau rounds; 0 = never
    targeted: bool = False  # step towards a random other class (jbda-tr) instead of the answer's
    chunk: int = 2048  # images per gradient computation

    def check(self, pool: Pool, budget: int, output: OutputMode) -> None:
        if self.seed_size > len(pool):
            raise ConfigError(
                f"{self.name} needs {self.seed_size} seed images but the {pool.name} pool has {len(pool)}; "
                "choose a larger pool"
            )
        if budget < self.seed_size:
            raise ConfigError(
                f"{self.name} spends {self.seed_size} queries on its seed set alone; raise --queries to at least "
                f"{self.seed_size}"
            )

    def next_queries(self, state: AttackState) -> Queries | None:
        if state.remaining <= 0:
            return None
        if state.round == 0:
            index = torch.randperm(len(state.pool), generator=state.generator)[: self.seed_size]
            return Queries(state.pool.images[index], index)
        clone = state.train_clone()
        sources = state.transfer.images
        labels = state.transfer.answers.argmax(1)
        if self.targeted:
            classes = state.transfer.answers.shape[1]
            offset = torch.randint(1, classes, (len(labels),), generator=state.generator)
            labels = (labels + offset) % classes
        sign = -1.0 if self.reversal_period and ((state.round - 1) // self.reversal_period) % 2 else 1.0
        if len(sources) > state.remaining:  # the last round: augment a random subset that the budget pays for
            keep = torch.randperm(len(sources), generator=state.generator)[: state.remaining]
            sources, labels = sources[keep], labels[keep]
        new = torch.cat(
            [
                jacobian_step(clone, sources[i : i + self.chunk], labels[i : i + self.chunk], sign * self.step)
                for i in range(0, len(sources), self.chunk)
            ]
        )
        return Queries(new, torch.full((len(new),), SYNTHETIC, dtype=torch.long))
