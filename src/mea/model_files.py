"""Classifier files mea reads and writes: its own safetensors, and ONNX graphs run by onnxruntime.

A victim (`mea attack --victim model.onnx`) and a suspect (`mea verify --suspect model.onnx`) are
read the same way.  Nothing here unpickles: a pickle (a `torch.save` file) is refused with a way to
convert it.  A model classifies images of 1 or 3 channels into any number of classes: its input
shape and class count are read from the file (`signature`, mea.signature).
"""

from __future__ import annotations

import functools
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mea.errors import ArtifactError, ConfigError, MeaError
from mea.signature import Signature

PICKLE_HINT = (
    "mea never unpickles a model; save its weights with safetensors (mea's own clone.safetensors) "
    "or export it to ONNX (torch.onnx.export)"
)
# Largest difference between a model's logits and its ONNX export's that `export_onnx` accepts.
EXPORT_TOLERANCE = 1e-4


def sniff(path: Path) -> str:
    """'safetensors', 'onnx', 'pickle' or 'unknown', from the file's first bytes (ONNX: its suffix)."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if zipfile.is_zipfile(path):  # torch.save's format since 1.6: a zip holding a pickle
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
        return "safetensors"
    if path.suffix == ".onnx":
        return "onnx"
    return "unknown"


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("ONNX models need onnxruntime: pip install 'model-extraction-attack[onnx]'") from None
    return onnxruntime


class OnnxClassifier(nn.Module):
    """An ONNX image classifier (input [B, C, H, W], or [B, H*W] flat grey; output [B, classes]),
    run by onnxruntime on the CPU, as a torch module for inference (no gradients flow through it)."""

    def __init__(self, path: Path, error: type[MeaError] = ArtifactError) -> None:
        super().__init__()
        self._error = error
        try:
            self._session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except ConfigError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for any bad file
            raise error(f"{path} is not a readable ONNX model ({str(exc).splitlines()[0]})") from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise error(f"{path} takes {len(inputs)} inputs; a classifier must take one image batch")
        self._input = inputs[0].name
        dims = list(inputs[0].shape)[1:]
        if not all(isinstance(d, int) for d in dims):
            raise error(
                f"{path} takes input of shape {inputs[0].shape}; export it with a fixed image size "
                "(only the batch dimension may vary)"
            )
        try:
            image_shape = Signature.of_input(dims, 2, str(path)).image_shape
        except ConfigError as exc:
            raise error(f"{exc}; it is not an image classifier mea can attack") from None
        self._flat = len(dims) == 1
        self._output = self._session.get_outputs()[0].name
        self.source = str(path)
        self._path = Path(path)
        self._tapped = None  # a session that also answers the convolutions' outputs, made on first use
        # The class count is a property of the output: read it from one blank image's answer.
        self._classes = None
        logits = self(torch.zeros(1, *image_shape))
        try:
            self.signature = Signature(image_shape, logits.shape[1])
        except ConfigError as exc:
            raise error(f"{path}: {exc}") from None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(self._session, [self._output], images)[0]

    @property
    def block_names(self) -> tuple[str, ...]:
        """The output tensors of the graph's convolutions, or of a fully connected graph's hidden
        layers (the detector's `--layers auto`, mea.defenses.features.blocks)."""
        return tuple(self._tapped_graph[1])

    @property
    def feature_names(self) -> tuple[str, ...]:
        return (*self.block_names, "logits")

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._tapped is None:
            graph, _ = self._tapped_graph
            self._tapped = _onnxruntime().InferenceSession(graph, providers=["CPUExecutionProvider"])
        values = self._run(self._tapped, [self._output, *self.block_names], images)
        return {"logits": values[0], **dict(zip(self.block_names, values[1:], strict=True))}

    @functools.cached_property
    def _tapped_graph(self) -> tuple[bytes, list[str]]:
        """The graph with every block's output added to its outputs (shapes from ONNX's inference)."""
        try:
            import onnx
        except ImportError:
            raise ConfigError(
                "reading an ONNX victim's layers needs onnx: pip install 'model-extraction-attack[onnx]'"
            ) from None
        from mea.defenses.features import blocks

        graph = onnx.shape_inference.infer_shapes(onnx.load(str(self._path)))
        typed = {info.name: info for info in graph.graph.value_info}
        kinds = {"Conv": "conv", "Gemm": "linear", "MatMul": "linear"}
        found = blocks([(node.output[0], kinds[node.op_type]) for node in graph.graph.node if node.op_type in kinds])
        names = [name for name in found if name in typed]
        graph.graph.output.extend(typed[name] for name in names)
        return graph.SerializeToString(), names

    def _run(self, session, outputs: list[str], images: torch.Tensor) -> list[torch.Tensor]:
        feed = images.detach().reshape(len(images), -1) if self._flat else images.detach().contiguous()
        values = session.run(outputs, {self._input: feed.numpy().astype(np.float32)})
        logits = np.asarray(values[0])
        if logits.ndim != 2 or logits.shape[1] < 2 or self._classes not in (None, logits.shape[1]):
            raise self._error(
                f"{self.source} answers shape {list(logits.shape)}, not [B, classes]: it is not an image classifier"
            )
        self._classes = logits.shape[1]
        return [torch.from_numpy(np.asarray(value, dtype=np.float32)) for value in values]


class ScaledInput(nn.Module):
    """A model that takes its images scaled otherwise than mea's [0, 1]: it is fed
    `(images * scale - mean) / std` (a sidecar's `input`, e.g. scale 255 for 0..255 pixels, or
    the mean and deviation it was normalised with).  Its layers stay readable for the detector."""

    def __init__(self, model: nn.Module, scale: float = 1.0, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        if not (scale > 0 and std > 0):
            raise ConfigError(f"input scaling needs a positive scale and std, got scale {scale} and std {std}")
        self.model, self.scale, self.mean, self.std = model, scale, mean, std

    @property
    def signature(self) -> Signature:
        return self.model.signature

    def _scaled(self, images: torch.Tensor) -> torch.Tensor:
        return (images * self.scale - self.mean) / self.std

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.model.feature_names

    @property
    def block_names(self) -> tuple[str, ...]:
        return self.model.block_names

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.features(self._scaled(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self._scaled(images))


def load_classifier(path: Path, error: type[MeaError] = ArtifactError) -> tuple[nn.Module, str]:
    """(model in eval mode, architecture) from a mea safetensors file ('lenet5', ...) or an ONNX file ('onnx')."""
    path = Path(path)
    kind = sniff(path)
    if kind == "pickle":
        raise error(f"{path} is a pickle; {PICKLE_HINT}")
    if kind == "safetensors":
        from mea import models

        try:
            return models.load(path)
        except ArtifactError as exc:
            raise error(str(exc)) from None
    if kind == "onnx":
        return OnnxClassifier(path, error).eval(), "onnx"
    raise error(f"{path} is not a model file mea can read; pass a mea .safetensors file or an .onnx file")


def export_onnx(model: nn.Module, path: Path) -> float:
    """Write `model` as ONNX (input "images" [B, C, H, W], output "logits" [B, classes], any batch
    size) and check the export: returns the largest logit difference on a batch of test inputs, an
    ArtifactError past EXPORT_TOLERANCE (the file is removed)."""
    from mea.models import signature_of

    model = model.eval()
    image_shape = signature_of(model).image_shape
    example = torch.zeros(1, *image_shape)
    # The TorchScript exporter: the torch.export one needs onnxscript, which mea does not install.
    # It warns that it is deprecated, which the user of `mea export` can do nothing about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    probe = torch.rand(64, *image_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(probe.contiguous(memory_format=torch.channels_last))
    difference = float((OnnxClassifier(path)(probe) - expected).abs().max())
    if difference > EXPORT_TOLERANCE:
        path.unlink()
        raise ArtifactError(
            f"the ONNX export answers up to {difference:.2g} away from the model (tolerance {EXPORT_TOLERANCE:g}); "
            "nothing written"
        )
    return difference
