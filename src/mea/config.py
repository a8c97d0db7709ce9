"""Configuration records of every component, and the names the command line offers.

Nothing here imports torch, numpy, scikit-learn or any other heavy library: `mea --help` reads its
defaults from these dataclasses, and a command line that answers `--help` in a fraction of a second
cannot import torch to do it.  Validation needs none either: names (an architecture, a pool, a
strategy, an output mode, a policy) are checked against the tuples below in `__post_init__`, so a
command refuses a mistake before it pays for torch; only the size of a user's own dataset, read
from its file, imports the readers.
The modules that use each record re-export it (`mea.training.TrainConfig`, `mea.victim.VictimConfig`,
`mea.experiments.attack.AttackConfig`, ...); import it from either place.

The name tuples below are what `--help` lists; the registries that build the named things
(`mea.models.ARCHITECTURES`, `mea.attacks.STRATEGIES`, `mea.data.POOLS`,
`mea.experiments.backends.BACKENDS`) hold the same names, which the test suite checks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from mea.data.catalog import DATASETS, DEFAULT_DATASET, dataset_spec, is_path
from mea.errors import ConfigError

ARCH_NAMES = ("lenet5", "small-cnn", "mlp")
DATASET_NAMES = tuple(DATASETS)
# One pool per built-in dataset (its training images), then the noise pools; a path also names a pool.
POOL_NAMES = (*(spec.pool for spec in DATASETS.values()), "uniform", "gaussian")


def check_arch(name: str) -> str:
    """An architecture's name (`mea.models.ARCHITECTURES` holds the same), or a ConfigError naming the choices."""
    if name not in ARCH_NAMES:
        raise ConfigError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCH_NAMES)}")
    return name


def check_pool_name(name: str) -> str:
    """A pool's name, or a path to the attacker's own images; a ConfigError naming the choices."""
    if name in POOL_NAMES:
        return name
    if is_path(name):
        if not Path(name).expanduser().exists():
            raise ConfigError(f"no pool at {name}; pass a .npz file or an image folder that exists")
        return name
    raise ConfigError(
        f"unknown pool {name!r}; choose one of: {', '.join(POOL_NAMES)}, or pass a .npz file or an image folder by path"
    )


STRATEGY_NAMES = (
    "random",
    "jbda",
    "jbda-tr",
    "active",
    "active-margin",
    "active-entropy",
    "active-kcenter",
    "knockoff-adaptive",
    "boundary",
    "mixup",
    "dfme",
    "maze",
    "dfms",
    "dfme-aware",
)
# Strategies that make their own queries and train the clone while they ask; all but the
# detector-aware one (whose prior models 150 public digits of the pool) use no pool.
DATA_FREE_STRATEGIES = ("dfme", "maze", "dfms", "dfme-aware")
POOL_FREE_STRATEGIES = ("dfme", "maze", "dfms")
NO_POOL = "none"
BACKEND_NAMES = ("local", "ray")
# The victim's layers the detector can read (LeNet5.feature_names).
LAYER_NAMES = ("conv1", "conv2", "fc1", "fc2", "logits")
OUTPUT_MODES = "probabilities, top-k[:K], label, rounded[:DECIMALS]"
POLICIES = (
    "gaussian[:SIGMA], dirichlet[:ALPHA], misinformation[:CONFIDENCE], top1-preserving[:ALPHA], "
    "mad[:EPSILON], mad-top1[:EPSILON]"
)
POLICY_NAMES = ("gaussian", "dirichlet", "misinformation", "top1-preserving", "mad", "mad-top1")
DEFAULT_POLICY = "misinformation:0.9"
# Strategies that take a number after ':' (dfme-aware:W, the weight of its push toward digits).
WEIGHTED_STRATEGIES = ("dfme-aware",)
DEFAULT_TOP_K = 3
DEFAULT_DECIMALS = 2


