"""Out-of-distribution scores from class-conditional Gaussians on the victim's inner layers.

Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks" (NeurIPS): per layer, features (convolutional maps averaged over space) are
modelled as Gaussians with one mean per class and one shared (tied) covariance, fitted on the
victim's own training data; a sample's score is its smallest Mahalanobis distance to a class mean.

Lee et al. combine layers with a logistic regression fitted on OOD samples, which flatters the
result when those samples come from the set later evaluated.  Here every score is instead
standardised by its own distribution on in-distribution data, so nothing is ever fitted on OOD data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mea.models import as_input, pooled

_CHUNK = 2048


def layer_features(model: nn.Module, images: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The named layers' features, with convolutional maps averaged over space (N, channels)."""
    images = as_input(images)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with torch.inference_mode():
        for start in range(0, len(images), _CHUNK):
            features = model.features(images[start : start + _CHUNK])
            for name in layers:
                parts[name].append(pooled(features[name]))
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


@dataclass(frozen=True)
class ClassGaussians:
    """Class means and the whitening factor of their shared covariance, for one layer."""

    means: torch.Tensor  # (classes, d)
    whitener: torch.Tensor  # (d, d): W with W W^T = inverse covariance

    def __post_init__(self) -> None:
        # Scoring runs on every query: keep float32 copies and the class means already whitened.
        whitener = self.whitener.float()
        centres = self.means.float() @ whitener
        object.__setattr__(self, "_whitener32", whitener)
        object.__setattr__(self, "_centres", centres)
        object.__setattr__(self, "_centre_norms", centres.square().sum(1))

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor) -> ClassGaussians:
        features = features.double()
        means = torch.stack([features[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
        centred = features - means[labels]
        covariance = centred.T @ centred / len(features)
        # Dead ReLU units give a singular covariance; a ridge of 1e-6 of the mean variance keeps the
        # inverse finite without changing the directions that carry the signal.
        ridge = 1e-6 * covariance.diagonal().mean().clamp_min(1e-12)
        covariance = covariance + ridge * torch.eye(len(covariance), dtype=covariance.dtype)
        # Whitening with the inverse Cholesky factor turns Mahalanobis distances into Euclidean ones.
        lower = torch.linalg.cholesky(covariance)
        identity = torch.eye(len(covariance), dtype=covariance.dtype)
        whitener = torch.linalg.solve_triangular(lower, identity, upper=False).T
        return cls(means, whitener)

    def min_distance(self, features: torch.Tensor) -> torch.Tensor:
        """Smallest squared Mahalanobis distance to a class mean, shape (N,)."""
        z = features.float() @ self._whitener32
        # |z - c|^2 = |z|^2 - 2 z.c + |c|^2, one matrix product for all classes.
        distances = z.square().sum(1, keepdim=True) - 2 * z @ self._centres.T + self._centre_norms
        return distances.min(1).values.clamp_min(1e-12)
