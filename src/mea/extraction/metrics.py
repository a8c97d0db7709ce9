"""How close a clone is to its victim, as Tramèr et al. 2016 measure it (§3.2): agreement on the
victim's test inputs (1 - R_test) and on inputs drawn uniformly from the feature ranges (1 - R_unif),
the mean total-variation distance of the two probability vectors on each, and, where the victim's
model class is known and the clone is of it, the largest parameter error; for models with logits
(not trees), the largest logit error on both input sets, in the softmax's gauge (each logit vector
less its mean), as functionally-equivalent extraction is judged (Jagielski et al. 2020; Carlini et
al. 2020)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from mea.signature import Signature
from mea.tabular.models import BinaryLogistic, Forest, LeafBoxes, OneVsRest, Softmax, Tree

UNIFORM_POINTS = 10_000
UNIFORM_SEED = 20160609  # the same uniform inputs for every clone of a victim


@dataclass(frozen=True)
class Fidelity:
    test_agreement: float
    uniform_agreement: float
    test_tv: float
    uniform_tv: float
    max_parameter_error: float | None = None  # absolute, gauge-free for softmax
    relative_parameter_error: float | None = None  # the same, over the largest parameter
    max_logit_error: float | None = None  # largest |centred logit difference|, test and uniform inputs

    def to_dict(self) -> dict:
        return asdict(self)


def uniform_inputs(signature: Signature, count: int = UNIFORM_POINTS) -> torch.Tensor:
    """Inputs uniform in the victim's ranges ([0, 1] for pixels), the same for every clone."""
    bounds = signature.bounds()
    assert bounds is not None, "a victim without ranges has no uniform inputs"
    low, high = (np.asarray(b) for b in bounds)
    points = low + (high - low) * np.random.default_rng(UNIFORM_SEED).random((count, len(low)))
    return torch.from_numpy(points.astype(np.float32)).reshape(count, *signature.input_shape)


@torch.inference_mode()
def probabilities(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(inputs).double(), 1)


def _compare(victim: nn.Module, clone: nn.Module, inputs: torch.Tensor) -> tuple[float, float]:
    p, q = probabilities(victim, inputs), probabilities(clone, inputs)
    agreement = float((p.argmax(1) == q.argmax(1)).double().mean())
    return agreement, float(0.5 * (p - q).abs().sum(1).mean())


@torch.inference_mode()
def logit_error(victim: nn.Module, clone: nn.Module, inputs: torch.Tensor) -> float | None:
    """The largest difference of the two models' centred logits on `inputs` (None for trees, whose
    logits are logs of leaf frequencies, some of them zero)."""
    if any(isinstance(m, Tree | Forest | LeafBoxes) for m in (victim, clone)):
        return None
    centred = [z - z.mean(1, keepdim=True) for z in (victim(inputs).double(), clone(inputs).double())]
    return float((centred[0] - centred[1]).abs().max())


def parameters_of(model: nn.Module) -> np.ndarray | None:
    """A linear model's parameters in a gauge every clone shares: softmax rows less class 0's."""
    if isinstance(model, BinaryLogistic | OneVsRest):
        return torch.cat([model.weight, model.bias[:, None]], 1).numpy()
    if isinstance(model, Softmax):
        theta = torch.cat([model.weight, model.bias[:, None]], 1).numpy()
        return theta - theta[0]
    return None


def fidelity(victim: nn.Module, clone: nn.Module, test_inputs: torch.Tensor) -> Fidelity:
    signature: Signature = victim.signature
    test = _compare(victim, clone, test_inputs)
    uniform_points = uniform_inputs(signature)
    uniform = _compare(victim, clone, uniform_points)
    errors = [logit_error(victim, clone, inputs) for inputs in (test_inputs, uniform_points)]
    error = relative = None
    truth, recovered = parameters_of(victim), parameters_of(clone)
    if truth is not None and recovered is not None and type(victim) is type(clone):
        error = float(np.abs(recovered - truth).max())
        relative = error / float(np.abs(truth).max())
    logits = None if errors[0] is None else max(errors)  # type: ignore[type-var]
    return Fidelity(test[0], uniform[0], test[1], uniform[1], error, relative, logits)
