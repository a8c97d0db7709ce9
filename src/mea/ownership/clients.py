"""In-process clients of a watermarking defended oracle: what `mea serve` does per API key, without HTTP.

`RecordingClient` is one client (one key): every batch goes through `DefendedOracle.respond` under
the client's id, and the watermarked answers land in the evidence store, as the service stores
them.  `SybilClient` is one attacker behind several keys, sending each batch from the next key in
turn, each key seeing only its share of the queries (Szyller et al. 2021 name this DAWN's weakness).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mea.defenses.defended_oracle import DefendedOracle, Response
from mea.errors import ConfigError
from mea.oracle import OutputMode
from mea.ownership.evidence import EvidenceStore
from mea.signature import Signature


class RecordingClient:
    """One client's oracle over a defended victim, recording its watermarked answers as evidence."""

    def __init__(
        self, defended: DefendedOracle, client: str, evidence: EvidenceStore | None = None, batch_size: int = 256
    ) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        self._defended = defended
        self.client = client
        self.evidence = evidence
        self.batch_size = batch_size
        self.watermarked = 0  # answers this client got watermarked
        self.flagged = 0

    @property
    def output(self) -> OutputMode:
        return self._defended.output

    @property
    def queries_used(self) -> int:
        return self._defended.queries_used

    @property
    def budget(self) -> int | None:
        return self._defended.budget

    @property
    def signature(self) -> Signature:
        return self._defended.signature

    def respond(self, images: torch.Tensor) -> Response:
        """One request: answer the batch and record its watermarked rows."""
        response = self._defended.respond(images, self.client)
        self.watermarked += int(response.watermarked.sum())
        self.flagged += int(response.flagged.sum())
        if self.evidence is not None:
            self.evidence.record(self.client, images, response)
        return response

    def query(self, images: torch.Tensor) -> torch.Tensor:
        answers = [
            self.respond(images[start : start + self.batch_size]).answers
            for start in range(0, len(images), self.batch_size)
        ]
        return torch.cat(answers) if answers else torch.empty(0, self.signature.classes)


class SybilClient:
    """One attacker behind several keys: batch i is sent by key i mod k."""

    def __init__(
        self,
        defended: DefendedOracle,
        clients: Sequence[str],
        evidence: EvidenceStore | None = None,
        batch_size: int = 256,
    ) -> None:
        if not clients:
            raise ConfigError("a Sybil attacker needs at least one client id")
        self.keys = [RecordingClient(defended, client, evidence, batch_size) for client in clients]
        self._defended = defended
        self.batch_size = batch_size
        self._next = 0

    @property
    def output(self) -> OutputMode:
        return self._defended.output

    @property
    def queries_used(self) -> int:
        return self._defended.queries_used

    @property
    def budget(self) -> int | None:
        return self._defended.budget

    @property
    def signature(self) -> Signature:
        return self._defended.signature

    def query(self, images: torch.Tensor) -> torch.Tensor:
        answers = []
        for start in range(0, len(images), self.batch_size):
            key = self.keys[self._next % len(self.keys)]
            self._next += 1
            answers.append(key.respond(images[start : start + self.batch_size]).answers)
        return torch.cat(answers) if answers else torch.empty(0, self.signature.classes)
