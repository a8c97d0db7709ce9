"""Sweep files: a YAML grid (or list) of trials, validated against a typed schema.

    victim: runs/victim          # optional here; --victim overrides (relative paths: to this file)
    defense_dir: runs/defense    # needed when any trial is defended; --defense overrides
    base:                        # every trial starts from these (and from the attack's defaults)
      pool: mnist-train
      train: {epochs: 3, min_steps: 500}
    grid:                        # the cartesian product of these lists, each merged over `base`
      strategy: [random, active]
      output: [probabilities, label]
      queries: [1000, 10000]
      seed: [0, 1, 2]
      defense: [null, {target_fpr: 0.05}]
    trials:                      # and/or an explicit list, each merged over `base`
      - {strategy: jbda, queries: 5000}

Unknown keys and wrong types are refused with the key's path and the file's name, in one line.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from mea import models
from mea.attacks import make_strategy
from mea.data.pools import check_pool_name
from mea.defenses.policies import parse_policy
from mea.errors import ConfigError
from mea.experiments.attack import AttackConfig
from mea.experiments.trial import DefenseSettings, Trial
from mea.oracle import parse_output
from mea.training import LabelLoss, Schedule, TrainConfig, parse_choice


def _checked(check: Callable[[str], Any], normalise: Callable[[str], str] | None = None):
    """A str validated by one of the package's own checks (their ConfigError becomes a schema error)."""

    def validate(value: str) -> str:
        try:
            check(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return normalise(value) if normalise else value

    return AfterValidator(validate)


Strategy = Annotated[str, _checked(make_strategy)]
PoolName = Annotated[str, _checked(check_pool_name)]
Output = Annotated[str, _checked(parse_output, lambda v: parse_output(v).spec)]
Arch = Annotated[str, _checked(models.check_arch)]
PolicySpec = Annotated[str, _checked(parse_policy, lambda v: parse_policy(v).spec)]
PositiveInt = Annotated[int, Field(gt=0)]


ScheduleName = Annotated[str, _checked(lambda value: parse_choice(Schedule, value, "schedule"))]
LossName = Annotated[str, _checked(lambda value: parse_choice(LabelLoss, value, "loss"))]


class _Schema(BaseModel):
    # Strict: a string is not a number here.  Floats accept integers (lr: 1 is fine).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TrainSpec(_Schema):
    """Clone-training settings; unset ones keep TrainConfig's defaults (or the base's)."""

    epochs: PositiveInt | None = None
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    batch_size: PositiveInt | None = None
    schedule: ScheduleName | None = None
    loss: LossName | None = None
    temperature: Annotated[float, Field(gt=0)] | None = None
    true_label_weight: Annotated[float, Field(ge=0, le=1)] | None = None
    shift: Annotated[int, Field(ge=0, le=8)] | None = None
    rotate: Annotated[float, Field(ge=0, le=45)] | None = None
    scale: Annotated[float, Field(ge=0, le=0.5)] | None = None
    min_steps: Annotated[int, Field(ge=0)] | None = None
    pseudo_label_rounds: Annotated[int, Field(ge=0)] | None = None
    pseudo_label_epochs: PositiveInt | None = None


class DefenseSpec(_Schema):
    """The defense directory's detector in front of the victim; policy and threshold may be re-tuned."""

    policy: PolicySpec | None = None
    target_fpr: Annotated[float, Field(gt=0, lt=1)] | None = None


class TrialSpec(_Schema):
    """A (partial) trial: unset keys come from `base`, then from the attack's defaults."""

    strategy: Strategy | None = None
    pool: PoolName | None = None
    output: Output | None = None
    queries: PositiveInt | None = None
    clone_arch: Arch | None = None
    seed: int | None = None
    train: TrainSpec | None = None
    # null: undefended (the default); a mapping ({} for the directory's own settings): defended.
    defense: DefenseSpec | None = None

    @field_validator("defense", mode="before")
    @classmethod
    def _defense_switch(cls, value):
        # `defense: true` / `false` read naturally as on/off.
        if value is True:
            return {}
        return None if value is False else value


def _grid_list(item):
    return Annotated[list[item], Field(min_length=1)] | None


class GridSpec(_Schema):
    """Lists of values; the grid is their cartesian product (in this order, seed last)."""

    strategy: _grid_list(Strategy) = None
    pool: _grid_list(PoolName) = None
    output: _grid_list(Output) = None
    queries: _grid_list(PositiveInt) = None
    clone_arch: _grid_list(Arch) = None
    train: _grid_list(TrainSpec) = None
    defense: _grid_list(DefenseSpec | None) = None
    seed: _grid_list(int) = None

    @field_validator("defense", mode="before")
    @classmethod
    def _defense_switches(cls, value):
        if isinstance(value, list):
            return [{} if v is True else None if v is False else v for v in value]
        return value


class SweepFile(_Schema):
    name: str | None = None
    victim: str | None = None
    defense_dir: str | None = None
    base: TrialSpec = TrialSpec()
    grid: GridSpec | None = None
    trials: Annotated[list[TrialSpec], Field(min_length=1)] | None = None


@dataclass(frozen=True)
class SweepSpec:
    """A resolved sweep: the trials (deduplicated, in order) and where its victim and defense live."""

    name: str
    trials: tuple[Trial, ...]
    source: str  # the file (or preset) it came from, for messages
    victim_dir: Path | None = None
    defense_dir: Path | None = None

    @property
    def needs_defense(self) -> bool:
        return any(t.defense is not None for t in self.trials)


# --- loading ---------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; a sweep file means the number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_sweep(path: Path) -> SweepSpec:
    """Read, validate and expand a sweep file; every mistake is one ConfigError line naming file and key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} does not exist") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"sweep file {path} cannot be read as text ({type(exc).__name__})") from None
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping with keys {', '.join(SweepFile.model_fields)}; "
            f"got {type(raw).__name__}"
        )
    return parse_sweep(raw, str(path), base_dir=path.parent)


def parse_sweep(raw: dict, source: str, base_dir: Path | None = None) -> SweepSpec:
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    trials = _expand(spec, source)

    def resolve(value: str | None) -> Path | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() or base_dir is None else base_dir / p

    return SweepSpec(
        name=spec.name or Path(source).stem,
        trials=trials,
        source=source,
        victim_dir=resolve(spec.victim),
        defense_dir=resolve(spec.defense_dir),
    )


def _expand(spec: SweepFile, source: str) -> tuple[Trial, ...]:
    points: list[tuple[str, TrialSpec]] = []
    if spec.grid is not None:
        axes = {name: values for name, values in spec.grid if values is not None}
        if not axes:
            raise ConfigError(f"{source}: grid: the grid is empty; give at least one key with a list of values")
        for combo in itertools.product(*axes.values()):
            point = dict(zip(axes, combo, strict=True))
            label = "grid point " + ", ".join(f"{k}={_short(v)}" for k, v in point.items())
            points.append((label, _merge(spec.base, TrialSpec.model_construct(**point))))
    for i, trial in enumerate(spec.trials or ()):
        points.append((f"trials[{i}]", _merge(spec.base, trial)))
    if not points:
        raise ConfigError(f"{source}: no trials: add a `grid` of lists or a `trials` list")
    trials: dict[str, Trial] = {}
    for label, point in points:
        try:
            trial = _trial(point)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {label}: {exc}") from None
        trials.setdefault(trial.hash, trial)  # a trial listed twice runs once
    return tuple(trials.values())


def _merge(base: TrialSpec, over: TrialSpec) -> TrialSpec:
    """`over` on top of `base`; `train` is merged key by key, `defense` replaced (null turns it off)."""
    merged = _set_fields(base)
    for name, value in _set_fields(over).items():
        if name == "train" and value is not None and base.train is not None:
            value = TrainSpec.model_construct(**(_set_fields(base.train) | _set_fields(value)))
        merged[name] = value
    return TrialSpec.model_construct(**merged)


def _set_fields(model: BaseModel) -> dict:
    return {name: getattr(model, name) for name in model.model_fields_set}


def _trial(spec: TrialSpec) -> Trial:
    values = _set_fields(spec)
    train_spec = values.pop("train", None)
    defense = values.pop("defense", None)
    train = TrainConfig(**_set_fields(train_spec)) if train_spec else None
    attack = AttackConfig(**values, **({"train": train} if train else {}))
    settings = None if defense is None else DefenseSettings(**defense.model_dump())
    return Trial(attack, settings)


def _short(value) -> str:
    if isinstance(value, BaseModel):
        return "{" + ", ".join(f"{k}: {getattr(value, k)}" for k in value.model_fields_set) + "}"
    return "null" if value is None else str(value)


# --- error messages --------------------------------------------------------------------------


def _describe(exc: ValidationError, limit: int = 3) -> str:
    """Pydantic's errors as `path: problem` items on one line."""
    items = []
    for error in exc.errors(include_url=False):
        path = _path(error["loc"])
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(error["loc"][:-1])
            problem = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif error["type"] == "too_short":
            problem = "the list is empty; give at least one value"
        elif error["type"] == "value_error":
            problem = str(error["ctx"]["error"])
        else:
            problem = f"{error['msg'][0].lower()}{error['msg'][1:]} (got {_got(error['input'])})"
        items.append(f"{path or 'top level'}: {problem}")
    # Union members each report the same mistake: keep one of each.
    items = list(dict.fromkeys(items))
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or str(part).startswith(("function-", "constrained-", "list[")):
            continue  # pydantic's names for union members and wrapped types, not keys
        else:
            out += f".{part}" if out else str(part)
    return out


_UNION_TAGS = {"DefenseSpec", "TrainSpec", "TrialSpec", "GridSpec", "none", "int", "float", "str", "list"}


def _got(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys allowed at `loc` (a path into SweepFile), found by walking the models' annotations."""
    model: type[BaseModel] | None = SweepFile
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if part not in model.model_fields:
            continue  # a union tag
        model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def spec_from_trials(name: str, trials: list[Trial], victim_dir: Path | None = None) -> SweepSpec:
    """A sweep built in code (a preset), deduplicated like a file's."""
    unique: dict[str, Trial] = {}
    for trial in trials:
        unique.setdefault(trial.hash, trial)
    return SweepSpec(name, tuple(unique.values()), f"preset {name}", victim_dir)


def replace_paths(spec: SweepSpec, victim_dir: Path | None, defense_dir: Path | None) -> SweepSpec:
    """The command line's --victim and --defense win over the file's."""
    return dataclasses.replace(
        spec, victim_dir=victim_dir or spec.victim_dir, defense_dir=defense_dir or spec.defense_dir
    )
