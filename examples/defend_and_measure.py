"""Defend the victim and measure what it costs: benign accuracy through the defense, and what an
attacker without in-distribution data (Fashion-MNIST queries) gets, with and without it.

    python examples/defend_and_measure.py [--victim runs/victim] [--queries 2000]
"""

from __future__ import annotations

from _common import parse, training, victim

import mea
from mea.data import load

args = parse(__doc__.splitlines()[0])
target = victim(args)
defense = mea.fit_defense(target, args.work / "defense", force=True)
test = load("mnist", "test")
answers = defense.oracle(target).query(test.images[:2_000])
benign = float((answers.argmax(1) == test.labels[:2_000]).float().mean())
undefended = mea.attack(target, "random", queries=args.queries, pool="fashion-mnist", train=training(args))
defended = mea.attack(
    target, "random", queries=args.queries, pool="fashion-mnist", oracle=defense.oracle(target), train=training(args)
)
print(f"benign accuracy through the defense: {benign:.2%}")
print(
    f"Fashion-MNIST attacker: clone {undefended.clone_accuracy:.2%} undefended, {defended.clone_accuracy:.2%} defended"
)
