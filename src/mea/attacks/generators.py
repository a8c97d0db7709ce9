"""Query generators for data-free attacks: networks that turn random codes into images.

The layout is DFME's `GeneratorA` (Truong et al. 2021, "Data-Free Model Extraction", CVPR; code
cake-lab/datafree-model-extraction), itself from DFAD (Fang et al. 2019): a linear layer to a
quarter-size map, two nearest-neighbour upsamplings each followed by conv-BatchNorm-LeakyReLU, a
last convolution and a BatchNorm without affine parameters.  `forward` returns that *pre-image*
(unbounded); `to_images` maps it into [0, 1] with tanh, which is where the query images live.
Zeroth-order attacks perturb the pre-image, so that a probe never leaves the valid pixel range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mea import models
from mea.errors import ConfigError


class UpsamplingGenerator(nn.Module):
    """z (B, latent) -> pre-image (B, channels, size, size); size must be divisible by 4."""

    def __init__(self, latent: int, width: int, channels: int, size: int, affine_output: bool = False) -> None:
        super().__init__()
        self.latent, self.channels, self.size = latent, channels, size
        self.start = size // 4
        self.project = nn.Linear(latent, 2 * width * self.start**2)
        self.norm0 = nn.BatchNorm2d(2 * width)
        self.block1 = nn.Sequential(
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2)
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(2 * width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.BatchNorm2d(channels, affine=affine_output),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.norm0(self.project(z).view(len(z), -1, self.start, self.start))
        x = self.block1(F.interpolate(x, scale_factor=2))
        return self.block2(F.interpolate(x, scale_factor=2))

    def sample_codes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.latent, generator=generator)


def to_images(pre_images: torch.Tensor) -> torch.Tensor:
    """Pre-images to query images in [0, 1] (tanh, rescaled)."""
    return (torch.tanh(pre_images) + 1) / 2


@dataclass(frozen=True)
class GeneratorSpec:
    """A registered generator layout; `width` is DFME's ngf (64 in the paper for 32x32 RGB)."""

    latent: int
    width: int
    # DFME's last BatchNorm has no affine parameters, which pins every batch's pixels to mean 0.5
    # after the tanh: mostly grey images.  With them, the generator can learn a digit's black
    # background, which an attacker who wants its queries to look in-distribution needs.
    affine_output: bool = False

    def build(self, channels: int, size: int, seed: int) -> UpsamplingGenerator:
        if size % 4:
            raise ConfigError(
                f"the generator upsamples twice from a quarter-size map, so the victim's input size must be "
                f"divisible by 4; got {size}x{size}"
            )

        def make() -> nn.Module:
            return UpsamplingGenerator(self.latent, self.width, channels, size, self.affine_output)

        return models.initialise(make, seed).to(memory_format=torch.channels_last)  # 2-3x faster on CPU


GENERATORS: dict[str, GeneratorSpec] = {
    "dfme": GeneratorSpec(latent=256, width=64),  # the paper's layout
    # A sixteenth of the paper's convolution work: a 28x28 grey digit needs far less than 32x32
    # colour scenes, and on a CPU the generator, not the victim, is most of an attack's time.
    "dfme-small": GeneratorSpec(latent=64, width=16),
    "dfme-small-affine": GeneratorSpec(latent=64, width=16, affine_output=True),
}


def make_generator(name: str, channels: int, size: int, seed: int) -> UpsamplingGenerator:
    if name not in GENERATORS:
        raise ConfigError(f"unknown generator {name!r}; choose one of: {', '.join(GENERATORS)}")
    return GENERATORS[name].build(channels, size, seed)
