"""The prediction service over HTTP: the victim behind the Open Inference Protocol v2.

    GET  /v2/health/live            GET /v2/health/ready
    GET  /v2                        server metadata
    GET  /v2/models/{name}          model metadata (with the caller's output mode and quota, if keyed)
    GET  /v2/models/{name}/ready
    POST /v2/models/{name}/infer    (also /v2/models/{name}/versions/1/infer)

Client mistakes get a 4xx answer with {"error": "..."}; nothing a client sends produces a 5xx.
What a request does to the service (keys, quotas, detection, the audit log) is `mea.serve.service`;
this module only reads requests and writes answers.  Nothing blocking runs on the event loop:
database work, parsing and the model run in the thread pool, and a request body is read only
after its key is known to be valid, and only up to the limit its largest legal batch needs.
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from mea import __version__
from mea.config import ServeConfig
from mea.oracle import Label, parse_output
from mea.serve import metrics
from mea.serve.console import console_router, static_files
from mea.serve.keys import ApiKey
from mea.serve.protocol import (
    NODE,
    ProtocolError,
    encode_infer_response,
    max_request_values,
    parse_infer_request,
)
from mea.serve.service import IDEMPOTENCY_HEADER, SUSPENDED, Answered, Refusal, Service, body_limit_of

__all__ = ["ServeConfig", "create_app"]

_CONTENT_TYPES = ("application/json", "application/octet-stream")
# `mea serve --workers N` starts each worker from this environment variable (a JSON document).
CONFIG_ENVIRONMENT = "MEA_SERVE_SETTINGS"


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int, max_values: int | None) -> bytes:
    """The body, refused as soon as it passes `limit` bytes (announced or, when chunked, counted)
    or, for a plain JSON body, `max_values` numbers (counted by their separators as they arrive:
    a request cannot make the server hold more than its largest legal batch)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    body, separators = bytearray(), 0
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise _TooLarge
        if max_values is not None:
            separators += chunk.count(b",")
            if separators >= max_values:
                raise _TooLarge
        body += chunk
    return bytes(body)


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
    if not decompressor.eof:
        raise ProtocolError(400, f"the {encoding} body is truncated; send the whole compressed stream")
    return data


