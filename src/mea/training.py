"""One training loop for victims and clones: tensors in memory, Adam, and nothing in the way.

Soft-label training follows knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge
in a Neural Network"): the attacker turns each answer back into log-probabilities and matches them
at a temperature T, which recovers the "dark knowledge" in the small probabilities that a
confident victim hides at T = 1.  With T = 1 it is plain cross-entropy against the answers.

Logit matching (Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?") goes to the limit that
distillation approaches at high T: log(p) is the victim's logit vector up to a constant per row, so
the clone regresses its centred logits on the answers' centred log-probabilities (a Huber loss,
so that a class the victim rules out by 60 nats does not outweigh the rest).  Exact float32
probabilities carry logits down to about 1e-38; rounded or one-hot answers do not, and train
with `soft` instead.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mea import threads

# Re-exported: the configuration lives in mea.config, free of torch, for the command line's defaults.
from mea.config import VICTIM_TRAINING as VICTIM_TRAINING
from mea.config import LabelLoss, Schedule, TrainConfig
from mea.config import parse_choice as parse_choice
from mea.errors import ConfigError
from mea.models import as_input

# Zero probabilities (top-k, label and rounded answers) become this before the logarithm, so a
# one-hot answer turns into a smoothed target rather than an infinite one.
_PROBABILITY_FLOOR = 1e-8
# Logit matching keeps every probability a float32 answer can carry (40% of the victim's
# probabilities on MNIST train lie below 1e-8): only an exact zero is floored, at float32's tiniest.
_LOGIT_FLOOR = torch.finfo(torch.float32).tiny
# Training steps between two looks at the machine's load (mea.threads.readjust: about 1 ms).
READJUST_EVERY = 50


@dataclass(frozen=True)
class TrainReport:
    time_s: float
    epochs: int
    steps: int
    epoch_losses: tuple[float, ...] = field(default_factory=tuple)


def soft_targets(answers: torch.Tensor, temperature: float) -> torch.Tensor:
    """Answers re-tempered: softmax(log(answers) / T), rows summing to 1."""
    return F.softmax(answers.clamp_min(_PROBABILITY_FLOOR).log() / temperature, dim=1)


def centred_log_probabilities(answers: torch.Tensor) -> torch.Tensor:
    """Logit-matching targets: each row's log-probabilities minus their mean."""
    logs = answers.float().clamp_min(_LOGIT_FLOOR).log()
    return logs - logs.mean(1, keepdim=True)


def _check_logit_targets(answers: torch.Tensor) -> None:
    """Logit matching needs the small probabilities: a float32 softmax underflows to zero now and
    then (a self-trained teacher's pseudo-labels), but label, top-k and rounded answers do in most rows."""
    with_zeros = float((answers == 0).any(1).float().mean())
    if with_zeros > 0.5:
        raise ConfigError(
            f"--loss logits needs exact probability answers, but {with_zeros:.0%} of these rows have zeros "
            "(label, top-k or rounded output); train with --loss soft or --loss hard"
        )


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random offset of up to max_shift pixels, filling with zeros."""
    n, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
    rows = dy + torch.arange(height).view(1, height, 1)
    cols = dx + torch.arange(width).view(1, 1, width)
    # (n, H, W, C) gathered, then channels first again: every channel shifts with its image.
    return padded.permute(0, 2, 3, 1)[torch.arange(n).view(n, 1, 1), rows, cols].permute(0, 3, 1, 2)


def random_affine(
    images: torch.Tensor, max_shift: float, max_degrees: float, max_scale: float, generator: torch.Generator
) -> torch.Tensor:
    """Each image turned by up to max_degrees, rescaled by up to max_scale either way and moved by up
    to max_shift pixels, all drawn per image; bilinear, filling with zeros (Simard et al. 2003)."""
    n, _, height, width = images.shape

    def spread(bound: float) -> torch.Tensor:  # uniform in [-bound, bound]
        return (torch.rand(n, generator=generator) * 2 - 1) * bound

    angle = spread(math.radians(max_degrees))
    zoom = 1 + spread(max_scale)
    # affine_grid maps output to input coordinates in [-1, 1]: a pixel is 2 / size of them.
    dx, dy = spread(2 * max_shift / width), spread(2 * max_shift / height)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, dx], 1), torch.stack([sin, cos, dy], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def augment(images: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The batch as `config`'s augmentation draws it (itself when there is none)."""
    if config.rotate or config.scale:
        return as_input(random_affine(images, config.shift, config.rotate, config.scale, generator))
    if config.shift:
        # Whole-pixel shifts without interpolation: exactly the victim's recipe of earlier releases.
        return as_input(random_shift(images, config.shift, generator))
    return images


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
    """Train model in place on (images, answers), answers being (N, classes) probability-like rows.

    `on_epoch_end(epoch, model)` runs after each epoch (for evaluation); its time is not counted.
    """
    n = len(images)
    if n == 0:
        raise ConfigError("nothing to train on: the transfer set is empty")
    if config.true_label_weight > 0 and true_labels is None:
        raise ConfigError(
            "true-label weight > 0 needs a pool with labels (a built-in dataset's pool, or your own labelled "
            "images: an .npz with 'labels' or a folder per class)"
        )
    start = time.perf_counter()
    model.train()
    images = as_input(images)
    if config.loss is LabelLoss.SOFT:
        targets = soft_targets(answers, config.temperature)
    elif config.loss is LabelLoss.LOGITS:
        _check_logit_targets(answers)
        targets = centred_log_probabilities(answers)
    else:
        targets = answers.argmax(1)
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
        for step, batch in enumerate(order.split(config.batch_size)):
            if step % READJUST_EVERY == 0:
                threads.readjust()  # another job may have started (or ended) on the machine
            x = augment(images[batch], config, generator)
            logits = model(x)
            if config.loss is LabelLoss.SOFT:
                loss = -(targets[batch] * F.log_softmax(logits / temperature, dim=1)).sum(1).mean() * temperature**2
            elif config.loss is LabelLoss.LOGITS:
                loss = F.smooth_l1_loss(logits - logits.mean(1, keepdim=True), targets[batch])
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
