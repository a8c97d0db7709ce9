"""What a classifier takes and answers: its input image shape and its number of classes.

Everything that touches a victim reads these from the victim (a mea model's safetensors header, an
ONNX graph's input and output, a served model's metadata), so that a victim of 3x32x32 colour
images and 5 classes is attacked, defended and served like the default one: LeNet-5's 1x28x28 grey
digits and 10 classes.  Torch-free, so that the CLI's error paths and the HTTP client can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mea.errors import ConfigError

CHANNELS = (1, 3)  # grey or RGB
MIN_SIZE = 12  # LeNet-5's two 5x5 convolutions and poolings leave a 1x1 map at 12x12
MAX_SIZE = 512
MAX_CLASSES = 10_000


@dataclass(frozen=True)
class Signature:
    """A classifier's input (channels, height, width) and its number of classes."""

    image_shape: tuple[int, int, int] = (1, 28, 28)
    classes: int = 10

    def __post_init__(self) -> None:
        channels, height, width = self.image_shape
        if channels not in CHANNELS or not (MIN_SIZE <= height <= MAX_SIZE and MIN_SIZE <= width <= MAX_SIZE):
            raise ConfigError(
                f"mea attacks image classifiers of 1 or 3 channels and {MIN_SIZE}..{MAX_SIZE} pixels a side; "
                f"this one takes {self.shape_text}"
            )
        if not 2 <= self.classes <= MAX_CLASSES:
            raise ConfigError(f"a classifier answers 2..{MAX_CLASSES} classes; this one answers {self.classes}")

    @property
    def pixels(self) -> int:
        channels, height, width = self.image_shape
        return channels * height * width

    @property
    def shape_text(self) -> str:
        return "x".join(map(str, self.image_shape))

    def describe(self) -> str:
        """E.g. "1x28x28 images, 10 classes"."""
        return f"{self.shape_text} images, {self.classes} classes"

    def to_metadata(self) -> dict[str, str]:
        """As string pairs, for a safetensors header."""
        return {"image_shape": ",".join(map(str, self.image_shape)), "classes": str(self.classes)}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Signature:
        """From `to_metadata`'s pairs; files written before mea recorded them hold the default."""
        if "image_shape" not in metadata and "classes" not in metadata:
            return DEFAULT
        try:
            channels, height, width = (int(d) for d in metadata["image_shape"].split(","))
            return cls((channels, height, width), int(metadata["classes"]))
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"a model header's signature is unreadable ({exc}); re-save the model") from None

    @classmethod
    def of_input(cls, dims: list[int] | tuple[int, ...], classes: int, where: str) -> Signature:
        """From one image's input dimensions as a model states them: [C, H, W], or [N] for a flat
        square grey image (784 = 28x28)."""
        dims = [int(d) for d in dims]
        if len(dims) == 1:
            side = round(dims[0] ** 0.5)
            if side * side != dims[0]:
                raise ConfigError(f"{where} takes flat input of {dims[0]} values, not a square grey image")
            return cls((1, side, side), classes)
        if len(dims) == 3 and dims[0] in CHANNELS:
            return cls((dims[0], dims[1], dims[2]), classes)
        raise ConfigError(
            f"{where} takes input of shape [B, {', '.join(map(str, dims))}], not images [B, C, H, W] "
            "with 1 or 3 channels (or [B, H*W] flat grey)"
        )


DEFAULT = Signature()
