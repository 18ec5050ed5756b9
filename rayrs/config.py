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

import functools
import hashlib
import itertools
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

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

    @model_validator(mode="after")
    def _buildable(self) -> ModelConfig:
        _check_architecture(self.arch, self.depth, self.width)
        return self


@functools.lru_cache(maxsize=256)
def _check_architecture(arch: str, depth: int | None, width: int | None) -> None:
    """Build the model on the meta device (no memory, no weights): a bad depth/width fails here, not on a GPU node."""
    import torch

    from rayrs.models import build_model

    try:
        with torch.device("meta"):
            build_model(arch, num_classes=10, in_channels=3, depth=depth, width=width)
    except UserError as error:
        raise ValueError(str(error)) from None


class AttackSettings(Section):
    """An attack run. Unset ``steps``/``step_size`` take the threat model's defaults for the dataset
    (`rayrs.attacks.attack_schedule`): for l_inf on CIFAR-10, PGD-10 with steps of 2/255 in training and
    PGD-20 at evaluation, as in the paper."""

    steps: int | None = Field(default=None, ge=1)
    step_size: Number | None = Field(default=None, gt=0)
    random_start: bool = True
    bn_eval: bool = True  # attack with BatchNorm in eval mode (train mode restored afterwards)
    restarts: int = Field(default=1, ge=1)  # evaluation only: an example counts as robust if no restart fools it


class FreezeConfig(Section):
    """Freeze the first layers from an epoch on (paper App. D.5): their weights and BatchNorm statistics stop."""

    through: str  # every layer up to and including the last one whose name starts with this, e.g. "block1"
    from_epoch: int = Field(ge=1)  # frozen during this epoch and every later one


class TrainConfig(Section):
    method: str = "pgd"  # `rayrs sweep --help` lists them: standard, pgd, trades, fast
    threat_model: str = "linf"
    eps: Eps | None = None  # None: the threat model's default for the dataset (the paper's; `rayrs.attacks`)
    attack: AttackSettings = Field(default_factory=AttackSettings)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: Number = Field(default=0.1, gt=0)  # the peak learning rate of the schedule
    momentum: Number = Field(default=0.9, ge=0, lt=1)
    weight_decay: Number | None = Field(default=None, ge=0)  # None: the method's (5e-4; TRADES 2e-4)
    schedule: Literal["piecewise", "cosine", "cyclic", "constant"] | None = None  # None: the method's
    trades_beta: Number = Field(default=6.0, gt=0)  # TRADES' robustness weight (Zhang et al. 2019)
    freeze: FreezeConfig | None = None
    augment: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # torch.compile the model. auto: on CUDA only, where it made a WRN-28-10 PGD-10 step 1.55x faster (H200,
    # benchmarks/results); on a CPU its compile time is rarely won back.
    compile: Literal["auto"] | bool = "auto"
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        """Fill the method's own weight decay and schedule where the sweep leaves them unset."""
        from rayrs.train import METHODS

        name = data.get("method", "pgd") if isinstance(data, dict) else None
        if isinstance(name, str) and (method := METHODS.get(name)) is not None:
            data = dict(data)
            for key, default in (("weight_decay", method.weight_decay), ("schedule", method.schedule)):
                if data.get(key) is None:
                    data[key] = default
        return data

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
        return self.method != "standard" and bool(self.eps)


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

    @model_validator(mode="after")
    def _default_eps(self) -> TrialConfig:
        """An unset training eps is the threat model's default for the dataset (8/255 for l_inf on CIFAR-10)."""
        if self.train.eps is None:
            from rayrs.attacks import default_eps

            eps = default_eps(self.train.threat_model, self.data.dataset)
            # Still inside validation: the one place a frozen settings object may be completed.
            object.__setattr__(self, "train", self.train.model_copy(update={"eps": eps}))
        return self

    def fingerprint(self) -> str:
        """Short content hash: two trials with the same fingerprint produce the same checkpoints.

        Where the dataset's files live (``data.root``) is not part of it: moving the data keeps the results.
        """
        canonical = json.dumps(self.model_dump(mode="json", exclude={"data": {"root"}}), sort_keys=True)
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


# -- comparisons: the `compare:` list ---------------------------------------------------------------------------
MAX_MATRIX_LAYERS = 8  # cross_epoch holds (epochs x layers) Grams of a minibatch at once for the epoch x epoch matrix


def _word_or_list(word: str, items: str, item_check: Any = None) -> BeforeValidator:
    """Accept ``word`` or a list (whose items pass ``item_check``), with a message people can act on."""

    def check(value: Any) -> Any:
        if value == word:
            return value
        if not isinstance(value, list):
            raise ValueError(f"give {word!r} or a list of {items}, got {value!r}")
        for item in value:
            if item_check is not None and not item_check(item):
                raise ValueError(f"give {word!r} or a list of {items}, got {item!r} in the list")
        return value

    return BeforeValidator(check)


