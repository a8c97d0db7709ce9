"""A defended victim: the same oracle interface, with flagged queries answered by a policy.

The defender reads the victim's features from the same forward pass that answers the query, so
detection costs little beyond the victim's own work.  In-distribution queries get the exact answer;
flagged ones get the policy's; the output mode is applied last, as the service would.  Whether a
query was flagged is never part of the answer.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from mea.defenses.detector import OodDetector
from mea.defenses.policies import Policy
from mea.errors import ConfigError
from mea.oracle import Oracle, OracleWrapper, OutputMode, Probabilities


@runtime_checkable
class InspectableOracle(Oracle, Protocol):
    """An oracle that can show its defender the victim's features (an in-process victim)."""

    def inspect(
        self, images: torch.Tensor, layers: tuple[str, ...]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class DefendedOracle(OracleWrapper):
    """Wraps an oracle with a detector and a response policy; answers in its own output mode."""

    _oracle: InspectableOracle

    def __init__(
        self,
        oracle: InspectableOracle,
        detector: OodDetector,
        policy: Policy,
        secret: bytes,
        output: OutputMode | None = None,
    ) -> None:
        if not isinstance(oracle, InspectableOracle):
            raise ConfigError(
                f"a {type(oracle).__name__} cannot show its features to a defense; wrap the victim itself"
            )
        if oracle.output != Probabilities():
            raise ConfigError("the defended oracle must see exact probabilities; set the output mode on the defense")
        if len(secret) < 16:
            raise ConfigError("the defense's secret must be at least 16 bytes")
        super().__init__(oracle)
        self._detector = detector
        self._policy = policy
        self._secret = secret
        self._output = output or Probabilities()

    @property
    def output(self) -> OutputMode:
        return self._output

    def answer(self, images: torch.Tensor, severity_floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(answers in the output mode, which rows were flagged): the flags are for the audit log only.

        A positive `severity_floor` sends every row through the policy with at least that severity:
        how a service answers a client it already suspects.
        """
        probabilities, features = self._oracle.inspect(images, self._detector.layers)
        scores = self._detector.score(features)
        flags = scores > self._detector.threshold
        treated = torch.ones_like(flags) if severity_floor > 0 else flags
        answers = probabilities
        if treated.any():
            answers = probabilities.clone()
            severity = self._detector.severity(scores[treated]).clamp_min(severity_floor)
            answers[treated] = self._policy(probabilities[treated], images[treated], severity, self._secret)
        return self._output(answers), flags

    def query(self, images: torch.Tensor) -> torch.Tensor:
        return self.answer(images)[0]
