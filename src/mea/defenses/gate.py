"""A defended victim that remembers its clients: what the service runs, usable in process too.

Per client, a PRADA monitor (`mea.defenses.prada`) follows the query stream and the OOD rate;
a suspect client gets every answer through the response policy, at least at `SUSPECT_SEVERITY`;
a refused client gets nothing more.  `mea serve` answers through a ClientGate, and `ClientOracle`
puts one client's view of it behind the oracle interface, so that attacks (adaptive ones
included) meet in process exactly the escalation they would meet over HTTP.
"""

from __future__ import annotations

import torch

from mea.defenses.defended_oracle import DefendedOracle, Examination, Response
from mea.defenses.prada import REFUSED, SUSPECT, ClientState, PradaMonitor
from mea.errors import ConfigError, Refused
from mea.oracle import Oracle, OutputMode
from mea.signature import Signature

SUSPECT_SEVERITY = 0.5


class ClientGate:
    """A victim's oracle (defended or not) and a per-client monitor, answering client by client."""

    def __init__(self, oracle: DefendedOracle | Oracle, monitor: PradaMonitor | None = None) -> None:
        self.oracle = oracle
        self.monitor = monitor or PradaMonitor()

    @property
    def defended(self) -> DefendedOracle:
        if not isinstance(self.oracle, DefendedOracle):
            raise ConfigError("this gate answers without a defense")
        return self.oracle

    def refused(self, client: str) -> bool:
        return self.monitor.state(client).level >= REFUSED

    def respond(self, client: str, state: ClientState, images: torch.Tensor, observe: bool = True) -> Response:
        """Answer `client`, whose record is `state`, and add the batch to that record unless `observe`
        is off (a batch answered before, answered again).  A defended oracle watermarks the client's
        answers if it has a watermark.  The caller serialises one client's calls."""
        return self.treat(client, state, self.examine(images), observe)

    def examine(self, images: torch.Tensor) -> Examination:
        """The part of `respond` that needs no client: the model's forward pass and the detector."""
        if isinstance(self.oracle, DefendedOracle):
            return self.oracle.examine(images)
        answers = self.oracle.query(images)
        return Examination(images, answers, None, torch.zeros(len(images), dtype=torch.bool))

    def treat(self, client: str, state: ClientState, examined: Examination, observe: bool = True) -> Response:
        """`respond` after `examine`."""
        if isinstance(self.oracle, DefendedOracle):
            suspect = state.level >= SUSPECT
            response = self.oracle.treat(examined, client, severity_floor=SUSPECT_SEVERITY if suspect else 0.0)
        else:
            answers, nothing = examined.probabilities, examined.flags
            response = Response(answers, nothing, nothing, answers.argmax(1))
        if observe:
            self.monitor.update(
                state, self.oracle.signature.unit(examined.images), response.answers.argmax(1), response.flagged
            )
        return response

    def answer(self, client: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, ClientState]:
        """(answers in the oracle's output mode, OOD flags, the client's state after this batch)."""
        state = self.monitor.state(client)
        with self.monitor.lock:
            response = self.respond(client, state, images)
        return response.answers, response.flagged, state


class ClientOracle:
    """One client's oracle over a ClientGate, sending `batch_size` images per request as a client
    would; raises Refused (with the answers that got through) once the gate refuses the client."""

    def __init__(self, gate: ClientGate, client: str, batch_size: int = 100) -> None:
        self._gate = gate
        self.client = client
        self.batch_size = batch_size

    @property
    def output(self) -> OutputMode:
        return self._gate.oracle.output

    @property
    def queries_used(self) -> int:
        return self._gate.monitor.state(self.client).queries

    @property
    def budget(self) -> int | None:
        return self._gate.oracle.budget

    @property
    def signature(self) -> Signature:
        return self._gate.oracle.signature

    @property
    def state(self) -> ClientState:
        """What the service knows about this client so far."""
        return self._gate.monitor.state(self.client)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        answered: list[torch.Tensor] = []
        for start in range(0, len(images), self.batch_size):
            if self._gate.refused(self.client):
                break
            answers, _, state = self._gate.answer(self.client, images[start : start + self.batch_size])
            if state.level < REFUSED:  # the batch that crossed the line is not answered, as over HTTP
                answered.append(answers)
        if self._gate.refused(self.client):
            raise Refused(
                f"the service refused client {self.client!r} after {self.queries_used} queries",
                torch.cat(answered) if answered else None,
            )
        return torch.cat(answered) if answered else torch.empty(0, self.signature.classes)
