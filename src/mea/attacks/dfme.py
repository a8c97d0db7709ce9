"""DFME: data-free model extraction (Truong et al. 2021, "Data-Free Model Extraction", CVPR;
code cake-lab/datafree-model-extraction).

The generator game of `generator_game` with DFME's disagreement, the L1 distance between the
clone's logits and the victim's, recovered from its probabilities as log p minus its mean (the
paper's "mean" logit correction), and one random direction per image in the forward differences.

Settings.  From the paper and its code: the loss, m = 1 direction, epsilon 1e-3 on the generator's
pre-tanh output, the generator's layout (`generators.GENERATORS["dfme"]`; we default to a
sixteenth of its convolution work, `dfme-small`), Adam for the generator, SGD with momentum 0.9
and weight decay 5e-4 for the clone, five clone steps per generator step.  Ours, for budgets
10-200x smaller than the paper's 20M queries on CIFAR-10: batches of 32 doubling with the queries
spent up to the paper's 256, learning rates 5e-4 (generator; paper 1e-4) and 0.05 (clone; paper
0.1), the clone's decaying as 1/sqrt(1 + queries spent / 100,000) where the paper's falls in steps
at fixed fractions of its budget (ours must not depend on the budget: see `GameSettings`), a
moving average of the clone's weights, and ten clone steps per round on
remembered answers (MAZE's experience replay), which DFME does not use: every answer has been
paid for, and the clone may learn from it more than once.
"""

from __future__ import annotations

from mea.attacks.generator_game import GameSettings, GeneratorGame, LogitL1

DFME_SETTINGS = GameSettings()


def strategy(settings: GameSettings = DFME_SETTINGS) -> GeneratorGame:
    return GeneratorGame("dfme", LogitL1(), settings)
