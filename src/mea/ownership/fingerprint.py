"""The passive fingerprint: inputs on which this victim's label is idiosyncratic; no answer changes.

Two kinds of input, both labelled with the victim's own answer:

- **The victim's errors** on the owner's held-out calibration split: a clone trained on the victim's
  answers tends to repeat them, an independent model less often (measured on MNIST test in issue
  11: 61% for a clone, 43-50% for independent models: the natural-error baseline).
- **Conferrable adversarial examples** (Lukas, Zhang and Kerschbaum 2021, "Deep Neural Network
  Fingerprinting by Conferrable Adversarial Examples", ICLR): small perturbations (L-infinity
  `epsilon`) of calibration images, found by signed-gradient steps, that make the victim and the
  owner's own *surrogate* clones (distilled from the victim, as a thief would) predict a target
  class while independently trained *reference* models keep the true class.  Kept: those the
  victim, every surrogate and no reference labels with the target, ranked by conferrability
  (mean surrogate probability of the target times one minus the largest reference probability).

References are innocent models the owner trains on its own data (`mea.ownership.references`):
the victim's own recipe with other seeds first, then weaker and stronger recipes, other
architectures, subsets, the whole public training set, and clones of an independent model.  Every
other one makes the fingerprint, the rest (never optimised against) are the population a suspect's
match count is ranked in (`mea.ownership.verify.reference_rank_test`), each recipe in both halves.
That rank is indicative only and never decides a verdict.  Stored as safetensors (images quantised
to 8 bits, exactly as they will be sent) with a JSON header; never pickle.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mea import models
from mea.data import ImageSet
from mea.errors import ArtifactError
from mea.models import as_input
from mea.ownership.config import FingerprintConfig
from mea.ownership.references import Recipe, population_recipes, train_innocent, victim_recipe
from mea.seeding import derive_seed, generator
from mea.training import TrainConfig, fit, predict_logits
from mea.victim import Victim

FORMAT = "mea-fingerprint-v1"
ERROR, CONFERRABLE = 0, 1
# The owner's own clones of its victim: distilled from it with the attack's own defaults.
SURROGATE_TRAINING = TrainConfig()


@dataclass(frozen=True)
class Fingerprint:
    images: torch.Tensor  # (N, 1, 28, 28) on the 8-bit grid
    labels: torch.Tensor  # (N,) the victim's label
    kinds: torch.Tensor  # (N,) ERROR or CONFERRABLE
    reference_matches: tuple[int, ...]  # per held-out reference model: inputs where it gave the victim's label
    victim_fingerprint: str
    meta: dict

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: Path) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        pixels = torch.from_numpy(np.rint(self.images.numpy() * 255).astype(np.uint8))
        save_file(
            {"images": pixels.contiguous(), "labels": self.labels.contiguous(), "kinds": self.kinds.contiguous()},
            str(partial),
            metadata={
                "format": FORMAT,
                "victim_fingerprint": self.victim_fingerprint,
                "reference_matches": json.dumps(list(self.reference_matches)),
                "meta": json.dumps(self.meta),
            },
        )
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> Fingerprint:
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"no fingerprint at {path}; make one with `mea fingerprint make --victim DIR`")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
            if metadata.get("format") != FORMAT:
                raise ValueError(f"format {metadata.get('format')!r}")
            images = tensors["images"].float().div(255)
            labels, kinds = tensors["labels"].long(), tensors["kinds"].long()
            if (
                images.ndim != 4
                or tuple(images.shape[1:]) != (1, 28, 28)
                or not len(images) == len(labels) == len(kinds)
            ):
                raise ValueError("array shapes disagree")
            return cls(
                images,
                labels,
                kinds,
                tuple(int(m) for m in json.loads(metadata["reference_matches"])),
                metadata["victim_fingerprint"],
                json.loads(metadata["meta"]),
            )
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(
                f"{path} is not a fingerprint ({exc}); make one with `mea fingerprint make --victim DIR`"
            ) from None


def train_surrogate(
    victim: nn.Module, arch: str, seed: int, images: torch.Tensor, config: TrainConfig | None = None
) -> nn.Module:
    """The owner's own clone of its victim: distilled from the victim's probabilities on owner data."""
    answers = F.softmax(predict_logits(victim, images), dim=1)
    model = models.build(arch, derive_seed(seed, "surrogate-init"), models.signature_of(victim))
    config = config or SURROGATE_TRAINING
    fit(model, images, answers, config, generator(seed, "surrogate"), progress=False)
    return model


def _probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return F.softmax(model(as_input(images)), dim=1)


def conferrable_examples(
    victim: nn.Module,
    surrogates: list[nn.Module],
    references: list[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    config: FingerprintConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images on the 8-bit grid, target labels, conferrability), best first, at most `config.size`."""
    for model in (victim, *surrogates, *references):
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    with torch.no_grad():
        agree = predict_logits(victim, images).argmax(1) == labels
        for model in (*surrogates, *references):
            agree &= predict_logits(model, images).argmax(1) == labels
        images, labels = images[agree], labels[agree]
        # Target: the class the victim's family finds nearest, other than the true one.
        family = sum(_probabilities(m, images).log() for m in (victim, *surrogates))
        family[torch.arange(len(labels)), labels] = -torch.inf
        targets = family.argmax(1)
    step = config.epsilon / 10
    adversarial = images.clone()
    for _ in range(config.steps):
        adversarial.requires_grad_(True)
        loss = F.nll_loss(_probabilities(victim, adversarial).clamp_min(1e-12).log(), targets)
        for model in surrogates:
            loss = loss + F.nll_loss(_probabilities(model, adversarial).clamp_min(1e-12).log(), targets) / len(
                surrogates
            )
        for model in references:
            chosen = _probabilities(model, adversarial).gather(1, targets[:, None]).squeeze(1)
            loss = loss - (1 - chosen).clamp_min(1e-12).log().mean() / len(references)
        (gradient,) = torch.autograd.grad(loss, adversarial)
        with torch.no_grad():
            adversarial = adversarial - step * gradient.sign()
            adversarial = (images + (adversarial - images).clamp(-config.epsilon, config.epsilon)).clamp(0, 1)
    adversarial = torch.round(adversarial.detach() * 255) / 255  # exactly what will be sent
    with torch.no_grad():
        keep = predict_logits(victim, adversarial).argmax(1) == targets
        surrogate_target = torch.stack(
            [_probabilities(m, adversarial)[torch.arange(len(targets)), targets] for m in surrogates]
        )
        reference_target = torch.stack(
            [_probabilities(m, adversarial)[torch.arange(len(targets)), targets] for m in references]
        )
        for model in surrogates:
            keep &= predict_logits(model, adversarial).argmax(1) == targets
        for model in references:
            keep &= predict_logits(model, adversarial).argmax(1) != targets
        score = surrogate_target.mean(0) * (1 - reference_target.max(0).values)
    order = torch.argsort(score[keep], descending=True)[: config.size]
    return adversarial[keep][order], targets[keep][order], score[keep][order]


