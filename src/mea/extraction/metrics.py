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
def _compare(victim: nn.Module, clone: nn.Module, inputs: torch.Tensor) -> tuple[float, float, float | None]:
    """(agreement, mean total-variation distance, largest centred-logit difference) on `inputs`,
    from one forward pass of each model.  No logit error for trees: their logits are logs of leaf
    frequencies, some of them zero."""
    z, y = victim(inputs).double(), clone(inputs).double()
    p, q = torch.softmax(z, 1), torch.softmax(y, 1)
    agreement = float((p.argmax(1) == q.argmax(1)).double().mean())
    logit_error = None
    if not any(isinstance(m, Tree | Forest | LeafBoxes) for m in (victim, clone)):
        logit_error = float(((z - z.mean(1, keepdim=True)) - (y - y.mean(1, keepdim=True))).abs().max())
    return agreement, float(0.5 * (p - q).abs().sum(1).mean()), logit_error


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
    uniform = _compare(victim, clone, uniform_inputs(signature))
    error = relative = None
    truth, recovered = parameters_of(victim), parameters_of(clone)
    if truth is not None and recovered is not None and type(victim) is type(clone):
        error = float(np.abs(recovered - truth).max())
        relative = error / float(np.abs(truth).max())
    logits = None if test[2] is None else max(test[2], uniform[2])
    return Fidelity(test[0], uniform[0], test[1], uniform[1], error, relative, logits)
