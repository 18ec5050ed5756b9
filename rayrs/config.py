"""Sweep files: YAML in, a typed and validated `Experiment` out, expanded into one `TrialSpec` per grid point.

A sweep file has a base trial (``data``, ``model``, ``train``, ``eval``), a ``grid`` whose axes override
fields of the base trial (the product of the axes gives the trials; a list of grids gives the union of their
products), the comparisons to compute (``compare``), the CKA settings and the resources of a trial::

    name: quickstart
    data: {dataset: digits}
    model: {arch: wrn, depth: 10, width: 2}
    train: {method: pgd, threat_model: linf, epochs: 8}
    grid: {eps: [0, 0.1, 0.2], seed: [0]}
    compare: [{kind: cross_layer}]

Units: ``eps`` is on the [0, 1] pixel scale for ``linf`` and ``l2`` and may be written as a fraction such as
``8/255``. ``eps: 0`` means standard (non-robust) training; ``method: standard`` always trains with eps 0.
Every error names the file, the field and what is allowed, in one line (`SweepFileError`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from rayrs.errors import UserError


class SweepFileError(UserError):
    """A sweep file that cannot be run; the message names the file and the field."""


def parse_number(value: Any) -> Any:
    """Accept ``8/255``-style fractions (a YAML string) wherever a number is expected."""
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9.eE+-]+\s*/\s*[0-9.eE+-]+\s*", value):
        numerator, denominator = (float(part) for part in value.split("/"))
        if denominator == 0:
            raise ValueError(f"{value!r} divides by zero")
        return numerator / denominator
    return value


Number = Annotated[float, BeforeValidator(parse_number)]
Eps = Annotated[float, BeforeValidator(parse_number), Field(ge=0)]


def _check_name(value: str, registry: dict[str, Any], what: str) -> str:
    if value not in registry:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(registry)}")
    return value


class Section(BaseModel):
    """Strict base: unknown keys and wrong types are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(Section):
    dataset: str = "digits"
    root: str | None = None  # folder holding the dataset files (not needed for digits)
    image_size: int | None = Field(default=None, ge=8)  # None: the dataset's native size

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from rayrs.data import DATASETS

        return _check_name(value, DATASETS, "dataset")


class ModelConfig(Section):
    arch: str = "wrn"
    depth: int | None = Field(default=None, ge=1)  # None: the architecture's default (WRN: 28)
    width: int | None = Field(default=None, ge=1)  # WRN widening factor k; None: default (WRN: 10)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        from rayrs.models import MODELS

        return _check_name(value, MODELS, "model")


class AttackSettings(Section):
    """An attack run. Unset ``steps``/``step_size`` take the threat model's defaults for the dataset
    (`rayrs.attacks.attack_schedule`): for l_inf on CIFAR-10, PGD-10 with steps of 2/255 in training and
    PGD-20 at evaluation, as in the paper."""

    steps: int | None = Field(default=None, ge=1)
    step_size: Number | None = Field(default=None, gt=0)
    random_start: bool = True
    bn_eval: bool = True  # attack with BatchNorm in eval mode (train mode restored afterwards)


class TrainConfig(Section):
    method: str = "pgd"
    threat_model: str = "linf"
    eps: Eps = 8 / 255
    attack: AttackSettings = Field(default_factory=AttackSettings)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: Number = Field(default=0.1, gt=0)
    momentum: Number = Field(default=0.9, ge=0, lt=1)
    weight_decay: Number = Field(default=5e-4, ge=0)
    schedule: Literal["piecewise", "cosine", "constant"] = "piecewise"
    augment: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = Field(default=0, ge=0)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from rayrs.train import METHODS

        return _check_name(value, METHODS, "training method")

    @field_validator("threat_model")
    @classmethod
    def _known_threat_model(cls, value: str) -> str:
        from rayrs.attacks import THREAT_MODELS

        return _check_name(value, THREAT_MODELS, "threat model")

    @property
    def robust(self) -> bool:
        return self.method != "standard" and self.eps > 0


class EvalConfig(Section):
    """Per-epoch evaluation: clean and robust accuracy on fixed subsets of the train and test sets."""

    eps: Eps | None = None  # None: the training eps, or for standard training the paper's eps (TrialConfig.eval_eps)
    attack: AttackSettings = Field(default_factory=AttackSettings)
    train_subset: int = Field(default=512, ge=1)
    test_subset: int = Field(default=512, ge=1)
    batch_size: int = Field(default=256, ge=1)


