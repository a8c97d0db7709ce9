"""What every attack of Tramèr et al. 2016 shares: what the attacker knows of the victim's model
class, where its query points come from, and the record an extraction returns.

A strategy is an object whose constructor holds its hyperparameters and whose `run(oracle, space,
known, rng)` spends queries through the black-box oracle (mea.oracle: the budget, the output
mode, the defense and the HTTP client all live there) and returns an `Extraction`.  It never sees
the victim itself: `known` is what the paper assumes a prediction API reveals (the model's type,
an MLP's hidden width, the number of features and classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from mea.errors import ConfigError
from mea.oracle import Label, Oracle, Probabilities, Rounded
from mea.signature import Signature


@dataclass(frozen=True)
class ModelClass:
    """What the attacker knows of the victim's model: its architecture (mea.tabular.models: logreg,
    softmax, ovr, mlp, tree, forest), an MLP's hidden width and activation, and the signature."""

    arch: str
    signature: Signature
    hidden: int | None = None
    activation: str | None = None

    @property
    def unknowns(self) -> int:
        """The model's parameters (what equation-solving solves for; a tree's are its nodes)."""
        d, c = self.signature.features, self.signature.classes
        if self.arch == "logreg":
            return d + 1
        if self.arch in ("softmax", "ovr"):
            return c * (d + 1)
        if self.arch == "mlp" and self.hidden is not None:
            outputs = 1 if c == 2 else c
            return self.hidden * (d + 1) + outputs * (self.hidden + 1)
        raise ConfigError(f"a {self.arch} model has no fixed number of unknowns")

    @classmethod
    def of(cls, model: nn.Module) -> ModelClass:
        """The model class of a mea classic victim (what its API would publish)."""
        from mea.tabular.models import ClassicModel, OneHiddenLayer

        if not isinstance(model, ClassicModel):
            raise ConfigError(
                "the attacks of Tramèr et al. 2016 extract scikit-learn models (logreg, softmax, ovr, mlp, tree, "
                "forest); this victim is a neural image classifier: use the retraining strategies (random, active, ...)"
            )
        if isinstance(model, OneHiddenLayer):
            return cls(model.arch, model.signature, model.hidden, model.activation.value)
        return cls(model.arch, model.signature)

    def require(self, strategy: str, archs: tuple[str, ...]) -> None:
        """A one-line refusal when `strategy` cannot extract this model class."""
        if self.arch not in archs:
            raise ConfigError(f"{strategy} extracts {' or '.join(archs)} models; this victim is a {self.arch}")


class Answers:
    """What an output mode leaves of the probabilities: exact, rounded to K decimals, or a label."""

    @staticmethod
    def confidence(oracle: Oracle, strategy: str) -> float:
        """The half-width of an answer's rounding (0 for exact float32 answers), or a refusal for labels."""
        output = oracle.output
        if isinstance(output, Probabilities):
            return 0.0
        if isinstance(output, Rounded):
            return 0.5 * 10.0 ** (-output.decimals)
        raise ConfigError(
            f"{strategy} solves for the model from confidence values; this oracle answers {output.spec}: "
            "use lowd-meek (two classes, linear) or a label-only retraining strategy (uniform, line-search, adaptive)"
        )

    @staticmethod
    def labels(oracle: Oracle, inputs: torch.Tensor) -> torch.Tensor:
        """Class labels of `inputs` (any output mode names its top class first)."""
        return oracle.query(inputs).argmax(1)

    @staticmethod
    def is_label(oracle: Oracle) -> bool:
        return isinstance(oracle.output, Label)


@dataclass(frozen=True)
class Extraction:
    """What an attack recovered: the clone (a mea.tabular model), the queries it spent, and what it
    measured on the way (solver details: rows dropped as inconsistent, leaves found, ...)."""

    clone: nn.Module
    queries: int
    compute_s: float
    details: dict = field(default_factory=dict)


class QuerySpace:
    """Where an attacker's query points come from: uniform in the feature ranges (Tramèr et al.'s
    default), or rows of a pool the attacker holds, drawn without replacement."""

    def __init__(self, signature: Signature, pool: torch.Tensor | None = None, name: str = "uniform") -> None:
        bounds = signature.bounds()
        if bounds is None and pool is None:
            raise ConfigError(
                "this victim states no feature ranges to draw uniform queries in; give a pool of your own (--pool)"
            )
        self.signature = signature
        self.name = name
        self.low = None if bounds is None else np.asarray(bounds[0], dtype=np.float64)
        self.high = None if bounds is None else np.asarray(bounds[1], dtype=np.float64)
        self.pool = None if pool is None else pool.reshape(len(pool), -1).double().numpy()
        if self.pool is not None and self.low is None:
            self.low, self.high = self.pool.min(0), self.pool.max(0)

    @property
    def dimension(self) -> int:
        return self.signature.features

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` points (float64, flat): from the pool when there is one, else uniform in the ranges."""
        if self.pool is not None:
            if count > len(self.pool):
                raise ConfigError(f"the pool holds {len(self.pool)} points; {count} were asked: a smaller --queries")
            return self.pool[rng.choice(len(self.pool), count, replace=False)]
        return self.uniform(count, rng)

    def uniform(self, count: int, rng: np.random.Generator) -> np.ndarray:
        assert self.low is not None and self.high is not None
        return self.low + (self.high - self.low) * rng.random((count, self.dimension))

    def as_inputs(self, points: np.ndarray) -> torch.Tensor:
        """Flat float64 points as the oracle takes them (float32, the victim's input shape)."""
        inputs = torch.from_numpy(np.asarray(points, dtype=np.float32))
        return inputs.reshape(len(points), *self.signature.input_shape)


class Strategy(Protocol):
    """An extraction strategy: hyperparameters in the constructor, the attack in `run`."""

    name: str

    def run(self, oracle: Oracle, space: QuerySpace, known: ModelClass, rng: np.random.Generator) -> Extraction: ...
