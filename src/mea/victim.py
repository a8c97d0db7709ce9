"""The victim: trained by its owner on a dataset's training images minus the calibration split,
stored in a directory; or a model file (ONNX, mea safetensors) the owner brings.

A victim directory holds `model.safetensors` (weights, architecture in the header),
`config.json` (resolved configuration, dataset, splits, command line) and `metrics.json` with a
confusion matrix PNG.  A model file can say what a file cannot in a sidecar beside it, `MODEL.json`
(`SIDECAR_KEYS`): its dataset (built-in name, or a path relative to the sidecar), class names,
calibration split, and how it wants its input scaled.  Everything downstream names the victim by
its directory or file and checks its fingerprint.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mea import __version__, models
from mea.config import Splits
from mea.config import VictimConfig as VictimConfig  # re-exported
from mea.data import ImageSet, load
from mea.data.catalog import DATASETS, DEFAULT_DATASET, title
from mea.defenses.features import ExtractedFeatures, with_features
from mea.errors import ArtifactError, ConfigError, DataError
from mea.metrics import classification_metrics
from mea.model_files import ScaledInput, load_classifier
from mea.plots import confusion_matrix_png
from mea.runs import (
    SERVED_SUFFIX,
    VICTIM_WEIGHTS,
    check_victim_directory,
    command_line,
    read_json,
    run_directory,
    write_json,
)
from mea.seeding import derive_seed, generator
from mea.signature import Signature
from mea.training import fit, predict_logits

WEIGHTS = VICTIM_WEIGHTS


@dataclass(frozen=True)
class Victim:
    """A trained victim as the defender and the experimenter see it (the attacker never does)."""

    directory: Path
    model: nn.Module
    arch: str
    fingerprint: str
    config: dict

    @property
    def signature(self) -> Signature:
        """What the victim takes and answers (its input shape, its number of classes)."""
        return models.signature_of(self.model)

    @property
    def dataset(self) -> str:
        """The victim's task: a built-in dataset's name, or a path to the owner's own images."""
        return self.config.get("dataset", DEFAULT_DATASET)

    @property
    def dataset_title(self) -> str:
        return title(self.dataset)

    @property
    def class_names(self) -> tuple[str, ...]:
        names = self.config.get("class_names")
        if names:
            return tuple(names)
        if self.dataset in DATASETS and len(DATASETS[self.dataset].class_names) == self.signature.classes:
            return DATASETS[self.dataset].class_names
        return tuple(map(str, range(self.signature.classes)))

    @property
    def splits(self) -> Splits:
        """The training splits of the victim's dataset (its calibration split is the defender's: by
        default the last 5,000 training images, or a sidecar's `calibration_size`; a tabular task's
        are mea.tabular.datasets.FeatureSplits)."""
        if not self.signature.is_image:
            from mea.tabular.datasets import feature_splits

            return feature_splits(self.dataset, self.config.get("target"))  # type: ignore[return-value]
        record = self.config.get("splits", {})
        return Splits(self.dataset, int(record.get("calibration_size", Splits().calibration_size)))

    def _feature_sets(self) -> dict[str, ImageSet]:
        """A feature-vector victim's tabular task, by part (mea.tabular.datasets)."""
        from mea.tabular.datasets import feature_sets

        return {
            part: self._fitting(rows) for part, rows in feature_sets(self.dataset, self.config.get("target")).items()
        }

    def test_set(self, data_dir: Path | None = None) -> ImageSet:
        """The images every evaluation of this victim uses: its dataset's test part."""
        if not self.signature.is_image:
            return self._feature_sets()["test"]
        return self._fitting(load(self.dataset, "test", data_dir, self.signature.image_shape))

    def calibration_set(self, data_dir: Path | None = None) -> ImageSet:
        """The defender's held-out in-distribution images (never trained on, never evaluated on)."""
        if not self.signature.is_image:
            return self._feature_sets()["calibration"]
        return self._fitting(load(self.dataset, "train", data_dir, self.signature.image_shape)).subset(
            self.splits.calibration
        )

    def owner_sets(self, data_dir: Path | None = None) -> tuple[ImageSet, ImageSet]:
        """(the images the victim was trained on, the calibration split): the defender's own data,
        from one read of the training part."""
        if not self.signature.is_image:
            parts = self._feature_sets()
            return parts["train"], parts["calibration"]
        train = self._fitting(load(self.dataset, "train", data_dir, self.signature.image_shape))
        return train.subset(self.splits.victim_train), train.subset(self.splits.calibration)

    def _fitting(self, data: ImageSet) -> ImageSet:
        classes = self.signature.classes
        if len(data) and int(data.labels.max()) >= classes:
            raise DataError(
                f"{self.dataset} has labels up to {int(data.labels.max())}, but the victim {self.directory} "
                f"answers {classes} classes; evaluate it on data of its own task"
            )
        return data