class TrialConfig(Section):
    """Everything that determines one training run (and therefore its checkpoints)."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def fingerprint(self) -> str:
        """Short content hash: two trials with the same fingerprint produce the same checkpoints."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def attack_schedule(self, phase: Literal["train", "eval"]) -> tuple[float, int, float]:
        """(eps, steps, step size) of the training or evaluation attack, every default resolved."""
        from rayrs.attacks import attack_schedule

        settings, eps = (self.train.attack, self.train.eps) if phase == "train" else (self.eval.attack, self.eval_eps)
        steps, step_size = attack_schedule(
            self.train.threat_model, self.data.dataset, phase, eps, settings.steps, settings.step_size
        )
        return eps, steps, step_size

    @property
    def eval_eps(self) -> float:
        """Evaluation eps: ``eval.eps``, else the training eps, else (standard training) the paper's default."""
        if self.eval.eps is not None:
            return self.eval.eps
        if self.train.eps > 0:
            return self.train.eps
        from rayrs.attacks import default_eps

        return default_eps(self.train.threat_model, self.data.dataset)


class CrossLayer(Section):
    """Layer x layer CKA inside each trial's model on benign probes (paper Figs 2, 3)."""

    kind: Literal["cross_layer"] = "cross_layer"
    epochs: Literal["final"] | list[Annotated[int, Field(ge=1)]] = "final"


Comparison = Annotated[CrossLayer, Field(discriminator="kind")]


class CkaConfig(Section):
    """Minibatch CKA settings; the paper uses batches of 1024 and 3 passes over the probe set."""

    probe_size: int = Field(default=1024, ge=4)  # benign probe inputs: the first N test images
    batch_size: int = Field(default=1024, ge=4)
    passes: int = Field(default=3, ge=1)  # each pass shuffles the probe set differently


class Resources(Section):
    cpus_per_trial: Number = Field(default=1, gt=0)
    gpus_per_trial: Number = Field(default=0, ge=0)  # fractional packs trials on a GPU, e.g. 0.25
    cpus_per_job: Number = Field(default=1, gt=0)  # similarity jobs
    gpus_per_job: Number = Field(default=0, ge=0)


GridAxes = dict[str, list[Any]]

# Short grid axis names for the fields people sweep most; any dotted path (train.lr) works too.
AXIS_ALIASES = {
    "dataset": "data.dataset",
    "arch": "model.arch",
    "depth": "model.depth",
    "width": "model.width",
    "method": "train.method",
    "threat_model": "train.threat_model",
    "eps": "train.eps",
    "epochs": "train.epochs",
    "seed": "train.seed",
}


