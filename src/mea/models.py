"""Victim and clone architectures, and their storage in safetensors.

The victim is LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document
recognition") with ReLU and max-pooling, the modern reading of the original.  The attacker's
LeNet_a uses the same layout by default but is initialised independently from its own seed: it
never sees the victim's weights.  Other clone architectures come from the same registry.

Models live in channels_last memory format: oneDNN's fast CPU convolutions need it (2.5x faster
inference here, 1.3x faster training), so inputs are converted with `as_input`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mea.config import check_arch as check_arch  # re-exported
from mea.errors import ArtifactError, ConfigError
from mea.signature import DEFAULT, Signature

NUM_CLASSES = DEFAULT.classes  # the default task's (MNIST's); a model's own is `signature_of(model)`


_FAST_POOL_MIN = 16_384  # elements: about 3 images' first LeNet layer


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling, stride 2 (odd edges dropped), as `F.max_pool2d(x, 2)`.

    Without autograd it takes row pairs, then column pairs, of the channels-last rows as plain
    elementwise maxima: the same values bit for bit, about 6x faster than max_pool2d on this CPU
    (which spent a third of LeNet's inference pooling).  With autograd max_pool2d stays: on ties (a
    digit's flat background) it sends the gradient to one input, and training must not change; and
    for a handful of images, where max_pool2d's one call beats the few calls here."""
    if torch.is_grad_enabled() or x.numel() < _FAST_POOL_MIN:
        return F.max_pool2d(x, 2)
    n, c, h, w = x.shape
    h, w = h // 2 * 2, w // 2 * 2
    rows = x[:, :, :h, :w].permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2 * c)  # a view when channels-last
    pairs = torch.maximum(rows[:, :, 0], rows[:, :, 1])  # (n, h/2, w/2, 2c): vertical pairs
    return torch.maximum(pairs[..., :c], pairs[..., c:]).permute(0, 3, 1, 2)  # horizontal pairs, NCHW view


def _after_two_blocks(size: int) -> int:
    """A side after LeNet's conv(5x5, padding 2) - pool - conv(5x5) - pool."""
    return (size // 2 - 4) // 2


class LeNet5(nn.Module):
    """LeNet-5: conv(6, 5x5) - pool - conv(16, 5x5) - pool - fc120 - fc84 - fc10, on 28x28 input
    (other input shapes and class counts through `signature`).

    `features` exposes every stage, for detectors that read inner layers (Lee et al. 2018).
    """

    feature_names = ("conv1", "conv2", "fc1", "fc2", "logits")
    block_names = ("conv1", "conv2")  # what the detector's `--layers auto` reads (mea.defenses.features)

    def __init__(self, signature: Signature = DEFAULT) -> None:
        super().__init__()
        self.signature = signature
        channels, height, width = signature.image_shape
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * _after_two_blocks(height) * _after_two_blocks(width), 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, signature.classes)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # Pool before ReLU: the same function as ReLU-then-pool (both are monotone), but the
        # ReLU then touches a quarter of the values, which is most of a CPU step at this size.
        conv1 = F.relu(max_pool2(self.conv1(x)))
        conv2 = F.relu(max_pool2(self.conv2(conv1)))
        fc1 = F.relu(self.fc1(conv2.flatten(1)))
        fc2 = F.relu(self.fc2(fc1))
        return {"conv1": conv1, "conv2": conv2, "fc1": fc1, "fc2": fc2, "logits": self.fc3(fc2)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["logits"]


class SmallCNN(nn.Module):
    """A smaller clone: conv(4, 5x5) - pool - conv(8, 5x5) - pool - fc32 - fc10."""

    def __init__(self, signature: Signature = DEFAULT) -> None:
        super().__init__()
        self.signature = signature
        channels, height, width = signature.image_shape
        self.conv1 = nn.Conv2d(channels, 4, 5, padding=2)
        self.conv2 = nn.Conv2d(4, 8, 5)
        self.fc1 = nn.Linear(8 * _after_two_blocks(height) * _after_two_blocks(width), 32)
        self.fc2 = nn.Linear(32, signature.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(max_pool2(self.conv1(x)))
        x = F.relu(max_pool2(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class MLP(nn.Module):
    """A clone with no convolutions: 784 - 256 - 128 - 10 (on 28x28 grey images, 10 classes)."""

    def __init__(self, signature: Signature = DEFAULT) -> None:
        super().__init__()
        self.signature = signature
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(signature.pixels, 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, signature.classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def as_input(images: torch.Tensor) -> torch.Tensor:
    """Images in the memory format the models run fastest on (feature vectors as they are)."""
    if images.ndim != 4:
        return images.contiguous()
    return images.contiguous(memory_format=torch.channels_last)


def pooled(activation: torch.Tensor) -> torch.Tensor:
    """A layer's activation as one vector per image: convolutional maps averaged over space."""
    return activation.mean(dim=(2, 3)) if activation.ndim == 4 else activation


ARCHITECTURES: dict[str, Callable[[Signature], nn.Module]] = {"lenet5": LeNet5, "small-cnn": SmallCNN, "mlp": MLP}


def signature_of(model: nn.Module) -> Signature:
    """What `model` takes and answers: its own `signature` (mea's models, model files and the
    wrappers around them carry one), else the default task's."""
    return getattr(model, "signature", DEFAULT)


def build(name: str, seed: int, signature: Signature = DEFAULT) -> nn.Module:
    """A freshly initialised model of `signature`'s input and classes whose weights depend on `seed`
    alone (no global RNG state).

    Uses PyTorch's default initialisation for Conv2d and Linear, drawn from a private generator.
    """
    make = functools.partial(ARCHITECTURES[check_arch(name)], signature)
    return initialise(make, seed).to(memory_format=torch.channels_last)


def initialise(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    """`make()` with its Conv2d and Linear layers initialised from `seed` alone (PyTorch's default scheme)."""
    # Constructors draw a default initialisation from the global generator: let them draw from a
    # forked copy, so that the caller's global state is untouched, then overwrite it from ours.
    with torch.random.fork_rng(devices=[]):
        model = make()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    bound = 1.0 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(module.weight)[0])
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    return model


def save(model: nn.Module, arch: str, path: Path) -> None:
    """Write weights as safetensors, with the architecture name in the header."""
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"arch": arch, "format": "mea-model-v1", **signature_of(model).to_metadata()}
    save_file(tensors, str(path), metadata=metadata)


def load(path: Path) -> tuple[nn.Module, str]:
    """Read a model saved by `save` (never unpickles anything); returns (model in eval mode, arch)."""
    if not path.is_file():
        raise ArtifactError(f"no weights at {path}; train a victim first with `mea train-victim --out DIR`")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not a readable safetensors file ({exc}); retrain or restore it") from exc
    arch = metadata.get("arch")
    if metadata.get("format") == "mea-classic-v1":  # a scikit-learn victim's parameters (mea.tabular)
        from mea.tabular.models import from_tensors

        model = from_tensors(tensors, metadata, path)
        return model, model.arch
    if arch not in ARCHITECTURES:
        raise ArtifactError(f"{path} names no known architecture ({arch!r}); it was not written by mea")
    try:
        model = ARCHITECTURES[arch](Signature.from_metadata(metadata))
    except ConfigError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ArtifactError(f"{path} does not fit architecture {arch}: {str(exc).splitlines()[0]}") from exc
    return model.to(memory_format=torch.channels_last).eval(), arch


def fingerprint(path: Path) -> str:
    """SHA-256 of a weights file: ties defenses and runs to the exact victim they were made for."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
