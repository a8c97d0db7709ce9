"""What a defended victim answers to a query its detector flags.

Every policy is a deterministic function of the image and a secret: the noise for an image comes
from a stream keyed by HMAC-SHA256(secret, a coarse code of the image: `mea.keying`).  Asking the
same question again returns the same answer, so an attacker cannot average the noise away by
repeating a query; and copies of the image a few grey levels apart mostly share the code, so they
get the same answer too, and an attacker who compares jittered copies cannot tell the keyed
answers from the true ones by their disagreement.  (Fresh noise per call, as in ART's
GaussianNoise postprocessor, averages out over repeated queries; noise keyed on the exact pixels
differs between jittered copies.)
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from mea import models
from mea.config import policy_spec
from mea.errors import ConfigError
from mea.keying import coarse_codes, code_bytes
from mea.signature import Signature

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Bits of the coarse code the noise is keyed on: 256 keys per victim class (the misinformation's
# wrong class also depends on the victim's own), stable under jitters of a few grey levels.
CODE_BITS = 8


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 output function (Steele et al. 2014), vectorised; wraps modulo 2^64."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_uniforms(secret: bytes, images: torch.Tensor, count: int) -> np.ndarray:
    """`count` uniforms in (0, 1) per image, a pure function of (secret, the image's coarse code).

    One HMAC per image seeds a SplitMix64 stream; the streams are drawn for the whole batch at once.
    """
    # In numpy: a few microseconds instead of a few tens for five torch operations on a tiny batch.
    pixels = np.rint(np.clip(images.detach().reshape(len(images), -1).numpy(), 0, 1) * 255).astype(np.uint8)
    codes = coarse_codes(pixels, tuple(images.shape[1:]), secret, CODE_BITS)
    seeds = np.array(
        [int.from_bytes(hmac.digest(secret, code, hashlib.sha256)[:8], "little") for code in code_bytes(codes)],
        dtype=np.uint64,
    )
    steps = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
    bits = _splitmix64(seeds[:, None] + steps[None, :])  # uint64 arrays wrap silently
    # The top 53 bits, offset by half a step: strictly inside (0, 1).
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53


def _dirichlet(uniforms: np.ndarray, alpha: float) -> np.ndarray:
    """Dirichlet(alpha) rows from uniforms, by normalised Gamma(alpha) inverse-CDF draws."""
    # Gamma(1) is Exp(1), whose inverse CDF is closed-form and ten times cheaper than gammaincinv.
    if alpha == 1:
        gammas = np.maximum(-np.log1p(-uniforms), 1e-300)
    else:
        from scipy.special import gammaincinv  # imported when needed: scipy costs a server's start-up 0.5 s

        gammas = np.maximum(gammaincinv(alpha, uniforms), 1e-300)
    return gammas / gammas.sum(1, keepdims=True)


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
        from scipy.special import ndtri

        noise = self.sigma * ndtri(keyed_uniforms(secret, images, probs.shape[1]))
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
        return torch.from_numpy(_dirichlet(keyed_uniforms(secret, images, probs.shape[1]), self.alpha)).to(probs.dtype)


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
        # Above 1/2 the wrong class is the top one whatever the class count.
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"misinformation confidence must lie in [0.5, 1), got {self.confidence}")

    @property
    def spec(self) -> str:
        return f"misinformation:{self.confidence:g}"

    @property
    def preserves_top1(self) -> bool:
        return False

    def __call__(
        self, probs: torch.Tensor, images: torch.Tensor, severity: torch.Tensor, secret: bytes
    ) -> torch.Tensor:
        classes = probs.shape[1]
        uniforms = keyed_uniforms(secret, images, classes + 1)
        # The first uniform picks one of the other classes; the rest spread the remaining mass.
        wrong = (probs.argmax(1).numpy() + 1 + (uniforms[:, 0] * (classes - 1)).astype(np.int64)) % classes
        rows = np.arange(len(probs))
        misinformation = _dirichlet(uniforms[:, 1:], 1.0)
        misinformation[rows, wrong] = 0.0
        misinformation *= (1 - self.confidence) / misinformation.sum(1, keepdims=True)
        misinformation[rows, wrong] = self.confidence
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
        answers = torch.from_numpy(_dirichlet(keyed_uniforms(secret, images, probs.shape[1]), self.alpha))
        # Swap each row's largest draw into the victim's top class.
        top, largest = probs.argmax(1), answers.argmax(1)
        rows = torch.arange(len(answers))
        at_top = answers[rows, top].clone()
        answers[rows, top] = answers[rows, largest]
        answers[rows, largest] = at_top
        return answers.to(probs.dtype)


@functools.lru_cache(maxsize=4)
def _surrogate(secret: bytes, signature: Signature) -> nn.Module:
    """The defender's stand-in for the attacker's clone: a LeNet-5 initialised from the secret."""
    seed = int.from_bytes(hmac.digest(secret, b"mad-surrogate", hashlib.sha256)[:8], "big") >> 1
    return models.build("lenet5", seed, signature).eval()


@dataclass(frozen=True)
class MaximumAngularDeviation:
    """Prediction poisoning by maximum angular deviation (Orekondy et al. 2020, "Prediction
    Poisoning: Towards Defenses Against DNN Model Stealing Attacks", ICLR; code
    tribhuvanesh/prediction-poisoning, `bb_mad.py`).

    An attacker that trains on an answer y follows the gradient of its loss, which for the last
    layer of its model is (q - y) h^T (q: its probabilities, h: its penultimate features).  MAD
    answers y~ instead, within an L1 distance `epsilon` of y, chosen so that (q - y~) points as far
    from (q - y) as it can.  The paper maximises over the Jacobian of all of a surrogate's
    parameters; we use its last layer, whose Jacobian is closed-form, so the angle is the angle
    between q - y and q - y~ and no backward pass is needed per query.  As in the paper the
    surrogate is a randomly initialised copy of the attacker's likely architecture (LeNet-5, keyed
    by the defense's secret), and the objective is maximised over the simplex's vertices e_k
    (a convex function peaks at a vertex), then y~ = y + alpha (e_k - y) with alpha set by `epsilon`.
    `top1`: alpha is also capped so that the victim's top-1 class stays the top-1 (MAD-argmax).
    """

    epsilon: float = 1.0
    top1: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.epsilon <= 2:
            raise ConfigError(f"MAD needs an L1 budget 0 < epsilon <= 2, got {self.epsilon}; e.g. --policy mad:1")

    @property
    def spec(self) -> str:
        return f"{'mad-top1' if self.top1 else 'mad'}:{self.epsilon:g}"

    @property
    def preserves_top1(self) -> bool:
        return self.top1

    def __call__(
        self, probs: torch.Tensor, images: torch.Tensor, severity: torch.Tensor, secret: bytes
    ) -> torch.Tensor:
        if len(probs) == 0:
            return probs
        with torch.inference_mode():
            signature = Signature(tuple(images.shape[1:]), probs.shape[1])
            q = torch.softmax(_surrogate(secret, signature)(models.as_input(images.float())), 1).double()
        y = probs.double()
        vertices = torch.eye(probs.shape[1], dtype=torch.float64)
        honest = q - y  # (B, K): the attacker's last-layer gradient direction, up to h
        poisoned = q.unsqueeze(1) - vertices.unsqueeze(0)  # (B, K vertices, K)
        cosine = torch.nn.functional.cosine_similarity(honest.unsqueeze(1), poisoned, dim=2, eps=1e-12)
        target = cosine.argmin(1)  # the vertex whose gradient points furthest away
        rows = torch.arange(len(y))
        distance = 2 * (1 - y[rows, target])  # ||e_k - y||_1
        alpha = (self.epsilon / distance.clamp_min(1e-12)).clamp(max=1.0)
        if self.top1:
            top = y.argmax(1)
            gap = y[rows, top] - y[rows, target]
            # y~_top = (1 - a) y_top stays above y~_k = (1 - a) y_k + a while a < gap / (1 + gap).
            cap = torch.where(target == top, torch.ones_like(gap), 0.99 * gap / (1 + gap))
            alpha = torch.minimum(alpha, cap)
        answers = (1 - alpha).unsqueeze(1) * y + alpha.unsqueeze(1) * vertices[target]
        return answers.to(probs.dtype)


def parse_policy(text: str) -> Policy:
    """Parse ``gaussian:0.5``, ``dirichlet:1``, ``misinformation:0.9``, ``top1-preserving:1``,
    ``mad:1`` or ``mad-top1:1``."""
    name, value = policy_spec(text)
    kinds = {
        "gaussian": GaussianNoise,
        "dirichlet": DirichletNoise,
        "misinformation": Misinformation,
        "top1-preserving": TopOnePreserving,
        "mad": MaximumAngularDeviation,
        "mad-top1": lambda epsilon=1.0: MaximumAngularDeviation(epsilon, top1=True),
    }
    return kinds[name](value) if value is not None else kinds[name]()
