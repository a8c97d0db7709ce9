"""The ownership configurations, free of torch (the command line reads their defaults for --help)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from mea.errors import ConfigError
from mea.signature import DEFAULT as DEFAULT_SIGNATURE
from mea.signature import Signature

DEFAULT_ALPHA = 1e-6
DEFAULT_CAP_PER_CLIENT = 10_000
# 0.4% of answers flipped: measured (benchmarks/ownership.py) to cost a benign MNIST-test stream
# 0.4 points of label accuracy, while a 60,000-query label-only clone is still verified at p < 1e-6.
DEFAULT_RATE = 0.004
DEFAULT_CELL_BITS = 3


@dataclass(frozen=True)
class WatermarkConfig:
    """The owner's watermark key, the fraction r of each client's answers flipped, the number of
    keyed hyperplanes that split each class into cells, and whether other answers carry the
    runner-up mark."""

    secret: bytes
    rate: float = DEFAULT_RATE
    cell_bits: int = DEFAULT_CELL_BITS
    runner_up: bool = True

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ConfigError("the watermark secret must be at least 16 bytes (e.g. secrets.token_bytes(32))")
        if not 0 < self.rate < 1:
            raise ConfigError(f"the watermark rate must lie in (0, 1), got {self.rate}; e.g. {DEFAULT_RATE}")
        if not 0 <= self.cell_bits <= 12:
            raise ConfigError(f"cell bits must lie in [0, 12], got {self.cell_bits}")

    def __repr__(self) -> str:  # never print the secret
        return (
            f"WatermarkConfig(secret=<{len(self.secret)} bytes>, rate={self.rate}, "
            f"cell_bits={self.cell_bits}, runner_up={self.runner_up})"
        )

    @classmethod
    def derived(cls, secret: bytes, **options) -> WatermarkConfig:
        """A watermark key derived from another secret (a defense's noise key), so that one key's
        outputs say nothing about the other's."""
        return cls(hmac.digest(secret, b"mea-watermark-key", hashlib.sha256), **options)

    @property
    def commitment(self) -> str:
        """A public commitment to the key (hex): written into the evidence chain's first hash, so
        that evidence names the key it was made with and a key cannot be chosen afterwards."""
        return hmac.digest(self.secret, b"mea-watermark-commitment", hashlib.sha256).hex()


@dataclass(frozen=True)
class FingerprintConfig:
    # Innocent models the owner trains (mea.ownership.references), the victim's own recipe first;
    # every other one makes the fingerprint, the rest are the population a suspect is ranked in.
    references: int = 16
    surrogates: int = 2
    epochs: int | None = None  # training of each reference and surrogate; None = each recipe's own
    candidates: int = 2000  # calibration images tried as starting points
    size: int = 100  # conferrable examples kept
    epsilon: float = 0.25  # L-infinity radius, in pixel units of [0, 1]
    steps: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        if self.references < 2 or self.references % 2:
            raise ConfigError(
                f"references must be an even number >= 2 (half make the fingerprint, half rank), got {self.references}"
            )
        if self.surrogates < 1:
            raise ConfigError(f"surrogates must be >= 1, got {self.surrogates}")
        if not 0 < self.epsilon <= 1:
            raise ConfigError(f"epsilon must lie in (0, 1], got {self.epsilon}")
        for name in ("candidates", "size", "steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")


DEFAULT_NEIGHBOURS = 10


@dataclass(frozen=True)
class WatermarkWeights:
    """The watermark test's integer weight per kind of image (mea.ownership.verify): a record (an
    answer the suspect's trainer may have been given) weighs as much as its ten nearest held-out
    neighbours together, and a neighbour as ten probes.  Fixed in advance, on development clones of
    other seeds (never on the clones the evaluation reports).  Integers, so that the exact null stays
    a convolution of integer sums; any weights keep the test exact."""

    record: int = 100
    neighbour: int = 10
    probe: int = 1

    def __post_init__(self) -> None:
        if min(self.record, self.neighbour, self.probe) <= 0:
            raise ConfigError(f"watermark weights must be positive integers, got {self}")


@dataclass(frozen=True)
class Budget:
    """How the queries to the suspect are shared: records first (the oldest), then up to
    `neighbours` held-out neighbours per record (fewer when the budget is short), then the whole
    fingerprint if it fits (indicative only), then probes fill what is left of `max_queries` (at most
    `probes` of them when it is set)."""

    max_queries: int = 1000
    max_records: int = 500
    neighbours: int = DEFAULT_NEIGHBOURS
    probes: int | None = None

    def __post_init__(self) -> None:
        if self.max_queries <= 0 or self.max_records < 0 or self.neighbours < 0 or (self.probes or 0) < 0:
            raise ConfigError(f"query budget values must be positive, got {self}")


def check_victim_signature(signature: Signature) -> None:
    """Ownership evidence (the watermark's keyed cells and classes, the evidence store, the
    fingerprint's probes) is laid out for the default task's 1x28x28 images and 10 classes."""
    if signature != DEFAULT_SIGNATURE:
        raise ConfigError(
            f"ownership verification supports victims of {DEFAULT_SIGNATURE.describe()} so far; this one takes "
            f"{signature.describe()}"
        )
