"""What a classifier takes and answers: an image, or a vector of features, and its classes.

Everything that touches a victim reads this record from the victim (a mea model's safetensors header, an
ONNX graph's input and output, a served model's metadata), so that a victim of 3x32x32 colour
images and 5 classes is attacked, defended and served like the default one: LeNet-5's 1x28x28 grey
digits and 10 classes.  A victim may instead take a vector of d features (a logistic regression,
a small MLP or a decision tree on tabular data, the setting of Tramèr et al. 2016): its signature
then names d, each feature's range (the domain its owner publishes; images lie in [0, 1]) and
whether it answers vectors with missing features (NaN), as BigML's trees do.  Torch-free, so that
the CLI's error paths and the HTTP client can use it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mea.errors import ConfigError

if TYPE_CHECKING:  # torch only where a tensor is scaled: the signature stays cheap to import
    import torch

CHANNELS = (1, 3)  # grey or RGB
MIN_SIZE = 12  # LeNet-5's two 5x5 convolutions and poolings leave a 1x1 map at 12x12
MAX_SIZE = 512
MAX_CLASSES = 10_000
MAX_FEATURES = 100_000


@dataclass(frozen=True)
class Signature:
    """A classifier's input, an image (channels, height, width) or a vector (features,), and its
    number of classes.  A vector's `ranges` give each feature's [low, high] (None: not stated) and
    `missing` says whether NaN may stand for a feature left out."""

    input_shape: tuple[int, ...] = (1, 28, 28)
    classes: int = 10
    ranges: tuple[tuple[float, float], ...] | None = None
    missing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if len(self.input_shape) == 3:
            channels, height, width = self.input_shape
            if channels not in CHANNELS or not (MIN_SIZE <= height <= MAX_SIZE and MIN_SIZE <= width <= MAX_SIZE):
                raise ConfigError(
                    f"mea attacks image classifiers of 1 or 3 channels and {MIN_SIZE}..{MAX_SIZE} pixels a side; "
                    f"this one takes {self.shape_text}"
                )
            if self.ranges is not None or self.missing:
                raise ConfigError(
                    "an image's pixels lie in [0, 1]: feature ranges and missing values apply to feature vectors"
                )
        elif len(self.input_shape) == 1:
            if not 1 <= self.input_shape[0] <= MAX_FEATURES:
                raise ConfigError(
                    f"a feature vector has 1..{MAX_FEATURES} features; this one has {self.input_shape[0]}"
                )
            if self.ranges is not None:
                ranges = tuple((float(low), float(high)) for low, high in self.ranges)
                if len(ranges) != self.input_shape[0] or not all(
                    math.isfinite(low) and math.isfinite(high) and low <= high for low, high in ranges
                ):
                    raise ConfigError(
                        f"feature ranges must be {self.input_shape[0]} finite [low, high] pairs with low <= high"
                    )
                object.__setattr__(self, "ranges", ranges)
        else:
            raise ConfigError(f"a classifier takes an image (C, H, W) or a feature vector (d,), not {self.input_shape}")
        if not 2 <= self.classes <= MAX_CLASSES:
            raise ConfigError(f"a classifier answers 2..{MAX_CLASSES} classes; this one answers {self.classes}")

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of an image classifier; a feature-vector classifier has none (a one-line error)."""
        if not self.is_image:
            raise ConfigError(
                f"this victim takes {self.describe()}, not images; this part of mea works on image classifiers only"
            )
        return self.input_shape  # type: ignore[return-value]

    @property
    def pixels(self) -> int:
        """Values per input: an image's pixels, or a vector's features."""
        return math.prod(self.input_shape)

    @property
    def features(self) -> int:
        """The length of one input as a flat vector (an image's pixels, a vector's features)."""
        return self.pixels

    @property
    def shape_text(self) -> str:
        return "x".join(map(str, self.input_shape))

    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Each input value's (lows, highs): [0, 1] for every pixel, a vector's stated ranges, or None."""
        if self.is_image:
            return (0.0,) * self.pixels, (1.0,) * self.pixels
        if self.ranges is None:
            return None
        return tuple(low for low, _ in self.ranges), tuple(high for _, high in self.ranges)

    def unit(self, inputs: torch.Tensor) -> torch.Tensor:
        """Inputs on a common [0, 1] scale, for what compares or keys queries (the step detector, keyed
        answers): an image as it is, a vector's features by their stated ranges (a feature of one
        value, or a missing one, at 0); a vector without ranges as it is."""
        if self.is_image or self.ranges is None:
            return inputs
        import torch

        lows, highs = (torch.tensor(b, dtype=inputs.dtype) for b in self.bounds())
        widths = highs - lows
        scaled = (inputs - lows) / torch.where(widths > 0, widths, torch.ones_like(widths))
        return torch.nan_to_num(torch.where(widths > 0, scaled, torch.zeros_like(scaled)), nan=0.0)

    def describe(self) -> str:
        """E.g. "1x28x28 images, 10 classes" or "64 features, 10 classes"."""
        if self.is_image:
            return f"{self.shape_text} images, {self.classes} classes"
        return f"{self.input_shape[0]} features, {self.classes} classes"

    def to_metadata(self) -> dict[str, str]:
        """As string pairs, for a safetensors header."""
        if self.is_image:
            return {"image_shape": ",".join(map(str, self.input_shape)), "classes": str(self.classes)}
        return {
            "features": str(self.input_shape[0]),
            "classes": str(self.classes),
            "ranges": json.dumps(self.ranges),
            "missing": "1" if self.missing else "0",
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Signature:
        """From `to_metadata`'s pairs; files written before mea recorded them hold the default."""
        if "image_shape" not in metadata and "classes" not in metadata:
            return DEFAULT
        try:
            if "features" in metadata:
                ranges = json.loads(metadata.get("ranges", "null"))
                return cls(
                    (int(metadata["features"]),),
                    int(metadata["classes"]),
                    None if ranges is None else tuple(tuple(pair) for pair in ranges),
                    metadata.get("missing") == "1",
                )
            channels, height, width = (int(d) for d in metadata["image_shape"].split(","))
            return cls((channels, height, width), int(metadata["classes"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"a model header's signature is unreadable ({exc}); re-save the model") from None

    @classmethod
    def of_input(cls, dims: list[int] | tuple[int, ...], classes: int, where: str, features: bool = False) -> Signature:
        """From one input's dimensions as a model states them: [C, H, W]; [N] for a flat square grey
        image (784 = 28x28) of at least MIN_SIZE a side; any other [N], or any [N] when `features`
        (the caller knows the victim takes feature vectors), for N features."""
        dims = [int(d) for d in dims]
        if len(dims) == 1:
            side = round(dims[0] ** 0.5)
            if features or side * side != dims[0] or side < MIN_SIZE:
                return cls((dims[0],), classes)
            return cls((1, side, side), classes)
        if len(dims) == 3 and dims[0] in CHANNELS:
            return cls((dims[0], dims[1], dims[2]), classes)
        raise ConfigError(
            f"{where} takes input of shape [B, {', '.join(map(str, dims))}], not images [B, C, H, W] "
            "with 1 or 3 channels (or [B, H*W] flat grey), nor feature vectors [B, d]"
        )


DEFAULT = Signature()
