"""The victim: trained by its owner on MNIST train minus the calibration split, stored in a directory.

A victim directory holds `model.safetensors` (weights, architecture in the header),
`config.json` (resolved configuration, splits, command line) and `metrics.json` with a confusion
matrix PNG.  Everything downstream names the victim by this directory and checks its fingerprint.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mea import __version__, models
from mea.config import MnistSplits
from mea.config import VictimConfig as VictimConfig  # re-exported
from mea.data import load
from mea.metrics import classification_metrics
from mea.model_files import load_classifier
from mea.plots import confusion_matrix_png
from mea.runs import VICTIM_WEIGHTS, check_victim_directory, command_line, read_json, run_directory, write_json
from mea.seeding import derive_seed, generator
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
    def splits(self) -> MnistSplits:
        """The MNIST train splits this victim was trained with (its calibration split is the defender's)."""
        record = self.config.get("splits", {})
        return MnistSplits(int(record.get("calibration_size", MnistSplits().calibration_size)))


def train_victim(
    config: VictimConfig, out: Path, data_dir: Path | None = None, force: bool = False, progress: bool = True
) -> dict:
    """Train a victim into `out` and return its metrics.json content."""
    start = time.perf_counter()
    with run_directory(out, force) as scratch:
        train_set = load("mnist", "train", data_dir).subset(config.splits.victim_train)
        test = load("mnist", "test", data_dir)
        model = models.build(config.arch, derive_seed(config.seed, "victim-init"))
        one_hot = nn.functional.one_hot(train_set.labels, 10).float()
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
            f"victim {config.arch}: accuracy {victim_metrics.accuracy:.2%}",
            scratch / "confusion_victim.png",
        )
    return metrics


def load_victim(directory: Path) -> Victim:
    """A victim from a directory `mea train-victim` wrote, or from a model file (mea safetensors or
    ONNX, `mea.model_files`): a file carries no training record, so the defaults stand in for it."""
    directory = Path(directory)
    weights = check_victim_directory(directory)
    if directory.is_file():
        model, arch = load_classifier(weights)
        return Victim(directory, model, arch, models.fingerprint(weights), {})
    model, arch = models.load(weights)
    config = read_json(directory / "config.json", "the victim directory is incomplete; retrain it")
    return Victim(directory, model, arch, models.fingerprint(weights), config)
