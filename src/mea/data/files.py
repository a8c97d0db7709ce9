"""A user's own images, by path: a `.npz` file or a folder of image files, read into mea's layout.

- `.npz`: an `images` array with an optional `labels` array, or Keras's layout `x_train`, `y_train`,
  `x_test`, `y_test` (two parts).  Images are (N, H, W), (N, 1, H, W), (N, H, W, 1) or RGB with the
  channels first or last; uint8 in 0..255 or floats in [0, 1].  Never unpickled (`allow_pickle=False`).
- a folder: one subfolder per class holding PNG or JPEG files (labels: the subfolders in sorted
  order, or their numbers when every name is an integer), or the files directly in the folder (a
  pool without labels); `train/` and `test/` subfolders laid out that way are the two parts.

Images are read as they are stored, grey or RGB, at their own size; `fit_to` then gives them the
victim's input shape (mea.data.datasets.load and mea.data.pools.make_pool call it).  Labels are
optional for a pool; an evaluation set needs them.
"""

from __future__ import annotations

import functools
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mea.data.catalog import DATASETS
from mea.data.catalog import is_path as is_path  # re-exported
from mea.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PARTS = ("train", "test")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, Pillow's RGB -> "L"


@dataclass(frozen=True)
class ImageFiles:
    """Images (N, C, H, W) float32 in [0, 1] as stored (C: 1 or 3), with labels (N,) int64 when the
    source has them."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: tuple[str, ...] | None
    source: str


def read(path: Path | str, part: str) -> ImageFiles:
    """The `part` ("train" or "test") of the dataset at `path`; a source with one part gives it for both."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(
            f"no dataset at {path}; pass a .npz file, a folder of images (one subfolder per class), "
            f"or a built-in dataset: {', '.join(DATASETS)}"
        )
    stat = path.stat()
    return _read(path.resolve(), part, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)  # a sweep evaluates many clones on one set: read it once
def _read(path: Path, part: str, mtime_ns: int, size: int) -> ImageFiles:
    if path.is_dir():
        return _read_folder(path, part)
    if path.suffix == ".npz":
        return _read_npz(path, part)
    raise DataError(f"{path} is neither a .npz file nor a folder of images; convert it to one of them")


# --- .npz -----------------------------------------------------------------------------------


def _read_npz(path: Path, part: str) -> ImageFiles:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc}); write it with numpy.savez") from None
    with archive:
        keys = set(archive.files)
        if {"x_train", "x_test"} <= keys:
            image_key, label_key = f"x_{part}", f"y_{part}"
        elif "images" in keys:
            image_key, label_key = "images", "labels"
        else:
            raise DataError(
                f"{path} holds arrays {sorted(keys)}; name the images 'images' (labels 'labels'), "
                "or use Keras's x_train/y_train/x_test/y_test"
            )
        try:
            raw = archive[image_key]
            labels = archive[label_key] if label_key in keys else None
        except ValueError:  # an object array: reading it would unpickle
            raise DataError(
                f"{path} holds object arrays, which mea never unpickles; save plain numeric arrays"
            ) from None
    images = _to_images(_channels_first(raw, path), path)
    return ImageFiles(images, _check_labels(labels, len(images), path), None, str(path))


def _channels_first(raw: np.ndarray, path: Path) -> np.ndarray:
    """(N, C, H, W) from the layouts numpy users write."""
    if raw.ndim == 3:
        return raw[:, None]
    if raw.ndim == 4 and raw.shape[1] in (1, 3):
        return raw
    if raw.ndim == 4 and raw.shape[3] in (1, 3):
        return raw.transpose(0, 3, 1, 2)
    raise DataError(
        f"{path}: images of shape {list(raw.shape)} are not (N, H, W) or (N, H, W, C) / (N, C, H, W) "
        "with 1 or 3 channels"
    )