# --- names and their arguments, checked without the modules that implement them ----------------------
# (The records below validate what they are given here; the registries that build the named things,
# mea.attacks, mea.oracle and mea.defenses.policies, read the same specs, so that the records never
# import attack, oracle or defense code: no import circle.)


def strategy_spec(name: str) -> tuple[str, float | None]:
    """A strategy's name and its weight (dfme-aware:W only), checked against `STRATEGY_NAMES`."""
    base, colon, argument = name.partition(":")
    if base not in STRATEGY_NAMES or (colon and base not in WEIGHTED_STRATEGIES):
        raise ConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGY_NAMES)}")
    if not argument:
        return base, None
    try:
        return base, float(argument)
    except ValueError:
        raise ConfigError(f"strategy {name!r} needs a number after ':', e.g. {base}:1") from None


def check_top_k(k: int) -> int:
    if not k >= 1:
        raise ConfigError(f"top-k needs k >= 1, got {k}; e.g. --output top-k:3")
    return k


def check_decimals(decimals: int) -> int:
    if not 0 <= decimals <= 8:
        raise ConfigError(f"rounding needs 0 <= decimals <= 8, got {decimals}; e.g. --output rounded:2")
    return decimals


def output_spec(text: str) -> tuple[str, int | None]:
    """An output mode's name and argument (top-k's k, rounded's decimals; None: the default), checked."""
    name, _, arg = text.strip().partition(":")
    if name in ("probabilities", "label") and not arg:
        return name, None
    if name in ("top-k", "rounded"):
        try:
            value = int(arg) if arg else None
        except ValueError:
            raise ConfigError(f"output mode {text!r} needs an integer after ':'; use one of: {OUTPUT_MODES}") from None
        if value is not None:
            (check_top_k if name == "top-k" else check_decimals)(value)
        return name, value
    raise ConfigError(f"unknown output mode {text!r}; use one of: {OUTPUT_MODES}")


def canonical_output(text: str) -> str:
    """The output mode as its spec names it with every default filled in (`top-k` -> `top-k:3`)."""
    name, value = output_spec(text)
    if name == "top-k":
        return f"top-k:{DEFAULT_TOP_K if value is None else value}"
    if name == "rounded":
        return f"rounded:{DEFAULT_DECIMALS if value is None else value}"
    return name


def policy_spec(text: str) -> tuple[str, float | None]:
    """A response policy's name and its number (None: the policy's default), checked against `POLICY_NAMES`."""
    name, _, arg = text.strip().partition(":")
    if name not in POLICY_NAMES:
        raise ConfigError(f"unknown policy {text!r}; use one of: {POLICIES}")
    if not arg:
        return name, None
    try:
        return name, float(arg)
    except ValueError:
        raise ConfigError(f"policy {text!r} needs a number after ':'; use one of: {POLICIES}") from None


# --- training -------------------------------------------------------------------------------


class Schedule(StrEnum):
    CONSTANT = "constant"  # the study's setting
    ONE_CYCLE = "one-cycle"  # Smith & Topin 2017, "Super-convergence"


class LabelLoss(StrEnum):
    SOFT = "soft"  # cross-entropy against the (tempered) answers
    HARD = "hard"  # cross-entropy against the answers' top-1 class
    # Regression on the answers' log-probabilities, each row centred (logit matching, Ba & Caruana
    # 2014): a probability answer is its logits up to a constant, the smallest values included.
    LOGITS = "logits"


def parse_choice(enum: type[StrEnum], value: str, what: str):
    """`value` as a member of `enum`, or a ConfigError naming the choices."""
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(e.value for e in enum)}") from None


