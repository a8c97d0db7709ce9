"""The oracle interface over HTTP: any attack runs unchanged against a served victim.

Requests use the Open Inference Protocol v2 with Triton's binary tensor extension (exact FP32
pixels in, exact FP32 probabilities out, no JSON number formatting on either side), in batches,
retrying with exponential backoff when the server answers 429 (rate limit) or 503.  The key's quota
is the budget: the server counts it, and a spent quota ends the attack with BudgetExhausted.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import orjson
import torch

from mea.errors import BudgetExhausted, ConfigError, MeaError, Refused
from mea.oracle import OutputMode, check_images, parse_output
from mea.serve.app import MODEL_NAME


class ServiceError(MeaError):
    """The service refused a request for a reason the client cannot fix by retrying."""


class HttpOracle:
    def __init__(
        self,
        url: str,
        api_key: str,
        model: str = MODEL_NAME,
        batch_size: int = 256,
        max_retries: int = 8,
        timeout_s: float = 60.0,
    ) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        self._client = httpx.Client(base_url=url.rstrip("/"), headers={"X-API-Key": api_key}, timeout=timeout_s)
        self._model = model
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._used = 0
        metadata = self._get(f"/v2/models/{model}")
        parameters = metadata.get("parameters", {})
        self._output = parse_output(parameters.get("output_mode", "probabilities"))
        self._batch_size = min(batch_size, int(parameters.get("max_batch_size", batch_size)))
        remaining = parameters.get("quota_remaining")
        self._budget = None if remaining is None else int(remaining)

    @property
    def url(self) -> str:
        return str(self._client.base_url)

    @property
    def output(self) -> OutputMode:
        return self._output

    @property
    def queries_used(self) -> int:
        return self._used

    @property
    def budget(self) -> int | None:
        """The key's quota when the oracle connected (queries it could still make then)."""
        return self._budget

    def close(self) -> None:
        self._client.close()

    def _get(self, path: str) -> dict:
        try:
            response = self._client.get(path)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the service at {self._client.base_url} ({exc})") from None
        if response.status_code != 200:
            raise ServiceError(f"{path}: HTTP {response.status_code}: {_message(response)}")
        return response.json()

    def query(self, images: torch.Tensor) -> torch.Tensor:
        images = check_images(images)
        if self._budget is not None and self._used + len(images) > self._budget:
            raise BudgetExhausted(
                f"query budget exhausted: {self._used} of {self._budget} queries used, {len(images)} more asked"
            )
        answers: list[torch.Tensor] = []
        for start in range(0, len(images), self._batch_size):
            try:
                answers.append(self._infer(images[start : start + self._batch_size]))
            except Refused as refusal:
                raise Refused(str(refusal), torch.cat(answers) if answers else None) from None
        return torch.cat(answers) if answers else torch.empty(0, 10)

    def _infer(self, images: torch.Tensor) -> torch.Tensor:
        body, headers = binary_infer_request(images.numpy())
        delay = 0.5
        for attempt in range(self._max_retries + 1):
            try:
                response = self._client.post(f"/v2/models/{self._model}/infer", content=body, headers=headers)
            except httpx.TransportError as exc:
                if attempt == self._max_retries:
                    raise ServiceError(f"the service stopped answering ({exc})") from None
                time.sleep(delay)
                delay *= 2
                continue
            if response.status_code == 200:
                self._used += len(images)
                return _probabilities(response, len(images))
            if response.status_code == 403:
                raise Refused(f"the service refused this key: {_message(response)}")
            if response.status_code == 429 and response.headers.get("x-quota-remaining") is not None:
                raise BudgetExhausted(f"the service's quota for this key is spent: {_message(response)}")
            if response.status_code in (429, 503) and attempt < self._max_retries:
                wait = float(response.headers.get("retry-after", delay))
                time.sleep(max(wait, delay))
                delay *= 2
                continue
            raise ServiceError(f"HTTP {response.status_code}: {_message(response)}")
        raise ServiceError("gave up after repeated 429/503 answers")


def binary_infer_request(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 infer request with the images as one binary FP32 tensor (the binary-data
    extension Triton's clients use): the JSON header, then the raw little-endian floats."""
    data = images.astype("<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(images.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    )
    return header + data, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:200]


def _probabilities(response: httpx.Response, batch: int) -> torch.Tensor:
    header_length = response.headers.get("inference-header-content-length")
    body = response.content
    if header_length is None:
        document = orjson.loads(body)
        output = next(o for o in document["outputs"] if o["name"] == "probabilities")
        return torch.tensor(output["data"], dtype=torch.float32).reshape(batch, 10)
    document = orjson.loads(body[: int(header_length)])
    offset = int(header_length)
    for output in document["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size", 0)
        if output["name"] == "probabilities":
            values = np.frombuffer(body[offset : offset + size], dtype="<f4").reshape(batch, 10)
            return torch.from_numpy(values.copy())
        offset += size
    raise ServiceError("the service's answer holds no probabilities output")
