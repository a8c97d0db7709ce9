"""Tabular tasks: scikit-learn's bundled datasets (offline) and a user's own CSV file.

`digits` (8x8 images as 64 features 0..16, 10 classes: the paper's Digits), `breast-cancer` (30
features, 2 classes), `iris` (4, 3) and `wine` (13, 3) load from scikit-learn's package;
`csv:PATH` reads a CSV with a header row, the class in `--target COLUMN`, each other column either
all numbers (a numeric feature) or all text (a categorical feature, one-hot encoded over its
levels in sorted order).  Anything else (a number column with text in it, an empty cell) is one
error naming the column, the row and the fix.

Every task is split the same way whenever it is read (stratified, seed 0): 30% test, and of the
rest a tenth held out as the defender's calibration split, the remainder the victim's training set.
Each feature's range is its [min, max] over the whole table: the domain an owner publishes.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mea.errors import DataError
from mea.tabular import CSV_PREFIX, is_tabular
from mea.tabular import TABULAR_DATASETS as BUILT_IN

TEST_FRACTION = 0.3
CALIBRATION_FRACTION = 0.1
SPLIT_SEED = 0
MAX_LEVELS = 100  # categories a text column may have before it is taken for a mistake
PARTS = ("train", "calibration", "test")


__all__ = ["BUILT_IN", "FeatureSplits", "Table", "feature_sets", "feature_splits", "is_tabular", "read_table"]


@dataclass(frozen=True)
class Table:
    """A whole tabular dataset: float64 features, int64 labels, and what they are called."""

    features: np.ndarray
    labels: np.ndarray
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]

    @property
    def ranges(self) -> tuple[tuple[float, float], ...]:
        return tuple(
            (float(low), float(high)) for low, high in zip(self.features.min(0), self.features.max(0), strict=True)
        )

    def split(self) -> dict[str, np.ndarray]:
        """Row indices of each part: victim training, calibration, test (stratified, seed SPLIT_SEED)."""
        from sklearn.model_selection import train_test_split

        rows = np.arange(len(self.labels))
        stratify = self.labels if np.bincount(self.labels).min() >= 3 else None
        rest, test = train_test_split(rows, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=stratify)
        stratify = self.labels[rest] if stratify is not None else None
        train, calibration = train_test_split(
            rest, test_size=CALIBRATION_FRACTION, random_state=SPLIT_SEED, stratify=stratify
        )
        return {"train": np.sort(train), "calibration": np.sort(calibration), "test": np.sort(test)}


def read_table(name: str, target: str | None = None) -> Table:
    """A built-in tabular dataset by name, or `csv:PATH` with its `target` column."""
    if name.startswith(CSV_PREFIX):
        if target is None:
            raise DataError(f"{name} needs the column that holds the class: add --target COLUMN")
        return read_csv(Path(name[len(CSV_PREFIX) :]), target)
    if target is not None:
        raise DataError(f"--target names a CSV file's class column; {name} is built in: drop --target")
    from sklearn import datasets

    loaders = {
        "digits": datasets.load_digits,
        "breast-cancer": datasets.load_breast_cancer,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
    }
    if name not in loaders:
        raise DataError(f"unknown tabular dataset {name!r}; choose one of: {', '.join(BUILT_IN)}, or csv:PATH")
    bunch = loaders[name]()
    feature_names = tuple(str(n) for n in getattr(bunch, "feature_names", [])) or tuple(
        f"x{i}" for i in range(bunch.data.shape[1])
    )
    class_names = tuple(str(n) for n in bunch.target_names)
    return Table(bunch.data.astype(np.float64), bunch.target.astype(np.int64), feature_names, class_names)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_csv(path: Path, target: str) -> Table:
    """A CSV file's numeric and one-hot categorical features and its `target` classes (see the module)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; name a CSV file with a header row: --dataset csv:PATH")
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable CSV file ({exc})") from None
    if len(rows) < 2:
        raise DataError(f"{path} needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if target not in header:
        raise DataError(f"{path} has no column {target!r}; its columns: {', '.join(header)}")
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path} line {number} has {len(row)} cells, the header {len(header)}")
    columns: list[np.ndarray] = []
    names: list[str] = []
    for index, column in enumerate(header):
        if column == target:
            continue
        cells = [row[index].strip() for row in body]
        for number, cell in enumerate(cells, start=2):
            if not cell:
                raise DataError(f"{path} line {number}, column {column!r}: empty cell; fill in every value")
        values = [_number(cell) for cell in cells]
        numeric = [v is not None for v in values]
        if all(numeric):
            columns.append(np.asarray(values, dtype=np.float64))
            names.append(column)
        elif any(numeric):
            first_number = numeric.index(True)
            first_text = numeric.index(False)
            raise DataError(
                f"{path} column {column!r} mixes numbers (line {first_number + 2}: {cells[first_number]!r}) and text "
                f"(line {first_text + 2}: {cells[first_text]!r}); make every value a number, or every value a category"
            )
        else:
            levels = sorted(set(cells))
            if len(levels) > MAX_LEVELS:
                raise DataError(
                    f"{path} column {column!r} has {len(levels)} distinct text values (at most {MAX_LEVELS}); "
                    "encode it as numbers or drop it"
                )
            for level in levels:
                columns.append(np.asarray([cell == level for cell in cells], dtype=np.float64))
                names.append(f"{column}={level}")
    if not columns:
        raise DataError(f"{path} has no feature column besides {target!r}")
    classes_text = [row[header.index(target)].strip() for row in body]
    numbers = [_number(c) for c in classes_text]
    if all(n is not None for n in numbers):
        levels_num = sorted(set(numbers))
        class_names = tuple(f"{v:g}" for v in levels_num)
        labels = np.asarray([levels_num.index(n) for n in numbers], dtype=np.int64)
    else:
        levels_text = sorted(set(classes_text))
        class_names = tuple(levels_text)
        labels = np.asarray([levels_text.index(c) for c in classes_text], dtype=np.int64)
    if len(class_names) < 2:
        raise DataError(f"{path} column {target!r} holds one class only; a classifier needs two or more")
    return Table(np.stack(columns, axis=1), labels, tuple(names), class_names)


@dataclass(frozen=True)
class FeatureSplits:
    """Which rows of a tabular task serve whom (the tabular counterpart of mea.config.Splits)."""

    dataset: str
    target: str | None
    sizes: tuple[int, int, int]  # victim training, calibration, test

    @property
    def calibration_size(self) -> int:
        return self.sizes[1]

    def describe(self) -> dict:
        train, calibration, test = self.sizes
        return {
            "dataset": self.dataset,
            "target": self.target,
            "calibration_size": calibration,
            "victim_train": f"{self.dataset} {train} rows (stratified split, seed {SPLIT_SEED})",
            "calibration": f"{self.dataset} {calibration} rows held out of the training part",
            "evaluation": f"{self.dataset} {test} test rows ({TEST_FRACTION:.0%})",
        }


def feature_splits(name: str, target: str | None) -> FeatureSplits:
    parts = read_table(name, target).split()
    return FeatureSplits(name, target, tuple(len(parts[p]) for p in PARTS))  # type: ignore[arg-type]


def feature_sets(name: str, target: str | None):
    """{part: ImageSet of float32 feature rows and labels} for PARTS (torch imported here)."""
    import torch

    from mea.data.datasets import ImageSet

    table = read_table(name, target)
    return {
        part: ImageSet(torch.from_numpy(table.features[rows].astype(np.float32)), torch.from_numpy(table.labels[rows]))
        for part, rows in table.split().items()
    }
