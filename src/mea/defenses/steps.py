"""Synthetic-step streams: queries made from a client's earlier queries by a small perturbation.

Jacobian-based dataset augmentation (Papernot et al. 2017, "Practical Black-Box Attacks against
Machine Learning") and its targeted form (Juuti et al. 2019) make every new query from an earlier
one by a signed step of size lambda in every pixel: the child lies within L-infinity lambda of its
parent (0.1 in the papers: 26 grey levels).  Jitter consensus asks jittered copies of each image,
a couple of grey levels apart.  Natural images almost never come that close to one another without
being the same image: two digits that look alike still differ by a whole stroke somewhere.
Measured here on MNIST test streams (in order, all of one class, each digit sent three times with
small shifts): the L-infinity distance from a query to its L2-nearest earlier query was never
below 0.33; JBDA-TR's children sat at 0.10.

Per client, a `StepRecord` keeps the latest `memory` queries (8-bit pixels) and marks each new
query whose nearest earlier query (an identical copy aside: a repeat learns nothing, and the
answers are repeat-proof) lies within L-infinity `radius`; the client is flagged once `count` of
its last `window` queries are marked.  A window, not a lifetime mean: cover traffic of natural
images dilutes a synthetic stream's share, but every window still holds its steps.  In the spirit
of SEAT (Zhang et al. 2021, "SEAT: Similarity Encoder by Adversarial Training for Detecting Model
Extraction Attack Queries"), which counts near-duplicate query pairs per account; here the
similarity is exact pixel geometry, so it needs no trained encoder.  `calibrate` sets `radius` and
`count` from benign streams of the defender's own calibration split.

The candidates are found on a coarse copy of each image (2x2 average pooling, a quarter of the
work), the L-infinity distance measured on the full 8-bit pixels of the `CANDIDATES` nearest, so
that a tie in the coarse search cannot change a mark.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

CANDIDATES = 4


def quantised(images: torch.Tensor) -> np.ndarray:
    """(B, pixels) uint8: what the service keys and compares."""
    return np.rint(np.clip(images.detach().reshape(len(images), -1).numpy(), 0, 1) * 255).astype(np.uint8)


def coarse(images: torch.Tensor) -> np.ndarray:
    """(B, pixels / 4) float32: each image's 8-bit pixels 2x2-average-pooled (for the neighbour search)."""
    return coarse_of(quantised(images), tuple(images.shape[1:]))