def reference_plan(own: Recipe, config: FingerprintConfig) -> list[Recipe]:
    """The recipe of each of `config.references` innocent models (`mea.ownership.references`), the
    victim's own recipe `own` first, each recipe twice in a row: [0::2] make the fingerprint, [1::2]
    rank a suspect, so that both halves hold every recipe.  Without clones of independent models
    among them, clones of *other* victims match the fingerprint far more often than references do
    (measured: p = 2e-7 for two small-cnn clones of an independently trained victim, with
    true-label references only)."""
    recipes = population_recipes(own, (config.references + 1) // 2)
    return [recipe.with_epochs(config.epochs) for recipe in recipes for _ in range(2)][: config.references]


def train_references(train: ImageSet, calibration: ImageSet, plan: list[Recipe], seed: int) -> list[nn.Module]:
    return [
        train_innocent(recipe, derive_seed(seed, f"reference-{i}"), train, calibration) for i, recipe in enumerate(plan)
    ]


def fingerprint_victim(victim: Victim, config: FingerprintConfig, data_dir: Path | None = None) -> Fingerprint:
    """`make_fingerprint` for a `mea` victim: references trained on the victim's own training split
    (and, for some recipes, the whole public training set), conferrable examples made from its
    calibration split (both the owner's data, never the attacker's)."""
    train, calibration = victim.owner_sets(data_dir)
    plan = reference_plan(victim_recipe(victim.arch, victim.config.get("train", {})), config)
    return make_fingerprint(
        victim.model,
        victim.fingerprint,
        train.images,
        train.labels,
        calibration.images,
        calibration.labels,
        config,
        references=train_references(train, calibration, plan, config.seed),
        reference_recipes=[recipe.describe() for recipe in plan],
    )


def make_fingerprint(
    victim: nn.Module,
    victim_fingerprint: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    calibration_images: torch.Tensor,
    calibration_labels: torch.Tensor,
    config: FingerprintConfig,
    references: list[nn.Module] | None = None,
    surrogates: list[nn.Module] | None = None,
    reference_recipes: list[str] | None = None,
) -> Fingerprint:
    """Train references (`reference_plan`, the victim's recipe taken as LeNet-5's quick one unless
    given) and surrogates on the owner's data, unless given, and build the fingerprint."""
    start = time.perf_counter()
    if references is None:
        plan = reference_plan(Recipe("lenet5"), config)
        references = train_references(
            ImageSet(train_images, train_labels), ImageSet(calibration_images, calibration_labels), plan, config.seed
        )
        reference_recipes = [recipe.describe() for recipe in plan]
    if surrogates is None:
        surrogates = [
            train_surrogate(
                victim,
                ("lenet5", "small-cnn")[i % 2],
                derive_seed(config.seed, f"surrogate-{i}"),
                train_images,
                dataclasses.replace(SURROGATE_TRAINING, epochs=config.epochs or SURROGATE_TRAINING.epochs),
            )
            for i in range(config.surrogates)
        ]
    # Interleaved, so that both halves hold every recipe.
    making, testing = references[0::2], references[1::2]
    victim_labels = predict_logits(victim, calibration_images).argmax(1)
    errors = victim_labels != calibration_labels
    candidates = slice(0, config.candidates)
    conferrable, targets, scores = conferrable_examples(
        victim, surrogates, making, calibration_images[candidates], calibration_labels[candidates], config
    )
    images = torch.cat([calibration_images[errors], conferrable])
    labels = torch.cat([victim_labels[errors], targets])
    kinds = torch.cat(
        [
            torch.full((int(errors.sum()),), ERROR, dtype=torch.long),
            torch.full((len(targets),), CONFERRABLE, dtype=torch.long),
        ]
    )
    reference_matches = tuple(int((predict_logits(m, images).argmax(1) == labels).sum()) for m in testing)
    meta = {
        "config": asdict(config),
        "errors": int(errors.sum()),
        "conferrable": len(targets),
        "mean_conferrability": float(scores.mean()) if len(scores) else 0.0,
        "references_making": len(making),
        "references_testing": len(testing),
        "reference_recipes": reference_recipes or [],
        "time_s": time.perf_counter() - start,
    }
    return Fingerprint(images, labels, kinds, reference_matches, victim_fingerprint, meta)
