"""What every example shares: a victim to work on (yours, or a small one trained in seconds)."""

from __future__ import annotations

import argparse
from pathlib import Path

import mea
from mea.config import VICTIM_TRAINING


def parse(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--victim", type=Path, default=None, help="A victim directory [default: train a small one].")
    parser.add_argument("--work", type=Path, default=Path("example-runs"), help="Where the example writes.")
    parser.add_argument("--queries", type=int, default=2_000, help="The attacker's budget.")
    parser.add_argument(
        "--steps", type=int, default=500, help="The clone's optimiser steps at least (mea's default; fewer: quicker)."
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def victim(args: argparse.Namespace) -> mea.Victim:
    """The victim named by --victim, or a LeNet-5 trained for one epoch (about 98% on MNIST test)."""
    if args.victim is not None:
        return mea.load_victim(args.victim)
    import dataclasses

    quick = dataclasses.replace(VICTIM_TRAINING, epochs=1, shift=0)
    return mea.train_victim(args.work / "victim", train=quick, force=True)


def training(args: argparse.Namespace) -> mea.TrainConfig:
    """The clone's training: mea's defaults, with at least --steps optimiser steps."""
    return mea.TrainConfig(min_steps=args.steps)
