"""Semi-supervised clones: the attacker's unqueried pool, labelled by the clone itself.

Self-training with pseudo-labels (Lee 2013, "Pseudo-Label: The Simple and Efficient
Semi-Supervised Learning Method for Deep Neural Networks"), in the form of Xie et al. 2020's noisy
student ("Self-training with Noisy Student improves ImageNet classification"): the clone trained on
the victim's answers labels every pool image it never queried with its soft predictions on the
clean image; a fresh student learns those together with the victim's answers under augmentation,
and becomes the next round's teacher.  Queries are what extraction pays for; pool images are free,
so every image the attacker holds contributes, and no true label is ever used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mea.training import TrainConfig, fit, predict_logits

# The victim's answers are repeated until they make up at least this share of the student's data,
# so that a few hundred real answers are not drowned by sixty thousand guesses.
ANSWER_SHARE = 0.25


def self_train(
    build: Callable[[int], nn.Module],
    teacher: nn.Module,
    images: torch.Tensor,
    answers: torch.Tensor,
    unlabelled: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    progress: bool = True,
) -> tuple[nn.Module, float]:
    """`config.pseudo_label_rounds` rounds of noisy-student training; (the last student, training seconds).

    With nothing unlabelled left (the whole pool was queried), the teacher is already the clone.
    """
    if len(unlabelled) == 0:
        return teacher, 0.0
    student_config = dataclasses.replace(
        config, epochs=config.pseudo_label_epochs, shift=max(config.shift, 2), min_steps=0, true_label_weight=0.0
    )
    repeats = max(1, round(ANSWER_SHARE * len(unlabelled) / ((1 - ANSWER_SHARE) * len(images))))
    seconds = 0.0
    for round_ in range(config.pseudo_label_rounds):
        pseudo = F.softmax(predict_logits(teacher, unlabelled), dim=1)
        student = build(round_)
        report = fit(
            student,
            torch.cat([unlabelled, images.repeat(repeats, 1, 1, 1)]),
            torch.cat([pseudo, answers.repeat(repeats, 1)]),
            student_config,
            generator,
            description=f"self-training round {round_ + 1}/{config.pseudo_label_rounds}",
            progress=progress,
        )
        seconds += report.time_s
        teacher = student
    return teacher, seconds
