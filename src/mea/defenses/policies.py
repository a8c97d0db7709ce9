"""What a defended victim answers to a query its detector flags.

Every policy is a deterministic function of the image and a secret: the noise for an image is drawn
from a generator seeded by HMAC-SHA256(secret, image quantised to 8 bits).  Asking the same question
again returns the same answer, so an attacker cannot average the noise away by repeating a query,
and jitters below one grey level change nothing.  (Fresh noise per call, as in ART's GaussianNoise
postprocessor, averages out over repeated queries.)
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from mea.errors import ConfigError
from mea.models import NUM_CLASSES


def keyed_generators(secret: bytes, images: torch.Tensor) -> list[np.random.Generator]:
    """One generator per image, seeded by a keyed hash of its 8-bit pixels."""
    pixels = (images.detach().reshape(len(images), -1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return [
        np.random.Generator(
            np.random.Philox(key=int.from_bytes(hmac.digest(secret, row.tobytes(), hashlib.sha256)[:16]))
        )
        for row in pixels
    ]


class Policy(Protocol):
    """Answers for flagged queries, from the victim's probabilities (B, 10), the images
    (B, 1, 28, 28) and the detector's severity in [0, 1] (B,), keyed by the defense's secret."""

    @property
    def spec(self) -> str: ...

    @property
    def preserves_top1(self) -> bool: ...

    def __call__(
        self, probs: torch.Tensor, images: torch.Tensor, severity: torch.Tensor, secret: bytes
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class GaussianNoise:
    """Add N(0, sigma^2) to each probability, clip at zero, renormalise."""

    sigma: float = 0.5

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ConfigError(f"gaussian noise needs sigma > 0, got {self.sigma}; e.g. --policy gaussian:0.5")

    @property
    def spec(self) -> str:
        return f"gaussian:{self.sigma:g}"

    @property
    def preserves_top1(self) -> bool:
        return False

    def __call__(
        self, probs: torch.Tensor, images: torch.Tensor, severity: torch.Tensor, secret: bytes
    ) -> torch.Tensor:
        noise = np.stack([g.normal(0.0, self.sigma, NUM_CLASSES) for g in keyed_generators(secret, images)])
        noisy = (probs.double() + torch.from_numpy(noise)).clamp_min(0) + 1e-6
        return (noisy / noisy.sum(1, keepdim=True)).to(probs.dtype)


@dataclass(frozen=True)
class DirichletNoise:
    """Replace the answer by a draw from Dirichlet(alpha): a random probability vector."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ConfigError(f"dirichlet noise needs alpha > 0, got {self.alpha}; e.g. --policy dirichlet:1")

    @property
    def spec(self) -> str:
        return f"dirichlet:{self.alpha:g}"

    @property
    def preserves_top1(self) -> bool:
        return False

    def __call__(
        self, probs: torch.Tensor, images: torch.Tensor, severity: torch.Tensor, secret: bytes
    ) -> torch.Tensor:
        draws = np.stack([g.dirichlet(np.full(NUM_CLASSES, self.alpha)) for g in keyed_generators(secret, images)])
        return torch.from_numpy(draws).to(probs.dtype)


@dataclass(frozen=True)
class Misinformation:
    """Adaptive misinformation (Kariyappa & Qureshi 2020, "Defending Against Model Stealing Attacks
    with Adaptive Misinformation", CVPR): the answer is blended towards a confident wrong class,
    (1 - s) * p + s * m, where s is the detector's severity.  m puts `confidence` on one of the nine
    classes the victim does not predict, chosen per image, and spreads the rest at random.  Queries
    far out of distribution get pure misinformation; borderline ones, often benign, stay close to
    the truth, which is what keeps benign accuracy.
    """

    confidence: float = 0.9

    def __post_init__(self) -> None:
        if not 1 / NUM_CLASSES < self.confidence < 1:
            raise ConfigError(f"misinformation confidence must lie in (0.1, 1), got {self.confidence}")

    @property
    def spec(self) -> str:
        return f"misinformation:{self.confidence:g}"

    @property
    def preserves_top1(self) -> bool:
        return False

    def __call__(
        self, probs: torch.Tensor, images: torch.Tensor, severity: torch.Tensor, secret: bytes
    ) -> torch.Tensor:
        misinformation = np.empty((len(probs), NUM_CLASSES))
        for row, (generator, top) in enumerate(
            zip(keyed_generators(secret, images), probs.argmax(1).tolist(), strict=True)
        ):
            wrong = (top + 1 + generator.integers(NUM_CLASSES - 1)) % NUM_CLASSES
            others = np.arange(NUM_CLASSES) != wrong
            misinformation[row, others] = generator.dirichlet(np.ones(NUM_CLASSES - 1)) * (1 - self.confidence)
            misinformation[row, wrong] = self.confidence
        weight = severity.double().unsqueeze(1)
        return ((1 - weight) * probs.double() + weight * torch.from_numpy(misinformation)).to(probs.dtype)


@dataclass(frozen=True)
class TopOnePreserving:
    """Keyed Dirichlet noise that keeps the victim's top-1 class (and so benign top-1 accuracy).

    After the label-preserving variants of Orekondy et al. 2020 ("Prediction Poisoning", ICLR) and
    Lee et al. 2019 (reverse sigmoid): the class ranking below the top and every probability value
    are noise, while the argmax is the victim's own.
    """

    alpha: float = 1.0

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ConfigError(f"top1-preserving noise needs alpha > 0, got {self.alpha}")

    @property
    def spec(self) -> str:
        return f"top1-preserving:{self.alpha:g}"

    @property
    def preserves_top1(self) -> bool:
        return True

    def __call__(
        self, probs: torch.Tensor, images: torch.Tensor, severity: torch.Tensor, secret: bytes
    ) -> torch.Tensor:
        draws = np.stack([g.dirichlet(np.full(NUM_CLASSES, self.alpha)) for g in keyed_generators(secret, images)])
        answers = torch.from_numpy(draws)
        # Swap each row's largest draw into the victim's top class.
        top, largest = probs.argmax(1), answers.argmax(1)
        rows = torch.arange(len(answers))
        at_top = answers[rows, top].clone()
        answers[rows, top] = answers[rows, largest]
        answers[rows, largest] = at_top
        return answers.to(probs.dtype)


POLICIES = "gaussian[:SIGMA], dirichlet[:ALPHA], misinformation[:CONFIDENCE], top1-preserving[:ALPHA]"


def parse_policy(text: str) -> Policy:
    """Parse ``gaussian:0.5``, ``dirichlet:1``, ``misinformation:0.9`` or ``top1-preserving:1``."""
    name, _, arg = text.strip().partition(":")
    kinds = {
        "gaussian": GaussianNoise,
        "dirichlet": DirichletNoise,
        "misinformation": Misinformation,
        "top1-preserving": TopOnePreserving,
    }
    if name not in kinds:
        raise ConfigError(f"unknown policy {text!r}; use one of: {POLICIES}")
    try:
        return kinds[name](float(arg)) if arg else kinds[name]()
    except ValueError:
        raise ConfigError(f"policy {text!r} needs a number after ':'; use one of: {POLICIES}") from None
