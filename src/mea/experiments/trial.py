"""One sweep trial: an attack, optionally against the defended victim, as a pure function of its config.

A trial's record holds everything that identifies and measures it: the config and its hash, the
seed, the metrics, the victim's (and defense's) fingerprint, package versions.  Whatever depends on
where and when it ran (timings, host, backend) lives under `time_s` and `run`, so records from two
backends compare equal once those keys are dropped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from mea import __version__
from mea.defenses.defended_oracle import DefendedOracle
from mea.defenses.policies import parse_policy
from mea.defenses.store import Defense, load_defense
from mea.errors import ConfigError
from mea.experiments.attack import AttackConfig, run_attack
from mea.oracle import OracleWrapper, OutputMode, VictimOracle, parse_output
from mea.victim import Victim, load_victim

RECORD_FORMAT = 1  # bump when a record's layout changes meaning; readers refuse other formats
HASH_CHARS = 16  # 64 bits: collisions are out of reach for any sweep a person runs


@dataclass(frozen=True)
class DefenseSettings:
    """The defense a trial attacks: the defense directory's detector, optionally re-tuned.

    `policy` None keeps the directory's own policy; `target_fpr` None keeps its fitted threshold.
    """

    policy: str | None = None
    target_fpr: float | None = None

    def __post_init__(self) -> None:
        if self.policy is not None:
            object.__setattr__(self, "policy", parse_policy(self.policy).spec)
        if self.target_fpr is not None and not 0.0 < self.target_fpr < 1.0:
            raise ConfigError(f"target_fpr must lie in (0, 1), got {self.target_fpr}")

    def describe(self) -> str:
        parts = [self.policy or "own policy", f"FPR {self.target_fpr:g}" if self.target_fpr else "fitted threshold"]
        return "defended (" + ", ".join(parts) + ")"


@dataclass(frozen=True)
class Trial:
    attack: AttackConfig
    defense: DefenseSettings | None = None

    def to_dict(self) -> dict:
        return {**asdict(self.attack), "defense": None if self.defense is None else asdict(self.defense)}

    @functools.cached_property
    def hash(self) -> str:
        """Identity of the trial: a digest of its canonical JSON config (what resuming matches on)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_CHARS]

    def describe(self) -> str:
        a = self.attack
        text = f"{a.strategy} {a.pool} {a.output} q={a.queries} seed={a.seed}"
        return text if self.defense is None else f"{text} {self.defense.describe()}"


