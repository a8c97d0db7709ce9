"""One training loop for victims and clones: tensors in memory, Adam, and nothing in the way.

Soft-label training follows knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge
in a Neural Network"): the attacker turns each answer back into log-probabilities and matches them
at a temperature T, which recovers the "dark knowledge" in the small probabilities that a
confident victim hides at T = 1.  With T = 1 it is plain cross-entropy against the answers.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mea.errors import ConfigError
from mea.models import as_input

# Zero probabilities (top-k, label and rounded answers) become this before the logarithm, so a
# one-hot answer turns into a smoothed target rather than an infinite one.
_PROBABILITY_FLOOR = 1e-8


class Schedule(StrEnum):
    CONSTANT = "constant"  # the study's setting
    ONE_CYCLE = "one-cycle"  # Smith & Topin 2017, "Super-convergence"


class LabelLoss(StrEnum):
    SOFT = "soft"  # cross-entropy against the (tempered) answers
    HARD = "hard"  # cross-entropy against the answers' top-1 class


@dataclass(frozen=True)
class TrainConfig:
    """How to train one model.  The defaults are the clone's; `VICTIM_TRAINING` is the victim's."""

    epochs: int = 3
    lr: float = 3e-2  # the peak rate under one-cycle, the rate itself under constant
    batch_size: int = 256
    schedule: Schedule = Schedule.ONE_CYCLE
    loss: LabelLoss = LabelLoss.SOFT
    temperature: float = 4.0
    true_label_weight: float = 0.0  # alpha: weight of the pool's own true labels, 0 = not used
    shift: int = 0  # augmentation: random translations of up to this many pixels, 0 = off
    # Small transfer sets get more epochs, up to this many optimiser steps in all: three epochs of
    # 1,000 queries are 12 steps, far too few to fit anything.  0 = exactly `epochs` epochs.
    min_steps: int = 500
    # Semi-supervised clones (mea.attacks.pseudo_labels): rounds of self-training on the attacker's
    # unqueried pool, each of this many epochs.  0 rounds = the answers alone.
    pseudo_label_rounds: int = 0
    pseudo_label_epochs: int = 2

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be positive, got {self.lr}; e.g. --lr 0.001")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.true_label_weight <= 1.0:
            raise ConfigError(f"true-label weight must lie in [0, 1], got {self.true_label_weight}")
        if self.min_steps < 0:
            raise ConfigError(f"min-steps must be >= 0, got {self.min_steps}")
        if self.pseudo_label_rounds < 0 or self.pseudo_label_epochs <= 0:
            raise ConfigError(
                "pseudo-label rounds must be >= 0 and pseudo-label epochs positive, got "
                f"{self.pseudo_label_rounds} and {self.pseudo_label_epochs}"
            )
        if not 0 <= self.shift <= 8:
            raise ConfigError(f"shift must lie in [0, 8] pixels, got {self.shift}")
        object.__setattr__(self, "schedule", parse_choice(Schedule, self.schedule, "schedule"))
        object.__setattr__(self, "loss", parse_choice(LabelLoss, self.loss, "loss"))


def parse_choice(enum: type[StrEnum], value: str, what: str):
    """`value` as a member of `enum`, or a ConfigError naming the choices."""
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(e.value for e in enum)}") from None


VICTIM_TRAINING = TrainConfig(epochs=15, lr=3e-3, batch_size=128, loss=LabelLoss.HARD, temperature=1.0, shift=2)


@dataclass(frozen=True)
class TrainReport:
    time_s: float
    epochs: int
    steps: int
    epoch_losses: tuple[float, ...] = field(default_factory=tuple)


def soft_targets(answers: torch.Tensor, temperature: float) -> torch.Tensor:
    """Answers re-tempered: softmax(log(answers) / T), rows summing to 1."""
    return F.softmax(answers.clamp_min(_PROBABILITY_FLOOR).log() / temperature, dim=1)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random offset of up to max_shift pixels, filling with zeros."""
    n = len(images)
    padded = F.pad(images, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
    grid = torch.arange(28)
    rows, cols = (dy + grid.view(1, 28, 1)), (dx + grid.view(1, 1, 28))
    return padded[torch.arange(n).view(n, 1, 1), 0, rows, cols].unsqueeze(1)


def _progress_disabled() -> bool:
    return os.environ.get("CI") == "true" or not sys.stderr.isatty()


def fit(
    model: nn.Module,
    images: torch.Tensor,
    answers: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    true_labels: torch.Tensor | None = None,
    description: str = "training",
    progress: bool = True,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> TrainReport:
    """Train model in place on (images, answers), answers being (N, 10) probability-like rows.

    `on_epoch_end(epoch, model)` runs after each epoch (for evaluation); its time is not counted.
    """
    n = len(images)
    if n == 0:
        raise ConfigError("nothing to train on: the transfer set is empty")
    if config.true_label_weight > 0 and true_labels is None:
        raise ConfigError("true-label weight > 0 needs a pool with labels (mnist-train or fashion-mnist)")
    start = time.perf_counter()
    model.train()
    images = as_input(images)
    soft = config.loss is LabelLoss.SOFT
    targets = soft_targets(answers, config.temperature) if soft else answers.argmax(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    batches_per_epoch = math.ceil(n / config.batch_size)
    epochs = max(config.epochs, math.ceil(config.min_steps / batches_per_epoch))
    total_steps = epochs * batches_per_epoch
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)
        if config.schedule is Schedule.ONE_CYCLE
        else None
    )
    alpha, temperature = config.true_label_weight, config.temperature
    epoch_losses = []
    bar = tqdm(
        total=total_steps, desc=description, unit="step", disable=not progress or _progress_disabled(), leave=False
    )
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        running = torch.zeros(())
        for batch in order.split(config.batch_size):
            x = images[batch]
            if config.shift:
                x = as_input(random_shift(x, config.shift, generator))
            logits = model(x)
            if config.loss is LabelLoss.SOFT:
                loss = -(targets[batch] * F.log_softmax(logits / temperature, dim=1)).sum(1).mean() * temperature**2
            else:
                loss = F.cross_entropy(logits, targets[batch])
            if alpha > 0:
                assert true_labels is not None
                loss = (1 - alpha) * loss + alpha * F.cross_entropy(logits, true_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            running += loss.detach() * len(batch)
            bar.update()
        epoch_losses.append(running.item() / n)
        bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
        if on_epoch_end is not None:
            paused = time.perf_counter()
            on_epoch_end(len(epoch_losses), model)
            model.train()
            start += time.perf_counter() - paused
    bar.close()
    model.eval()
    return TrainReport(time.perf_counter() - start, epochs, total_steps, tuple(epoch_losses))


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Logits of a model the experimenter owns (evaluation only; attacks use the oracle)."""
    model.eval()
    images = as_input(images)
    return torch.cat([model(images[i : i + chunk]) for i in range(0, len(images), chunk)])
