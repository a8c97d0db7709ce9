"""A suspect model, as the owner can reach it: a weights file or a prediction API.

Every suspect answers `scores(images) -> (B, 10)`: logits for a weights file, the answers as given
for an API (probabilities, top-k, rounded, or one-hot rows when it answers labels only).  The tests
in `mea.ownership.verify` need no more than the suspect's ranking of classes, and stay exact when
an answer ranks nothing but its top class (label-only answers).

- `ModelSuspect`: a mea safetensors file (`clone.safetensors`, a victim's `model.safetensors`).
- `ModelSuspect` also runs any ONNX classifier of 28x28 grey images (`mea.model_files`).
- `http_suspect`: an Open Inference Protocol v2 server (KServe, Triton, `mea serve`); for
  `mea serve` through `mea.serve.client.HttpOracle` (binary tensors, retries on 429/503).

Nothing here unpickles: a pickle (a `torch.save` file) is refused with a way to convert it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from mea.config import MODEL_NAME
from mea.errors import ArtifactError, MeaError
from mea.model_files import PICKLE_HINT, OnnxClassifier, sniff
from mea.models import NUM_CLASSES, signature_of
from mea.oracle import check_images
from mea.signature import DEFAULT
from mea.training import predict_logits


class SuspectError(MeaError):
    """The suspect cannot be loaded or queried as a 28x28, 10-class classifier."""


class Suspect(Protocol):
    """A model under suspicion; `queries` counts the images sent to it."""

    queries: int

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 10) class scores for (B, 1, 28, 28) images in [0, 1]; higher = more likely."""
        ...

    def describe(self) -> dict: ...


def load_suspect(path: Path) -> Suspect:
    """A suspect from a weights file: mea safetensors or ONNX."""
    path = Path(path)
    if not path.is_file():
        raise SuspectError(f"no suspect model at {path}; pass a .safetensors or .onnx file, or --url for an API")
    kind = sniff(path)
    if kind == "pickle":
        raise SuspectError(f"{path} is a pickle; {PICKLE_HINT}")
    if kind == "safetensors":
        suspect = ModelSuspect.load(path)
    elif kind == "onnx":
        suspect = ModelSuspect(OnnxClassifier(path, SuspectError), "onnx", str(path))
    else:
        raise SuspectError(
            f"{path} is not a model file mea can read; pass a mea .safetensors file or an .onnx file, "
            "or --url for an API"
        )
    signature = signature_of(suspect.model)
    if signature != DEFAULT:
        raise SuspectError(
            f"{path} is not a model of 28x28 grey images into {DEFAULT.classes} classes, as the victims mea verifies "
            f"are (it takes {signature.describe()}): it is not a {DEFAULT.classes}-class copy of one"
        )
    return suspect


class ModelSuspect:
    """A mea model file, run in process."""

    def __init__(self, model: torch.nn.Module, arch: str, source: str) -> None:
        self.model = model.eval()
        self.arch = arch
        self.source = source
        self.queries = 0

    @classmethod
    def load(cls, path: Path) -> ModelSuspect:
        from mea import models

        try:
            model, arch = models.load(path)
        except ArtifactError as exc:
            raise SuspectError(
                f"{path} is not a mea model of 28x28 images and {NUM_CLASSES} classes ({exc}); "
                "export other models to ONNX"
            ) from None
        return cls(model, arch, str(path))

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        images = check_images(images)
        self.queries += len(images)
        return predict_logits(self.model, images).float()

    def describe(self) -> dict:
        if self.arch == "onnx":
            return {"kind": "onnx", "source": self.source}
        return {"kind": "safetensors", "source": self.source, "arch": self.arch}


def http_suspect(url: str, api_key: str | None = None, model: str = MODEL_NAME, batch_size: int = 256) -> Suspect:
    """A suspect behind an Open Inference Protocol v2 server; `mea serve` is recognised by its metadata."""
    metadata = _metadata(url, api_key, model)
    if "output_mode" in metadata.get("parameters", {}):
        return MeaHttpSuspect(url, api_key, model, batch_size)
    return OipSuspect(url, api_key, model, metadata, batch_size)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def _refusal(url: str, response) -> SuspectError:
    try:
        message = str(response.json().get("error", response.text))
    except ValueError:
        message = response.text[:200]
    hint = {
        401: "pass the API's key with --api-key",
        403: "the key is refused; use one the API accepts",
        404: "name the served model with --model",
        429: "the key's quota or rate is spent; try later or with another key",
    }.get(response.status_code, "check the URL and the model name")
    return SuspectError(f"the suspect API at {url} answered HTTP {response.status_code} ({message}); {hint}")


