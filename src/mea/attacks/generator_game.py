"""The game DFME and MAZE play: a generator hunts for disagreement, the clone learns the victim there.

Each round: the generator takes a step toward images on which the clone disagrees most with the
victim, its gradient estimated by forward differences through the black box (the victim has none to
give); then the clone takes steps toward the victim's answers on fresh generator images, and on
answers replayed from memory (MAZE's experience replay).  What distinguishes the two attacks is
the disagreement they measure and their settings (`dfme.py`, `maze.py`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mea import models
from mea.attacks.data_free import (
    FLOOR,
    Session,
    approximate_logits,
    check_budget,
    check_output,
    doubling_batch,
    forward_difference_gradient,
    strategy_rng,
)
from mea.attacks.generators import make_generator, to_images
from mea.data.pools import Pool
from mea.errors import ConfigError
from mea.models import as_input
from mea.oracle import OutputMode
from mea.seeding import derive_seed


class Penalty(Protocol):
    def __call__(self, images: torch.Tensor, clone: nn.Module) -> torch.Tensor: ...


class Prior(Protocol):
    """What a detector-aware attacker believes in-distribution queries look like."""

    def check(self, pool: Pool | None) -> None: ...

    def fit(self, pool: Pool, rng: torch.Generator) -> Penalty: ...


class Disagreement(Protocol):
    """Per image, how far the clone's logits are from the victim's answers (probabilities)."""

    def __call__(self, clone_logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class LogitL1:
    """DFME's loss: mean absolute difference between the clone's logits and the victim's, recovered
    from its probabilities up to a constant (log p minus its mean)."""

    def __call__(self, clone_logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        return (clone_logits - approximate_logits(answers)).abs().mean(1)


@dataclass(frozen=True)
class KullbackLeibler:
    """MAZE's loss: KL(victim || clone) on the probabilities."""

    def __call__(self, clone_logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        answers = answers.clamp_min(FLOOR)
        return (answers * (answers.log() - F.log_softmax(clone_logits, dim=1))).sum(1)


@dataclass(frozen=True)
class GameSettings:
    """The knobs of the generator game."""

    generator: str = "dfme-small"
    batch_size: int = 32
    max_batch: int = 256
    double_every: int = 100_000
    directions: int = 1  # m: random directions per image in the gradient estimate
    epsilon: float = 1e-3  # forward-difference step on the pre-image
    generator_steps: int = 1
    clone_steps: int = 5
    replay_steps: int = 10  # clone steps on remembered answers after each round; 0 = none
    replay_batch: int = 128
    remember_all: bool = False  # replay a uniform sample of every answer, not the latest 100,000
    generator_lr: float = 5e-4
    clone_lr: float = 0.05
    # The clone's learning rate falls with the queries spent, clone_lr / sqrt(1 + used / clone_lr_decay)
    # (0 = constant).  It depends on the queries spent, never on the budget, so the clone after n
    # queries of a long run is still the clone a run with budget n returns.  With a constant rate,
    # DFME's and DFMS's clones peaked near 200,000 queries and lost 10-25 points by 1M (measured).
    clone_lr_decay: int = 100_000
    # The clone returned is an exponential moving average of the one trained (Polyak averaging),
    # which irons out the noise of a constant learning rate; 0 = the trained clone itself.
    average: float = 0.99

    def batch_at(self, used: int) -> int:
        return doubling_batch(self.batch_size, self.max_batch, self.double_every, used)

    def clone_lr_at(self, used: int) -> float:
        return self.clone_lr / math.sqrt(1 + used / self.clone_lr_decay) if self.clone_lr_decay else self.clone_lr

    def queries_per_round(self, batch: int) -> int:
        probes = self.generator_steps * batch * (self.directions + 1)
        return probes + self.clone_steps * batch


@dataclass(frozen=True)
class GeneratorGame:
    """A data-free strategy (see `mea.attacks.data_free.DataFreeStrategy`)."""

    name: str
    disagreement: Disagreement
    settings: GameSettings = GameSettings()
    needs_probabilities: bool = True
    # A detector-aware attacker's penalty on images it believes look out of distribution
    # (mea.attacks.detector_aware), added to the generator's loss with this weight.
    prior: Prior | None = None
    prior_weight: float = 0.0

    @property
    def remembers_all(self) -> bool:
        return self.settings.remember_all

    def check(self, pool: Pool | None, budget: int, output: OutputMode) -> None:
        check_output(self, output)
        if self.prior is not None:
            self.prior.check(pool)
        check_budget(self.name, budget, self.settings.queries_per_round(self.settings.batch_size), "one round")

    def steal(self, session: Session, clone: nn.Module, pool: Pool | None, seed: int) -> None:
        hp = self.settings
        rng = strategy_rng(seed, self.name)
        generator = make_generator(hp.generator, *generator_shape(clone), derive_seed(seed, "generator"))
        student = copy.deepcopy(clone)  # trained; `clone` follows it as a moving average
        averaged = WeightAverage(clone, student, hp.average)
        generator_opt = torch.optim.Adam(generator.parameters(), lr=hp.generator_lr)
        clone_opt = torch.optim.SGD(student.parameters(), lr=hp.clone_lr, momentum=0.9, weight_decay=5e-4)
        penalty = None if self.prior is None or not self.prior_weight else self.prior.fit(pool, rng)

        def negative_disagreement(pre_images: torch.Tensor) -> torch.Tensor:
            images = to_images(pre_images)
            answers = session.ask(images)
            with torch.no_grad():
                return -self.disagreement(student(as_input(images)), answers)

        # Nothing depends on the budget, so the clone after n queries of a long run is the clone a run
        # with budget n ends with (one run, one curve).
        while session.next_round(hp.queries_per_round(batch := hp.batch_at(session.used)), clone):
            set_learning_rate(clone_opt, hp.clone_lr_at(session.used))
            generator.train()
            for _ in range(hp.generator_steps):
                pre = generator(generator.sample_codes(batch, rng))
                gradient, _ = forward_difference_gradient(
                    negative_disagreement, pre.detach(), hp.directions, hp.epsilon, rng
                )
                generator_opt.zero_grad()
                loss = (pre * gradient / len(pre)).sum()  # d loss / d pre = the estimate
                if penalty is not None:
                    loss = loss + self.prior_weight * penalty(to_images(pre), student).mean()
                loss.backward()
                student.zero_grad(set_to_none=True)  # the penalty went through the clone
                generator_opt.step()
            for _ in range(hp.clone_steps):
                with torch.no_grad():
                    images = to_images(generator(generator.sample_codes(batch, rng)))
                clone_step(student, clone_opt, self.disagreement, images, session.ask(images))
                averaged.update()
            replay(session, student, clone_opt, self.disagreement, hp, rng, averaged)


def set_learning_rate(optimiser: torch.optim.Optimizer, lr: float) -> None:
    for group in optimiser.param_groups:
        group["lr"] = lr


def generator_shape(clone: nn.Module) -> tuple[int, int]:
    """(channels, side) of the images a generator makes for the clone's (and the victim's) input."""
    channels, height, width = models.signature_of(clone).image_shape
    if height != width:
        raise ConfigError(
            f"the data-free generators make square images; the victim takes {height}x{width}: attack it from a pool"
        )
    return channels, height


def clone_step(
    clone: nn.Module,
    optimiser: torch.optim.Optimizer,
    loss: Disagreement,
    images: torch.Tensor,
    answers: torch.Tensor,
) -> None:
    """One optimiser step of the clone toward the answers, skipping untrusted (NaN) ones."""
    kept = ~answers.isnan().any(1)
    if not kept.any():
        return
    clone.train()
    optimiser.zero_grad()
    loss(clone(as_input(images[kept])), answers[kept]).mean().backward()
    optimiser.step()


def replay(
    session: Session,
    clone: nn.Module,
    optimiser: torch.optim.Optimizer,
    loss: Disagreement,
    settings: GameSettings,
    rng: torch.Generator,
    averaged: WeightAverage,
) -> None:
    """The round's clone steps on remembered answers (MAZE's experience replay)."""
    for _ in range(settings.replay_steps if len(session.replay) else 0):
        clone_step(clone, optimiser, loss, *session.replay.sample(settings.replay_batch, rng))
        averaged.update()


class WeightAverage:
    """`target`'s weights kept at an exponential moving average of `source`'s."""

    def __init__(self, target: nn.Module, source: nn.Module, decay: float) -> None:
        self._target = list(target.parameters())
        self._source = list(source.parameters())
        self._decay = decay

    @torch.no_grad()
    def update(self) -> None:
        if self._decay == 0:
            torch._foreach_copy_(self._target, self._source)
        else:
            torch._foreach_lerp_(self._target, self._source, 1 - self._decay)