@dataclass(frozen=True)
class TrainConfig:
    """How to train one model.  The defaults are the clone's; `VICTIM_TRAINING` is the victim's."""

    epochs: int = 3
    lr: float = 3e-2  # the peak rate under one-cycle, the rate itself under constant
    batch_size: int = 256
    schedule: Schedule = Schedule.ONE_CYCLE
    loss: LabelLoss = LabelLoss.SOFT
    temperature: float = 4.0
    true_label_weight: float = 0.0  # alpha: weight of the pool's own true labels, 0 = not used
    shift: int = 0  # augmentation: random translations of up to this many pixels, 0 = off
    # Augmentation beyond shifts, the affine distortions of Simard et al. 2003 ("Best Practices for
    # Convolutional Neural Networks Applied to Visual Document Analysis"): rotations of up to this
    # many degrees either way and rescaling by up to this fraction either way; both 0 = off.  A digit
    # reader answers a slightly turned or resized digit as it answers the digit, so the clone learns
    # from each answer at many poses: the lever at small budgets.
    rotate: float = 0.0
    scale: float = 0.0
    # Small transfer sets get more epochs, up to this many optimiser steps in all: three epochs of
    # 1,000 queries are 12 steps, far too few to fit anything.  0 = exactly `epochs` epochs.
    min_steps: int = 500
    # Semi-supervised clones (mea.attacks.pseudo_labels): rounds of self-training on the attacker's
    # unqueried pool, each of this many epochs.  0 rounds = the answers alone.
    pseudo_label_rounds: int = 0
    pseudo_label_epochs: int = 2

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be positive, got {self.lr}; e.g. --lr 0.001")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.true_label_weight <= 1.0:
            raise ConfigError(f"true-label weight must lie in [0, 1], got {self.true_label_weight}")
        if self.min_steps < 0:
            raise ConfigError(f"min-steps must be >= 0, got {self.min_steps}")
        if self.pseudo_label_rounds < 0 or self.pseudo_label_epochs <= 0:
            raise ConfigError(
                "pseudo-label rounds must be >= 0 and pseudo-label epochs positive, got "
                f"{self.pseudo_label_rounds} and {self.pseudo_label_epochs}"
            )
        if not 0 <= self.shift <= 8:
            raise ConfigError(f"shift must lie in [0, 8] pixels, got {self.shift}")
        if not 0.0 <= self.rotate <= 45.0:
            raise ConfigError(f"rotate must lie in [0, 45] degrees, got {self.rotate}; e.g. --rotate 15")
        if not 0.0 <= self.scale <= 0.5:
            raise ConfigError(
                f"scale must lie in [0, 0.5] (a fraction either way), got {self.scale}; e.g. --scale 0.15"
            )
        object.__setattr__(self, "schedule", parse_choice(Schedule, self.schedule, "schedule"))
        object.__setattr__(self, "loss", parse_choice(LabelLoss, self.loss, "loss"))


VICTIM_TRAINING = TrainConfig(epochs=15, lr=3e-3, batch_size=128, loss=LabelLoss.HARD, temperature=1.0, shift=2)


# --- the victim -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Splits:
    """Which images of the victim's dataset serve whom.

    The victim trains on the dataset's training images minus a calibration split held out for the
    defender (by default the last 5,000); every evaluation uses its test images, which no attacker
    pool holds.
    """

    dataset: str = DEFAULT_DATASET
    calibration_size: int = 5000

    def __post_init__(self) -> None:
        size = self.train_size
        if not 0 < self.calibration_size < size:
            raise ConfigError(
                f"calibration split size must be between 1 and {size - 1} ({self.dataset} holds {size} training "
                f"images), got {self.calibration_size}; set --calibration-size or a sidecar's calibration_size"
            )

    @property
    def train_size(self) -> int:
        return self._size("train")

    def _size(self, part: str) -> int:
        if self.dataset in DATASETS:
            spec = dataset_spec(self.dataset)
            return (spec.train_images if part == "train" else spec.test_images).shape[0]
        from mea.data import files  # a user's own images by path: counted once read (and cached)

        return len(files.read(self.dataset, part).images)

    @property
    def victim_train(self) -> slice:
        return slice(0, self.train_size - self.calibration_size)

    @property
    def calibration(self) -> slice:
        return slice(self.train_size - self.calibration_size, self.train_size)

    def describe(self) -> dict:
        test_size = self._size("test")
        return {
            **asdict(self),
            "victim_train": f"{self.dataset} train[{self.victim_train.start}:{self.victim_train.stop}]",
            "calibration": f"{self.dataset} train[{self.calibration.start}:{self.calibration.stop}]",
            "evaluation": f"{self.dataset} test[0:{test_size}]",
        }


