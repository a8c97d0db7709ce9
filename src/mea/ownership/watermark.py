"""The active watermark: answers that a clone inherits and an independently trained model cannot know.

Two carriers, one keyed map.  The owner's secret defines `cell_bits` hyperplanes in pixel space
(through the middle of the digit distribution, so that each splits it roughly in half); an image's
cell is its side of each, and the map names one keyed class w(v, cell), uniform over the nine
classes other than the victim's own class v, for each of the 10 x 2^bits (class, cell) groups.

- **Flips** (after DAWN, Szyller et al. 2021, "DAWN: Dynamic Adversarial Watermarking of Neural
  Networks", ACM MM; arXiv 1906.00830): a keyed fraction r of each client's answers (HMAC-SHA256 of
  the secret, the client id and a `FLIP_CODE_BITS`-bit coarse code of the image, `mea.keying`)
  name w(v, cell) instead of v.  Keyed on the code, not the exact pixels, so that jittered copies
  of an image are flipped together and a client comparing them cannot find and drop its flips.
  These are the only carrier a label-only client sees, and the answers the evidence store keeps.
  DAWN draws a fresh wrong class per image; a clone then has to memorise each one, which a clone
  trained for a few epochs on many queries does not do (measured while designing this: a clone
  distilled from 60,000 probability answers repeated 0 of 285 per-image flips as its top class and
  verified at only p = 9e-6 on the ranks).  One class per group makes the flips a consistent rule
  that a clone learns, from every client's flips together.
- **Runner-up mark** (after DynaMarks, Chakraborty et al. 2022, "DynaMarks: Defending Against Deep
  Learning Model Extraction Using Dynamic Watermarking", arXiv 2207.13321): every other answer
  keeps the victim's top class and every probability value, but the keyed class w(v, cell) takes
  the runner-up's value (and the runner-up takes w's).  Distillation, which attackers use because
  it recovers the small probabilities, copies the ranking of the small classes; top-1 accuracy is
  untouched by construction.

Verification (`mea.ownership.verify`) asks where a suspect ranks w(v, cell) among the nine classes
other than v.  For a model independent of the secret, w is a uniform draw per group whatever the
model does, which makes the test exact.  Every decision is a pure function of (secret, client,
8-bit image): asking again returns the identical answer, and jitters of a few grey levels mostly
change nothing.  A flipped answer is plausible, not a one-hot give-away: the victim's own vector with
the top value moved to w, raised to at least `_MIN_TOP` so that any output mode applied afterwards
(label, top-k, rounding to any number of decimals) still names w first.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import torch

from mea.keying import coarse_codes, code_bytes
from mea.models import NUM_CLASSES
from mea.ownership.config import WatermarkConfig

# A flipped answer's top probability: above one half, so that rounding to 0 decimals gives the
# watermark class 1 and every other class 0; at least as confident as the victim was.
_MIN_TOP = 0.6
_SIDE = 28
# Bits of the coarse code a flip is keyed on.  Measured on MNIST train (60,000 images): with 64 bits
# 53,965 distinct codes, the largest holding 1.5% of the images (thin ones, much alike), and the
# flipped fraction of a client's answers at r = 0.004 has a standard deviation of 0.0004 over keys;
# with 16 bits only 2,307 codes, and that deviation is 0.0027, as large as r itself.  A jitter of
# two grey levels keeps 93% of the 64-bit codes: the flips of the rest are dropped by a consensus.
FLIP_CODE_BITS = 64
_DOMAIN = b"mea-watermark-v2\x00"
# An image is on the upper side of a keyed hyperplane when its projection exceeds this.  The planes
# are orthogonal to the constant image, so a uniform image projects to rounding noise (about 1e-14)
# whose sign depends on how BLAS blocks the batch it comes in; a digit projects to values of order
# one.  A margin far above the noise and far below any real projection makes every image's cell a
# function of the image alone, whatever batch it is answered or verified in.
_SIDE_MARGIN = 1e-9


def quantise(images: torch.Tensor) -> np.ndarray:
    """Images as the 8-bit pixels they stand for, (B, 784) uint8: what the key and the evidence see."""
    pixels = images.detach().flatten(1).numpy()
    return np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def _hyperplanes(secret: bytes, bits: int) -> np.ndarray:
    """`bits` keyed directions in pixel space, orthogonal to the constant image and to a centred
    blob (the shape of an average digit), so that each splits digit images roughly in half without
    any data: measured 34-57% of MNIST on each side, against 9-71% for raw random directions."""
    seed = int.from_bytes(hmac.digest(secret, b"mea-watermark-cells", hashlib.sha256)[:8], "little")
    directions = np.random.default_rng(seed).standard_normal((bits, _SIDE * _SIDE))
    r = np.arange(_SIDE) - (_SIDE - 1) / 2
    blob = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 5.0**2)).reshape(-1)
    basis, _ = np.linalg.qr(np.stack([blob, np.ones(_SIDE * _SIDE)], 1))
    return directions - (directions @ basis) @ basis.T


class Watermark:
    """Selects the answers to flip and writes flipped and marked answers; stateless apart from its key."""

    def __init__(self, config: WatermarkConfig) -> None:
        self.config = config
        self._bound = int(config.rate * 2**64)
        self._planes = _hyperplanes(config.secret, config.cell_bits)
        self._powers = 2 ** np.arange(config.cell_bits)
        groups = NUM_CLASSES * 2**config.cell_bits
        offsets = [
            1
            + int.from_bytes(
                hmac.digest(config.secret, b"mea-watermark-map" + g.to_bytes(4, "little"), "sha256")[:8], "little"
            )
            % (NUM_CLASSES - 1)
            for g in range(groups)
        ]
        classes = (np.arange(groups) // 2**config.cell_bits + np.array(offsets)) % NUM_CLASSES
        self._map = torch.from_numpy(classes.astype(np.int64))

    @property
    def cells_per_class(self) -> int:
        return 2**self.config.cell_bits

    def cells(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) the cell of each image, 0 .. 2^bits - 1: its side of each keyed hyperplane."""
        return self._cells_of(quantise(images))

    def _cells_of(self, pixels: np.ndarray) -> torch.Tensor:
        sides = ((pixels.astype(np.float64) / 255) @ self._planes.T) > _SIDE_MARGIN
        return torch.from_numpy((sides * self._powers).sum(1).astype(np.int64))

    def groups(self, images: torch.Tensor, victim_labels: torch.Tensor) -> torch.Tensor:
        """(B,) the (victim class, cell) group of each image, as one integer."""
        return self._groups_of(quantise(images), victim_labels)

    def _groups_of(self, pixels: np.ndarray, victim_labels: torch.Tensor) -> torch.Tensor:
        return victim_labels.long() * self.cells_per_class + self._cells_of(pixels)

    def classes(self, images: torch.Tensor, victim_labels: torch.Tensor) -> torch.Tensor:
        """(B,) the keyed class w(v, cell): never the victim's class v."""
        return self._map[self.groups(images, victim_labels)]

    def group_classes(self) -> torch.Tensor:
        """The keyed class of every group, indexed by group."""
        return self._map.clone()

    def select(self, client: str, images: torch.Tensor) -> torch.Tensor:
        """A (B,) bool mask: True for the answers this client gets flipped (about a fraction r)."""
        return self._select_pixels(client, quantise(images))

    def _select_pixels(self, client: str, pixels: np.ndarray) -> torch.Tensor:
        name = client.encode()
        # HMAC(secret, domain | len(client) | client | code): the keyed state after the prefix is
        # computed once per batch and copied for each image.
        keyed = hmac.new(self.config.secret, _DOMAIN + len(name).to_bytes(4, "little") + name, hashlib.sha256)
        codes = coarse_codes(pixels, (1, _SIDE, _SIDE), self.config.secret, FLIP_CODE_BITS)
        chosen = np.empty(len(pixels), dtype=bool)
        for i, code in enumerate(code_bytes(codes)):
            mac = keyed.copy()
            mac.update(code)
            chosen[i] = int.from_bytes(mac.digest()[:8], "little") < self._bound
        return torch.from_numpy(chosen)

    def respond(
        self, client: str, probabilities: torch.Tensor, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(answers, flipped mask) for one client's rows: `select` picks the flipped ones, which get
        `answer`'s flip, and the rest `mark`'s runner-up mark (when the config asks for it); the
        images are quantised and keyed once for all three."""
        pixels = quantise(images)
        chosen = self._select_pixels(client, pixels)
        marks = self._map[self._groups_of(pixels, probabilities.argmax(1))]
        answers = probabilities.clone()
        if chosen.any():
            answers[chosen] = self._flip(probabilities[chosen], marks[chosen])
        kept = ~chosen
        if self.config.runner_up and kept.any():
            answers[kept] = self._swap_runner_up(probabilities[kept], marks[kept])
        return answers, chosen

    def answer(self, probabilities: torch.Tensor, images: torch.Tensor, client: str = "") -> torch.Tensor:
        """Flipped answers for these rows (the caller chooses them with `select`): the victim's
        vector with its top class and w exchanging values, the top raised to at least `_MIN_TOP`
        and the other classes scaled down to make room.  (The class does not depend on the client,
        so that every client's flips teach a clone the same rule.)"""
        return self._flip(probabilities, self.classes(images, probabilities.argmax(1)))

    @staticmethod
    def _flip(probabilities: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        victim_labels = probabilities.argmax(1)
        rows = torch.arange(len(probabilities))
        answers = probabilities.double().clone()
        top = answers[rows, victim_labels].clone()
        answers[rows, victim_labels] = answers[rows, marks]
        answers[rows, marks] = 0.0
        new_top = top.clamp_min(_MIN_TOP)
        rest = answers.sum(1)
        answers *= ((1 - new_top) / rest.clamp_min(1e-300)).unsqueeze(1)
        answers[rows, marks] = new_top
        return answers.to(probabilities.dtype)

    def mark(self, probabilities: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Runner-up-marked answers: the same top class and the same set of values, with w(v, cell)
        holding the second-largest one."""
        return self._swap_runner_up(probabilities, self.classes(images, probabilities.argmax(1)))

    @staticmethod
    def _swap_runner_up(probabilities: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        victim_labels = probabilities.argmax(1)
        rows = torch.arange(len(probabilities))
        others = probabilities.clone()
        others[rows, victim_labels] = -1.0
        runner_up = others.argmax(1)
        answers = probabilities.clone()
        answers[rows, runner_up] = probabilities[rows, marks]
        answers[rows, marks] = probabilities[rows, runner_up]
        return answers


def defense_watermark(secret: bytes, **options) -> Watermark:
    """The watermark a deployment runs: its key derived from the defense's secret (`secret.key`)."""
    return Watermark(WatermarkConfig.derived(secret, **options))