@dataclass(frozen=True)
class TrialContext:
    """Where a worker finds what every trial shares (paths: on a cluster, on storage all nodes see)."""

    victim_dir: Path
    defense_dir: Path | None = None
    data_dir: Path | None = None
    backend: str = "local"
    # Pools given by path, where this node holds them: (the path a trial names, the local path).
    pool_paths: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What a worker sends back: the record of a finished trial, or why it failed."""

    trial: Trial
    record: dict | None = None
    error: str | None = None


def package_versions() -> dict:
    return {
        "mea": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def run_trial(trial: Trial, context: TrialContext, threads: int | None = None) -> Outcome:
    """Run one trial (in whatever process the backend chose); never raises for a failing trial."""
    if threads is not None:
        # Each worker gets its share of the cores: more threads than that oversubscribes them.
        torch.set_num_threads(threads)
    try:
        return Outcome(trial, record=_run(trial, context))
    except Exception as exc:  # one failing trial must not end the sweep; the outcome says why
        return Outcome(trial, error=f"{type(exc).__name__}: {exc}")


def _run(trial: Trial, context: TrialContext) -> dict:
    victim = _victim(context.victim_dir)
    output = parse_output(trial.attack.output)
    oracle, defense = None, None
    if trial.defense is not None:
        if context.defense_dir is None:
            raise ConfigError("a defended trial needs a defense directory: set defense_dir or pass --defense")
        defense = _defense(context.defense_dir, context.victim_dir)
        oracle = FlagCounter(_defended_oracle(defense, victim, output, trial.defense, context, trial.attack.queries))
    pool_path = dict(context.pool_paths).get(trial.attack.pool)
    metrics = run_attack(trial.attack, victim, context.data_dir, oracle=oracle, progress=False, pool_path=pool_path)
    clone = metrics["clone"]
    return {
        "format": RECORD_FORMAT,
        "hash": trial.hash,
        "seed": trial.attack.seed,
        "config": trial.to_dict(),
        "victim_fingerprint": victim.fingerprint,
        "dataset": victim.dataset,  # the victim's task: accuracy and fidelity are on its test part
        "defense_fingerprint": None if defense is None else defense_digest(defense.directory),
        "metrics": {
            "clone": clone,
            "victim": {k: metrics["victim"][k] for k in ("accuracy", "f1")},
            "queries": metrics["queries"],
            "benign_accuracy": _benign_accuracy(context, trial.defense, output.spec),
            "flagged_rate": None if oracle is None else oracle.flagged_rate,
            "policy": None if defense is None else (trial.defense.policy or defense.policy.spec),
        },
        "versions": package_versions(),
        "time_s": metrics["time_s"],
        "run": {
            "backend": context.backend,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }


# --- per-process caches: a worker runs many trials against the same victim and defense -------


@functools.lru_cache(maxsize=4)
def _victim(directory: Path) -> Victim:
    return load_victim(directory)


@functools.lru_cache(maxsize=4)
def _defense(directory: Path, victim_dir: Path) -> Defense:
    return load_defense(directory, _victim(victim_dir))


@functools.lru_cache(maxsize=4)
def defense_digest(directory: Path) -> str:
    """The detector's identity: its saved files, so a refitted defense is told apart from this one."""
    sha = hashlib.sha256()
    for name in ("detector.json", "detector.safetensors"):
        sha.update((Path(directory) / name).read_bytes())
    return sha.hexdigest()[:HASH_CHARS]


@functools.lru_cache(maxsize=16)
def _calibration_scores(defense_dir: Path, victim_dir: Path, data_dir: Path | None) -> torch.Tensor:
    victim, defense = _victim(victim_dir), _defense(defense_dir, victim_dir)
    calibration = victim.calibration_set(data_dir)
    return defense.detector.score_images(victim.model, calibration.images)


def _defended_oracle(
    defense: Defense,
    victim: Victim,
    output: OutputMode,
    settings: DefenseSettings,
    context: TrialContext,
    budget: int | None,
) -> DefendedOracle:
    detector = None
    if settings.target_fpr is not None:
        scores = _calibration_scores(context.defense_dir, context.victim_dir, context.data_dir)
        detector = defense.detector.calibrated(scores, settings.target_fpr)
    policy = parse_policy(settings.policy) if settings.policy is not None else None
    return defense.oracle(victim, output, budget=budget, policy=policy, detector=detector)


@functools.lru_cache(maxsize=64)
def _benign_accuracy(context: TrialContext, settings: DefenseSettings | None, output: str) -> float:
    """Top-1 accuracy that honest users get on the victim's test set, in this output mode, with or
    without the defense."""
    victim = _victim(context.victim_dir)
    test = victim.test_set(context.data_dir)
    if settings is None:
        answers = VictimOracle(victim.model, parse_output(output)).query(test.images)
    else:
        defense = _defense(context.defense_dir, context.victim_dir)
        answers, _ = _defended_oracle(defense, victim, parse_output(output), settings, context, None).answer(
            test.images
        )
    return float((answers.argmax(1) == test.labels).float().mean())


class FlagCounter(OracleWrapper):
    """The defended oracle as the attack sees it, counting how many of the attacker's queries it flags."""

    _oracle: DefendedOracle

    def __init__(self, oracle: DefendedOracle) -> None:
        super().__init__(oracle)
        self.flagged = 0
        self.answered = 0

    @property
    def flagged_rate(self) -> float:
        return self.flagged / max(self.answered, 1)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        answers, flags = self._oracle.answer(images)
        self.flagged += int(flags.sum())
        self.answered += len(images)
        return answers
