"""A victim served elsewhere, as the operator who puts `mea serve` and its defense in front of it
sees it: an Open Inference Protocol v2 model (Triton, KServe, MLServer, another `mea serve`) that
answers images and shows nothing of its inner layers.

It is named by a served-victim file, JSON, given as `--victim upstream.json`:

    {"url": "http://10.0.0.5:8080", "model": "digits", "api_key_env": "UPSTREAM_KEY",
     "features": "extractor.onnx", "dataset": "mnist", "calibration_size": 5000}

`url` is required; `model` defaults to mea's model name; `api_key_env` names the environment
variable holding the upstream's key (the key itself is never written in a file); `features` is a
model file (ONNX or mea safetensors, relative to the JSON file) whose inner layers the detector
reads in place of the victim's (mea.defenses.features.ExtractedFeatures): without it only the
output-based confidence score applies.  `dataset`, `class_names` and `calibration_size` say what a
model file's sidecar says (mea.victim.SIDECAR_KEYS).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from mea.errors import ArtifactError
from mea.serve.client import HttpOracle
from mea.serve.protocol import MODEL_NAME

SERVED_KEYS = ("url", "model", "api_key_env", "features")
# Probabilities become logits by their logarithm (softmax gives them back); a zero stays finite.
_FLOOR = 1e-12


class RemoteClassifier(nn.Module):
    """A served classifier as a torch module for inference: its answers' logarithms as logits
    (one-hot rows where the server answers labels only)."""

    def __init__(self, oracle: HttpOracle) -> None:
        super().__init__()
        self._oracle = oracle
        self.signature = oracle.signature
        self.source = oracle.url

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._oracle.query(images.float()).clamp_min(_FLOOR).log()


def served_classifier(path: Path, record: dict, classes: int | None = None) -> tuple[nn.Module, str, Path | None]:
    """(the upstream as a module, a fingerprint of what it is, the feature extractor's file or None)
    from a served-victim file's record; `classes`: its class count where the file names its classes
    (what a label-only upstream's metadata cannot say)."""
    unknown = set(record) - set(SERVED_KEYS)
    if unknown:
        raise ArtifactError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    url, model = str(record["url"]), str(record.get("model", MODEL_NAME))
    if not url.startswith(("http://", "https://")):
        raise ArtifactError(f"{path}: url must start with http:// or https://, got {url!r}")
    key = None
    if "api_key_env" in record:
        variable = str(record["api_key_env"])
        key = os.environ.get(variable)
        if not key:
            raise ArtifactError(f"{path} reads the upstream's key from ${variable}, which is not set; export it")
    features = None
    if "features" in record:
        features = (path.parent / str(record["features"])).resolve()
        if not features.is_file():
            raise ArtifactError(f"{path}: no feature extractor at {features}; give a model file (ONNX or safetensors)")
    classifier = RemoteClassifier(HttpOracle(url, key, model=model, classes=classes))
    # The victim is what the upstream serves under this name, read through this extractor: a
    # defense fitted on one is refused for another.
    identity = {"url": url.rstrip("/"), "model": model, "features": None if features is None else _digest(features)}
    return classifier, hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(), features


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
