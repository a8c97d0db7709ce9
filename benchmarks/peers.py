"""IBM's Adversarial Robustness Toolbox (ART 1.20.x) behind this project's victim, queries and oracle.

ART is an optional extra (`pip install -e '.[bench]'`), used by `benchmarks.run` only.  Two things
decide whether ART's extraction attacks work at all, found by reading its code:

* ART's `PyTorchClassifier.predict` returns whatever the model returns.  Wrapped around a victim
  that outputs logits, CopycatCNN(use_probability=True) trains the thief on logits as if they were
  probabilities (CrossEntropyLoss accepts any float target) and the clone stays near chance.  The
  victim must be wrapped with its softmax, as a prediction service would answer.
* `batch_size_fit` defaults to 1 (60,000 optimiser steps per epoch of 60,000 queries); the thief's
  optimiser and rate are the caller's.  `benchmarks.run` (full mode) searches both on a validation split.

ART draws its query subset with `np.random.choice` and shuffles with torch's global generator;
`seed_globals` seeds both before every ART call (ART offers no generator argument).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mea import models
from mea.models import NUM_CLASSES
from mea.oracle import Oracle, OracleWrapper, OutputMode, Probabilities


def require_art() -> str:
    """ART's version, or a clear exit when the optional extra is missing."""
    try:
        import art
    except ImportError:
        raise SystemExit(
            "the peer benchmarks need IBM ART: pip install -e '.[bench]' (adversarial-robustness-toolbox 1.20.x)"
        ) from None
    return art.__version__


def seed_globals(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)  # ART's DataLoader shuffles with torch's global generator


def art_victim(model: nn.Module, softmax: bool = True, postprocessors: tuple = ()):
    """The victim as an ART classifier: with its softmax (as a service answers) unless told not to."""
    from art.estimators.classification import PyTorchClassifier

    network = nn.Sequential(model, nn.Softmax(dim=1)) if softmax else model
    return PyTorchClassifier(
        model=network.eval(),
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=NUM_CLASSES,
        clip_values=(0.0, 1.0),
        postprocessing_defences=list(postprocessors) or None,
    )


@dataclass(frozen=True)
class ArtThief:
    """ART's thief: this project's LeNet-5 with Adam, trained by ART's own `fit` loop."""

    batch_size_fit: int = 64
    lr: float = 1e-3

    def build(self, seed: int):
        from art.estimators.classification import PyTorchClassifier

        model = models.build("lenet5", seed)
        return PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),  # accepts probability targets as well as labels
            optimizer=torch.optim.Adam(model.parameters(), lr=self.lr),
            input_shape=(1, 28, 28),
            nb_classes=NUM_CLASSES,
            clip_values=(0.0, 1.0),
        )


def art_attack(name: str, **options: object) -> Callable:
    """A factory of one of ART's extraction attacks, configured as every attacker here is:
    `make(victim, thief, queries, epochs, use_probability)`."""

    def make(victim, thief: ArtThief, queries: int, epochs: int, use_probability: bool):
        from art.attacks import extraction

        return getattr(extraction, name)(
            victim,
            batch_size_fit=thief.batch_size_fit,
            batch_size_query=512,
            nb_epochs=epochs,
            nb_stolen=queries,
            use_probability=use_probability,
            **options,
        )

    return make


# CopycatCNN (Correia-Silva et al. 2018) and KnockoffNets (Orekondy et al. 2019) with random sampling.
ART_ATTACKS: dict[str, Callable] = {
    "CopycatCNN": art_attack("CopycatCNN"),
    "KnockoffNets(random)": art_attack("KnockoffNets", sampling_strategy="random"),
}


def art_postprocessors() -> dict[str, object]:
    """ART's five postprocessors at their documented defaults."""
    from art.defences.postprocessor import ClassLabels, GaussianNoise, HighConfidence, ReverseSigmoid, Rounded

    return {
        "ART ReverseSigmoid(beta=1, gamma=0.1)": ReverseSigmoid(beta=1.0, gamma=0.1),
        "ART Rounded(3)": Rounded(decimals=3),
        "ART HighConfidence(0.25)": HighConfidence(cutoff=0.25),
        "ART GaussianNoise(0.2)": GaussianNoise(scale=0.2),
        "ART ClassLabels": ClassLabels(),
    }


class PostprocessedOracle(OracleWrapper):
    """A victim answering through an ART postprocessor (numpy in, numpy out), then an output mode.

    The wrapped oracle must answer exact probabilities; the postprocessor sees each query batch as
    the attacker sends it, which is how ART applies it inside `predict`.
    """

    def __init__(self, oracle: Oracle, postprocessor: Callable[[np.ndarray], np.ndarray], output: OutputMode) -> None:
        if oracle.output != Probabilities():
            raise ValueError("the postprocessed oracle must wrap an oracle answering exact probabilities")
        super().__init__(oracle)
        self._postprocessor = postprocessor
        self._output = output

    @property
    def output(self) -> OutputMode:
        return self._output

    def query(self, images: torch.Tensor) -> torch.Tensor:
        probabilities = self._oracle.query(images).numpy().astype(np.float64)
        return self._output(torch.from_numpy(self._postprocessor(probabilities)).float())