def coarse_of(pixels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`coarse` from 8-bit pixels (B, C*H*W) of images of `shape` (C, H, W); a feature vector as it is."""
    if len(shape) != 3:
        return pixels.reshape(len(pixels), -1).astype(np.float32)
    x = pixels.reshape(len(pixels), *shape).astype(np.float32)
    channels, height, width = shape
    if height >= 2 and width >= 2:
        h, w = height // 2 * 2, width // 2 * 2
        x = x[:, :, :h, :w].reshape(len(x), channels, h // 2, 2, w // 2, 2).mean((3, 5), dtype=np.float32)
    return x.reshape(len(x), -1)


@dataclass
class StepRecord:
    """One client's recent queries (a ring buffer) and which of its latest queries were steps."""

    memory: int
    window: int
    pixels: np.ndarray | None = None  # (memory, D) uint8
    small: np.ndarray | None = None  # (memory, D / 4) float32
    norms: np.ndarray | None = None  # (memory,) squared norms of `small`
    size: int = 0
    head: int = 0  # where the next query goes
    marks: deque = field(default_factory=deque)  # the latest `window` marks, oldest first
    steps: int = 0  # queries ever marked
    flagged_at: int | None = None  # the client's query count when the window first held `count` steps
    added: int = 0  # queries ever remembered (the service writes those it has not written yet)

    @property
    def in_window(self) -> int:
        return sum(self.marks)

    def _allocate(self, full: int, small: int) -> None:
        self.pixels = np.zeros((self.memory, full), np.uint8)
        self.small = np.zeros((self.memory, small), np.float32)
        self.norms = np.zeros(self.memory, np.float32)

    def add(self, pixels: np.ndarray, small: np.ndarray) -> None:
        """Remember these queries (in order), the oldest forgotten beyond `memory`."""
        if self.pixels is None:
            self._allocate(pixels.shape[1], small.shape[1])
        for start in range(0, len(pixels), self.memory):
            chunk = slice(start, start + self.memory)
            rows = (self.head + np.arange(len(pixels[chunk]))) % self.memory
            self.pixels[rows] = pixels[chunk]
            self.small[rows] = small[chunk]
            self.norms[rows] = (small[chunk] * small[chunk]).sum(1)
            self.head = int((rows[-1] + 1) % self.memory)
            self.size = min(self.size + len(rows), self.memory)
        self.added += len(pixels)

    def latest(self, count: int) -> np.ndarray:
        """The last `count` queries remembered (at most `size`), oldest first."""
        count = min(count, self.size)
        return (
            self.pixels[(self.head - count + np.arange(count)) % self.memory] if count else np.zeros((0, 0), np.uint8)
        )

    def mark(self, marks: np.ndarray) -> None:
        self.marks.extend(bool(m) for m in marks)
        while len(self.marks) > self.window:
            self.marks.popleft()
        self.steps += int(np.sum(marks))


def nearest_linf(record: StepRecord, pixels: np.ndarray, small: np.ndarray) -> np.ndarray:
    """Each query's L-infinity distance (grey levels) to its nearest earlier query among the
    `memory` queries just before it (the record's, then this batch's), identical copies skipped;
    256 where there is none.  The same marks whatever the batching: the i-th query of a batch sees
    the record's latest `memory - i` and the batch's first i."""
    n, size = len(pixels), record.size
    order = (record.head - size + np.arange(size)) % record.memory if size else np.zeros(0, np.int64)
    norms = (small * small).sum(1)
    candidates = np.concatenate([record.small[order], small]) if size else small
    candidate_norms = np.concatenate([record.norms[order], norms]) if size else norms
    squared = norms[:, None] + candidate_norms[None, :] - 2 * (small @ candidates.T)
    position = size + np.arange(n)[:, None]  # each query's own place among the candidates
    column = np.arange(len(candidates))[None, :]
    squared[(column >= position) | (column < position - record.memory)] = np.inf
    k = min(CANDIDATES, squared.shape[1])
    nearest = np.argpartition(squared, k - 1, axis=1)[:, :k]
    # The candidates' full pixels, from the ring buffer or the batch, only for the nearest few.
    if size:
        from_memory = (nearest < size)[..., None]
        in_memory, in_batch = order[np.clip(nearest, 0, size - 1)], np.clip(nearest - size, 0, n - 1)
        chosen = np.where(from_memory, record.pixels[in_memory], pixels[in_batch])
    else:
        chosen = pixels[nearest]
    gaps = np.abs(chosen.astype(np.int16) - pixels[:, None, :].astype(np.int16)).max(2)
    # An identical copy is a repeat, not a step; a masked candidate is none.
    gaps[(gaps == 0) | ~np.isfinite(np.take_along_axis(squared, nearest, 1))] = 256
    return gaps.min(1)


def observe_steps(
    record: StepRecord, images: torch.Tensor, radius: float, count: int, queries_before: int
) -> np.ndarray:
    """Mark a batch's steps, remember the batch, and flag the record once its window holds `count`
    steps; returns the batch's marks."""
    pixels, small = quantised(images), coarse(images)
    marks = nearest_linf(record, pixels, small) <= round(radius * 255)
    for i, mark in enumerate(marks):  # the flag names the query that filled the window
        record.mark(np.array([mark]))
        if record.flagged_at is None and record.in_window >= count:
            record.flagged_at = queries_before + i + 1
    record.add(pixels, small)
    return marks


# --- calibration on benign streams ------------------------------------------------------------------


@dataclass(frozen=True)
class StepCalibration:
    """What the defender's benign streams showed, and the thresholds set from them."""

    streams: dict[str, int]  # stream name -> queries
    smallest_benign_gap: float  # L-infinity, [0, 1] units: the closest a benign query came to an earlier one
    benign_marks: int  # benign queries within `radius` (0 by construction of the radius)
    radius: float
    window: int
    count: int
    false_flag_bound: float  # P(a benign window holds `count` steps) at the benign rate's upper bound


def benign_streams(images: torch.Tensor, labels: torch.Tensor, seed: int = 0, size: int = 2000) -> dict:
    """Benign clients built from in-distribution inputs: in order, shuffled, all of one class (the
    largest), and for images each image three times with shifts of up to two pixels.  (A burst, one
    batch, marks as the same stream in order: the marks do not depend on the batching.)"""
    generator = torch.Generator().manual_seed(seed)
    images, labels = images[:size], labels[:size]
    order = torch.randperm(len(images), generator=generator)
    largest = int(torch.bincount(labels).argmax())
    streams = {"in order": images, "shuffled": images[order], "one class": images[labels == largest]}
    if images.dim() == 4:  # a shift means nothing to a feature vector
        shifted = []
        for image in images[: size // 3]:
            for dx, dy in torch.randint(-2, 3, (3, 2), generator=generator).tolist():
                shifted.append(torch.roll(F.pad(image, (2, 2, 2, 2)), (dy, dx), (1, 2))[:, 2:-2, 2:-2])
        streams["shifted repeats"] = torch.stack(shifted)
    return streams


def calibrate(
    images: torch.Tensor, labels: torch.Tensor, window: int = 200, memory: int = 4096, false_flag: float = 1e-6
) -> StepCalibration:
    """`radius` half the smallest gap any benign stream showed, so that none of them has a step;
    `count` the smallest number of steps in a window that a benign client reaches with probability
    below `false_flag`, at the one-sided 95% upper bound of the benign step rate (none seen)."""
    from scipy import stats  # here, not at import: only fitting a defense needs it

    streams = benign_streams(images, labels)
    gaps = []
    for stream in streams.values():
        record = StepRecord(memory, window)
        for start in range(0, len(stream), 256):  # as a client sends them, a batch at a time
            batch = stream[start : start + 256]
            gaps.append(nearest_linf(record, quantised(batch), coarse(batch)))
            record.add(quantised(batch), coarse(batch))
    smallest = int(np.concatenate(gaps).min())
    radius = max(1, smallest // 2) / 255
    total = sum(len(s) for s in streams.values())
    marks = int(sum((g <= round(radius * 255)).sum() for g in gaps))
    rate = 1 - 0.05 ** (1 / total) if marks == 0 else min(1.0, stats.beta.ppf(0.95, marks + 1, total - marks))
    count = next(k for k in range(1, window + 1) if stats.binom.sf(k - 1, window, rate) < false_flag)
    return StepCalibration(
        {name: len(s) for name, s in streams.items()},
        smallest / 255,
        marks,
        radius,
        window,
        count,
        float(stats.binom.sf(count - 1, window, rate)),
    )
