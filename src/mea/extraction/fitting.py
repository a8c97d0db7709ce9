"""Fitting a model of the victim's known class to its answers, by L-BFGS in float64: the MLP of
equation-solving (Tramèr et al. 2016, §4.1.2) and every retraining strategy's clone (§6).

Losses: `LOG_RATIOS`, the squared error of the centred log-probabilities (all of an exact answer's
information, the smallest probabilities included); `SOFT`, cross-entropy against probability
answers (rounded ones); `HARD`, cross-entropy against labels, with a small L2 penalty (separable
labels otherwise send a linear model's weights to infinity).  Inputs are standardised to the box
of the points first (L-BFGS is not scale-invariant) and the standardisation is folded back into the
first layer.  A nonconvex fit (an MLP) runs from several random starts, each unit's hyperplane
drawn through a random point, and stops at the first that fits exact answers to rounding.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import torch
import torch.nn.functional as F

from mea.extraction.base import ModelClass
from mea.tabular.models import Activation, BinaryLogistic, ClassicModel, OneHiddenLayer, OneVsRest, Softmax

# A fit whose mean squared log-ratio error is below this has matched float32 answers.
SOLVED = 1e-6
STAGES = 2  # L-BFGS runs per random start, the weakest unit re-drawn between them
L2 = 1e-4  # the HARD loss's penalty, on standardised inputs


class Loss(StrEnum):
    LOG_RATIOS = "log-ratios"
    SOFT = "soft"
    HARD = "hard"


def _lbfgs(parameters: list[torch.Tensor], loss_of, iterations: int) -> float:
    optimiser = torch.optim.LBFGS(
        parameters,
        lr=1.0,
        max_iter=iterations,
        max_eval=2 * iterations,
        tolerance_grad=1e-14,
        tolerance_change=1e-18,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = loss_of()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return float(loss_of())


def _initial(known: ModelClass, u: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    d, c = known.signature.features, known.signature.classes
    if known.arch == "mlp":
        hidden, outputs = known.hidden or 0, 1 if c == 2 else c
        w0 = torch.randn(hidden, d, generator=generator, dtype=torch.float64) / d**0.5
        # Each unit's hyperplane through a random point: no unit starts saturated everywhere.
        through = u[torch.randint(len(u), (hidden,), generator=generator)]
        b0 = -(w0 * through).sum(1)
        w1 = torch.randn(outputs, hidden, generator=generator, dtype=torch.float64) / hidden**0.5
        values = [w0, b0, w1, torch.zeros(outputs, dtype=torch.float64)]
    else:
        rows = 1 if known.arch == "logreg" else c
        values = [torch.zeros(rows, d, dtype=torch.float64), torch.zeros(rows, dtype=torch.float64)]
    return [v.detach().requires_grad_(True) for v in values]


def _logits(known: ModelClass, values: list[torch.Tensor], u: torch.Tensor) -> torch.Tensor:
    if known.arch == "mlp":
        pre = u @ values[0].T + values[1]
        h = torch.tanh(pre) if Activation(known.activation or "tanh") is Activation.TANH else torch.relu(pre)
        z = h @ values[2].T + values[3]
    else:
        z = u @ values[0].T + values[1]
        if known.arch == "ovr":
            return F.logsigmoid(z)
    return torch.cat([torch.zeros_like(z), z], 1) if z.shape[1] == 1 else z


def fit_model_class(
    points: np.ndarray,
    targets: np.ndarray,
    loss: Loss,
    known: ModelClass,
    restarts: int,
    iterations: int,
    rng: np.random.Generator,
) -> tuple[ClassicModel, dict]:
    """A model of `known`'s class fitted to `targets` at `points` (float64, flat): log-probabilities
    for LOG_RATIOS, probability rows for SOFT, integer labels for HARD."""
    x = torch.from_numpy(np.asarray(points, dtype=np.float64))
    low, high = x.min(0).values, x.max(0).values
    centre, spread = (low + high) / 2, ((high - low) / 2).clamp_min(1e-9)
    u = (x - centre) / spread
    if loss is Loss.LOG_RATIOS:
        logs = torch.from_numpy(targets)
        target = logs - logs.mean(1, keepdim=True)
    elif loss is Loss.SOFT:
        target = torch.from_numpy(targets)
    else:
        target = torch.from_numpy(np.asarray(targets, dtype=np.int64))

    best: tuple[float, list[torch.Tensor]] | None = None
    stages = starts = 0
    nonconvex = known.arch in ("mlp", "ovr")
    for starts in range(1, (restarts if nonconvex else 1) + 1):  # noqa: B007 (reported below)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        values = _initial(known, u, generator)

        def loss_of(values: list[torch.Tensor] = values) -> torch.Tensor:
            z = _logits(known, values, u)
            if loss is Loss.LOG_RATIOS:
                return (z - z.mean(1, keepdim=True) - target).square().sum(1).mean()
            if loss is Loss.SOFT:
                return -(target * torch.log_softmax(z, 1)).sum(1).mean()
            penalty = L2 * sum(v.square().sum() for v in values[0::2])
            return F.cross_entropy(z, target) + penalty

        for stage in range(STAGES):
            stages += 1
            final = _lbfgs(values, loss_of, iterations)
            if best is None or final < best[0]:
                best = (final, [v.detach().clone() for v in values])
            if final < SOLVED or loss is not Loss.LOG_RATIOS or known.arch != "mlp" or stage == STAGES - 1:
                break
            _restart_weakest_unit(values, u, known, generator)
        if loss is not Loss.LOG_RATIOS or best[0] < SOLVED:
            break
    assert best is not None
    first, bias = best[1][0] / spread, best[1][1] - (best[1][0] / spread) @ centre  # back to raw features
    signature = known.signature
    if known.arch == "mlp":
        clone: ClassicModel = OneHiddenLayer(
            signature, first, bias, best[1][2], best[1][3], Activation(known.activation or "tanh")
        )
    else:
        clone = {"logreg": BinaryLogistic, "softmax": Softmax, "ovr": OneVsRest}[known.arch](signature, first, bias)
    return clone.eval(), {"loss": best[0], "starts": starts, "stages": stages, "fitted_on": loss.value}


@torch.no_grad()
def _restart_weakest_unit(
    values: list[torch.Tensor], u: torch.Tensor, known: ModelClass, generator: torch.Generator
) -> None:
    """Re-draw the hidden unit that contributes least to the output (a fit stuck in a local minimum
    has usually spent a unit on nothing, or two on one feature of the victim)."""
    w0, b0, w1, _ = values
    pre = u @ w0.T + b0
    h = torch.tanh(pre) if Activation(known.activation or "tanh") is Activation.TANH else torch.relu(pre)
    weakest = int((h.std(0) * w1.abs().sum(0)).argmin())
    d = w0.shape[1]
    w0[weakest] = torch.randn(d, generator=generator, dtype=torch.float64) / d**0.5
    b0[weakest] = -(w0[weakest] * u[int(torch.randint(len(u), (1,), generator=generator))]).sum()
    w1[:, weakest] = 0.01 * torch.randn(w1.shape[0], generator=generator, dtype=torch.float64)