def _is_pair(item: Any) -> bool:
    return isinstance(item, list) and len(item) == 2 and all(isinstance(name, str) for name in item)


Measure = Literal["cka", "procrustes", "svcca"]
Epochs = list[Annotated[int, Field(ge=1)]]
Trials = Annotated[Literal["all"] | list[str], _word_or_list("all", "trial names", lambda item: isinstance(item, str))]


class ComparisonSection(Section):
    """What every comparison kind shares: its similarity measures (paper App. B.1).

    ``cka`` is minibatch linear CKA over the whole probe (the paper's measure); ``procrustes`` (a distance in
    [0, 2]) and ``svcca`` (a similarity in [0, 1]) are computed on one minibatch of at most 1024 probe inputs
    (`rayrs.similarity.measures`).
    """

    measures: list[Measure] = Field(default_factory=lambda: ["cka"], min_length=1)

    @field_validator("measures")
    @classmethod
    def _each_measure_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"list each measure once, got {value}")
        return value


class CrossLayer(ComparisonSection):
    """Layer x layer similarity inside each trial's model on benign probes (paper Figs 2, 3)."""

    kind: Literal["cross_layer"] = "cross_layer"
    trials: Trials = "all"
    epochs: Literal["final"] | Epochs = "final"


class CrossModel(ComparisonSection):
    """Layer x layer similarity between two trials' final models on benign probes (Figs 2d, 7).

    ``pairs: all`` is every unordered pair of trials on the same dataset; else a list of ``[trial, trial]``.
    """

    kind: Literal["cross_model"] = "cross_model"
    pairs: Annotated[
        Literal["all"] | list[tuple[str, str]], _word_or_list("all", "[trial, trial] pairs", _is_pair)
    ] = "all"


class BenignVsAdversarial(ComparisonSection):
    """Each model's benign vs adversarial representations, every layer pair (Fig 4 is the diagonal).

    The adversarial probe is crafted on that very checkpoint with its trial's evaluation attack (PGD-20 in its
    own threat model at its evaluation eps, in the paper's settings).
    """

    kind: Literal["benign_vs_adversarial"] = "benign_vs_adversarial"
    trials: Trials = "all"
    epochs: Literal["final"] | Epochs = "final"


class Transfer(ComparisonSection):
    """Transferability (Fig 5): for every source x target pair of ``models`` on the same dataset, source ==
    target included (the white-box attack), the layer x layer similarity of source and target on the source's
    adversarial probe, and the target's accuracy on it (``measure: transfer_accuracy``). Final epochs."""

    kind: Literal["transfer"] = "transfer"
    models: Trials = "all"


class CrossEpoch(ComparisonSection):
    """Convergence over training (Figs 6, 25), benign and/or adversarial probes (each epoch its own attack).

    Every layer at each of ``epochs`` (default: every epoch) vs the same layer at the final epoch (Fig 6), and
    for ``layers`` (names or indices, negative from the end; default 4 evenly spaced) the epoch x epoch matrix
    (Fig 25). Only same-layer pairs are stored.
    """

    kind: Literal["cross_epoch"] = "cross_epoch"
    trials: Trials = "all"
    probes: list[Literal["benign", "adversarial"]] = Field(default_factory=lambda: ["benign"], min_length=1)
    epochs: Literal["all"] | Epochs = "all"
    layers: list[int | str] | None = None

    @field_validator("layers")
    @classmethod
    def _a_few_layers(cls, value: list[int | str] | None) -> list[int | str] | None:
        if value is not None and not 1 <= len(value) <= MAX_MATRIX_LAYERS:
            raise ValueError(
                f"give 1 to {MAX_MATRIX_LAYERS} layers for the epoch x epoch matrix, got {len(value)} (each one "
                "holds every epoch's Grams of a minibatch at once); every layer is already compared to the final epoch"
            )
        return value

    @field_validator("probes")
    @classmethod
    def _each_probe_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"list each probe once, got {value}")
        return value

    def matrix_layers(self, layers: list[Any]) -> tuple[int, ...]:
        """Indices of the epoch x epoch matrix's layers among a model's ``layers`` (`rayrs.models.Layer`s)."""
        count = len(layers)
        if self.layers is None:
            return tuple(sorted({round(i * (count - 1) / 3) for i in range(4)}))
        names = {layer.name: layer.index for layer in layers}
        chosen = []
        for layer in self.layers:
            if isinstance(layer, str):
                if layer not in names:
                    raise ValueError(
                        f"no layer named {layer!r}; the model's {count} layers are named like "
                        f"{', '.join(l.name for l in layers[:3])}, ..., {layers[-1].name}, or use an index"
                    )
                chosen.append(names[layer])
            elif not -count <= layer < count:
                raise ValueError(
                    f"layer index {layer} is out of range for the model's {count} layers (0..{count - 1}, or -{count}..-1)"
                )
            else:
                chosen.append(layer % count)
        return tuple(sorted(set(chosen)))


