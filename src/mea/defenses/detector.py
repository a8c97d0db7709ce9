"""The query detector: in- or out-of-distribution, from Mahalanobis distances and confidence.

Each component score is made comparable by standardising it with its mean and deviation on the
victim's training data; the detector's score is their sum, and a query is flagged when the score
exceeds a threshold set on the held-out calibration split at a target false-positive rate.  How far
beyond the threshold a query lies is its severity, from 0 at the threshold to 1 at the score only a
quarter as many calibration images exceed (`severity_ramp` = 4), so that responses grow with the
evidence.  The ramp was chosen by measurement: at 10 (a tenth), Fashion-MNIST clones reached 19-29%
across noise keys; at 4, 10-18%, for 0.27 instead of 0.08 points of benign accuracy.
Components: the Mahalanobis distance (Lee et al. 2018) on each chosen layer, in log scale, and the
victim's maximum softmax probability (Hendrycks & Gimpel 2017, "A Baseline for Detecting
Misclassified and Out-of-Distribution Examples"), as log(-log p_max), which grows as confidence falls.

No OOD sample is used to fit, standardise or calibrate anything.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mea.config import DEFAULT_LAYERS as DEFAULT_LAYERS  # re-exported
from mea.config import DetectorConfig
from mea.defenses.features import resolve_layers, with_features
from mea.defenses.mahalanobis import ClassGaussians, layer_features
from mea.errors import ArtifactError, ConfigError

CONFIDENCE = "confidence"


def confidence_score(logits: torch.Tensor) -> torch.Tensor:
    """log(-log p_max): higher for less confident answers.

    From logits, as log(log1p(sum over the other classes of exp(l_j - l_max)))): a confident p_max
    is 1 - 1e-9, which a float32 probability (or 1 + 1e-9 in float32) rounds to exactly 1, losing
    the very differences that matter here.
    """
    values = logits.detach().cpu().double().numpy()
    top = values.argmax(1)
    rows = np.arange(len(values))
    others = np.exp(values - values[rows, top][:, None])
    others[rows, top] = 0.0
    return torch.from_numpy(np.log(np.maximum(np.log1p(others.sum(1)), 1e-300))).float()


@dataclass(frozen=True)
class Standardiser:
    mean: float
    std: float

    def __call__(self, score: torch.Tensor) -> torch.Tensor:
        return (score - self.mean) / self.std


class OodDetector:
    """Scores queries from the victim's features; flags those above the threshold."""

    def __init__(
        self,
        config: DetectorConfig,
        gaussians: dict[str, ClassGaussians],
        standardisers: dict[str, Standardiser],
        threshold: float,
        saturation: float,
    ) -> None:
        self.config = config
        self.gaussians = gaussians
        self.standardisers = standardisers
        self.threshold = threshold
        self.saturation = saturation
        self._scorer: _FusedScorer | None = None

    @property
    def layers(self) -> tuple[str, ...]:
        """The victim layers the detector reads (the logits too when it uses confidence)."""
        layers = (*self.config.layers, "logits") if self.config.use_confidence else self.config.layers
        return tuple(dict.fromkeys(layers))

    def component_scores(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each component's raw score (higher = less like the training data)."""
        scores = {layer: self.gaussians[layer].min_distance(features[layer]).log() for layer in self.config.layers}
        if self.config.use_confidence:
            scores[CONFIDENCE] = confidence_score(features["logits"])
        return scores

    def score(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The sum of the standardised component scores, computed by the fused scorer."""
        if self._scorer is None:
            self._scorer = _FusedScorer(self.config, self.gaussians, self.standardisers)
        return self._scorer(features)

    def severity(self, scores: torch.Tensor) -> torch.Tensor:
        """0 at the threshold, rising linearly to 1 at the saturation score."""
        return ((scores - self.threshold) / max(self.saturation - self.threshold, 1e-12)).clamp(0, 1)

    def calibrated(self, calibration_scores: torch.Tensor, target_fpr: float) -> OodDetector:
        """This detector with its threshold set on in-distribution calibration scores."""
        config = dataclasses.replace(self.config, target_fpr=target_fpr)
        threshold = float(torch.quantile(calibration_scores, 1 - target_fpr))
        saturation = float(torch.quantile(calibration_scores, 1 - target_fpr / config.severity_ramp))
        return OodDetector(config, self.gaussians, self.standardisers, threshold, saturation)

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        train_images: torch.Tensor,
        train_labels: torch.Tensor,
        calibration_images: torch.Tensor,
        config: DetectorConfig,
    ) -> OodDetector:
        """Fit Gaussians and standardisers on the victim's training data, the threshold on calibration data."""
        model = with_features(model)
        layers = resolve_layers(model, config.layers)
        if not layers and not config.use_confidence:
            raise ConfigError(
                "the victim shows no convolutions or hidden layers for --layers auto, so only the output-based "
                "score applies: keep --confidence, or name its layers with --layers"
            )
        config = dataclasses.replace(config, layers=layers)
        unfitted = cls(config, {}, {}, float("inf"), float("inf"))
        features = layer_features(model, train_images, unfitted.layers)
        unfitted.gaussians.update({layer: ClassGaussians.fit(features[layer], train_labels) for layer in config.layers})
        train_scores = unfitted.component_scores(features)
        standardisers = {
            name: Standardiser(float(value.mean()), float(value.std().clamp_min(1e-12)))
            for name, value in train_scores.items()
        }
        detector = cls(config, unfitted.gaussians, standardisers, float("inf"), float("inf"))
        return detector.calibrated(detector.score_images(model, calibration_images), config.target_fpr)

    def score_images(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Scores computed with a forward pass of their own (for evaluation and calibration)."""
        return self.score(layer_features(model, images, self.layers))

    # --- storage: safetensors for tensors, JSON for the rest ------------------------------------

    def save(self, directory: Path) -> None:
        tensors = {}
        for layer, gaussian in self.gaussians.items():
            tensors[f"{layer}.means"] = gaussian.means.contiguous()
            tensors[f"{layer}.whitener"] = gaussian.whitener.contiguous()
        save_file(tensors, str(directory / "detector.safetensors"), metadata={"format": "mea-detector-v1"})
        (directory / "detector.json").write_text(json.dumps(self.describe(), indent=2) + "\n")

    def describe(self) -> dict:
        return {
            "layers": list(self.config.layers),
            "use_confidence": self.config.use_confidence,
            "target_fpr": self.config.target_fpr,
            "severity_ramp": self.config.severity_ramp,
            "threshold": self.threshold,
            "saturation": self.saturation,
            "standardisers": {name: {"mean": s.mean, "std": s.std} for name, s in self.standardisers.items()},
        }

    @classmethod
    def load(cls, directory: Path) -> OodDetector:
        try:
            meta = json.loads((directory / "detector.json").read_text())
            tensors = load_file(str(directory / "detector.safetensors"))
            config = DetectorConfig(
                tuple(meta["layers"]),
                bool(meta["use_confidence"]),
                float(meta["target_fpr"]),
                float(meta["severity_ramp"]),
            )
            gaussians = {
                layer: ClassGaussians(tensors[f"{layer}.means"], tensors[f"{layer}.whitener"])
                for layer in config.layers
            }
            standardisers = {name: Standardiser(s["mean"], s["std"]) for name, s in meta["standardisers"].items()}
            return cls(config, gaussians, standardisers, float(meta["threshold"]), float(meta["saturation"]))
        except FileNotFoundError as exc:
            raise ArtifactError(
                f"{directory} is not a defense directory ({Path(exc.filename).name} missing); "
                "create one with `mea defend fit --victim DIR --out DIR`"
            ) from None
        except (KeyError, ValueError, TypeError, OSError, SafetensorError) as exc:
            raise ArtifactError(f"the detector in {directory} is corrupt ({exc!r}); fit it again") from None


class _FusedScorer:
    """The detector's score in one compiled call per batch (numba), whatever the layer count.

    The score runs on every query, and at small batches its cost is per operation, not per image:
    right after the victim's forward pass even a numpy operation on a (1, 22) array costs 3-10 us
    (cold caches), and the score takes twenty of them.  One compiled loop over the rows does all of
    it (whitening, the distance to every class centre, the confidence score, the standardisers
    folded into one weight per component and one offset) in a few microseconds, in float64, and
    with the direct difference instead of the expanded square, which cancels in float32.  Equal to
    the sum of the standardised `component_scores` up to float32 rounding (tests/test_defense.py).
    """

    def __init__(
        self, config: DetectorConfig, gaussians: dict[str, ClassGaussians], standardisers: dict[str, Standardiser]
    ) -> None:
        self.layers = config.layers
        self.use_confidence = config.use_confidence
        dims = [gaussians[layer].means.shape[1] for layer in self.layers]
        self.bounds = np.cumsum([0, *dims]).astype(np.int64)
        total = int(self.bounds[-1])
        # One block-diagonal whitener for all layers, and each layer's whitened class centres.
        self.whitener = np.zeros((max(total, 1), max(total, 1)))
        classes = max((len(gaussians[layer].means) for layer in self.layers), default=1)
        self.centres = np.zeros((len(dims), classes, max(total, 1)))
        for index, layer in enumerate(self.layers):
            block = slice(self.bounds[index], self.bounds[index + 1])
            layer_whitener = gaussians[layer].whitener.double().numpy()
            self.whitener[block, block] = layer_whitener
            self.centres[index, :, block] = gaussians[layer].means.double().numpy() @ layer_whitener
        names = [*self.layers, CONFIDENCE] if self.use_confidence else list(self.layers)
        self.weights = np.array([1.0 / standardisers[name].std for name in names])
        self.offset = -sum(standardisers[name].mean / standardisers[name].std for name in names)

    def __call__(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = features["logits"].numpy() if self.use_confidence else np.zeros((0, 1), np.float32)
        if self.layers:
            stacked = [features[layer].numpy() for layer in self.layers]
            pooled = np.concatenate(stacked, axis=1) if len(stacked) > 1 else stacked[0]
        else:
            pooled = np.zeros((len(logits), 1), np.float32)
        scores = _score_rows(
            np.ascontiguousarray(pooled, dtype=np.float32),
            np.ascontiguousarray(logits, dtype=np.float32),
            self.whitener,
            self.centres,
            self.bounds,
            self.weights,
            self.offset,
            self.use_confidence,
        )
        return torch.from_numpy(scores)


@numba.njit(cache=True, nogil=True)
def _score_rows(
    pooled: np.ndarray,
    logits: np.ndarray,
    whitener: np.ndarray,
    centres: np.ndarray,
    bounds: np.ndarray,
    weights: np.ndarray,
    offset: float,
    use_confidence: bool,
) -> np.ndarray:
    """Scores of a batch: rows of `pooled` are the layers' features side by side (`bounds` marks
    each layer's columns), `centres` each layer's whitened class means, (layers, classes, total)."""
    rows, layers = len(pooled), len(bounds) - 1
    scores = np.empty(rows, np.float32)
    whitened = np.dot(pooled.astype(np.float64), whitener)  # one BLAS product for every row and layer
    for row in range(rows):
        total = offset
        z = whitened[row]
        for layer in range(layers):
            lo, hi = bounds[layer], bounds[layer + 1]
            nearest = np.inf
            for c in range(centres.shape[1]):
                centre = centres[layer, c]
                distance = 0.0
                for j in range(lo, hi):
                    difference = z[j] - centre[j]
                    distance += difference * difference
                nearest = min(nearest, distance)
            total += weights[layer] * np.log(max(nearest, 1e-12))
        if use_confidence:
            top = 0
            for c in range(logits.shape[1]):
                if logits[row, c] > logits[row, top]:
                    top = c
            others = 0.0
            for c in range(logits.shape[1]):
                if c != top:
                    others += np.exp(np.float64(logits[row, c]) - np.float64(logits[row, top]))
            total += weights[layers] * np.log(max(np.log1p(others), 1e-300))
        scores[row] = total
    return scores
