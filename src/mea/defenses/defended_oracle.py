"""A defended victim: the same oracle interface, with flagged queries answered by a policy.

Prediction poisoning (MAD) answers every query, not only flagged ones: give it as the
`unflagged_policy`, alone (with a gate policy of the same kind) or beside the gate's misinformation.

The defender reads the victim's features from the same forward pass that answers the query, so
detection costs little beyond the victim's own work.  In-distribution queries get the exact answer;
flagged ones get the policy's; the output mode is applied last, as the service would.  Whether a
query was flagged is never part of the answer.

With a watermark (`mea.ownership.watermark`: DAWN-style flips and a runner-up mark), a keyed
fraction of each client's *unflagged* queries is answered with a keyed wrong class and the rest
carry the keyed runner-up; a flagged query keeps the gate's policy, so the watermark never changes
how an out-of-distribution query is answered, and the evidence only ever holds answers the victim
would otherwise have given truthfully.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from mea.defenses.detector import OodDetector
from mea.defenses.policies import Policy
from mea.errors import ConfigError
from mea.oracle import Oracle, OracleWrapper, OutputMode, Probabilities
from mea.ownership.watermark import Watermark


@runtime_checkable
class InspectableOracle(Oracle, Protocol):
    """An oracle that can show its defender the victim's features (an in-process victim)."""

    def inspect(
        self, images: torch.Tensor, layers: tuple[str, ...]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@dataclass(frozen=True)
class Response:
    """One batch's answers and what the service must know about them (never sent to the client).

    answers        (B, 10) in the output mode: what the client receives
    flagged        (B,) bool: the detector flagged the query (for the audit log)
    watermarked    (B,) bool: the answer was flipped to the watermark class (for the evidence store)
    victim_labels  (B,) int64: the victim's own top-1 class (for the evidence store)
    """

    answers: torch.Tensor
    flagged: torch.Tensor
    watermarked: torch.Tensor
    victim_labels: torch.Tensor


@dataclass(frozen=True)
class Examination:
    """A batch as the victim and the detector saw it, before any client's treatment.

    images         (B, ...) the queries
    probabilities  (B, classes) the victim's exact answers
    scores         (B,) the detector's scores, or None where no detector looked
    flags          (B,) bool: the detector flagged the query
    """

    images: torch.Tensor
    probabilities: torch.Tensor
    scores: torch.Tensor | None
    flags: torch.Tensor


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
        watermark: Watermark | None = None,
        unflagged_policy: Policy | None = None,
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
        self.watermark = watermark
        # A policy for every query the detector passes (prediction poisoning, e.g. MAD, answers all
        # queries); None: they get the victim's exact answer.
        self._unflagged_policy = unflagged_policy

    @property
    def output(self) -> OutputMode:
        return self._output

    def answer(self, images: torch.Tensor, severity_floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(answers in the output mode, which rows were flagged): the flags are for the audit log only.

        A positive `severity_floor` sends every row through the policy with at least that severity:
        how a service answers a client it already suspects.  No watermark here (it needs a client):
        see `respond`.
        """
        response = self.treat(self.examine(images), None, severity_floor)
        return response.answers, response.flagged

    def respond(self, images: torch.Tensor, client: str = "", severity_floor: float = 0.0) -> Response:
        """Answer one client's batch: flagged rows (every row when `severity_floor` > 0) through the
        policy, a keyed fraction of the rest flipped for this client and the others runner-up
        marked (with a watermark), the output mode last."""
        return self.treat(self.examine(images), client, severity_floor)

    def examine(self, images: torch.Tensor) -> Examination:
        """The victim's probabilities and the detector's verdict on a batch: everything that does
        not depend on who asks, so that a service can run it before it takes the client's record."""
        probabilities, features = self._oracle.inspect(images, self._detector.layers)
        scores = self._detector.score(features)
        return Examination(images, probabilities, scores, scores > self._detector.threshold)

    def treat(self, examined: Examination, client: str | None, severity_floor: float = 0.0) -> Response:
        """`respond` after `examine`: the answers `client` gets (None: no watermark)."""
        probabilities, flags = examined.probabilities, examined.flags
        # What the policies key their answers on: a feature vector on its ranges' [0, 1] scale, as the
        # coarse code and the step detector read it (an image as it is).
        images = self.signature.unit(examined.images)
        treated = torch.ones_like(flags) if severity_floor > 0 else flags
        victim_labels = probabilities.argmax(1)
        answers = probabilities
        if treated.any():
            answers = probabilities.clone()
            severity = self._detector.severity(examined.scores[treated]).clamp_min(severity_floor)
            answers[treated] = self._policy(probabilities[treated], images[treated], severity, self._secret)
        watermarked = torch.zeros_like(flags)
        if self.watermark is not None and client is not None and not treated.all():
            untreated = (~treated).nonzero().squeeze(1)
            answers = answers.clone() if answers is probabilities else answers
            answers[untreated], chosen = self.watermark.respond(client, probabilities[untreated], images[untreated])
            watermarked[untreated[chosen]] = True
        poisoned = ~treated & ~watermarked
        if self._unflagged_policy is not None and poisoned.any():
            answers = answers.clone() if answers is probabilities else answers
            severity = torch.zeros(int(poisoned.sum()))
            answers[poisoned] = self._unflagged_policy(answers[poisoned], images[poisoned], severity, self._secret)
        return Response(self._output(answers), flags, watermarked, victim_labels)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        return self.answer(images)[0]
