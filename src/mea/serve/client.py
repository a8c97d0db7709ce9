"""The oracle interface over HTTP: any attack runs unchanged against a served victim.

Requests use the Open Inference Protocol v2 with Triton's binary tensor extension (exact FP32
pixels in, exact FP32 probabilities out, no JSON number formatting on either side), in batches,
retrying with exponential backoff when the server answers 429 (rate limit) or 503.  The key's quota
is the budget: the server counts it, and a spent quota ends the attack with BudgetExhausted.

Any other Open Inference Protocol v2 server (KServe, Seldon MLServer, Triton) works too: the model's
metadata names its input (a batch of images, [B, C, H, W] with 1 or 3 channels or [B, H*W] flat
grey, FP32 or FP64) and outputs; the requests are then plain JSON, and the answers are read as the
server gives them: class scores ([B, K], probabilities or logits, turned into probabilities) or
labels ([B] or [B, 1], integers: a label-only oracle, whose class count the metadata cannot say:
`classes`, the local victim's, default 10).  The victim's signature (input shape, classes) comes from the metadata.

A request that may have reached the server (a read timeout, a dropped connection) is resent only
when the server recognises retries: `mea serve` announces an idempotency header in its model
metadata, and every batch then carries a fresh key in it, so a retry is answered without being
charged twice.  Against a server that does not, only requests that never left (a refused or
timed-out connection) are retried.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import numpy as np
import orjson
import torch

from mea.errors import BudgetExhausted, ConfigError, MeaError, Refused
from mea.oracle import Label, OutputMode, Probabilities, check_inputs, parse_output
from mea.serve.protocol import MODEL_NAME
from mea.signature import DEFAULT, Signature

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
        classes: int | None = None,
        features: bool = False,
    ) -> None:
        """`timeout_s` bounds the first attempt of a request; each retry doubles it (up to 2 minutes).
        `headers` go with every request (an Authorization header, say); `verify` is a CA bundle
        for a server with its own certificate (or True for the system's).  `classes`: the number of
        classes of a server that answers labels only (its metadata cannot say; default 10), checked
        against a server that answers scores.  `features`: the victim takes feature vectors [B, d]
        (a flat input is otherwise read as a square grey image where it can be one)."""
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
        metadata = self._metadata(model)
        parameters = metadata.get("parameters", {})
        # `mea serve` says how it answers; any other OIP v2 server is read from its model metadata.
        self._served_model = ServedModel.from_metadata(metadata, url, model, classes, features)
        self._signature = self._served_model.signature
        if parameters.get("missing_features"):  # mea serve of a tree: NaN stands for a feature left out
            self._signature = dataclasses.replace(self._signature, missing=True)
        if "output_mode" in parameters:  # mea serve: binary tensors both ways
            self._served_model = None
        self._idempotency_header: str | None = parameters.get("idempotency_header")
        self._output = (
            parse_output(parameters.get("output_mode", "probabilities"))
            if self._served_model is None
            else self._served_model.output
        )
        self._batch_size = min(batch_size, int(parameters.get("max_batch_size", batch_size)))
        remaining = parameters.get("quota_remaining")
        self._budget = None if remaining is None else int(remaining)
        # `mea serve` with a tree victim names the node that answered (the `node` output), which
        # path-finding reads as the leaf's identity (Tramèr et al. 2016, §4.2).
        self.names_nodes = self._served_model is None and any(
            output.get("name") == "node" for output in metadata.get("outputs") or []
        )

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

    @property
    def signature(self) -> Signature:
        return self._signature

    def close(self) -> None:
        self._client.close()

    def _metadata(self, model: str) -> dict:
        where = f"the server at {self._client.base_url}"
        try:
            response = self._client.get(f"/v2/models/{model}", timeout=max(self._timeout_s, 30.0))
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach {where} ({exc}); check the URL and that it is up") from None
        if response.status_code == 404:
            raise ServiceError(f"{where} serves no model {model!r}; name the model with --model")
        if response.status_code in (401, 403):
            raise ServiceError(
                f"{where} wants credentials (HTTP {response.status_code}: {_message(response)}); pass --api-key KEY "
                "or --header 'Authorization: Bearer TOKEN'"
            )
        if response.status_code != 200:
            raise ServiceError(f"/v2/models/{model}: HTTP {response.status_code}: {_message(response)}")
        return response.json()

    def query_nodes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(answers, node identifiers) for one batch of a tree victim that names its nodes."""
        if not self.names_nodes:
            raise ConfigError(f"{self.url} names no node; only `mea serve` of a tree without a defense does")
        answers = self._query(images, nodes=True)
        return answers[:, :-1].float(), answers[:, -1].long()

    def query(self, images: torch.Tensor) -> torch.Tensor:
        return self._query(images, nodes=False)

    def _query(self, images: torch.Tensor, nodes: bool) -> torch.Tensor:
        images = check_inputs(images, self._signature)
        if self._budget is not None and self._used + len(images) > self._budget:
            raise BudgetExhausted(
                f"query budget exhausted: {self._used} of {self._budget} queries used, {len(images)} more asked"
            )
        answers: list[torch.Tensor] = []
        for start in range(0, len(images), self._batch_size):
            try:
                answers.append(self._infer(images[start : start + self._batch_size], nodes))
            except Refused as refusal:
                raise Refused(str(refusal), torch.cat(answers) if answers else None) from None
        return torch.cat(answers) if answers else torch.empty(0, self._signature.classes + nodes)

    def _infer(self, images: torch.Tensor, nodes: bool = False) -> torch.Tensor:
        if self._served_model is None:
            body, headers = binary_infer_request(images.numpy(), ("probabilities", "node") if nodes else None)
        else:
            body, headers = self._served_model.request(images), {"Content-Type": "application/json"}
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
                if self._served_model is None:
                    probabilities = _probabilities(response, len(images), self._signature.classes)
                    if nodes:  # the node ids as a last column (float64 holds them exactly)
                        found = _binary_output(response, "node", "<i8", (len(images), 1))
                        return torch.cat([probabilities.double(), torch.from_numpy(found).double()], 1)
                    return probabilities
                return self._served_model.answers(response, len(images))
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


def binary_infer_request(images: np.ndarray, outputs: tuple[str, ...] | None = None) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 infer request with the images as one binary FP32 tensor (the binary-data
    extension Triton's clients use): the JSON header, then the raw little-endian floats.  The
    `outputs` asked for come back binary too (default: the probabilities)."""
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
            "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs or ("probabilities",)],
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


def _probabilities(response: httpx.Response, batch: int, classes: int) -> torch.Tensor:
    header_length = response.headers.get("inference-header-content-length")
    body = response.content
    if header_length is None:
        document = orjson.loads(body)
        output = next(o for o in document["outputs"] if o["name"] == "probabilities")
        return torch.tensor(output["data"], dtype=torch.float32).reshape(batch, classes)
    return torch.from_numpy(_binary_output(response, "probabilities", "<f4", (batch, classes)))


def _binary_output(response: httpx.Response, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """One binary output tensor of a response."""
    header_length = int(response.headers.get("inference-header-content-length", "0"))
    body = response.content
    offset = header_length
    for output in orjson.loads(body[:header_length])["outputs"] if header_length else []:
        size = output.get("parameters", {}).get("binary_data_size", 0)
        if output["name"] == name:
            return np.frombuffer(body[offset : offset + size], dtype=dtype).reshape(shape).copy()
        offset += size
    raise ServiceError(f"the service's answer holds no {name} output")


@dataclass(frozen=True)
class ServedModel:
    """What a third-party OIP v2 server's model takes and gives, read from its metadata."""

    input_name: str
    input_shape: tuple[int, ...]  # one image as the server takes it: (C, H, W), or (H*W,) flat grey
    input_datatype: str  # FP32 or FP64
    output_name: str
    labels: bool  # integer class labels rather than class scores
    source: str
    signature: Signature = DEFAULT

    @property
    def output(self) -> OutputMode:
        return Label() if self.labels else Probabilities()

    @classmethod
    def from_metadata(
        cls, metadata: dict, url: str, model: str, classes: int | None = None, features: bool = False
    ) -> ServedModel:
        where = f"model {model!r} at {url}"
        inputs, outputs = metadata.get("inputs") or [], metadata.get("outputs") or []
        if len(inputs) != 1:
            raise ServiceError(
                f"{where} declares {len(inputs)} inputs in its metadata; mea sends one batch of images "
                "and needs the input's name, datatype and shape there"
            )
        try:
            shape = tuple(int(d) for d in inputs[0].get("shape", [])[1:])
            input_shape = Signature.of_input(shape, DEFAULT.classes, where, features).input_shape
        except (ConfigError, TypeError, ValueError) as exc:
            raise ServiceError(
                f"{where} takes input of shape {inputs[0].get('shape')}: {exc}; mea attacks image classifiers"
            ) from None
        datatype = str(inputs[0].get("datatype", "FP32")).upper()
        if datatype not in ("FP32", "FP64"):
            raise ServiceError(f"{where} takes {datatype} input; mea sends images as FP32 or FP64 in [0, 1]")
        if not outputs:
            raise ServiceError(f"{where} declares no outputs in its metadata; mea needs the output's name")
        output = outputs[0]
        out_type = str(output.get("datatype", "FP32")).upper()
        out_shape = [int(d) for d in output.get("shape", [-1, classes or DEFAULT.classes])[1:]]
        labels = out_type.startswith(("INT", "UINT")) or out_shape in ([], [1])
        if not labels and (len(out_shape) != 1 or out_shape[0] < 2 or (classes and out_shape[0] != classes)):
            raise ServiceError(
                f"{where} answers {output.get('name')!r} of shape {output.get('shape')}, neither class scores "
                f"[-1, {classes or 'K'}] nor labels [-1]"
            )
        try:
            signature = Signature(input_shape, classes or DEFAULT.classes if labels else out_shape[0])
        except ConfigError as exc:
            raise ServiceError(f"{where}: {exc}") from None
        source = f"{url} ({model})"
        return cls(str(inputs[0]["name"]), shape, datatype, str(output["name"]), labels, source, signature)

    def request(self, images: torch.Tensor) -> bytes:
        return orjson.dumps(
            {
                "inputs": [
                    {
                        "name": self.input_name,
                        "shape": [len(images), *self.input_shape],
                        "datatype": self.input_datatype,
                        "data": images.reshape(-1).tolist(),
                    }
                ],
                "outputs": [{"name": self.output_name}],
            }
        )

    def answers(self, response: httpx.Response, batch: int) -> torch.Tensor:
        """Probability rows (one-hot rows for labels) from a JSON infer response."""
        classes = self.signature.classes
        try:
            output = next(o for o in orjson.loads(response.content)["outputs"] if o.get("name") == self.output_name)
            values = np.asarray(output["data"], dtype=np.float64)
        except (orjson.JSONDecodeError, KeyError, TypeError, StopIteration):
            raise ServiceError(f"{self.source} answered no readable {self.output_name!r} output") from None
        if self.labels:
            if values.size != batch:
                raise ServiceError(f"{self.source} answered {values.size} labels for {batch} images")
            labels = torch.from_numpy(values.reshape(batch).astype(np.int64))
            if len(labels) and (labels.min() < 0 or labels.max() >= classes):
                raise ServiceError(
                    f"{self.source} answered label {int(labels.max())}, outside 0..{classes - 1}; "
                    "the classes of the victim it is scored against (--victim)"
                )
            return torch.nn.functional.one_hot(labels, classes).float()
        if values.size != batch * classes:
            raise ServiceError(f"{self.source} answered {values.size} scores for {batch} images x {classes}")
        scores = torch.from_numpy(values.reshape(batch, classes)).float()
        looks_like_probabilities = bool((scores >= 0).all()) and bool(((scores.sum(1) - 1).abs() < 1e-3).all())
        return scores if looks_like_probabilities else torch.softmax(scores, dim=1)