@dataclass(frozen=True)
class VictimConfig:
    arch: str = "lenet5"
    train: TrainConfig = VICTIM_TRAINING
    splits: Splits = field(default_factory=Splits)
    seed: int = 0

    def __post_init__(self) -> None:
        check_arch(self.arch)


# --- the attack -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackConfig:
    queries: int = 60_000
    pool: str = "mnist-train"
    output: str = "probabilities"
    strategy: str = "random"
    clone_arch: str = "lenet5"
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.queries <= 0:
            raise ConfigError(f"queries must be a positive number of images, got {self.queries}")
        base = self.strategy.partition(":")[0]
        if base in POOL_FREE_STRATEGIES:
            # A data-free attacker owns no images: the default pool is dropped, a named one refused.
            if self.pool not in (NO_POOL, AttackConfig.pool):
                raise ConfigError(f"{self.strategy} is data-free and uses no pool; drop --pool {self.pool}")
            object.__setattr__(self, "pool", NO_POOL)
        else:
            check_pool_name(self.pool)
        if base in DATA_FREE_STRATEGIES and self.train != TrainConfig():
            raise ConfigError(
                f"{self.strategy} trains its clone while it queries, with its own optimiser settings; "
                "drop the training options (--epochs, --lr, ...)"
            )
        output = canonical_output(self.output)
        object.__setattr__(self, "output", output)
        if self.train.loss is LabelLoss.LOGITS and output != "probabilities":
            # Refused before a single query is spent: these answers hide the small probabilities.
            raise ConfigError(
                f"--loss logits needs --output probabilities, not {output}; use --loss soft or --loss hard"
            )
        strategy_spec(self.strategy)
        check_arch(self.clone_arch)

    @property
    def uses_true_labels(self) -> bool:
        return self.train.true_label_weight > 0


# --- the defense ----------------------------------------------------------------------------

# Every convolution block's output (mea.defenses.features; LeNet-5: conv1, conv2), resolved at fit time.
AUTO_LAYERS = "auto"
DEFAULT_LAYERS = (AUTO_LAYERS,)


@dataclass(frozen=True)
class DetectorConfig:
    layers: tuple[str, ...] = DEFAULT_LAYERS
    use_confidence: bool = True
    target_fpr: float = 0.01
    severity_ramp: float = 4.0  # severity is 1 where the calibration FPR is target_fpr / severity_ramp

    def __post_init__(self) -> None:
        if not 0 < self.target_fpr < 1:
            raise ConfigError(f"the target false-positive rate must lie in (0, 1), got {self.target_fpr}")
        if not self.severity_ramp > 1:
            raise ConfigError(f"the severity ramp must be > 1, got {self.severity_ramp}")
        if not self.layers and not self.use_confidence:
            raise ConfigError("the detector needs at least one layer or the confidence score")
        object.__setattr__(self, "layers", tuple(self.layers))


SOURCES = POOL_NAMES


