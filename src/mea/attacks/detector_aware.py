"""A detector-aware data-free attacker: DFME whose generator also keeps its images looking like digits.

An OOD gate flags what does not look like the victim's data, and a data-free generator's images
do not.  An attacker who knows there is a gate shapes its queries with what it has (Juuti et al.
2019 and Kariyappa et al. 2021 name such adaptive attackers as the test of a detector): here, 150
public digits (as JBDA's seed set, Papernot et al. 2017) and its own clone.  The generator's loss
gains `weight` x a penalty of two parts, both white-box for the attacker:

- off-manifold: the squared distance of an image from the subspace of the public digits' first
  principal components (its own density model of digits), relative to the digits' own distance;
- doubt: the entropy of its clone's prediction, since the gate reads the victim's confidence and
  the clone stands in for the victim.

`weight` 0 is DFME itself.  Queries are still synthesised: the 150 digits only shape the prior.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mea.attacks.data_free import entropy
from mea.attacks.dfme import DFME_SETTINGS
from mea.attacks.generator_game import GeneratorGame, LogitL1
from mea.data.pools import Pool
from mea.errors import ConfigError
from mea.models import as_input

PUBLIC_DIGITS = 150


@dataclass(frozen=True)
class DigitPrior:
    """The attacker's model of what an in-distribution query looks like (see the module docstring)."""

    components: int = 20
    digits: int = PUBLIC_DIGITS

    def check(self, pool: Pool | None) -> None:
        if pool is None or len(pool) < self.digits:
            raise ConfigError(
                f"the detector-aware attacker models {self.digits} public digits from its pool; "
                "name a pool of at least that many images with --pool (a built-in dataset's, or your own by path)"
            )

    def fit(self, pool: Pool, rng: torch.Generator) -> PenaltyFn:
        digits = pool.images[torch.randperm(len(pool), generator=rng)[: self.digits]].flatten(1)
        mean = digits.mean(0)
        _, _, basis = torch.linalg.svd(digits - mean, full_matrices=False)
        basis = basis[: self.components]
        scale = residual(digits, mean, basis).mean()
        return PenaltyFn(mean, basis, float(scale))


def residual(images: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    centred = images.flatten(1) - mean
    return (centred - (centred @ basis.T) @ basis).pow(2).sum(1)


@dataclass(frozen=True)
class PenaltyFn:
    mean: torch.Tensor
    basis: torch.Tensor
    scale: float

    def __call__(self, images: torch.Tensor, clone: nn.Module) -> torch.Tensor:
        """Per image: how out-of-distribution the attacker believes it looks."""
        off_manifold = residual(images, self.mean, self.basis) / self.scale
        probabilities = F.softmax(clone(as_input(images)), dim=1)
        return off_manifold + entropy(probabilities)  # doubt


@dataclass(frozen=True)
class DetectorAware:
    """DFME's game with the generator's loss gaining `weight` x the attacker's OOD penalty."""

    weight: float = 1.0
    prior: DigitPrior = DigitPrior()

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ConfigError(f"the detector-aware weight must be >= 0, got {self.weight}; e.g. dfme-aware:1")

    @property
    def name(self) -> str:
        return f"dfme-aware:{self.weight:g}"

    def game(self) -> GeneratorGame:
        settings = dataclasses.replace(DFME_SETTINGS, generator="dfme-small-affine")
        return GeneratorGame(self.name, LogitL1(), settings, prior=self.prior, prior_weight=self.weight)


def strategy(weight: float = 1.0) -> GeneratorGame:
    return DetectorAware(weight).game()