def train_victim(
    config: VictimConfig, out: Path, data_dir: Path | None = None, force: bool = False, progress: bool = True
) -> dict:
    """Train a victim into `out` and return its metrics.json content."""
    start = time.perf_counter()
    with run_directory(out, force) as scratch:
        dataset = config.splits.dataset
        train_set = load(dataset, "train", data_dir).subset(config.splits.victim_train)
        test = load(dataset, "test", data_dir)
        classes = len(DATASETS[dataset].class_names) if dataset in DATASETS else int(train_set.labels.max()) + 1
        signature = Signature(tuple(train_set.images.shape[1:]), classes)
        model = models.build(config.arch, derive_seed(config.seed, "victim-init"), signature)
        one_hot = nn.functional.one_hot(train_set.labels, signature.classes).float()
        report = fit(
            model,
            train_set.images,
            one_hot,
            config.train,
            generator(config.seed, "victim-training"),
            description="victim",
            progress=progress,
        )
        victim_metrics = classification_metrics(predict_logits(model, test.images), test.labels)
        models.save(model, config.arch, scratch / WEIGHTS)
        resolved = {
            **asdict(config),
            "dataset": dataset,
            "splits": config.splits.describe(),
            "mea_version": __version__,
            "command": command_line(),
        }
        write_json(scratch / "config.json", resolved)
        metrics = {
            "victim": victim_metrics.to_dict(),
            "time_s": {"train": report.time_s, "total": time.perf_counter() - start},
            "torch_threads": torch.get_num_threads(),  # the times depend on it
            "epoch_losses": list(report.epoch_losses),
            "config": resolved,
        }
        write_json(scratch / "metrics.json", metrics)
        confusion_matrix_png(
            victim_metrics.confusion_matrix,
            f"victim {config.arch} on {title(dataset)}: accuracy {victim_metrics.accuracy:.2%}",
            scratch / "confusion_victim.png",
        )
    return metrics


# What a model file's sidecar may say (a victim directory's config.json says it all).
SIDECAR_KEYS = ("dataset", "class_names", "calibration_size", "input")
# `input`: how the model wants mea's [0, 1] pixels, {"scale": 255, "mean": ..., "std": ...} (ScaledInput).
INPUT_KEYS = ("scale", "mean", "std")


def sidecar_path(model_file: Path) -> Path:
    return Path(model_file).with_suffix(".json")


def read_sidecar(model_file: Path) -> dict:
    """The victim record a model file's sidecar gives (empty without one: the defaults stand in)."""
    path = sidecar_path(model_file)
    if not path.is_file():
        return {}
    record = read_json(path, "fix or remove the sidecar")
    if not isinstance(record, dict) or set(record) - set(SIDECAR_KEYS):
        raise ArtifactError(
            f"{path} may hold only the keys {', '.join(SIDECAR_KEYS)}; "
            f"found {sorted(record) if isinstance(record, dict) else type(record).__name__}"
        )
    return _victim_record(record, path)