COMPARISONS: dict[str, type[ComparisonSection]] = {
    cls.model_fields["kind"].default: cls for cls in (CrossLayer, CrossModel, BenignVsAdversarial, Transfer, CrossEpoch)
}
Comparison = Annotated[
    CrossLayer | CrossModel | BenignVsAdversarial | Transfer | CrossEpoch, Field(discriminator="kind")
]


def probe_dataset(config: TrialConfig) -> str:
    """The dataset a trial's probes come from; two models can only be compared on the same one."""
    from rayrs.data import DATASETS

    size = config.data.image_size or DATASETS[config.data.dataset].default_image_size
    return f"{config.data.dataset} at {size} px"


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
    elif first["type"] == "union_tag_not_found":
        message = f"a comparison needs a `kind:`, one of: {', '.join(comparison_kinds())}"
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
    return list(COMPARISONS)


def _axis_path(axis: str) -> tuple[str, ...]:
    path = tuple(AXIS_ALIASES.get(axis, axis).split("."))
    model: type[BaseModel] = TrialConfig
    for depth, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            options = sorted(AXIS_ALIASES) + [f"{'.'.join(path[:depth] + (name,))}" for name in model.model_fields]
            raise ValueError(f"grid axis {axis!r} is not a trial field; use one of: {', '.join(options)}")
        if depth < len(path) - 1:
            section = _section_model(field.annotation)
            if section is None:
                raise ValueError(f"grid axis {axis!r}: {'.'.join(path[: depth + 1])} has no sub-fields")
            model = section
    return path


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The settings class behind a field's annotation (``FreezeConfig | None`` -> FreezeConfig), if any."""
    candidates = typing.get_args(annotation) or (annotation,)
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        if tree.get(part) is None:  # an unset optional section, e.g. train.freeze
            tree[part] = {}
        tree = tree[part]
    tree[path[-1]] = value


