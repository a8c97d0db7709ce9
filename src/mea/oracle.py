"""The black-box oracle: the one door to the victim that every attack goes through.

An attacker sends images in [0, 1] of the victim's input shape, (B, 1, 28, 28) for the default
victim, and reads answers of shape (B, classes) shaped by an output mode; `signature` says both,
as a served model's metadata does.  One image is one query.  The oracle enforces the query budget, runs the
victim in eval mode without autograd, and exposes neither weights nor gradients, so the same attack
runs unchanged against an in-process victim, a defended victim or a served HTTP API
(after the `Blackbox` of Orekondy et al. 2019, Knockoff Nets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from mea.config import DEFAULT_DECIMALS, DEFAULT_TOP_K, check_decimals, check_top_k, output_spec
from mea.errors import BudgetExhausted, ConfigError
from mea.models import as_input, pooled, signature_of
from mea.signature import Signature

# --- output modes: what the service reveals of its probabilities -------------------------------


@dataclass(frozen=True)
class Probabilities:
    """The full softmax vector."""

    @property
    def spec(self) -> str:
        return "probabilities"

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        return probs


@dataclass(frozen=True)
class TopK:
    """The k largest probabilities, the rest zero (not renormalised, as services report them)."""

    k: int = 3

    def __post_init__(self) -> None:
        check_top_k(self.k)

    @property
    def spec(self) -> str:
        return f"top-k:{self.k}"

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        values, index = probs.topk(min(self.k, probs.shape[1]), dim=1)
        return torch.zeros_like(probs).scatter_(1, index, values)


@dataclass(frozen=True)
class Label:
    """The top-1 class only, as a one-hot row."""

    @property
    def spec(self) -> str:
        return "label"

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        return F.one_hot(probs.argmax(1), probs.shape[1]).to(probs.dtype)


@dataclass(frozen=True)
class Rounded:
    """Probabilities rounded to `decimals` decimal places (Tramèr et al. 2016's countermeasure)."""

    decimals: int = 2

    def __post_init__(self) -> None:
        check_decimals(self.decimals)

    @property
    def spec(self) -> str:
        return f"rounded:{self.decimals}"

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.double().round(decimals=self.decimals).to(probs.dtype)


OutputMode = Probabilities | TopK | Label | Rounded


def parse_output(text: str) -> OutputMode:
    """Parse an output mode: ``probabilities``, ``top-k`` or ``top-k:5``, ``label``, ``rounded:3``."""
    name, value = output_spec(text)
    if name == "probabilities":
        return Probabilities()
    if name == "label":
        return Label()
    if name == "top-k":
        return TopK(DEFAULT_TOP_K if value is None else value)
    return Rounded(DEFAULT_DECIMALS if value is None else value)


# --- the oracle interface -------------------------------------------------------------------


@runtime_checkable
class Oracle(Protocol):
    """What an attacker can do with a victim: send images, read answers, see its budget."""

    @property
    def output(self) -> OutputMode: ...

    @property
    def queries_used(self) -> int: ...

    @property
    def budget(self) -> int | None: ...

    @property
    def signature(self) -> Signature:
        """The victim's input shape and number of classes (what a served model's metadata says)."""
        ...

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Answers of shape (B, classes) for inputs of shape (B, *signature.input_shape): images in [0, 1],
        or feature vectors."""
        ...


class OracleWrapper:
    """Wraps another oracle, forwarding its output mode, queries used and budget; a subclass
    changes what it needs (how it asks, what it answers) and writes `query`."""

    def __init__(self, oracle: Oracle) -> None:
        self._oracle = oracle

    @property
    def output(self) -> OutputMode:
        return self._oracle.output

    @property
    def queries_used(self) -> int:
        return self._oracle.queries_used

    @property
    def budget(self) -> int | None:
        return self._oracle.budget

    @property
    def signature(self) -> Signature:
        return self._oracle.signature


def check_inputs(inputs: torch.Tensor, signature: Signature) -> torch.Tensor:
    """Validate a query batch for a victim of `signature`: images in [0, 1], or feature vectors of
    finite values (NaN too where the victim answers missing features); returns contiguous float32."""
    if signature.is_image:
        return check_images(inputs, signature.image_shape)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"queries must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.ndim != 2 or tuple(inputs.shape[1:]) != signature.input_shape or not inputs.is_floating_point():
        raise ValueError(
            f"queries must be floating point of shape (B, {signature.features}), got {tuple(inputs.shape)}"
        )
    inputs = inputs.detach().float().contiguous()
    if signature.missing:
        if torch.isinf(inputs).any():
            raise ValueError("queries contain infinite values; leave a feature out with NaN")
    elif not torch.isfinite(inputs).all():
        raise ValueError("queries contain NaN or infinite values; this victim answers complete feature vectors only")
    return inputs


def check_images(images: torch.Tensor, image_shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    """Validate a query batch for a victim of `image_shape`; returns it as contiguous float32."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"queries must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(f"queries must have shape (B, {', '.join(map(str, image_shape))}), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"queries must be floating point in [0, 1], got dtype {images.dtype}")
    images = images.detach().float()
    if len(images):
        # One pass for both checks: min and max propagate NaN, and an infinity lies outside [0, 1].
        low, high = (value.item() for value in torch.aminmax(images))
        if not (low >= 0 and high <= 1):
            if not torch.isfinite(images).all():
                raise ValueError("queries contain NaN or infinite values")
            raise ValueError(f"query pixels must lie in [0, 1], got [{low:.3g}, {high:.3g}]")
    return images.contiguous()


class QueryBudget:
    """Counts queries (one image = one query) and refuses a batch that would exceed the limit."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ConfigError(f"the query budget must be >= 0, got {limit}")
        self.limit = limit
        self.used = 0

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else self.limit - self.used

    def charge(self, n: int) -> None:
        if self.limit is not None and self.used + n > self.limit:
            raise BudgetExhausted(
                f"query budget exhausted: {self.used} of {self.limit} queries used, {n} more asked; "
                "raise the budget (--queries) or query fewer images"
            )
        self.used += n


class VictimOracle:
    """An in-process victim behind the oracle interface."""

    # Large enough to amortise per-call overhead, small enough to keep activations in cache.
    _CHUNK = 1024

    def __init__(self, model: nn.Module, output: OutputMode | None = None, budget: int | None = None) -> None:
        self._model = model.eval()
        for parameter in self._model.parameters():
            parameter.requires_grad_(False)
        self._output = output or Probabilities()
        self._budget = QueryBudget(budget)
        self._signature = signature_of(model)
        if isinstance(self._output, TopK) and self._output.k > self._signature.classes:
            raise ConfigError(f"top-k needs k <= the victim's {self._signature.classes} classes, got {self._output.k}")

    @property
    def output(self) -> OutputMode:
        return self._output

    @property
    def queries_used(self) -> int:
        return self._budget.used

    @property
    def budget(self) -> int | None:
        return self._budget.limit

    @property
    def signature(self) -> Signature:
        return self._signature

    def inspect(self, images: torch.Tensor, layers: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Charge and answer a batch as `query` does, in exact probabilities, with the named layers'
        features (convolutional maps averaged over space) from the same forward pass.

        For the defender in front of this victim (see `DefendedOracle`), never for an attacker.
        """
        images = check_inputs(images, self._signature)
        self._budget.charge(len(images))
        return self._forward(images, layers)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        images = check_inputs(images, self._signature)
        self._budget.charge(len(images))
        return self._output(self._forward(images, ())[0])

    def _forward(self, images: torch.Tensor, layers: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        probabilities: list[torch.Tensor] = []
        features: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
        images = as_input(images)
        with torch.inference_mode():
            for start in range(0, len(images), self._CHUNK):
                batch = images[start : start + self._CHUNK]
                # Answers are float32 whatever precision the model computes in (mea's classic-ML
                # victims compute in float64, as scikit-learn does): as a served model's FP32 output.
                if not layers:
                    probabilities.append(F.softmax(self._model(batch), dim=1).float())
                    continue
                inner = self._model.features(batch)
                probabilities.append(F.softmax(inner["logits"], dim=1).float())
                for layer in layers:
                    features[layer].append(pooled(inner[layer]))
        if not probabilities:
            return torch.empty(0, self._signature.classes), {layer: torch.empty(0) for layer in layers}
        if len(probabilities) == 1:  # most calls: skip the copies, a tenth of a small batch's time
            return probabilities[0], {layer: parts[0] for layer, parts in features.items()}
        return torch.cat(probabilities), {layer: torch.cat(parts) for layer, parts in features.items()}