def _token(request: Request) -> str | None:
    if key := request.headers.get("x-api-key"):
        return key
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def _remote(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(config: ServeConfig, victim, defense=None) -> FastAPI:
    service = Service(config, victim, defense)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.close()  # the last refusal counts reach the database

    app = FastAPI(
        title="mea prediction service",
        version=__version__,
        description=f"A {victim.arch} {victim.dataset_title} classifier behind the Open Inference Protocol v2.",
        lifespan=lifespan,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.url.path}", 405: f"{request.method} is not allowed here"}
        return _error(exc.status_code, message.get(exc.status_code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, f"invalid request: {exc.errors()[0].get('msg', 'malformed')}")

    app.include_router(console_router(service.db, service.keys, config.prada, _token))
    app.mount("/console/static", static_files(), name="console-static")

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(metrics.render(service.db, config.prada), media_type=metrics.CONTENT_TYPE)

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

    def refused(request: Request, key_id: str | None, endpoint: str, refusal: Refusal) -> JSONResponse:
        refusal = service.refuse(_remote(request), key_id, endpoint, refusal)
        return _error(refusal.status, refusal.message, refusal.headers)

    @app.get("/v2/models/{name}")
    def model_metadata(name: str, request: Request):
        # A plain `def`: FastAPI runs it in the thread pool, so its database work never blocks the loop.
        if message := unknown_model(name):
            return refused(request, None, "metadata", Refusal(404, message))
        metadata = {
            "name": config.model_name,
            "versions": ["1"],
            "platform": "pytorch_libtorch",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *service.layout.image_shape]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, service.signature.classes]},
                {"name": "label", "datatype": "INT64", "shape": [-1]},
                *([{"name": NODE, "datatype": "INT64", "shape": [-1]}] if service.layout.nodes else []),
            ],
            "parameters": {
                "input_shapes": service.layout.shapes,
                "input_datatypes": "FP32 in [0, 1] or UINT8" if service.layout.is_image else "FP32 feature values",
                "max_batch_size": config.max_batch,
                "output_mode": config.output,
                # A feature left out (NaN, binary FP32 only: JSON has no NaN) is answered as a tree
                # answers it, at the node that needs it.
                "missing_features": service.layout.missing,
                # Retries that carry this header are answered once and charged once.
                "idempotency_header": IDEMPOTENCY_HEADER,
            },
        }
        key = service.authenticate(_token(request))
        if key is not None and not key.admin:
            metadata["parameters"]["output_mode"] = key.output or config.output
            if key.quota is not None:
                metadata["parameters"]["quota_remaining"] = key.remaining
            service.metadata_seen(key)
        return metadata

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str):
        if message := unknown_model(name):
            return _error(404, message)
        return {"name": name, "ready": True}

    async def infer(name: str, request: Request) -> Response:
        started = time.perf_counter()
        if message := unknown_model(name):
            return refused(request, None, "infer", Refusal(404, message))
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and content_type not in _CONTENT_TYPES:
            message = (
                f"Content-Type {content_type!r} is not supported; send application/json or application/octet-stream"
            )
            return refused(request, None, "infer", Refusal(415, message))

        token = _token(request)
        # A client sending request after request is let in without reading the database (its
        # transaction checks the key again); any other token costs one trip to the thread pool.
        key: ApiKey | None = service.recently_admitted(token)
        suspended = False
        if key is None:
            key, suspended = await run_in_threadpool(service.lookup, token)
        if key is None:
            message = "missing, unknown or revoked API key; send it in the X-API-Key header"
            return refused(request, None, "infer", Refusal(401, message, {"WWW-Authenticate": "Bearer"}))
        if key.admin:
            message = "an administrator's key opens the console, not inference; send an inference key"
            return refused(request, key.id, "infer", Refusal(403, message))
        if suspended:
            return refused(request, key.id, "infer", Refusal(403, SUSPENDED))
        header = request.headers.get("inference-header-content-length")
        limit = body_limit_of(config, header is not None, service.layout)
        try:
            idempotency_key = Service.check_idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))
            if header is not None and not header.isdigit():
                raise ProtocolError(400, "Inference-Header-Content-Length must be a whole number of bytes")
            encoding = request.headers.get("content-encoding")
            plain_json = header is None and encoding in (None, "", "identity")
            max_values = max_request_values(config.max_batch, service.layout) if plain_json else None
            body = _decode(await _read_body(request, limit, max_values), encoding, limit)
        except _TooLarge:
            message = (
                f"the request exceeds what {config.max_batch} images need ({limit} bytes, "
                f"{max_request_values(config.max_batch, service.layout)} values); send smaller batches"
            )
            return refused(request, key.id, "infer", Refusal(413, message))
        except ProtocolError as exc:
            return refused(request, key.id, "infer", Refusal(exc.status, exc.message))
        except ValueError as exc:
            return refused(request, key.id, "infer", Refusal(400, str(exc)))
        except ClientDisconnect:  # gone before sending its whole body: nobody reads this answer
            return refused(request, key.id, "infer", Refusal(499, "the client closed the connection"))

        def answer() -> Response | Refusal:
            try:
                parsed = parse_infer_request(body, int(header) if header else None, config.max_batch, service.layout)
            except ProtocolError as exc:
                return Refusal(exc.status, exc.message)
            if NODE in parsed.outputs and isinstance(parse_output(key.output or config.output), Label):
                return Refusal(400, "a label-only key's answers name no node; ask for the label output only")
            outcome = service.infer(key, parsed, idempotency_key, started)
            if isinstance(outcome, Refusal):
                return outcome
            nodes = service.nodes(parsed.images) if NODE in parsed.outputs else None
            return _answer_response(config.model_name, parsed, outcome, nodes)

        outcome = await run_in_threadpool(answer)
        if isinstance(outcome, Refusal):
            if outcome.status >= 500:  # already audited row by row: not a refusal to count
                return _error(outcome.status, outcome.message, outcome.headers)
            return refused(request, key.id, "infer", outcome)
        return outcome

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
                                "items": {
                                    "type": "object",
                                    "properties": {"name": {"type": "string", "enum": list(service.layout.outputs)}},
                                },
                            },
                        },
                    }
                }
            },
        },
        "parameters": [
            {"name": "X-API-Key", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": IDEMPOTENCY_HEADER, "in": "header", "required": False, "schema": {"type": "string"}},
        ],
    }
    app.add_api_route("/v2/models/{name}/infer", infer, methods=["POST"], openapi_extra=infer_docs)

    @app.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=infer_docs)
    async def infer_version(name: str, version: str, request: Request) -> Response:
        if version != "1":
            message = f"unknown version {version!r} of {name!r}; this server has version 1"
            return refused(request, None, "infer", Refusal(404, message))
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


def _answer_response(model: str, parsed, outcome: Answered, nodes=None) -> Response:
    content, headers = encode_infer_response(model, parsed, outcome.answers, nodes)
    if outcome.key.remaining is not None:
        headers["X-Quota-Remaining"] = str(outcome.key.remaining)
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    media = "application/octet-stream" if "Inference-Header-Content-Length" in headers else "application/json"
    return Response(content, media_type=media, headers=headers)


def app_from_environment() -> FastAPI:
    """The app of one `mea serve --workers N` process, configured by the parent through
    $MEA_SERVE_SETTINGS (uvicorn starts each worker from an import string)."""
    import json

    import torch

    from mea.config import PradaConfig
    from mea.defenses.store import load_defense
    from mea.victim import load_victim

    settings = json.loads(os.environ[CONFIG_ENVIRONMENT])
    torch.set_num_threads(settings["threads"])
    victim = load_victim(Path(settings["victim"]))
    defense = load_defense(Path(settings["defense"]), victim) if settings.get("defense") else None
    config = ServeConfig(
        **{**settings["config"], "db": Path(settings["config"]["db"])},
        prada=PradaConfig(**settings.get("prada", {})),
    )
    return create_app(config, victim, defense)