class Experiment(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    results: str = "results"  # folder or URI; this experiment's results go to <results>/<name>
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    grid: GridAxes | list[GridAxes] = Field(default_factory=dict)
    compare: list[Comparison] = Field(default_factory=lambda: [CrossLayer()])
    cka: CkaConfig = Field(default_factory=CkaConfig)
    resources: Resources = Field(default_factory=Resources)

    @field_validator("grid")
    @classmethod
    def _axes_known_and_non_empty(cls, grid: GridAxes | list[GridAxes]) -> GridAxes | list[GridAxes]:
        grids = grid if isinstance(grid, list) else [grid]
        if isinstance(grid, list) and not grid:
            raise ValueError("an empty list of grids gives no trials; remove `grid:` or give it axes")
        for axes in grids:
            for axis, values in axes.items():
                _axis_path(axis)
                if not values:
                    raise ValueError(f"axis {axis!r} has no values; give at least one")
        return grid


class TrialSpec(BaseModel):
    """One grid point: a named, fully resolved trial of an experiment."""

    model_config = ConfigDict(frozen=True)

    name: str
    experiment: str
    config: TrialConfig
    axes: dict[str, Any]  # the grid values that made this trial, for labels and figures

    @property
    def fingerprint(self) -> str:
        return self.config.fingerprint()


# ----------------------------------------------------------------------------------------------------
def load_experiment(path: str | Path) -> Experiment:
    """Read and validate a sweep file; every problem becomes a one-line `SweepFileError`."""
    path = Path(path)
    if not path.is_file():
        raise SweepFileError(f"{path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise SweepFileError(f"{path}: not valid YAML{line}: {getattr(error, 'problem', error)}") from None
    if not isinstance(raw, dict):
        raise SweepFileError(f"{path}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    try:
        experiment = Experiment.model_validate(raw)
    except ValidationError as error:
        raise SweepFileError(f"{path}: {describe(error)}") from None
    expand(experiment, source=path)  # grid values are validated here, before anything runs
    return experiment


def describe(error: ValidationError) -> str:
    """The first validation problem as ``field: what is wrong``, in words a person can act on."""
    first = error.errors()[0]
    # Drop pydantic's union-branch markers such as "dict[str,list[any]]" from the field path.
    path = [part for part in first["loc"] if not ("[" in str(part) or str(part).startswith("function-"))]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(first["loc"][:-1])
        message = f"unknown key {path.pop()!r}" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    elif first["type"] in ("float_parsing", "int_parsing", "float_type", "int_type", "bool_parsing", "bool_type", "list_type"):
        message += f", got {first['input']!r}"
    elif first["type"] == "union_tag_invalid":
        message = f"unknown comparison kind {first['input'].get('kind')!r}; choose one of: {', '.join(comparison_kinds())}"
    location = ".".join(str(part) for part in path)
    return f"{location}: {message}" if location else message


def _allowed_keys(location: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] | None = Experiment
    for part in location:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def comparison_kinds() -> list[str]:
    return [CrossLayer.model_fields["kind"].default]


def _axis_path(axis: str) -> tuple[str, ...]:
    path = tuple(AXIS_ALIASES.get(axis, axis).split("."))
    model: type[BaseModel] = TrialConfig
    for depth, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            options = sorted(AXIS_ALIASES) + [f"{'.'.join(path[:depth] + (name,))}" for name in model.model_fields]
            raise ValueError(f"grid axis {axis!r} is not a trial field; use one of: {', '.join(options)}")
        annotation = field.annotation
        if depth < len(path) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise ValueError(f"grid axis {axis!r}: {'.'.join(path[: depth + 1])} has no sub-fields")
            model = annotation
    return path


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _format_value(value: Any) -> str:
    """A grid value as the user wrote it, made filesystem-safe: ``8/255`` -> ``8_255``, ``0.1`` -> ``0.1``."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text)


def trial_name(axes: dict[str, Any]) -> str:
    """A readable, filesystem-safe name from the grid values as written: ``eps8_255-width2-seed0``, ``trades-seed1``."""
    if not axes:
        return "trial"
    parts = []
    for axis, value in axes.items():
        short = axis.rsplit(".", 1)[-1]
        is_fraction = isinstance(value, str) and parse_number(value) is not value
        parts.append(_format_value(value) if isinstance(value, str) and not is_fraction else f"{short}{_format_value(value)}")
    return "-".join(parts)


def expand(experiment: Experiment, source: str | Path = "sweep") -> list[TrialSpec]:
    """The experiment's trials: the product of each grid's axes (the union over a list of grids)."""
    base = {section: getattr(experiment, section).model_dump(mode="json") for section in ("data", "model", "train", "eval")}
    grids = experiment.grid if isinstance(experiment.grid, list) else [experiment.grid]
    trials: list[TrialSpec] = []
    seen_names: dict[str, dict[str, Any]] = {}
    seen_configs: dict[str, str] = {}
    for axes in grids:
        names = list(axes)
        for values in itertools.product(*(axes[name] for name in names)):
            point = dict(zip(names, (parse_number(v) for v in values)))
            tree = json.loads(json.dumps(base))
            for axis, value in point.items():
                _set_path(tree, _axis_path(axis), value)
            name = trial_name(dict(zip(names, values)))
            try:
                config = _normalise(TrialConfig.model_validate(tree))
            except ValidationError as error:
                where = ", ".join(f"{k}={v}" for k, v in zip(names, values))
                raise SweepFileError(f"{source}: grid point {where}: {describe(error)}") from None
            if name in seen_names:
                raise SweepFileError(f"{source}: grid: two trials are both named {name!r}; make the grid axes distinct")
            if config.fingerprint() in seen_configs:
                raise SweepFileError(
                    f"{source}: grid: trials {seen_configs[config.fingerprint()]!r} and {name!r} are identical "
                    "(eps 0 and method standard both mean non-robust training); list each trial once, e.g. with a list of grids"
                )
            seen_names[name] = point
            seen_configs[config.fingerprint()] = name
            trials.append(TrialSpec(name=name, experiment=experiment.name, config=config, axes=point))
    for comparison in experiment.compare:
        if isinstance(comparison, CrossLayer) and comparison.epochs != "final":
            for trial in trials:
                late = [e for e in comparison.epochs if e > trial.config.train.epochs]
                if late:
                    raise SweepFileError(
                        f"{source}: compare: cross_layer epoch {late[0]} is past trial {trial.name!r}'s "
                        f"{trial.config.train.epochs} epochs"
                    )
    return trials


def _normalise(config: TrialConfig) -> TrialConfig:
    """eps 0 is standard training, and standard training has eps 0: one trial, one spelling."""
    if config.train.method == "standard" or config.train.eps == 0:
        train = config.train.model_copy(update={"method": "standard", "eps": 0.0})
        return config.model_copy(update={"train": train})
    return config