def _metadata(url: str, api_key: str | None, model: str) -> dict:
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/v2/models/{model}", headers=_headers(api_key), timeout=30)
    except httpx.HTTPError as exc:
        raise SuspectError(f"cannot reach the suspect API at {url} ({exc}); check the URL and that it is up") from None
    if response.status_code != 200:
        raise _refusal(url, response)
    try:
        metadata = response.json()
    except ValueError:
        raise SuspectError(f"{url} does not speak the Open Inference Protocol v2 (no JSON model metadata)") from None
    if not isinstance(metadata, dict):
        raise SuspectError(f"{url} does not speak the Open Inference Protocol v2 (model metadata is not an object)")
    return metadata


class MeaHttpSuspect:
    """A suspect served by `mea serve`, queried through the attack's own HTTP client."""

    def __init__(self, url: str, api_key: str | None, model: str, batch_size: int) -> None:
        from mea.serve.client import HttpOracle

        self._oracle = HttpOracle(url, api_key, model=model, batch_size=batch_size)
        self.source = url
        self.queries = 0

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        images = check_images(images)
        answers = self._oracle.query(images)
        self.queries += len(images)
        return answers

    def describe(self) -> dict:
        return {"kind": "mea-serve", "source": self.source, "output_mode": self._oracle.output.spec}


class OipSuspect:
    """Any Open Inference Protocol v2 server, in JSON: one FP32 input, the first output read as
    scores (B, 10) or labels (B,) / (B, 1)."""

    def __init__(self, url: str, api_key: str | None, model: str, metadata: dict, batch_size: int) -> None:
        import httpx

        inputs = metadata.get("inputs") or []
        outputs = metadata.get("outputs") or []
        if len(inputs) != 1 or not outputs:
            raise SuspectError(f"{url} model {model!r} declares {len(inputs)} inputs; a suspect takes one image batch")
        shape = list(inputs[0].get("shape", []))[1:]
        if shape not in ([1, 28, 28], [784]):
            raise SuspectError(
                f"{url} model {model!r} takes input of shape {inputs[0].get('shape')}, not [B, 1, 28, 28] or [B, 784]"
            )
        self._shape = shape
        self._input = str(inputs[0].get("name", "input"))
        self._output = str(outputs[0].get("name"))
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=_headers(api_key), timeout=60)
        self._path = f"/v2/models/{model}/infer"
        self._batch_size = batch_size
        self.source = url
        self.queries = 0

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        images = check_images(images)
        parts = [self._infer(images[i : i + self._batch_size]) for i in range(0, len(images), self._batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, NUM_CLASSES)

    def _infer(self, images: torch.Tensor) -> torch.Tensor:
        import httpx

        body = {
            "inputs": [
                {
                    "name": self._input,
                    "shape": [len(images), *self._shape],
                    "datatype": "FP32",
                    "data": images.reshape(-1).tolist(),
                }
            ],
            "outputs": [{"name": self._output}],
        }
        try:
            response = self._client.post(self._path, json=body)
        except httpx.HTTPError as exc:
            raise SuspectError(f"the suspect API at {self.source} stopped answering ({exc})") from None
        if response.status_code != 200:
            raise _refusal(self.source, response)
        self.queries += len(images)
        try:
            output = next(o for o in response.json()["outputs"] if o.get("name") == self._output)
            values = np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
        except (ValueError, KeyError, TypeError, StopIteration):
            raise SuspectError(
                f"the suspect API at {self.source} answered no readable {self._output!r} output"
            ) from None
        if values.ndim == 2 and values.shape == (len(images), NUM_CLASSES):
            return torch.from_numpy(values).float()
        if values.size == len(images):  # labels
            labels = values.reshape(-1).astype(np.int64)
            if labels.min(initial=0) < 0 or labels.max(initial=0) >= NUM_CLASSES:
                raise SuspectError(f"the suspect API at {self.source} answers labels outside 0..{NUM_CLASSES - 1}")
            return torch.nn.functional.one_hot(torch.from_numpy(labels), NUM_CLASSES).float()
        raise SuspectError(
            f"the suspect API at {self.source} answers shape {list(values.shape)}, not [B, {NUM_CLASSES}] or [B]: "
            f"it is not a {NUM_CLASSES}-class classifier"
        )

    def describe(self) -> dict:
        return {"kind": "oip-v2", "source": self.source}
