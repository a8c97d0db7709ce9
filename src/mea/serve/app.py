"""The prediction service: the victim behind the Open Inference Protocol v2, with API keys,
quotas, rate limits, an audit log, the query detector and per-client detection.

    GET  /v2/health/live            GET /v2/health/ready
    GET  /v2                        server metadata
    GET  /v2/models/{name}          model metadata (with the caller's output mode and quota, if keyed)
    GET  /v2/models/{name}/ready
    POST /v2/models/{name}/infer    (also /v2/models/{name}/versions/1/infer)

Client mistakes get a 4xx answer with {"error": "..."}; nothing a client sends produces a 5xx.
Every inference request, refused or answered, leaves one audit row, committed before the answer.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mea import __version__
from mea.defenses.gate import ClientGate
from mea.defenses.prada import REFUSED, ClientState, PradaConfig, PradaMonitor
from mea.defenses.store import Defense
from mea.oracle import VictimOracle, parse_output
from mea.serve.audit import AuditLog
from mea.serve.db import Database
from mea.serve.keys import ApiKey, KeyStore, QuotaExceeded
from mea.serve.protocol import INPUT_SHAPES, ProtocolError, encode_infer_response, parse_infer_request
from mea.serve.ratelimit import RateLimiter
from mea.victim import Victim

MODEL_NAME = "lenet-mnist"
_CONTENT_TYPES = ("application/json", "application/octet-stream")


@dataclass(frozen=True)
class ServeConfig:
    db: Path
    model_name: str = MODEL_NAME
    output: str = "probabilities"
    max_batch: int = 1024
    max_body_bytes: int = 32 * 1024 * 1024
    prada: PradaConfig = field(default_factory=PradaConfig)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` bytes (announced or, when chunked, counted)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes, encoding: str | None, limit: int) -> bytes:
    if encoding in (None, "", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(415, f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none")
    decompressor = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(400, f"the {encoding} body is damaged ({exc})") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise _TooLarge
    return data


def _token(request: Request) -> str | None:
    if key := request.headers.get("x-api-key"):
        return key
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def create_app(config: ServeConfig, victim: Victim, defense: Defense | None = None) -> FastAPI:
    parse_output(config.output)  # refuse a bad deployment output mode at start-up
    db = Database(config.db)
    keys, audit = KeyStore(db), AuditLog(db)
    limiter = RateLimiter(config.max_batch)
    monitor = PradaMonitor(config.prada)
    # Two cores do not answer two batches faster than one: run the model one batch at a time.
    model_lock = threading.Lock()
    plain = VictimOracle(victim.model)
    gate = ClientGate(defense.oracle(victim), monitor) if defense is not None else None

    app = FastAPI(
        title="mea prediction service",
        version=__version__,
        description="A LeNet-5 MNIST classifier behind the Open Inference Protocol v2.",
    )
    app.state.db = db

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.url.path}", 405: f"{request.method} is not allowed here"}
        return error(exc.status_code, message.get(exc.status_code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, f"invalid request: {exc.errors()[0].get('msg', 'malformed')}")

    @app.get("/v2/health/live")
    def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> dict:
        return {"ready": True}

    @app.get("/v2")
    def server_metadata() -> dict:
        return {"name": "mea", "version": __version__, "extensions": ["binary_tensor_data"]}

    def unknown_model(name: str) -> str | None:
        return None if name == config.model_name else f"unknown model {name!r}; this server has {config.model_name!r}"

    def model_or_404(name: str) -> JSONResponse | None:
        message = unknown_model(name)
        return None if message is None else error(404, message)

    @app.get("/v2/models/{name}")
    def model_metadata(name: str, request: Request):
        if missing := model_or_404(name):
            return missing
        metadata = {
            "name": config.model_name,
            "versions": ["1"],
            "platform": "pytorch_libtorch",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                {"name": "label", "datatype": "INT64", "shape": [-1]},
            ],
            "parameters": {
                "input_shapes": INPUT_SHAPES,
                "input_datatypes": "FP32 in [0, 1] or UINT8",
                "max_batch_size": config.max_batch,
                "output_mode": config.output,
            },
        }
        key = keys.authenticate(_token(request))
        if key is not None:
            metadata["parameters"]["output_mode"] = key.output or config.output
            if key.quota is not None:
                metadata["parameters"]["quota_remaining"] = key.remaining
        return metadata

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str):
        return model_or_404(name) or {"name": name, "ready": True}

    def answer(key: ApiKey, images: torch.Tensor) -> tuple[torch.Tensor, int, ClientState]:
        """Answers in the key's output mode, how many images were flagged, the client's state."""
        output = parse_output(key.output or config.output)
        with model_lock:
            if gate is None:
                probabilities = plain.query(images)
                flags = torch.zeros(len(images), dtype=torch.bool)
                state = monitor.observe(key.id, images, probabilities.argmax(1), flags)
            else:
                probabilities, flags, state = gate.answer(key.id, images)
        return output(probabilities), int(flags.sum()), state

    async def infer(name: str, request: Request) -> Response:
        key: ApiKey | None = None
        batch, digest, flagged, state = 0, None, 0, None

        def finish(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
            audit.record(key.id if key else None, batch, digest, flagged, status, message, state)
            return error(status, message, headers)

        if message := unknown_model(name):
            return finish(404, message)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and content_type not in _CONTENT_TYPES:
            return finish(415, f"Content-Type {content_type!r} is not supported; send application/json")
        key = keys.authenticate(_token(request))
        if key is None:
            return finish(
                401,
                "missing, unknown or revoked API key; send it in the X-API-Key header",
                {"WWW-Authenticate": "Bearer"},
            )
        if monitor.state(key.id).level >= REFUSED:
            return finish(403, "this API key is suspended; contact the service operator")
        try:
            body = await _read_body(request, config.max_body_bytes)
            body = _decode(body, request.headers.get("content-encoding"), config.max_body_bytes)
            header = request.headers.get("inference-header-content-length")
            if header is not None and not header.isdigit():
                raise ProtocolError(400, "Inference-Header-Content-Length must be a whole number of bytes")
            parsed = await run_in_threadpool(
                parse_infer_request, body, int(header) if header else None, config.max_batch
            )
        except _TooLarge:
            return finish(413, f"the request body exceeds {config.max_body_bytes} bytes; send smaller batches")
        except ProtocolError as exc:
            return finish(exc.status, exc.message)
        batch = len(parsed.images)
        digest = hashlib.sha256(parsed.raw).hexdigest()
        try:
            key = keys.charge(key.id, batch)
        except QuotaExceeded as exc:
            return finish(
                429,
                f"{exc}; ask the operator for a larger quota",
                {"Retry-After": "3600", "X-Quota-Remaining": str(exc.key.remaining)},
            )
        if key.rate is not None and (wait := limiter.acquire(key.id, key.rate, batch)) > 0:
            keys.refund(key.id, batch)
            return finish(
                429,
                f"rate limit of {key.rate:g} images/s exceeded; retry later",
                {"Retry-After": RateLimiter.retry_after(wait)},
            )
        answers, flagged, client = await run_in_threadpool(answer, key, parsed.images)
        state = client.describe()
        if client.level >= REFUSED:
            # The stream crossed the line with this very batch: it is not answered.
            return finish(403, "this API key is suspended; contact the service operator")
        content, headers = encode_infer_response(config.model_name, parsed, answers)
        audit.record(key.id, batch, digest, flagged, 200, None, state)
        if key.remaining is not None:
            headers["X-Quota-Remaining"] = str(key.remaining)
        media = "application/octet-stream" if "Inference-Header-Content-Length" in headers else "application/json"
        return Response(content, media_type=media, headers=headers)

    infer_docs = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["inputs"],
                        "properties": {
                            "id": {"type": "string"},
                            "inputs": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["name", "shape", "datatype", "data"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "shape": {
                                            "type": "array",
                                            "minItems": 2,
                                            "maxItems": 4,
                                            "items": {"type": "integer"},
                                        },
                                        "datatype": {"type": "string", "enum": ["FP32", "UINT8"]},
                                        "data": {"type": "array", "items": {"type": "number"}},
                                    },
                                },
                            },
                            "outputs": {
                                "type": "array",
                                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                            },
                        },
                    }
                }
            },
        },
        "parameters": [{"name": "X-API-Key", "in": "header", "required": False, "schema": {"type": "string"}}],
    }
    app.add_api_route("/v2/models/{name}/infer", infer, methods=["POST"], openapi_extra=infer_docs)

    @app.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=infer_docs)
    async def infer_version(name: str, version: str, request: Request) -> Response:
        if version != "1":
            key = keys.authenticate(_token(request))
            audit.record(key.id if key else None, 0, None, 0, 404, f"unknown version {version!r}", None)
            return error(404, f"unknown version {version!r} of {name!r}; this server has version 1")
        return await infer(name, request)

    def openapi() -> dict:
        """The generated schema, with the model's name and version pinned: clients (and fuzzers)
        that follow the schema address the model this server actually has."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            pinned = {"name": config.model_name, "version": "1"}
            for path in schema["paths"].values():
                for operation in path.values():
                    for parameter in operation.get("parameters", []):
                        if parameter.get("in") == "path" and parameter["name"] in pinned:
                            parameter["schema"] = {"type": "string", "enum": [pinned[parameter["name"]]]}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
