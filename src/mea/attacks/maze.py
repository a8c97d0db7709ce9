"""MAZE: data-free model extraction by zeroth-order gradient estimation (Kariyappa et al. 2021,
"MAZE: Data-Free Model Stealing Attack Using Zeroth-Order Gradient Estimation", CVPR; code
sanjaykariyappa/MAZE).

The generator game of `generator_game` with MAZE's disagreement, KL(victim || clone) on the
probabilities, and its gradient estimate: ten random directions per image (`--ndirs 10`), so a
generator step costs eleven queries per image where DFME's costs two; the estimate is better,
the queries fewer per round.  Experience replay, MAZE's own, is on (ten steps per round).
From the paper's code: the loss, ten directions, epsilon 1e-3, experience replay, five clone steps
per generator step.  Ours: the shared batch schedule, learning rates and moving average of
`generator_game.GameSettings`, without its learning-rate decay (the paper trains with budgets of
millions on 32x32 colour images).
"""

from __future__ import annotations

from mea.attacks.generator_game import GameSettings, GeneratorGame, KullbackLeibler

# A constant learning rate: MAZE's curve does not fall over 2M queries without decay, and decay
# costs it about 5 points at 100,000 queries (measured; it gains under 1 point at 500,000).
MAZE_SETTINGS = GameSettings(directions=10, clone_lr_decay=0)


def strategy(settings: GameSettings = MAZE_SETTINGS) -> GeneratorGame:
    return GeneratorGame("maze", KullbackLeibler(), settings)
