"""The Open Inference Protocol v2 (KServe, Triton) for one image classifier.

Requests carry one input tensor of the victim's shape (`InputLayout`; the default victim's
[B, 1, 28, 28], or [B, 784] for a grey one), datatype FP32 (pixels in [0, 1]) or UINT8 (0..255),
its data as a JSON list or, with Triton's binary tensor extension, as raw little-endian bytes after
the JSON header (whose length the Inference-Header-Content-Length header gives).  Responses carry
`probabilities` [B, classes] FP32 and `label` [B] INT64, as JSON or binary as the client asks (and a
tree's `node` [B] INT64 when asked for by name).
Every client mistake becomes a ProtocolError with a 4xx status and a message that says what to
send instead.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch

from mea.config import MODEL_NAME as MODEL_NAME  # re-exported

# Body limits follow from the largest batch: a pixel takes 4 bytes in binary and at most about 24
# characters as a JSON number with its separator (a float32 written at full float64 precision,
# "0.0039215688593685627, "); the JSON header of a request is small.
JSON_BYTES_PER_VALUE = 24
HEADER_BYTES = 64 * 1024
# A request's JSON may hold a few more values than its tensor (its shape, the outputs asked for).
_SPARE_VALUES = 1024
_SHAPE = re.compile(rb'"shape"\s*:\s*\[([-0-9,\s]{0,64})\]')
_DTYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
OUTPUTS = ("probabilities", "label")
# A tree victim served without a defense may also name the node that answered each row (its leaf, or
# where a missing feature stopped it), as BigML's API does (Tramèr et al. 2016, §4.2): an extra
# output, sent only to a request that asks for it by name.
NODE = "node"


@dataclass(frozen=True)
class InputLayout:
    """The shapes a request's tensor may have: the victim's (C, H, W), or flat for a grey victim;
    or a feature vector (d,) of any finite values (NaN too where the victim answers missing ones)."""

    image_shape: tuple[int, ...] = (1, 28, 28)
    missing: bool = False  # a feature vector's NaN stands for a feature left out
    nodes: bool = False  # a decision tree that may name the node answering (the `node` output)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The outputs a request may ask for (by default it gets OUTPUTS)."""
        return (*OUTPUTS, NODE) if self.nodes else OUTPUTS

    @property
    def is_image(self) -> bool:
        return len(self.image_shape) == 3

    @property
    def pixels(self) -> int:
        return math.prod(self.image_shape)

    @property
    def shapes(self) -> str:
        """E.g. "[B, 1, 28, 28] or [B, 784]"."""
        full = f"[B, {', '.join(map(str, self.image_shape))}]"
        return f"{full} or [B, {self.pixels}]" if self.is_image and self.image_shape[0] == 1 else full

    def accepts(self, shape: list[int]) -> bool:
        flat = self.is_image and self.image_shape[0] == 1 and shape[1:] == [self.pixels]
        return shape[1:] == list(self.image_shape) or flat


DEFAULT_LAYOUT = InputLayout()


class ProtocolError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: torch.Tensor  # (B, C, H, W) float32 in [0, 1]
    raw: bytes  # the input tensor's bytes as sent, for the audit digest
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str]


def _fail(message: str, status: int = 400) -> ProtocolError:
    return ProtocolError(status, message)


def body_limit(max_batch: int, binary: bool, layout: InputLayout = DEFAULT_LAYOUT) -> int:
    """The largest request body a server taking batches of up to `max_batch` images needs to read."""
    return HEADER_BYTES + max_batch * layout.pixels * (4 if binary else JSON_BYTES_PER_VALUE)


def max_request_values(max_batch: int, layout: InputLayout = DEFAULT_LAYOUT) -> int:
    """The most numbers a JSON request may hold: its largest batch's pixels and a few more."""
    return max_batch * layout.pixels + _SPARE_VALUES


def _check_value_count(header: bytes, max_batch: int, layout: InputLayout) -> None:
    """Refuse a JSON document holding more numbers than its tensor needs, before parsing it.

    Parsing is what costs memory (a Python float per number) and holds the interpreter: the
    tensor's declared shape (or, when it cannot be found, the largest batch) bounds how many values
    a request may carry, and the separators bound how many it does.  A decoy "shape" elsewhere in
    the document can only loosen the bound up to the largest batch, never past it.
    """
    allowed = max_batch * layout.pixels
    declared = _SHAPE.search(header)
    if declared is not None:
        try:
            dims = [int(d) for d in declared.group(1).split(b",") if d.strip()]
        except ValueError:
            dims = []
        if dims and all(d > 0 for d in dims):
            allowed = min(allowed, math.prod(dims))  # Python ints: a huge shape cannot overflow
    values = header.count(b",") + 1
    if values > allowed + _SPARE_VALUES:
        raise _fail(
            f"the request holds about {values} values but its tensor takes at most {allowed}; "
            f"send exactly shape[0] x {layout.pixels} pixel values",
            413 if values > max_request_values(max_batch, layout) else 400,
        )


def _split(body: bytes, header_length: int | None, max_batch: int, layout: InputLayout) -> tuple[dict, bytes]:
    if header_length is None:
        header, binary = body, b""
    else:
        if not 0 <= header_length <= len(body):
            raise _fail(f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes")
        if header_length > HEADER_BYTES:
            raise _fail(f"the JSON header of a binary request must be under {HEADER_BYTES} bytes", 413)
        header, binary = body[:header_length], body[header_length:]
    _check_value_count(header, max_batch, layout)

    try:
        # orjson: several times faster than json on long lists of floats, and strict: NaN and
        # Infinity are not JSON, so they are refused here.
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"the request body is not valid JSON ({exc}); NaN and Infinity are not JSON numbers") from None
    if not isinstance(document, dict):
        raise _fail('the request must be a JSON object like {"inputs": [...]}')
    return document, binary


