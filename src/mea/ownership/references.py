"""Innocent models: how the owner trains models that never saw the victim's answers.

A passive test (the fingerprint) ranks a suspect among such models, so they have to look like the
innocent models a suspect could really be.  The most ordinary innocent is a competitor who trains
as well as the owner did: the victim's own recipe and data with another seed.  A population made
only of cheaper models (a few epochs, no augmentation) puts every well-trained innocent in its
tail; that is how an earlier fingerprint called such models derived at p = 1e-9 (issue 32).  So a
population mixes (`REFERENCE_RECIPES`, after the victim's own recipe):

- the victim's own recipe, architecture and data, other seeds;
- weaker recipes (fewer epochs, no augmentation) and stronger ones (affine augmentation);
- other architectures;
- subsets of the owner's training images, and the whole public training set (the owner's
  calibration split included: a public model may have trained on the very images the fingerprint
  is made from);
- clones of an independent model (distilled from its probabilities, as a thief distils a victim):
  a clone of another victim is the innocent most like a clone of this one.

`benchmarks.verify_calibration` trains a held-out population the same way (other seeds, other
recipes, architectures mea does not ship) and measures how the tests behave on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mea import models
from mea.config import LabelLoss, TrainConfig
from mea.data import ImageSet
from mea.errors import ConfigError
from mea.seeding import derive_seed, generator
from mea.signature import DEFAULT, Signature
from mea.training import fit, predict_logits

# True-label training as an owner does it cheaply (a few epochs, no augmentation).
QUICK = TrainConfig(epochs=3, lr=3e-3, batch_size=128, loss=LabelLoss.HARD, temperature=1.0)
# A student distilled from a teacher's probabilities: the attack's own defaults (soft labels, T = 4).
DISTILLATION = TrainConfig()


@dataclass(frozen=True)
class Recipe:
    """How one innocent model is trained: on true labels (or distilled from a model that was)."""

    arch: str
    train: TrainConfig = QUICK
    images: int | None = None  # the first this many of the training images; None = all of them
    public: bool = False  # train on the whole public training set, the owner's calibration split included
    student: str | None = None  # then distil a fresh model of this architecture from it (a clone of it)

    def __post_init__(self) -> None:
        if self.images is not None and self.images <= 0:
            raise ConfigError(f"a recipe's image count must be positive, got {self.images}")

    def describe(self) -> str:
        """E.g. "lenet5, 15 epochs, shift 2" or "small-cnn, 3 epochs, 10,000 images, distilled into mlp"."""
        parts = [self.arch, f"{self.train.epochs} epochs"]
        augmentation = [
            f"{name} {value:g}"
            for name, value in (("shift", self.train.shift), ("rotate", self.train.rotate), ("scale", self.train.scale))
            if value
        ]
        parts += augmentation
        if self.images is not None:
            parts.append(f"{self.images:,} images")
        if self.public:
            parts.append("the whole public training set")
        if self.student is not None:
            parts.append(f"distilled into {self.student}")
        return ", ".join(parts)

    def with_epochs(self, epochs: int | None) -> Recipe:
        """The recipe trained for `epochs` (None: its own)."""
        if epochs is None:
            return self
        return dataclasses.replace(self, train=dataclasses.replace(self.train, epochs=epochs))


# The other recipes of a reference population, in the order a population cycles through them.
REFERENCE_RECIPES = (
    Recipe("lenet5"),
    Recipe("small-cnn", TrainConfig(epochs=8, lr=3e-3, batch_size=128, loss=LabelLoss.HARD, temperature=1.0, shift=2)),
    Recipe("mlp", dataclasses.replace(QUICK, epochs=5), public=True),
    Recipe("lenet5", student="small-cnn"),
    Recipe("lenet5", dataclasses.replace(QUICK, epochs=2), images=10_000),
    Recipe("small-cnn", student="lenet5"),
    Recipe(
        "lenet5",
        TrainConfig(epochs=6, lr=3e-3, batch_size=128, loss=LabelLoss.HARD, temperature=1.0, shift=2, rotate=10),
        public=True,
    ),
)


def victim_recipe(arch: str, train: dict | TrainConfig) -> Recipe:
    """The recipe the victim was trained with (its config.json's `train` record), as an innocent's."""
    if isinstance(train, dict):
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        train = TrainConfig(**{key: value for key, value in train.items() if key in fields})
    return Recipe(arch, train)


def population_recipes(own: Recipe, count: int, recipes: tuple[Recipe, ...] = REFERENCE_RECIPES) -> list[Recipe]:
    """`count` recipes: the victim's own first, then `recipes` in turn, over and over."""
    cycle = (own, *recipes)
    return [cycle[i % len(cycle)] for i in range(count)]


def train_innocent(
    recipe: Recipe,
    seed: int,
    train: ImageSet,
    calibration: ImageSet | None = None,
    architectures: Mapping[str, Callable[[Signature], nn.Module]] | None = None,
    signature: Signature = DEFAULT,
) -> nn.Module:
    """One innocent model from `recipe`, its initialisation and batches drawn from `seed` alone.

    `train` is the owner's training split; `calibration` its held-out split, which a `public`
    recipe trains on as well.  `architectures` adds builders beyond mea's own (by name); `signature`
    is the victim's (its input and classes)."""
    images, labels = train.images, train.labels
    if recipe.public:
        if calibration is None:
            raise ConfigError("a recipe on the whole public training set needs the calibration split too")
        images, labels = torch.cat([images, calibration.images]), torch.cat([labels, calibration.labels])
    if recipe.images is not None:
        images, labels = images[: recipe.images], labels[: recipe.images]
    model = _build(recipe.arch, derive_seed(seed, "innocent-init"), signature, architectures)
    targets = F.one_hot(labels, signature.classes).float()
    fit(model, images, targets, recipe.train, generator(seed, "innocent"), progress=False)
    if recipe.student is None:
        return model
    answers = F.softmax(predict_logits(model, images), dim=1)
    student = _build(recipe.student, derive_seed(seed, "student-init"), signature, architectures)
    fit(student, images, answers, DISTILLATION, generator(seed, "student"), progress=False)
    return student


def _build(
    arch: str, seed: int, signature: Signature, architectures: Mapping[str, Callable[[Signature], nn.Module]] | None
) -> nn.Module:
    if architectures and arch in architectures:
        make = architectures[arch]
        return models.initialise(lambda: make(signature), seed).to(memory_format=torch.channels_last)
    return models.build(arch, seed, signature)
