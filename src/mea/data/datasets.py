"""Datasets as in-memory tensors: the built-in ones (mea.data.catalog) and a user's own by path
(mea.data.files).

Images are float32 in [0, 1], shape (N, C, H, W) (the built-in ones 1x28x28, or as the victim
takes them: `load(..., image_shape=)`); labels are int64, shape (N,).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mea.data import fetch, files, idx
from mea.data.catalog import DATASETS, DatasetSpec, IdxFile, dataset_spec
from mea.errors import ConfigError, DataError


@dataclass(frozen=True)
class ImageSet:
    """Images in [0, 1] with their true labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim not in (2, 4):  # images, or the feature rows of a tabular task (mea.tabular)
            raise ValueError(
                f"images must have shape (N, C, H, W) (or (N, d) feature rows), got {tuple(self.images.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: slice | torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])


def _load_file(directory: Path, spec: DatasetSpec, file: IdxFile) -> np.ndarray:
    path = directory / file.stem
    try:
        array = idx.parse(fetch.verified_bytes(path, file), str(path))
    except DataError as exc:
        raise DataError(
            f"the data cache {directory} holds a damaged file: {exc}; "
            f"run `mea data fetch --dataset {spec.name}` to replace it (it verifies every cached file)"
        ) from None
    if array.shape != file.shape:
        raise DataError(f"{path} has shape {list(array.shape)}, expected {list(file.shape)}")
    return array


def _as_images(array: np.ndarray) -> torch.Tensor:
    return files.unit_pixels(array).unsqueeze(1)


def load(
    name: str | DatasetSpec, part: str, data_dir: Path | None = None, image_shape: tuple[int, int, int] | None = None
) -> ImageSet:
    """Load the "train" or "test" part of a dataset, fetching a built-in one into the cache on first
    use; a name that is a path (a .npz file or an image folder) is read from there.  With
    `image_shape`, the images come as a victim of that input takes them (`files.fit_to`)."""
    data = _load(name, part, data_dir)
    if image_shape is None or tuple(data.images.shape[1:]) == tuple(image_shape):
        return data
    source = name if isinstance(name, str) else name.name
    return ImageSet(files.fit_to(data.images, image_shape, source), data.labels)


def _load(name: str | DatasetSpec, part: str, data_dir: Path | None) -> ImageSet:
    if part not in ("train", "test"):
        raise ConfigError(f"unknown part {part!r}; use 'train' or 'test'")
    if isinstance(name, str) and name not in DATASETS and files.is_path(name):
        found = files.read(name, part)
        if found.labels is None:
            raise DataError(
                f"{name} has no labels, which an evaluation set needs: put its images in one subfolder per "
                "class, or add a 'labels' array"
            )
        return ImageSet(found.images, found.labels)
    spec = dataset_spec(name) if isinstance(name, str) else name
    if not fetch.is_cached(spec, data_dir):
        print(f"{spec.name} is not cached yet; fetching it once (see `mea data fetch --help`)", file=sys.stderr)
        fetch.fetch(spec, data_dir)
    directory = fetch.cache_root(data_dir) / spec.name
    images, labels = (spec.train_images, spec.train_labels) if part == "train" else (spec.test_images, spec.test_labels)
    return ImageSet(
        _as_images(_load_file(directory, spec, images)),
        torch.from_numpy(_load_file(directory, spec, labels).astype(np.int64)),
    )