def _format_value(value: Any) -> str:
    """A grid value as the user wrote it, made filesystem-safe: ``8/255`` -> ``8_255``, ``0.1`` -> ``0.1``."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text)


def canonical_axes(axes: dict[str, Any]) -> dict[str, Any]:
    """``axes`` in the one order every reader uses: the order of the fields they set in `TrialConfig`
    (data, model, train, eval, each field in its declared order; ``eps`` and ``train.eps`` alike).

    A sweep file's YAML keeps its axes in the order written, ``sweep.json`` sorts them: both give the same
    trials, in the same order, with the same names.
    """

    def position(axis: str) -> tuple:
        model: type[BaseModel] = TrialConfig
        place = []
        for part in _axis_path(axis):
            place.append(list(model.model_fields).index(part))
            field = model.model_fields[part]
            model = _section_model(field.annotation) or model
        return (*place, axis)

    return {axis: axes[axis] for axis in sorted(axes, key=position)}


def trial_name(axes: dict[str, Any]) -> str:
    """A trial's name: the one place names are made. Readable, from the grid values as written, in canonical
    axis order (`canonical_axes`): ``eps8_255-width2-seed0``, ``trades-seed1``.

    Always a safe path component (`rayrs.storage.safe_name`): never ``.`` or ``..``, no separators, bounded.
    """
    from rayrs.storage import safe_name

    if not axes:
        return "trial"
    parts = []
    for axis, value in canonical_axes(axes).items():
        short = axis.rsplit(".", 1)[-1]
        is_fraction = isinstance(value, str) and parse_number(value) is not value
        parts.append(_format_value(value) if isinstance(value, str) and not is_fraction else f"{short}{_format_value(value)}")
    return safe_name("-".join(parts))


def expand(experiment: Experiment, source: str | Path = "sweep") -> list[TrialSpec]:
    """The experiment's trials: the product of each grid's axes (the union over a list of grids)."""
    base = {section: getattr(experiment, section).model_dump(mode="json") for section in ("data", "model", "train", "eval")}
    grids = experiment.grid if isinstance(experiment.grid, list) else [experiment.grid]
    grids = [canonical_axes(axes) for axes in grids]  # the YAML's order and sweep.json's give the same trials
    points = [dict(zip(axes, values)) for axes in grids for values in itertools.product(*axes.values())]
    # Names show only the axes that vary across the sweep: a one-value axis tells trials nothing apart.
    varying = {axis for axis in {a for p in points for a in p} if len({json.dumps(p.get(axis)) for p in points}) > 1}
    trials: list[TrialSpec] = []
    seen_names: dict[str, str] = {}  # name without case -> name
    seen_configs: dict[str, str] = {}
    for written in points:
        point = {axis: parse_number(value) for axis, value in written.items()}
        tree = json.loads(json.dumps(base))
        for axis, value in point.items():
            _set_path(tree, _axis_path(axis), value)
        name = trial_name({axis: value for axis, value in written.items() if axis in varying})
        try:
            config = _normalise(TrialConfig.model_validate(tree))
        except ValidationError as error:
            where = ", ".join(f"{axis}={value}" for axis, value in written.items())
            raise SweepFileError(f"{source}: grid point {where}: {describe(error)}") from None
        twin = seen_names.get(name.lower())
        if twin is not None:
            # Compared without case: on a case-insensitive filesystem (macOS) the two would share one folder.
            where = ", ".join(f"{axis}={value}" for axis, value in written.items())
            raise SweepFileError(
                f"{source}: grid: the trial at {where} would be named {name!r}, like an earlier one ({twin!r}); "
                "make the grid values distinct in letters, digits, '_', '.' and '-'"
            )
        if config.fingerprint() in seen_configs:
            raise SweepFileError(
                f"{source}: grid: trials {seen_configs[config.fingerprint()]!r} and {name!r} are identical "
                "(eps 0 and method standard both mean non-robust training); list each trial once, e.g. with a list of grids"
            )
        seen_names[name.lower()] = name
        seen_configs[config.fingerprint()] = name
        trials.append(TrialSpec(name=name, experiment=experiment.name, config=config, axes=point))
    for index, comparison in enumerate(experiment.compare):
        try:
            _check_comparison(comparison, trials)
        except ValueError as error:
            raise SweepFileError(f"{source}: compare.{index}.{comparison.kind}.{error}") from None
    return trials


def _check_comparison(comparison: ComparisonSection, trials: list[TrialSpec]) -> None:
    """Trials named, epochs, datasets and layers of one comparison; raises ``ValueError("<field>: what")``."""
    by_name = {t.name: t for t in trials}
    kind = comparison.kind

    def known(field: str, names: list[str]) -> list[TrialSpec]:
        for name in names:
            if name not in by_name:
                raise ValueError(
                    f"{field}: no trial named {name!r} in this sweep; its trials are: {', '.join(by_name)}"
                )
        return [by_name[name] for name in names]

    def same_probes(field: str, a: TrialSpec, b: TrialSpec) -> None:
        if probe_dataset(a.config) != probe_dataset(b.config):
            raise ValueError(
                f"{field}: trials {a.name!r} ({probe_dataset(a.config)}) and {b.name!r} ({probe_dataset(b.config)}) "
                f"see different probe datasets; {kind} compares models on the same probe inputs"
            )

    def epochs_within(selected: list[TrialSpec], epochs: Any) -> None:
        if not isinstance(epochs, list):
            return
        for trial in selected:
            late = [e for e in epochs if e > trial.config.train.epochs]
            if late:
                raise ValueError(
                    f"epochs: {kind} epoch {late[0]} is past trial {trial.name!r}'s {trial.config.train.epochs} epochs"
                )

    selected = trials
    if getattr(comparison, "trials", "all") != "all":
        selected = known("trials", comparison.trials)
    if isinstance(comparison, (CrossLayer, BenignVsAdversarial, CrossEpoch)):
        epochs_within(selected, comparison.epochs)
    if isinstance(comparison, CrossModel) and comparison.pairs != "all":
        for first, second in comparison.pairs:
            a, b = known("pairs", [first, second])
            if a.name == b.name:
                raise ValueError(f"pairs: [{first}, {second}] compares a trial with itself; that is cross_layer")
            same_probes("pairs", a, b)
    if isinstance(comparison, Transfer) and comparison.models != "all":
        models = known("models", comparison.models)
        for model in models[1:]:
            same_probes("models", models[0], model)
    if isinstance(comparison, CrossEpoch) and comparison.layers is not None:
        from rayrs.similarity.jobs import model_layers

        for trial in selected:
            try:
                comparison.matrix_layers(model_layers(trial.config))
            except ValueError as error:
                raise ValueError(f"layers: trial {trial.name!r}: {error}") from None


def _normalise(config: TrialConfig) -> TrialConfig:
    """eps 0 is standard training, and standard training has eps 0: one trial, one spelling."""
    if config.train.method == "standard" or config.train.eps == 0:
        train = config.train.model_copy(update={"method": "standard", "eps": 0.0})
        return config.model_copy(update={"train": train})
    return config
