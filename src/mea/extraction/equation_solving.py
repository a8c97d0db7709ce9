"""Equation-solving: the model's parameters from its confidence values (Tramèr et al. 2016, §4.1).

- **logreg and softmax**: each answer's log-probability ratios are linear in the parameters,
  log(p_k / p_r) = (w_k - w_r).x + (b_k - b_r), so d + 1 points in general position determine the
  model exactly (up to the softmax's common shift, which changes no answer): one least-squares solve
  per class against a reference class r.  The paper counts as many queries as unknowns, c(d + 1),
  for softmax; the ratios need d + 1.
- **ovr** (one-vs-rest, normalised): log(p_k / p_r) = log sigmoid(z_k) - log sigmoid(z_r) is not
  linear, but the same residuals are minimised by Gauss-Newton (Levenberg-Marquardt), started from
  the linear softmax solution; c(d + 1) / (c - 1) points determine it.
- **mlp** (§4.1.2): the known architecture is fitted to the answers by L-BFGS in float64, on the
  log-probability ratios (all of an answer's information, the smallest probabilities included), from
  a few random starts; the paper needs queries in proportion to the unknowns.

Rounded answers (§8, `--output rounded:K`) are no exact system (values rounded to zero carry no
ratio, the others only K decimals): the model class is fitted to them by cross-entropy, convex for
logreg and softmax.  With `drop_inconsistent`, answers that no model of the class can
give (a defense's misinformation, a watermark's flipped or swapped values) are found by their
residuals after a robust (L1) first fit and left out of the final exact solve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from mea.errors import ConfigError
from mea.extraction.base import Answers, Extraction, ModelClass, QuerySpace
from mea.extraction.fitting import Loss, fit_model_class
from mea.oracle import Oracle
from mea.tabular.models import BinaryLogistic, OneVsRest, Softmax

LINEAR = ("logreg", "softmax", "ovr")
# The smallest probability whose ratio is used: float32's smallest normal number (below it, an
# answer has lost relative precision).
FLOOR = 1.2e-38
# Residuals (in nats of log-probability ratio) above this are inconsistent with exact float32 answers.
CONSISTENT = 1e-3


def _augment(points: np.ndarray) -> np.ndarray:
    return np.hstack([points, np.ones((len(points), 1))])


def _weights(answers: np.ndarray, halfwidth: float) -> np.ndarray:
    """Each probability's usable weight: 0 where it carries no ratio, else the inverse of its
    log's uncertainty (float32 rounding for exact answers, the rounding's half-unit otherwise)."""
    floor = max(FLOOR, halfwidth)
    usable = answers > floor
    error = halfwidth / np.where(usable, answers, 1.0) + 6e-8
    return np.where(usable, 1.0 / error, 0.0)


def solve_log_ratios(
    points: np.ndarray, answers: np.ndarray, halfwidth: float = 0.0, drop_inconsistent: bool = False
) -> tuple[np.ndarray, dict]:
    """Parameters (c, d + 1), class 0's row zero, of the softmax regression whose log-probability
    ratios fit `answers` at `points` best (weighted least squares per class against a reference)."""
    x = _augment(points)
    weight = _weights(answers, halfwidth)
    classes = answers.shape[1]
    # The reference: the class whose probabilities are usable most often (then largest on average).
    reference = int(np.lexsort((answers.mean(0), (weight > 0).sum(0)))[-1])
    logs = np.log(np.where(weight > 0, answers, 1.0))
    theta = np.zeros((classes, x.shape[1]))
    dropped = 0
    for k in range(classes):
        if k == reference:
            continue
        w = np.minimum(weight[:, k], weight[:, reference])
        y = logs[:, k] - logs[:, reference]
        theta[k], removed = _fit_column(x, y, w, drop_inconsistent and halfwidth == 0.0)
        dropped += removed
    theta -= theta[0]
    return theta, {"reference_class": reference, "ratios_dropped": dropped, "ratios_used": int((weight > 0).sum())}


def _fit_column(x: np.ndarray, y: np.ndarray, w: np.ndarray, robust: bool) -> tuple[np.ndarray, int]:
    """Weighted least squares for one class's ratios; robustly, an L1 fit (IRLS) first, then exact
    least squares on the ratios it finds consistent."""
    keep = w > 0
    if keep.sum() < x.shape[1]:
        raise ConfigError(
            f"only {int(keep.sum())} answers carry this class's probability ratio and {x.shape[1]} are needed; "
            "query more points (--queries) or points where every class has some probability"
        )
    theta = _wls(x[keep], y[keep], w[keep])
    if not robust:
        return theta, 0
    residual = np.abs(x @ theta - y)
    if residual[keep].max() <= CONSISTENT:
        return theta, 0
    inliers = keep & (residual <= CONSISTENT)
    for step in range(30):  # iteratively reweighted least squares toward the L1 fit
        theta = _wls(x[keep], y[keep], 1.0 / np.maximum(residual[keep], 1e-9))
        residual = np.abs(x @ theta - y)
        consistent = keep & (residual <= CONSISTENT)
        settled, inliers = np.array_equal(inliers, consistent), consistent
        if step >= 4 and settled:  # the same answers consistent twice running: the exact solve takes over
            break
    for _ in range(3):
        inliers = keep & (residual <= CONSISTENT)
        theta = _wls(x[inliers], y[inliers], w[inliers])
        residual = np.abs(x @ theta - y)
    return theta, int(keep.sum() - inliers.sum())


def _wls(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    root = np.sqrt(w / w.max())
    return np.linalg.lstsq(x * root[:, None], y * root, rcond=None)[0]


def refine_ovr(points: np.ndarray, answers: np.ndarray, halfwidth: float, start: np.ndarray) -> tuple[np.ndarray, dict]:
    """One-vs-rest parameters (c, d + 1) by Levenberg-Marquardt on the log-probability ratios."""
    from scipy.optimize import least_squares

    x = _augment(points)
    weight = _weights(answers, halfwidth)
    reference = int(np.argmax((weight > 0).sum(0)))
    rows = np.minimum(weight, weight[:, [reference]])
    root = np.sqrt(rows / rows.max())
    logs = np.log(np.where(weight > 0, answers, 1.0))
    target = logs - logs[:, [reference]]
    classes, width = start.shape

    def residuals(flat: np.ndarray) -> np.ndarray:
        log_s = -np.logaddexp(0.0, -(x @ flat.reshape(classes, width).T))  # log sigmoid
        return ((log_s - log_s[:, [reference]] - target) * root).ravel()

    def jacobian(flat: np.ndarray) -> np.ndarray:
        z = x @ flat.reshape(classes, width).T
        slope = 1.0 / (1.0 + np.exp(z))  # d log sigmoid(z) / dz
        jac = np.zeros((len(x), classes, classes, width))
        for k in range(classes):
            jac[:, k, k, :] += (slope[:, k] * root[:, k])[:, None] * x
            jac[:, k, reference, :] -= (slope[:, reference] * root[:, k])[:, None] * x
        return jac.reshape(len(x) * classes, classes * width)

    result = least_squares(
        residuals, start.ravel(), jac=jacobian, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=200
    )
    return result.x.reshape(classes, width), {"solver_iterations": int(result.nfev), "reference_class": reference}


@dataclass(frozen=True)
class EquationSolving:
    """Tramèr et al. 2016's equation-solving attack (§4.1) on logreg, softmax, ovr and mlp victims.

    `queries`: points to query (None: as many as the model class needs, d + 1 for logreg and
    softmax, the unknowns over c - 1 for ovr, twice the unknowns for an MLP); `drop_inconsistent`:
    find and leave out answers no model of the class gives (see the module docstring); `restarts`
    and `max_iterations`: the MLP fit's random starts and L-BFGS iterations each."""

    queries: int | None = None
    drop_inconsistent: bool = True
    restarts: int = 6
    max_iterations: int = 1000
    name: str = "equation-solving"

    def needed(self, known: ModelClass) -> int:
        d, c = known.signature.features, known.signature.classes
        if known.arch in ("logreg", "softmax"):
            return d + 1
        if known.arch == "ovr":  # twice the fewest that determine it: Gauss-Newton then converges
            return 2 * -(-known.unknowns // (c - 1))
        return 2 * known.unknowns

    def run(self, oracle: Oracle, space: QuerySpace, known: ModelClass, rng: np.random.Generator) -> Extraction:
        known.require(self.name, (*LINEAR, "mlp"))
        halfwidth = Answers.confidence(oracle, self.name)
        count = self.queries or self.needed(known)
        points = space.sample(count, rng)
        before = oracle.queries_used
        answers = oracle.query(space.as_inputs(points)).double().numpy()
        points = space.as_inputs(points).reshape(count, -1).double().numpy()  # what the oracle saw (float32)
        start = time.process_time()
        signature = known.signature
        if halfwidth > 0:
            # Rounded answers (§8): some probabilities are zero and none is exact, so the ratios are
            # not a system to solve; the model class is fitted to them by cross-entropy instead
            # (convex for logreg and softmax), as the paper fits its models to rounded answers.
            p = answers.astype(np.float64)
            targets = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
            clone, details = fit_model_class(points, targets, Loss.SOFT, known, self.restarts, self.max_iterations, rng)
        elif known.arch in LINEAR:
            robust = self.drop_inconsistent and known.arch != "ovr"  # for ovr the softmax fit is a start only
            theta, details = solve_log_ratios(points, answers, halfwidth, robust)
            if known.arch == "ovr":
                theta, extra = refine_ovr(points, answers, halfwidth, theta)
                details |= extra
            weight, bias = torch.from_numpy(theta[:, :-1]), torch.from_numpy(theta[:, -1])
            if known.arch == "logreg":
                clone = BinaryLogistic(signature, weight[1:], bias[1:])
            elif known.arch == "softmax":
                clone = Softmax(signature, weight, bias)
            else:
                clone = OneVsRest(signature, weight, bias)
        else:
            p = answers.astype(np.float64)
            if halfwidth == 0.0 and bool((p > FLOOR).all()):
                targets, loss = np.log(p), Loss.LOG_RATIOS
            else:  # rounded answers (some zero): cross-entropy against them
                targets, loss = p / p.sum(1, keepdims=True), Loss.SOFT
            clone, details = fit_model_class(points, targets, loss, known, self.restarts, self.max_iterations, rng)
        return Extraction(clone.eval(), oracle.queries_used - before, time.process_time() - start, details)