@dataclass(frozen=True)
class EvaluationConfig:
    """What `mea defend eval` measures (mea.experiments.evaluation)."""

    queries: int = 50_000
    sources: tuple[str, ...] = SOURCES
    fpr_sweep: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
    sweep_sources: tuple[str, ...] = ("fashion-mnist", "mnist-train")
    policies: tuple[str, ...] = ("misinformation", "gaussian", "dirichlet", "top1-preserving")
    cost_budgets: tuple[int, ...] = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000)
    stream_queries: int = 5_000  # per-client detection: queries each attacker stream sends
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.queries <= 0:
            raise ConfigError(f"queries must be positive, got {self.queries}")
        for rate in self.fpr_sweep:
            if not 0 < rate < 1:
                raise ConfigError(f"every swept false-positive rate must lie in (0, 1), got {rate}")
        for policy in self.policies:
            policy_spec(policy)
        for source in (*self.sources, *self.sweep_sources):
            check_pool_name(source)

    @property
    def budgets(self) -> tuple[int, ...]:
        """The cost ladder, capped at the evaluation's budget (which is always its last rung)."""
        return tuple(sorted({b for b in self.cost_budgets if b < self.queries} | {self.queries}))


# --- the service ----------------------------------------------------------------------------

MODEL_NAME = "lenet-mnist"  # the name `mea serve` gives its model by default


@dataclass(frozen=True)
class PradaConfig:
    """Per-client stream detection (mea.defenses.prada) and the service's escalation."""

    # Shapiro-Wilk W below which a stream is flagged.  Benign streams of 1,000 images from the
    # defender's calibration split reached W >= 0.964, streams of 3,000 MNIST test images W >= 0.927:
    # 0.90 keeps benign clients unflagged with a margin.
    threshold: float = 0.90
    min_distances: int = 100
    test_every: int = 10
    max_per_class: int = 2000  # growing-set cap per class, bounding memory per client
    max_distances: int = 5000  # Shapiro-Wilk is defined up to 5,000 samples: keep the latest
    # Escalation by the client's out-of-distribution rate, once it has sent `ood_min_queries`: over
    # its whole stream and over its latest `ood_window` queries (cover traffic averages a lifetime
    # rate down, not a window's), whichever is higher.
    ood_suspect_rate: float = 0.2
    ood_refuse_rate: float = 0.5
    ood_min_queries: int = 200
    ood_window: int = 500
    # Synthetic-step streams (mea.defenses.steps): a client is refused once `step_count` of its
    # latest `step_window` queries lie within L-infinity `step_radius` of one of its `step_memory`
    # earlier queries.  `mea defend fit` calibrates radius and count on benign streams of the
    # calibration split (MNIST: radius 0.21, count 5); these defaults stand in without a defense.
    step_radius: float = 0.2
    step_window: int = 200
    step_count: int = 5
    step_memory: int = 4096

    def __post_init__(self) -> None:
        if not 0 < self.step_radius < 1:
            raise ConfigError(f"the step radius must lie in (0, 1), got {self.step_radius}")
        for name in ("step_window", "step_count", "step_memory", "ood_window"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.step_count > self.step_window:
            raise ConfigError(f"step_count ({self.step_count}) cannot exceed step_window ({self.step_window})")


@dataclass(frozen=True)
class ServeConfig:
    """`mea serve` (mea.serve.service)."""

    db: Path
    model_name: str = MODEL_NAME
    output: str = "probabilities"
    max_batch: int = 1024
    # The request body limit; by default derived from max_batch (mea.serve.protocol.body_limit).
    max_body_bytes: int | None = None
    prada: PradaConfig = field(default_factory=PradaConfig)
    # Several server processes answer from the same database (`mea serve --workers N`).
    shared_db: bool = False
    # Refused requests per remote address: a burst, then this many per second; past that they are
    # answered 429 whatever they were refused for (valid requests from the address are unaffected).
    refusals_burst: int = 100
    refusals_per_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_batch <= 0:
            raise ConfigError(f"max_batch must be a positive number of images, got {self.max_batch}")
        if self.max_body_bytes is not None and self.max_body_bytes <= 0:
            raise ConfigError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        if self.refusals_burst <= 0 or not self.refusals_per_s > 0:
            raise ConfigError("the refusal allowance (burst and rate) must be positive")
        output_spec(self.output)  # refuse a bad deployment output mode at start-up