def parse_infer_request(
    body: bytes, header_length: int | None, max_batch: int, layout: InputLayout = DEFAULT_LAYOUT
) -> InferRequest:
    document, binary = _split(body, header_length, max_batch, layout)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _fail('"inputs" must be a list holding exactly one tensor: {"name", "shape", "datatype", "data"}')
    tensor = inputs[0]
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _fail('"id" must be a string')

    shape = tensor.get("shape")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise _fail(f'"shape" must be a list of integers, {layout.shapes}')
    if not layout.accepts(shape):
        raise _fail(f"input shape {shape} is not {layout.shapes}")
    batch = shape[0]
    if batch < 1:
        raise _fail(f"the batch size must be at least 1, got {batch}")
    if batch > max_batch:
        raise _fail(f"a batch of {batch} images exceeds the maximum of {max_batch}; split the request", 413)

    datatype = tensor.get("datatype")
    if not layout.is_image and datatype != "FP32":
        raise _fail(f"datatype {datatype!r} is not supported; send feature vectors as FP32")
    if datatype not in _DTYPES:
        raise _fail(f"datatype {datatype!r} is not supported; send FP32 (pixels in [0, 1]) or UINT8 (0..255)")
    dtype = _DTYPES[datatype]
    count = batch * layout.pixels

    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _fail('"parameters" must be an object')
    binary_size = parameters.get("binary_data_size")
    if binary_size is not None:
        if header_length is None:
            raise _fail("binary_data_size needs the Inference-Header-Content-Length header")
        if binary_size != count * dtype.itemsize or len(binary) != binary_size:
            raise _fail(
                f"binary input has {len(binary)} bytes (binary_data_size {binary_size}); "
                f"shape {shape} in {datatype} needs {count * dtype.itemsize}"
            )
        values = np.frombuffer(binary, dtype=dtype)
        raw = binary
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise _fail('"data" must be a list of pixel values (row-major), or use the binary extension')
        try:
            values = np.asarray(data, dtype=np.float64).reshape(-1)
        except (ValueError, TypeError):
            raise _fail('"data" must hold numbers only, in a flat or regularly nested list') from None
        if len(values) != count:
            raise _fail(f'"data" holds {len(values)} values; shape {shape} needs {count}')
        raw = values.astype(dtype).tobytes() if np.isfinite(values).all() or not layout.is_image else b""

    # Checked in the type they came in (binary FP32 as float32, no widening copy); binary UINT8
    # bytes are whole numbers in 0..255 by construction.
    high = 1.0 if datatype == "FP32" else 255.0
    if not layout.is_image:
        if np.isinf(values).any() or (not layout.missing and np.isnan(values).any()):
            allowed = "finite values, NaN for a feature left out" if layout.missing else "finite values"
            raise _fail(f"the input contains NaN or infinite values; send {allowed}")
    elif values.dtype != np.uint8:
        if not np.isfinite(values).all():
            raise _fail("the input contains NaN or infinite values; send finite pixel values")
        if datatype == "UINT8" and not np.array_equal(values, np.round(values)):
            raise _fail("UINT8 pixels must be whole numbers in 0..255")
        low, top = values.min(), values.max()
        if low < 0 or top > high:
            raise _fail(f"{datatype} pixels must lie in [0, {high:g}], got [{low:g}, {top:g}]")
    # One copy into a tensor of its own (a binary body's buffer is read-only).
    images = torch.from_numpy((values / high if datatype == "UINT8" else values).astype(np.float32))

    outputs, binary_outputs = _requested_outputs(document, layout.outputs)
    return InferRequest(request_id, images.reshape(batch, *layout.image_shape), raw, outputs, binary_outputs)


def _requested_outputs(document: dict, allowed: tuple[str, ...] = OUTPUTS) -> tuple[tuple[str, ...], frozenset[str]]:
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _fail('"parameters" must be an object')
    all_binary = parameters.get("binary_data_output") is True
    requested = document.get("outputs")
    if requested is None:
        return OUTPUTS, frozenset(OUTPUTS) if all_binary else frozenset()
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise _fail('"outputs" must be a list of {"name": ...} objects')
    names, binary = [], set()
    for output in requested:
        name = output.get("name")
        if name not in allowed:
            raise _fail(f"unknown output {name!r}; this model has: {', '.join(allowed)}")
        names.append(name)
        options = output.get("parameters") or {}
        if all_binary or (isinstance(options, dict) and options.get("binary_data") is True):
            binary.add(name)
    return tuple(dict.fromkeys(names)), frozenset(binary)


def encode_infer_response(
    model: str, request: InferRequest, answers: torch.Tensor, nodes: torch.Tensor | None = None
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (Inference-Header-Content-Length when binary)."""
    tensors = {
        "probabilities": ("FP32", [len(answers), answers.shape[1]], answers.numpy().astype("<f4")),
        "label": ("INT64", [len(answers)], answers.argmax(1).numpy().astype("<i8")),
    }
    if nodes is not None:
        tensors[NODE] = ("INT64", [len(answers)], nodes.numpy().astype("<i8"))
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name in request.outputs:
        datatype, shape, array = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if name in request.binary_outputs:
            data = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.reshape(-1)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": outputs}
    if request.id is not None:
        document["id"] = request.id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {}
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}