def unit_pixels(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels (0..255) as float32 in [0, 1]: the values of numpy's `pixels / 255` in float32, in
    torch's one-pass conversion (a quarter of numpy's time on 60,000 digits, paid by every run)."""
    # Copied only where needed: a view in another layout, or bytes parsed in place (an IDX file), read-only
    # where torch wants memory it may write.
    return torch.from_numpy(np.require(pixels, requirements="CW")).to(torch.float32).div_(255.0)


def _to_images(raw: np.ndarray, path: Path) -> torch.Tensor:
    if raw.dtype == np.uint8:
        return unit_pixels(raw)
    if np.issubdtype(raw.dtype, np.floating):
        array = raw.astype(np.float32)
        if not np.isfinite(array).all() or array.min(initial=0) < 0 or array.max(initial=0) > 1:
            raise DataError(f"{path}: float images must lie in [0, 1]; divide 0..255 images by 255 or store uint8")
    else:
        raise DataError(f"{path}: images of dtype {raw.dtype}; store uint8 (0..255) or floats in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(array))


def fit_to(images: torch.Tensor, image_shape: tuple[int, int, int], source: str) -> torch.Tensor:
    """`images` (N, C, H, W) as the victim takes them: RGB to grey by ITU-R 601 luma (as Pillow's
    "L") or grey repeated into RGB, resized (bilinear, antialiased) when the aspect ratio matches;
    anything else is refused."""
    channels, height, width = image_shape
    if images.shape[1] != channels:
        if channels == 1:
            images = torch.einsum("nchw,c->nhw", images, torch.from_numpy(_LUMA)).unsqueeze(1)
        else:
            images = images.expand(-1, channels, -1, -1).contiguous()
    have_height, have_width = images.shape[2:]
    if (have_height, have_width) == (height, width):
        return images
    if have_height * width != have_width * height:
        raise DataError(
            f"{source}: images of {have_width}x{have_height} are not {'square' if height == width else 'as wide'}; "
            f"the victim takes {width}x{height}: crop them to its aspect ratio first"
        )
    print(
        f"{source}: resizing {have_width}x{have_height} images to {width}x{height}, the victim's input", file=sys.stderr
    )
    resized = F.interpolate(images, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp_(0.0, 1.0)


def _check_labels(labels: np.ndarray | None, count: int, path: Path) -> torch.Tensor | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:  # Keras writes (N, 1) label columns
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != count:
        raise DataError(f"{path}: {count} images but labels of shape {list(labels.shape)}; give one label per image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels of dtype {labels.dtype}; store integer class indices")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{path}: negative labels; classes are numbered from 0")
    return torch.from_numpy(labels.astype(np.int64))


# --- image folders --------------------------------------------------------------------------


def _read_folder(path: Path, part: str) -> ImageFiles:
    root = path / part if all((path / p).is_dir() for p in PARTS) else path
    classes = sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
    if classes:
        names = [c.name for c in classes]
        numbered = all(name.isdigit() for name in names)
        files, labels = [], []
        for index, folder in enumerate(classes):
            members = _image_files(folder)
            files += members
            labels += [int(folder.name) if numbered else index] * len(members)
        label_tensor: torch.Tensor | None = torch.tensor(labels, dtype=torch.int64)
        class_names: tuple[str, ...] | None = None if numbered else tuple(names)
    else:
        files, label_tensor, class_names = _image_files(root), None, None
    if not files:
        raise DataError(
            f"no images in {root}; put PNG or JPEG files in one subfolder per class (or directly in it for a pool)"
        )
    return ImageFiles(_decode(files, root), label_tensor, class_names, str(path))


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _decode(files: list[Path], root: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    arrays: list[np.ndarray] = []
    mode = None  # the first image's: "L" for grey, "RGB" for colour; the others follow it
    for file in files:
        try:
            with Image.open(file) as image:
                mode = mode or ("L" if image.mode in _GREY_MODES else "RGB")
                pixels = np.asarray(image.convert(mode), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"{file} is not a readable image ({exc}); remove or replace it") from None
        if arrays and pixels.shape[:2] != arrays[0].shape[:2]:
            raise DataError(
                f"{root} holds images of different sizes ({files[0].name}: {arrays[0].shape[1]}x{arrays[0].shape[0]}, "
                f"{file.name}: {pixels.shape[1]}x{pixels.shape[0]}); resize them to one size"
            )
        arrays.append(pixels)
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return unit_pixels(stacked)