def _victim_record(record: dict, path: Path) -> dict:
    """A victim config from the SIDECAR_KEYS of a sidecar or served-victim file at `path`."""
    config: dict = {}
    if "dataset" in record:
        dataset = str(record["dataset"])
        if dataset not in DATASETS:
            dataset = str((path.parent / dataset).resolve())
            if not Path(dataset).exists():
                raise ArtifactError(
                    f"{path} names dataset {record['dataset']!r}, which is neither built in nor a path that exists"
                )
        config["dataset"] = dataset
    if "class_names" in record:
        names = record["class_names"]
        if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
            raise ArtifactError(f"{path}: class_names must be a list of strings, the model's classes in order")
        config["class_names"] = names
    if "calibration_size" in record:
        config["splits"] = {"calibration_size": int(record["calibration_size"])}
    if "input" in record:
        scaling = record["input"]
        if (
            not isinstance(scaling, dict)
            or set(scaling) - set(INPUT_KEYS)
            or not all(isinstance(v, int | float) for v in scaling.values())
        ):
            raise ArtifactError(
                f'{path}: input must map {", ".join(INPUT_KEYS)} to numbers, e.g. {{"scale": 255}} for a model '
                "of 0..255 pixels"
            )
        config["input"] = {key: float(value) for key, value in scaling.items()}
    return config


def write_sidecar(victim: Victim, model_file: Path) -> Path:
    """Record beside an exported model file what its victim directory knew: dataset, classes, split."""
    record = {
        "dataset": victim.dataset,
        "class_names": list(victim.class_names),
        "calibration_size": victim.splits.calibration_size,
    }
    write_json(sidecar_path(model_file), record)
    return sidecar_path(model_file)


def load_victim(directory: Path) -> Victim:
    """A victim from a directory `mea train-victim` wrote, or from a model file (mea safetensors or
    ONNX, `mea.model_files`) with its optional sidecar (`read_sidecar`)."""
    directory = Path(directory)
    weights = check_victim_directory(directory)
    if directory.suffix == SERVED_SUFFIX:
        return _served_victim(directory)
    if directory.is_file():
        config = read_sidecar(directory)
        model, arch = load_classifier(weights)
        model = with_features(model)
        _check_class_names(config, model, sidecar_path(directory), directory)
        if "input" in config:
            try:
                model = ScaledInput(model, **config["input"])
            except ConfigError as exc:
                raise ArtifactError(f"{sidecar_path(directory)}: {exc}") from None
        return Victim(directory, model, arch, models.fingerprint(weights), config)
    model, arch = models.load(weights)
    model = with_features(model)
    config = read_json(directory / "config.json", "the victim directory is incomplete; retrain it")
    return Victim(directory, model, arch, models.fingerprint(weights), config)


def _served_victim(path: Path) -> Victim:
    """A victim served elsewhere, from a served-victim file (mea.serve.upstream)."""
    record = read_json(path, "a served victim's file holds a JSON object with its url")
    if not isinstance(record, dict) or "url" not in record:
        raise ArtifactError(f'{path} names no served victim: write {{"url": "http://HOST:PORT", "model": "NAME"}}')
    if "input" in record:
        raise ArtifactError(f"{path}: a served victim takes mea's [0, 1] pixels; drop 'input'")
    try:
        from mea.serve.upstream import SERVED_KEYS, served_classifier
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"a served victim needs the optional package {exc.name!r}: pip install 'model-extraction-attack[serve]'"
        ) from None
    served = {key: value for key, value in record.items() if key not in SIDECAR_KEYS}
    config = _victim_record({key: value for key, value in record.items() if key not in SERVED_KEYS}, path)
    names = config.get("class_names")
    model, fingerprint, features = served_classifier(path, served, None if names is None else len(names))
    model = with_features(model)  # no layers of its own: the confidence score alone, unless...
    if features is not None:
        extractor, _ = load_classifier(features)
        try:
            model = ExtractedFeatures(model, extractor)
        except ConfigError as exc:
            raise ArtifactError(f"{path}: {exc}") from None
    # Its class names were checked by the client against what the upstream answers.
    return Victim(path, model, "served", fingerprint, config)


def _check_class_names(config: dict, model: nn.Module, record: Path, source: Path | str) -> None:
    names = config.get("class_names")
    if names is not None and len(names) != models.signature_of(model).classes:
        raise ArtifactError(
            f"{record} names {len(names)} classes, but {source} answers {models.signature_of(model).classes}; "
            "list the model's classes in order"
        )
