"""The victim's inner layers, for any victim: what the detector reads (Lee et al. 2018 read the
output of every block of the network, spatially pooled, beside the logits).

A model shows its layers as `feature_names` and `features(images) -> {name: activation}`, with
`block_names` the layers `--layers auto` picks: its convolution blocks, or for a fully connected
model its hidden layers (every linear layer but the last).  mea's LeNet-5 names its own; ONNX
victims (mea.model_files.OnnxClassifier) name the output tensors of those operators; any other
PyTorch classifier is wrapped in `TappedClassifier`, which reads them with forward hooks.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from mea.config import AUTO_LAYERS as AUTO  # --layers auto: every convolution block's output
from mea.errors import ConfigError
from mea.models import signature_of
from mea.signature import Signature


def blocks(kinds: list[tuple[str, str]]) -> tuple[str, ...]:
    """The blocks among (name, kind) in forward order, kind "conv" or "linear": the convolutions, or
    where there are none the linear layers but the last (which gives the logits)."""
    convolutions = tuple(name for name, kind in kinds if kind == "conv")
    return convolutions or tuple(name for name, kind in kinds if kind == "linear")[:-1]


class TappedClassifier(nn.Module):
    """A PyTorch classifier whose blocks' outputs are read by forward hooks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        kinds = {nn.Conv2d: "conv", nn.Linear: "linear"}
        self.block_names = blocks([(n, kinds[type(m)]) for n, m in model.named_modules() if type(m) in kinds])
        self.feature_names = (*self.block_names, "logits")
        self._taken: dict[str, torch.Tensor] | None = None  # only while `features` runs
        for name, module in model.named_modules():
            if name in self.block_names:
                module.register_forward_hook(functools.partial(self._take, name))

    def _take(self, name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self._taken is not None:
            self._taken[name] = output

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self._taken = {}
        try:
            logits = self.model(images)
            return {**self._taken, "logits": logits}
        finally:
            self._taken = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    @property
    def signature(self) -> Signature:
        return signature_of(self.model)


def with_features(model: nn.Module) -> nn.Module:
    """`model` if it shows its layers, else the model wrapped so that it does."""
    return model if callable(getattr(model, "features", None)) else TappedClassifier(model)


def resolve_layers(model: nn.Module, requested: tuple[str, ...]) -> tuple[str, ...]:
    """The layers `requested` names (AUTO: the model's blocks), or a ConfigError listing the model's."""
    known = tuple(getattr(model, "feature_names", ()))
    if requested == (AUTO,):
        return tuple(getattr(model, "block_names", ()))
    unknown = [layer for layer in requested if layer not in known]
    if unknown:
        listed = ", ".join(known) if known else "none"
        raise ConfigError(
            f"the victim has no layer {', '.join(unknown)}; its layers: {listed} "
            "(or --layers auto for its convolutions)"
        )
    return requested


class ExtractedFeatures(nn.Module):
    """A victim whose inner layers cannot be read (a served model, mea.serve.upstream) beside the
    defender's own feature extractor, any classifier of the same input: the detector reads the
    extractor's blocks for its Mahalanobis scores and the victim's answers for the confidence
    score (Lee et al. 2018 need only *a* network's features of the query, fitted on the victim's
    classes; the defender's own network serves when the victim's are out of reach)."""

    def __init__(self, victim: nn.Module, extractor: nn.Module) -> None:
        super().__init__()
        if signature_of(extractor).image_shape != signature_of(victim).image_shape:
            raise ConfigError(
                f"the feature extractor takes {signature_of(extractor).shape_text} images, the victim "
                f"{signature_of(victim).shape_text}; give an extractor of the victim's input"
            )
        self.victim = victim
        self.extractor = with_features(extractor)
        self.block_names = tuple(self.extractor.block_names)
        inner = tuple(name for name in self.extractor.feature_names if name != "logits")
        self.feature_names = (*inner, "logits")

    @property
    def signature(self) -> Signature:
        return signature_of(self.victim)

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        inner = self.extractor.features(images)
        return {**{name: inner[name] for name in self.feature_names[:-1]}, "logits": self.victim(images)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.victim(images)
