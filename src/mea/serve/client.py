"""The oracle interface over HTTP: any attack runs unchanged against a served victim.

Requests use the Open Inference Protocol v2 with Triton's binary tensor extension (exact FP32
pixels in, exact FP32 probabilities out, no JSON number formatting on either side), in batches,
retrying with exponential backoff when the server answers 429 (rate limit) or 503.  The key's quota
is the budget: the server counts it, and a spent quota ends the attack with BudgetExhausted.

A request that may have reached the server (a read timeout, a dropped connection) is resent only
when the server recognises retries: `mea serve` announces an idempotency header in its model
metadata, and every batch then carries a fresh key in it, so a retry is answered without being
charged twice.  Against a server that does not, only requests that never left (a refused or
timed-out connection) are retried.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Mapping

import httpx
import numpy as np
import orjson
import torch

from mea.errors import BudgetExhausted, ConfigError, MeaError, Refused
from mea.oracle import OutputMode, check_images, parse_output
from mea.serve.protocol import MODEL_NAME

# Retries wait at most this long between attempts, and a request's time limit grows to at most this.
_MAX_DELAY_S = 30.0
_MAX_TIMEOUT_S = 120.0
# Failures after which the request certainly did not reach the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class ServiceError(MeaError):
    """The service refused a request for a reason the client cannot fix by retrying."""


class HttpOracle:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        model: str = MODEL_NAME,
        batch_size: int = 256,
        max_retries: int = 8,
        timeout_s: float = 60.0,
        headers: Mapping[str, str] | None = None,
        verify: str | bool | ssl.SSLContext = True,
    ) -> None:
        """`timeout_s` bounds the first attempt of a request; each retry doubles it (up to 2 minutes).
        `headers` go with every request (an Authorization header, say); `verify` is a CA bundle
        for a server with its own certificate (or True for the system's)."""
        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        sent = dict(headers or {})
        if api_key is not None:
            sent["X-API-Key"] = api_key
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=sent, timeout=timeout_s, verify=verify)
        self._timeout_s = timeout_s
        self._model = model
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._used = 0
        self.retries = 0  # requests resent (for diagnostics)
        metadata = self._get(f"/v2/models/{model}")
        parameters = metadata.get("parameters", {})
        self._idempotency_header: str | None = parameters.get("idempotency_header")
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
            response = self._client.get(path, timeout=max(self._timeout_s, 30.0))
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
        if self._idempotency_header is not None:
            headers[self._idempotency_header] = uuid.uuid4().hex
        delay = 0.5
        for attempt in range(self._max_retries + 1):
            timeout = min(self._timeout_s * 2**attempt, max(self._timeout_s, _MAX_TIMEOUT_S))
            try:
                response = self._client.post(
                    f"/v2/models/{self._model}/infer", content=body, headers=headers, timeout=timeout
                )
            except httpx.TransportError as exc:
                resendable = isinstance(exc, _NOT_SENT) or self._idempotency_header is not None
                if attempt == self._max_retries or not resendable:
                    raise ServiceError(
                        f"the service stopped answering ({type(exc).__name__}: {exc})"
                        + ("" if resendable else "; not resent, since the server may have answered and charged it")
                    ) from None
                self.retries += 1
                # A request that timed out is resent at once (with more time); a refused connection waits.
                time.sleep(0.0 if isinstance(exc, httpx.TimeoutException) else delay)
                delay = min(2 * delay, _MAX_DELAY_S)
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
                self.retries += 1
                time.sleep(max(wait, delay))
                delay = min(2 * delay, _MAX_DELAY_S)
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
