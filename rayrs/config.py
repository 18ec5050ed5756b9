"""Sweep files: YAML in, a typed and validated `Experiment` out, expanded into one `TrialSpec` per grid point.

A sweep file has a base trial (``data``, ``model``, ``train``, ``eval``), a ``grid`` whose axes override
fields of the base trial (the product of the axes gives the trials; a list of grids gives the union of their
products), the comparisons to compute (``compare``), the CKA settings and the resources of a trial; and,
beside or instead of the grid, networks rayrs did not train (``models``: `ModelEntry`, compared as trials are)
and where to track the trials (``tracking``: MLflow / W&B, `TrackingConfig`)::

    name: quickstart
    data: {dataset: digits}
    model: {arch: wrn, depth: 10, width: 2}
    train: {method: pgd, threat_model: linf, epochs: 8}
    grid: {eps: [0, 0.1, 0.2], seed: [0]}
    compare: [{kind: cross_layer}]

Units: ``eps`` is on the [0, 1] pixel scale for ``linf`` and ``l2`` and may be written as a fraction such as
``8/255``. ``eps: 0`` means standard (non-robust) training; ``method: standard`` always trains with eps 0.
Every error names the file, the field and what is allowed, in one line (`SweepFileError`).

What can be checked is checked here, before anything is written: numbers are finite and never booleans, eps lies
in its threat model's range (`rayrs.attacks.ThreatModel.max_eps`), ``train.freeze`` names layers of the model
(built on the meta device), and a sweep file's size, its YAML aliases, its trials and its comparison jobs are
counted against limits (`MAX_SWEEP_FILE_BYTES`, `MAX_YAML_VALUES`, ``max_trials``, ``max_jobs``) before anything
is expanded.

Why one module of ~1250 lines: it is the sweep file's whole grammar, and a reader checking what a field means,
how it is validated and how it reaches a trial's fingerprint or name wants it in one place; the registries it
validates against (methods, threat models, layer listing, datasets) live on the floor below.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from rayrs.attacks import THREAT_MODELS, attack_schedule, default_eps
from rayrs.data import DATASETS
from rayrs.errors import UserError
from rayrs.methods import METHODS
from rayrs.models import MODELS, NORMALIZATIONS, build_model, model_layers


# Bounds past which a value can only be a mistake, and would cost minutes or overflow before a trial starts:
# every trial's model is built on the meta device to check it (WRN-202 already takes seconds), datasets are
# held whole on the device (50000 images at 1024 px are 157 GB), and the seed feeds torch's 64-bit generators
# multiplied by 100003 (rayrs.train.epoch_generator).
MAX_DEPTH = 202
MAX_WIDTH = 64
MAX_IMAGE_SIZE = 1024
MAX_SEED = 2**32 - 1

# Size limits of a sweep file, checked before anything is expanded: a sweep file is a few hundred bytes, and
# a grid of a million trials (three axes of 100 values) is a typo long before it is an experiment. Raise
# `max_trials` in the sweep file to run a bigger grid on purpose.
MAX_TRIALS = 1000
MAX_JOBS = 100_000  # comparison jobs, counted from the trials before any is planned
MAX_EPOCHS = 10_000  # per trial: cross_epoch plans one comparison per kept epoch
MAX_SWEEP_FILE_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000  # values once YAML aliases are expanded (an alias bomb is tiny on disk)


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


def refuse_booleans(value: Any) -> Any:
    """YAML's ``true``/``false`` are not numbers (pydantic alone would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError(f"give a number, got {str(value).lower()}")
    return value


def finite_number(value: Any) -> Any:
    """A number as written (``8/255`` allowed), refusing booleans, infinities and NaN before any bound is checked."""
    value = parse_number(refuse_booleans(value))
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
    except (ValueError, OverflowError):
        return value  # not a number at all: pydantic says so
    if number is not None and not math.isfinite(number):
        raise ValueError(f"give a finite number, got {value!r}" if isinstance(value, str) else f"give a finite number, got {number}")
    return value


# Numbers are finite (.inf and .nan are refused) and never booleans; ints are never booleans.
Number = Annotated[float, BeforeValidator(finite_number), Field(allow_inf_nan=False)]
Eps = Annotated[Number, Field(ge=0)]  # checked against the threat model's range by TrialConfig
Int = Annotated[int, BeforeValidator(refuse_booleans)]


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
    image_size: Int | None = Field(default=None, ge=8, le=MAX_IMAGE_SIZE)  # None: the dataset's native size

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _check_name(value, DATASETS, "dataset")


class ModelConfig(Section):
    arch: str = "wrn"
    depth: Int | None = Field(default=None, ge=1, le=MAX_DEPTH)  # None: the architecture's default (WRN: 28)
    width: Int | None = Field(default=None, ge=1, le=MAX_WIDTH)  # WRN widening factor k; None: default (WRN: 10)
    # What the model does to its [0, 1] pixels first (rayrs.models.NORMALIZATIONS): none (the paper's code), or
    # imagenet or cifar10 (ResNets only). Left out of the trial fingerprint when none: trials from before it keep theirs.
    normalize: str = "none"

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        if ":" in value:  # `<family>:<name>` (torchvision:resnet50): a model entry's, checked by building it
            return value
        return _check_name(value, MODELS, "model")

    @field_validator("normalize")
    @classmethod
    def _known_normalization(cls, value: str) -> str:
        return _check_name(value, NORMALIZATIONS, "normalize")

    @model_validator(mode="after")
    def _buildable(self) -> ModelConfig:
        _check_architecture(self.arch, self.depth, self.width, self.normalize)
        return self


@functools.lru_cache(maxsize=256)
def _check_architecture(arch: str, depth: int | None, width: int | None, normalize: str = "none") -> None:
    """Build the model on the meta device (no memory, no weights): a bad depth/width fails here, not on a GPU node.

    ``<family>:<name>`` architectures (model entries only: `ModelEntry`) are built by
    `rayrs.sources.build_architecture`, imported here when needed (it stands on this module)."""
    try:
        with torch.device("meta"):
            if ":" in arch:
                from rayrs.sources import build_architecture

                build_architecture(arch, num_classes=10, in_channels=3, depth=depth, width=width, normalize=normalize)
            else:
                build_model(arch, num_classes=10, in_channels=3, depth=depth, width=width, normalize=normalize)
    except UserError as error:
        raise ValueError(str(error)) from None


class AttackSettings(Section):
    """An attack run. Unset ``steps``/``step_size`` take the threat model's defaults for the dataset
    (`rayrs.attacks.attack_schedule`): for l_inf on CIFAR-10, PGD-10 with steps of 2/255 in training and
    PGD-20 at evaluation, as in the paper."""

    steps: Int | None = Field(default=None, ge=1)
    step_size: Number | None = Field(default=None, gt=0)
    random_start: bool = True
    bn_eval: bool = True  # attack with BatchNorm in eval mode (train mode restored afterwards)
    restarts: Int = Field(default=1, ge=1)  # evaluation only: an example counts as robust if no restart fools it


class AutoFreezeConfig(Section):
    """CKA-guided freezing (issue 17; the paper's §7 "staggered freezing"): after each epoch, each residual block's
    output on a fixed probe of training images is compared (linear CKA, unbiased HSIC) with the previous epoch's;
    the longest prefix of blocks whose CKA stayed >= ``threshold`` for ``patience`` epochs in a row is frozen from
    the next epoch on, and never unfrozen (`rayrs.freezing`). A threshold above 1 never freezes (trace only)."""

    threshold: Number = Field(default=0.995, ge=-1)  # CKA(block now, block one epoch ago) on the benign probe
    # ... and on the adversarial probe (robust methods; None: `threshold`). 0.99: what two random starts of the
    # attack on one unchanged model give (0.986-0.995 measured on digits), so the attack's own randomness is not
    # read as the block still changing. Why two thresholds and their values: rayrs.freezing.
    adversarial_threshold: Number | None = Field(default=0.99, ge=-1)
    patience: Int = Field(default=2, ge=1)  # consecutive epochs at or above the threshold(s)
    # Training images (fixed by the seed); the Grams are probe^2 floats. None: 256, at most 1/20 of the training
    # set (rayrs.freezing.default_probe_size), which keeps the check near 3% of an epoch on a small dataset.
    probe: Int | None = Field(default=None, ge=4, le=1024)
    # Robust methods: how many of the probe's images (its first ones) are also attacked for the adversarial Gram.
    # None: half the probe, at least 32 (rayrs.freezing.default_adversarial_probe): the attack is most of the
    # check's cost, and the adversarial threshold (0.99) is coarser than the benign one.
    adversarial_probe: Int | None = Field(default=None, ge=4, le=1024)


class FreezeConfig(Section):
    """Freeze the first layers: from a fixed epoch on (``through`` + ``from_epoch``, paper App. D.5), or where
    the probe CKA says they have converged (``auto``). Frozen layers' weights and BatchNorm statistics stop."""

    through: str | None = Field(default=None, min_length=1)  # every layer up to and including the last one whose name starts with this, e.g. "block1"
    from_epoch: Int | None = Field(default=None, ge=1)  # frozen during this epoch and every later one
    auto: AutoFreezeConfig | None = None  # e.g. {} for the defaults

    @model_validator(mode="after")
    def _one_form(self) -> FreezeConfig:
        static = [name for name in ("through", "from_epoch") if getattr(self, name) is not None]
        if self.auto is not None and static:
            raise ValueError(f"give either auto (CKA-guided) or through + from_epoch (a fixed epoch), not both; remove {' and '.join(static)}")
        if self.auto is None and len(static) < 2:
            missing = next(name for name in ("through", "from_epoch") if getattr(self, name) is None)
            raise ValueError(f"{missing} is missing: give through + from_epoch, or auto: {{}} for CKA-guided freezing")
        return self


class TrainConfig(Section):
    method: str = "pgd"  # `rayrs sweep --help` lists them: standard, pgd, trades, fast
    threat_model: str = "linf"
    eps: Eps | None = None  # None: the threat model's default for the dataset (the paper's; `rayrs.attacks`)
    attack: AttackSettings = Field(default_factory=AttackSettings)
    epochs: Int = Field(default=10, ge=1, le=MAX_EPOCHS)
    batch_size: Int = Field(default=128, ge=1)
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
    seed: Int = Field(default=0, ge=0, le=MAX_SEED)

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        """Fill the method's own weight decay and schedule where the sweep leaves them unset."""
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
        return _check_name(value, METHODS, "training method")

    @field_validator("threat_model")
    @classmethod
    def _known_threat_model(cls, value: str) -> str:
        return _check_name(value, THREAT_MODELS, "threat model")

    @property
    def robust(self) -> bool:
        return self.method != "standard" and bool(self.eps)


class EvalConfig(Section):
    """Per-epoch evaluation: clean and robust accuracy on fixed subsets of the train and test sets."""

    eps: Eps | None = None  # None: the training eps, or for standard training the paper's eps (TrialConfig.eval_eps)
    attack: AttackSettings = Field(default_factory=AttackSettings)
    train_subset: Int = Field(default=512, ge=1)
    test_subset: Int = Field(default=512, ge=1)
    batch_size: Int = Field(default=256, ge=1)


class CheckpointConfig(Section):
    """What each epoch's checkpoint keeps (`rayrs.checkpoint`). Every epoch's weights are kept (the cross-epoch
    figures read them); training resumes exactly whatever is chosen here.

    optimizer: ``last`` keeps the optimiser state of the latest committed epoch only (the previous epoch's is
    deleted once the new epoch has committed: half the bytes of ``every``); ``every`` keeps it for every epoch.
    weights_dtype: the dtype the weights are archived in. ``bfloat16`` halves the archive; the latest epoch's
    float32 weights are then kept with its optimiser state, so a resume is still exact.
    """

    optimizer: Literal["last", "every"] = "last"
    weights_dtype: Literal["float32", "bfloat16"] = "float32"


class TrialConfig(Section):
    """Everything that determines one training run (and therefore its checkpoints)."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _default_eps(self) -> TrialConfig:
        """An unset training eps is the threat model's default for the dataset (8/255 for l_inf on CIFAR-10)."""
        if self.train.eps is None:
            eps = default_eps(self.train.threat_model, self.data.dataset)
            # Still inside validation: the one place a frozen settings object may be completed.
            object.__setattr__(self, "train", self.train.model_copy(update={"eps": eps}))
        return self

    @model_validator(mode="after")
    def _eps_within_range(self) -> TrialConfig:
        """Training and evaluation eps inside the threat model's range for these inputs (`ThreatModel.max_eps`)."""
        threat = THREAT_MODELS[self.train.threat_model]
        dataset = DATASETS[self.data.dataset]
        size = self.data.image_size or dataset.default_image_size
        low, high = threat.eps_range(dataset.channels * size * size)
        for field, eps in (("train.eps", self.train.eps), ("eval.eps", self.eval.eps)):
            if eps is not None and not low <= eps <= high:
                hint = f"; for {eps:g} on the 0-255 scale write {eps:g}/255" if threat.name == "linf" and eps <= 255 else ""
                raise ValueError(
                    f"{field}: {eps:g} is outside {threat.name}'s range [{low:g}, {high:g}] for {self.data.dataset} at "
                    f"{size} px (eps is the {threat.unit}){hint}"
                )
        return self

    @model_validator(mode="after")
    def _freeze_names_layers(self) -> TrialConfig:
        """``train.freeze`` names layers of this model and an epoch of this training (checked on the meta device)."""
        freeze = self.train.freeze
        if freeze is None:
            return self
        if freeze.auto is not None:
            # The first CKA comes after epoch 2 (against epoch 1); a block needs `patience` of them, then an epoch to be frozen in.
            if freeze.auto.patience + 2 > self.train.epochs:
                raise ValueError(
                    f"train.freeze.auto.patience: {freeze.auto.patience} epochs of stable CKA cannot fit in {self.train.epochs} "
                    f"epochs (the first CKA is after epoch 2, freezing starts the epoch after); give patience <= "
                    f"{max(self.train.epochs - 2, 1)} or more epochs"
                )
            if not model_layers(self, ("block",)):
                raise ValueError(f"train.freeze.auto: model {self.model.arch} has no residual blocks to freeze")
            return self
        if freeze.from_epoch > self.train.epochs:
            raise ValueError(
                f"train.freeze.from_epoch: {freeze.from_epoch} is past the last epoch ({self.train.epochs}), so nothing "
                "would be frozen; give an epoch within train.epochs, or remove train.freeze"
            )
        layers = model_layers(self)
        if not any(layer.name.startswith(freeze.through) for layer in layers):
            prefixes = dict.fromkeys(layer.name.split(".")[0] for layer in layers)  # in network order
            raise ValueError(
                f"train.freeze.through: no layer name starts with {freeze.through!r}; layers start with: {', '.join(prefixes)}"
            )
        return self

    def fingerprint(self) -> str:
        """Short content hash: two trials with the same fingerprint produce the same checkpoints.

        Where the dataset's files live (``data.root``) is not part of it: moving the data keeps the results.
        Nor is ``model.normalize`` at its default (none), so the trials of sweeps from before it keep theirs,
        nor the unset form of ``train.freeze`` (``auto`` for a static freeze, ``through``/``from_epoch`` for auto).
        Nor is ``checkpoint.optimizer``: it decides only which optimiser files stay, never a weight, a metric or
        anything a comparison reads. ``checkpoint.weights_dtype`` is, when not float32: bf16 archives are other
        weights for every comparison, and content-addressed comparison jobs must not mistake one for the other.
        """
        exclude: dict[str, Any] = {"data": {"root"}, "checkpoint": {"optimizer"}}
        if self.model.normalize == "none":
            exclude["model"] = {"normalize"}
        if self.checkpoint.weights_dtype == "float32":
            exclude["checkpoint"] = True
        if (freeze := self.train.freeze) is not None:  # unset forms of train.freeze: static trials keep their fingerprint
            exclude["train"] = {"freeze": {name for name in ("through", "from_epoch", "auto") if getattr(freeze, name) is None}}
        canonical = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def attack_schedule(self, phase: Literal["train", "eval"]) -> tuple[float, int, float]:
        """(eps, steps, step size) of the training or evaluation attack, every default resolved."""
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


Measure = Literal["cka", "procrustes", "svcca", "svcca_variance"]
# The compared layer types (rayrs.models: PAPER_LAYER_TYPES, then BLOCK); spelled out here so that reading a
# sweep file needs no torch import. A test checks that the two lists agree.
LayerType = Literal["conv", "bn", "act", "pool", "linear", "block"]
PAPER_LAYERS: tuple[str, ...] = ("conv", "bn", "act", "pool", "linear")
NAME_PATTERN = "name:"  # rayrs.models.NAME_PATTERN, spelled out for the same reason


def _layer_spec(value: Any) -> Any:
    """A layer type, or ``name:<glob>``: the modules whose path matches (`rayrs.models.name_pattern`)."""
    if value in typing.get_args(LayerType) or (isinstance(value, str) and value.startswith(NAME_PATTERN)
                                               and len(value) > len(NAME_PATTERN)):
        return value
    raise ValueError("Input should be 'conv', 'bn', 'act', 'pool', 'linear' or 'block', or name:<glob> for modules "
                     "by path (name:blocks.* for a ViT's transformer blocks; * stays within a dotted part, ** crosses)")


LayerSpec = Annotated[str, BeforeValidator(_layer_spec)]


def _each_once(value: list[Any]) -> list[Any]:
    if len(set(value)) != len(value):
        raise ValueError(f"list each epoch once, got {value[:20]}{' ...' if len(value) > 20 else ''}")
    return value


Epochs = Annotated[list[Annotated[Int, Field(ge=1)]], AfterValidator(_each_once)]
Trials = Annotated[Literal["all"] | list[str], _word_or_list("all", "trial names", lambda item: isinstance(item, str))]


class ComparisonSection(Section):
    """What every comparison kind shares: its similarity measures (paper App. B.1).

    ``cka`` is minibatch linear CKA over the whole probe (the paper's measure); ``procrustes`` (a distance in
    [0, 2]), ``svcca`` (a similarity in [0, 1]: each layer's top 20 directions, as the paper's code) and
    ``svcca_variance`` (the directions of 99% of the variance, Raghu et al. 2017) are computed on one
    minibatch of at most 1024 probe inputs (`rayrs.similarity.measures`).

    ``layer_types``: which layers are compared, in execution order: by default the paper's "all layers"
    (conv, bn, act, pool, linear; §2); ``block`` adds each residual block's output (after the addition), and
    ``name:<glob>`` the modules whose path matches (``name:blocks.*``: a ViT's transformer blocks).
    The rows' ``layer_*`` indices count the compared layers only (`rayrs.schema`).
    """

    measures: list[Measure] = Field(default_factory=lambda: ["cka"], min_length=1)
    layer_types: list[LayerSpec] = Field(default_factory=lambda: list(PAPER_LAYERS), min_length=1)

    @field_validator("measures", "layer_types")
    @classmethod
    def _each_once(cls, value: list[str], info: Any) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"list each {info.field_name.removesuffix('s').replace('_', ' ')} once, got {value}")
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
    for ``layers`` (names or indices among the compared layers, negative from the end; default 4 evenly
    spaced) the epoch x epoch matrix (Fig 25). Only same-layer pairs are stored. ``layer_types`` defaults to
    the paper's five and ``block``: Fig 6 plots "the output of the first two blocks", a residual block's output.
    """

    kind: Literal["cross_epoch"] = "cross_epoch"
    layer_types: list[LayerSpec] = Field(default_factory=lambda: [*PAPER_LAYERS, "block"], min_length=1)
    trials: Trials = "all"
    probes: list[Literal["benign", "adversarial"]] = Field(default_factory=lambda: ["benign"], min_length=1)
    epochs: Literal["all"] | Epochs = "all"
    layers: list[Int | str] | None = None

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
                        f"no layer named {layer!r}; the model's {count} layers of types "
                        f"{', '.join(self.layer_types)} are named like {', '.join(l.name for l in layers[:3])}, ..., "
                        f"{layers[-1].name}, or use an index"
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
    size = config.data.image_size or DATASETS[config.data.dataset].default_image_size
    return f"{config.data.dataset} at {size} px"


# Images larger than this many pixels a side are "large resolution" to `pool_features: large_images`.
LARGE_IMAGE_PX = 64


class CkaConfig(Section):
    """Minibatch CKA settings; the paper uses batches of 1024 and 3 passes over the probe set.

    ``pool_features``: spatially average every 4-D activation to (n, channels) before comparing it, as the
    paper code's ``cka.py --pool_features`` ("Spatial pooling (avgpool) of features to reduce memory
    overhead (used for large resolution images)"), for every measure. ``large_images`` pools only models whose
    probe images are larger than `LARGE_IMAGE_PX` (Imagenette / Imagewoof at 224 px, not CIFAR-10 or digits).
    rayrs needs no pooling for memory (a layer becomes its n x n Gram in its hook); it changes the values.
    """

    probe_size: Int = Field(default=1024, ge=4)  # benign probe inputs: the first N test images
    batch_size: Int = Field(default=1024, ge=4)
    passes: Int = Field(default=3, ge=1)  # each pass shuffles the probe set differently
    pool_features: bool | Literal["large_images"] = False

    @field_validator("pool_features", mode="before")
    @classmethod
    def _pooling(cls, value: Any) -> Any:
        if not isinstance(value, bool) and value != "large_images":
            raise ValueError(f"give true, false or large_images, got {value!r}")
        return value

    def pools(self, config: TrialConfig) -> bool:
        """Whether a trial's model is compared on spatially averaged features."""
        if self.pool_features == "large_images":
            size = config.data.image_size or DATASETS[config.data.dataset].default_image_size
            return size > LARGE_IMAGE_PX
        return self.pool_features


class Resources(Section):
    cpus_per_trial: Number = Field(default=1, gt=0)
    gpus_per_trial: Number = Field(default=0, ge=0)  # fractional packs trials on a GPU, e.g. 0.25
    cpus_per_job: Number = Field(default=1, gt=0)  # similarity jobs
    gpus_per_job: Number = Field(default=0, ge=0)


class MlflowTracking(Section):
    """MLflow: one run per trial in ``experiment`` (default: the sweep's name), logged through Ray Tune's
    ``MLflowLoggerCallback`` (`rayrs.tracking`). ``tracking_uri``: ``file:///abs/mlruns``, ``http://host:5000``,
    ...; None: MLflow's own default (``MLFLOW_TRACKING_URI``)."""

    tracking_uri: str | None = None
    experiment: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)  # set on every run, next to rayrs's own


class WandbTracking(Section):
    """Weights & Biases: one run per trial in ``project``, grouped by ``group`` (default: the sweep's name),
    through Ray Tune's ``WandbLoggerCallback`` (`rayrs.tracking`). ``mode``: None is W&B's own (``WANDB_MODE``,
    else online); ``dir``: where W&B writes its files (None: W&B's default, the trial's folder under ``ray/``).
    The API key comes from ``wandb login`` or ``WANDB_API_KEY``, never from the sweep file."""

    project: str
    entity: str | None = None
    group: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None
    dir: str | None = None


class TrackingConfig(Section):
    """Experiment trackers that get each trial's parameters and per-epoch metrics (optional extra:
    ``uv sync --extra tracking``). Not part of any trial's fingerprint: a sweep may add them on ``--resume``."""

    mlflow: MlflowTracking | None = None
    wandb: WandbTracking | None = None


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


def _weights_files(value: Any) -> Any:
    """A weights path, or a non-empty mapping epoch -> path, each path a non-empty string."""
    files = value.values() if isinstance(value, dict) else [value]
    if isinstance(value, dict) and not value:
        raise ValueError("give a weights file, or a mapping epoch -> weights file with at least one epoch")
    for path in files:
        if not isinstance(path, str) or not path.strip():
            raise ValueError(f"give the path of a .safetensors or PyTorch state dict file, got {path!r}")
    return value


class ModelEntry(Section):
    """A network rayrs did not train, compared exactly as a trained trial (issue 16): one item of a sweep
    file's ``models:`` list, e.g. ``{name: rn18, arch: "torchvision:resnet18", weights: rn18.safetensors}``.

    ``arch``: one of rayrs's (wrn with ``depth``/``width``, the ResNets) or ``<family>:<name>``
    (`rayrs.sources.build_architecture`: ``torchvision:resnet50``, ...), fed [0, 1] pixels, ``normalize``
    applied inside it first. ``weights``: one file (the model's only epoch, numbered 1), or a mapping
    epoch -> file (cross_epoch compares them); safetensors, or a PyTorch state dict read with
    ``weights_only=True`` (`rayrs.weights`), bare or RobustBench-style; a relative path is taken from the
    working directory, as ``data.root`` is. The probe is the sweep's ``data`` section; ``image_size``
    (default: its) and ``num_classes`` (default: the dataset's) fit the model to it.
    ``threat_model`` and ``eps``: what the model was trained against, and so the attack that crafts its
    adversarial probes (benign_vs_adversarial, transfer) with the sweep's ``eval`` settings, as for a trial;
    eps 0 is a non-robust model, attacked at the threat model's default eps as a standard trial is.
    ``method`` labels it in the report (standard, pgd, trades, fast; default: pgd when eps > 0, else standard).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=100)
    arch: str
    depth: Int | None = Field(default=None, ge=1, le=MAX_DEPTH)
    width: Int | None = Field(default=None, ge=1, le=MAX_WIDTH)
    normalize: str = "none"
    weights: Annotated[str | dict[Annotated[Int, Field(ge=1, le=MAX_EPOCHS)], str], BeforeValidator(_weights_files)]
    image_size: Int | None = Field(default=None, ge=8, le=MAX_IMAGE_SIZE)
    num_classes: Int | None = Field(default=None, ge=1)
    method: str | None = None
    threat_model: str = "linf"
    eps: Eps = 0.0

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str | None) -> str | None:
        return value if value is None else _check_name(value, METHODS, "training method")

    @field_validator("threat_model")
    @classmethod
    def _known_threat_model(cls, value: str) -> str:
        return _check_name(value, THREAT_MODELS, "threat model")

    @model_validator(mode="after")
    def _buildable(self) -> ModelEntry:
        try:
            ModelConfig(arch=self.arch, depth=self.depth, width=self.width, normalize=self.normalize)
        except ValidationError as error:
            raise ValueError(describe(error)) from None
        return self

    @property
    def epochs(self) -> dict[int, str]:
        """epoch -> weights file as written (a single file is epoch 1)."""
        return dict(self.weights) if isinstance(self.weights, dict) else {1: self.weights}

    def trial_config(self, experiment: Experiment) -> TrialConfig:
        """The entry described as a trial would be: the sweep's data (at the entry's image size) and eval
        settings, its architecture, method, threat model and eps, and its last weights epoch as ``train.epochs``.
        Planning, probes and attacks read it exactly as a trained trial's."""
        data = experiment.data.model_dump(mode="json")
        if self.image_size is not None:
            data["image_size"] = self.image_size
        train = {"method": self.method or ("pgd" if self.eps else "standard"), "threat_model": self.threat_model,
                 "eps": self.eps, "epochs": max(self.epochs)}
        model = {"arch": self.arch, "depth": self.depth, "width": self.width, "normalize": self.normalize}
        return _normalise(TrialConfig.model_validate(
            {"data": data, "model": model, "train": train, "eval": experiment.eval.model_dump(mode="json")}
        ))


class Experiment(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    results: str = "results"  # folder or URI; this experiment's results go to <results>/<name>
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    grid: GridAxes | list[GridAxes] = Field(default_factory=dict)
    max_trials: Int = Field(default=MAX_TRIALS, ge=1)  # a grid of more trials is refused before it is expanded
    max_jobs: Int = Field(default=MAX_JOBS, ge=1)  # so are comparisons that would make more jobs
    compare: list[Comparison] = Field(default_factory=lambda: [CrossLayer()])
    cka: CkaConfig = Field(default_factory=CkaConfig)
    resources: Resources = Field(default_factory=Resources)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # MLflow / W&B (rayrs.tracking)
    # Networks rayrs did not train, compared beside (or instead of) the grid's trials (`ModelEntry`). A sweep
    # with models and no `grid:` trains nothing.
    models: list[ModelEntry] = Field(default_factory=list)

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

    @model_validator(mode="after")
    def _not_too_many_trials(self) -> Experiment:
        """Count the grid's trials from its axes (the product per grid, summed over a list) before expanding it."""
        grids = self.grid if isinstance(self.grid, list) else [self.grid]
        count = sum(math.prod(len(values) for values in axes.values()) for axes in grids)
        if count > self.max_trials:
            shape = " + ".join(" x ".join(f"{axis} {len(values)}" for axis, values in axes.items()) or "1" for axes in grids)
            raise ValueError(
                f"grid: {count} trials ({shape}) is more than max_trials ({self.max_trials}); shrink the grid, "
                f"or set `max_trials: {count}` at the top of the sweep file if you mean it"
            )
        return self


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

    @property
    def kept_epochs(self) -> tuple[int, ...]:
        """The epochs whose checkpoints a comparison may read: every epoch of training."""
        return tuple(range(1, self.config.train.epochs + 1))

    def layers(self, types: Any = PAPER_LAYERS) -> list[Any]:
        """The compared layers of ``types`` (`rayrs.models.Layer`s, built on the meta device)."""
        return model_layers(self.config, types)


class ModelEntrySpec(TrialSpec):
    """A model entry (`ModelEntry`) resolved for planning and running: ``config`` describes it as a trial
    (`ModelEntry.trial_config`), ``weights`` maps each epoch to its file's absolute path, ``num_classes`` is
    its classifier's width (None: the dataset's). ``digest`` is its fingerprint, a hash of its settings and
    its weights files' bytes (`rayrs.entries`): a changed file gives new comparison job ids. ``weights_sha256``:
    each epoch's file's SHA-256 at planning, checked again where the file is read to compute (`rayrs.weights`)."""

    weights: dict[int, str]
    num_classes: int | None = None
    digest: str | None = None
    weights_sha256: dict[int, str] | None = None

    @property
    def fingerprint(self) -> str:
        if self.digest is None:
            raise RuntimeError(f"model {self.name!r} has no digest yet: rayrs.entries.model_specs hashes its files")
        return self.digest

    @property
    def kept_epochs(self) -> tuple[int, ...]:
        return tuple(sorted(self.weights))

    def layers(self, types: Any = PAPER_LAYERS) -> list[Any]:
        from rayrs.sources import WeightsFileModel

        return WeightsFileModel(**self.source_settings()).layers(types)

    def source_settings(self, dataset_classes: int | None = None, device: Any = "cpu") -> dict[str, Any]:
        """The keyword arguments of its `rayrs.sources.WeightsFileModel` on ``device``. Its classifier's width
        is the entry's ``num_classes``, else ``dataset_classes`` (the loaded probe dataset's), else the
        registry's count for the dataset (`rayrs.data.DatasetInfo.class_count`: image_folder counts its folders)."""
        dataset = DATASETS[self.config.data.dataset]
        return {
            "arch": self.config.model.arch, "weights": dict(self.weights),
            "num_classes": self.num_classes or dataset_classes or dataset.class_count(self.config.data.root),
            "image_size": self.config.data.image_size or dataset.default_image_size,
            "in_channels": dataset.channels, "normalize": self.config.model.normalize,
            "depth": self.config.model.depth, "width": self.config.model.width, "device": device,
            "sha256": self.weights_sha256,
        }


def model_entries(experiment: Experiment, source: str | Path = "sweep") -> list[ModelEntrySpec]:
    """The experiment's ``models:`` entries as specs, without their digests (nothing is read from disk).

    Relative weights paths are resolved against the working directory."""
    specs = []
    for index, entry in enumerate(experiment.models):
        try:
            config = entry.trial_config(experiment)
        except ValidationError as error:
            raise SweepFileError(f"{source}: models.{index} ({entry.name}): {describe(error)}") from None
        weights = {epoch: str(Path(path).expanduser().absolute()) for epoch, path in entry.epochs.items()}
        specs.append(ModelEntrySpec(name=entry.name, experiment=experiment.name, config=config, axes={},
                                    weights=weights, num_classes=entry.num_classes))
    return specs


# ----------------------------------------------------------------------------------------------------
def load_experiment(path: str | Path) -> Experiment:
    """Read and validate a sweep file; every problem becomes a one-line `SweepFileError`.

    The file's size, the values its YAML aliases expand to and the number of trials its grid makes are bounded
    (`MAX_SWEEP_FILE_BYTES`, `MAX_YAML_VALUES`, ``max_trials``) and checked before anything is expanded.
    """
    path = Path(path)
    if path.is_dir():
        examples = sorted(path.glob("*.yaml"))
        hint = f", e.g. {examples[0]}" if examples else ""
        raise SweepFileError(f"{path} is a folder, not a sweep file; give one YAML file{hint}")
    if not path.exists():
        raise SweepFileError(f"{path}: no such sweep file")
    if not path.is_file():
        raise SweepFileError(f"{path} is not a regular file; give a YAML sweep file")
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SWEEP_FILE_BYTES + 1)
    except OSError as error:
        raise SweepFileError(f"{path}: cannot read it ({error.strerror or error})") from None
    if len(data) > MAX_SWEEP_FILE_BYTES:
        raise SweepFileError(f"{path}: larger than {MAX_SWEEP_FILE_BYTES >> 20} MiB; a sweep file is a few lines of YAML")
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())  # a reader error spans lines
        raise SweepFileError(f"{path}: not valid YAML{line}: {problem}") from None
    except RecursionError:
        raise SweepFileError(f"{path}: not valid YAML: nested too deeply") from None
    _check_expanded_size(raw, path)
    if not isinstance(raw, dict):
        raise SweepFileError(f"{path}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    if raw.get("models") and not raw.get("grid") and {"model", "train"} & set(raw):
        # A sweep of models alone trains nothing (`expand`): a base trial written beside them would be ignored.
        raise SweepFileError(
            f"{path}: grid: a sweep with `models:` trains only its grid's trials, and it has no grid, so its "
            f"`{'`/`'.join(sorted({'model', 'train'} & set(raw)))}` section would train nothing; add a grid "
            "(e.g. `grid: {seed: [0]}` for the base trial alone), or remove the section"
        )
    try:
        experiment = Experiment.model_validate(raw)
    except ValidationError as error:
        raise SweepFileError(f"{path}: {describe(error)}") from None
    expand(experiment, source=path)  # grid values are validated here, before anything runs
    return experiment


def _check_expanded_size(raw: Any, path: Path) -> None:
    """Refuse YAML whose aliases expand past `MAX_YAML_VALUES` values, or refer to themselves.

    PyYAML shares one object per anchor, so loading an alias bomb is cheap; whatever copies it (validation,
    JSON) would not be. Sizes are memoised by identity: counting is linear in the file, not in the expansion.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise SweepFileError(f"{path}: a YAML alias refers to a value that contains it; write the values out")
        open_nodes.add(key)
        children = [part for item in node.items() for part in item] if isinstance(node, dict) else node
        total = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        if total > MAX_YAML_VALUES:
            raise SweepFileError(
                f"{path}: its YAML aliases expand to more than {MAX_YAML_VALUES} values; a sweep file needs a few "
                "hundred (write the grid's values out, or shrink it)"
            )
        sizes[key] = total
        return total

    size(raw)


def describe(error: ValidationError) -> str:
    """The first validation problem as ``field: what is wrong``, in words a person can act on."""
    errors = error.errors()
    first = errors[0]
    path = _field_path(first["loc"])
    # A field that takes one of several forms (``epochs: final | [1, 2]``) fails once per form: report the form
    # the input got furthest into (a list with a bad item), or whose check had something to say (a list with an
    # epoch twice), not the first form tried.
    alternatives = [e for e in errors if _field_path(e["loc"])[: len(path)] == path]
    first = max(alternatives, key=lambda e: (len(_field_path(e["loc"])), e["type"] == "value_error"))
    path = _field_path(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(first["loc"][:-1])
        message = f"unknown key {first['loc'][-1]!r}" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        path = _field_path(first["loc"][:-1])
    elif first["type"] in ("float_parsing", "int_parsing", "float_type", "int_type", "bool_parsing", "bool_type", "list_type",
                           "finite_number"):
        message += f", got {first['input']!r}"
    elif first["type"] == "union_tag_invalid":
        message = f"unknown comparison kind {first['input'].get('kind')!r}; choose one of: {', '.join(comparison_kinds())}"
    elif first["type"] == "union_tag_not_found":
        message = f"a comparison needs a `kind:`, one of: {', '.join(comparison_kinds())}"
    location = ".".join(str(part) for part in path)
    return f"{location}: {message}" if location else message


_UNION_BRANCH = re.compile(r"[a-z][a-z0-9_-]*\[.*\]|function-.*")  # pydantic's "dict[str,list[any]]", "literal['final']"


def _field_path(location: tuple[Any, ...]) -> list[Any]:
    """A validation error's location without pydantic's union-branch markers (a key such as "[" is kept)."""
    return [part for part in location if not (isinstance(part, str) and _UNION_BRANCH.fullmatch(part))]


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
    """The experiment's trials: the product of each grid's axes (the union over a list of grids); none for a
    sweep of ``models:`` without a ``grid:``. Its comparisons are checked over the trials and model entries."""
    base = {section: getattr(experiment, section).model_dump(mode="json") for section in ("data", "model", "train", "eval", "checkpoint")}
    grids = experiment.grid if isinstance(experiment.grid, list) else [experiment.grid]
    grids = [canonical_axes(axes) for axes in grids]  # the YAML's order and sweep.json's give the same trials
    points = [dict(zip(axes, values)) for axes in grids for values in itertools.product(*axes.values())]
    if experiment.models and experiment.grid == {}:
        points = []  # only the given models: nothing to train
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
            raise SweepFileError(f"{source}: {f'grid point {where}: ' if where else ''}{describe(error)}") from None
        if ":" in config.model.arch:
            raise SweepFileError(
                f"{source}: model.arch: rayrs trains its own architectures ({', '.join(MODELS)}), not {config.model.arch}; "
                "to compare a network you have weights for, list it under `models:` with its weights file"
            )
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
    entries = model_entries(experiment, source)
    for index, entry in enumerate(entries):
        twin = seen_names.get(entry.name.lower())
        if twin is not None:
            what = "a trial of the grid" if twin in {t.name for t in trials} else "an earlier model"
            raise SweepFileError(
                f"{source}: models.{index}.name: {entry.name!r} is already the name of {what} ({twin!r}); "
                "give each model a name of its own"
            )
        seen_names[entry.name.lower()] = entry.name
    compared = [*trials, *entries]
    jobs = 0
    for index, comparison in enumerate(experiment.compare):
        try:
            _check_comparison(comparison, compared)
        except ValueError as error:
            raise SweepFileError(f"{source}: compare.{index}.{comparison.kind}.{error}") from None
        jobs += _job_count(comparison, compared)
        if jobs > experiment.max_jobs:
            raise SweepFileError(
                f"{source}: compare: {jobs} comparison jobs by compare.{index} ({comparison.kind}) is more than "
                f"max_jobs ({experiment.max_jobs}); compare fewer trials or epochs, or set `max_jobs: {jobs}` "
                "at the top of the sweep file if you mean it"
            )
    return trials


def _job_count(comparison: ComparisonSection, trials: list[TrialSpec]) -> int:
    """How many jobs `rayrs.similarity.jobs.plan_jobs` makes of ``comparison``, counted without planning them."""
    names = getattr(comparison, "trials", getattr(comparison, "models", "all"))
    selected = trials if names == "all" else [t for t in trials if t.name in set(names)]
    measures = len(comparison.measures)
    per_probes: dict[str, int] = {}
    for trial in selected:
        per_probes[probe_dataset(trial.config)] = per_probes.get(probe_dataset(trial.config), 0) + 1
    if isinstance(comparison, CrossModel):
        pairs = sum(k * (k - 1) // 2 for k in per_probes.values()) if comparison.pairs == "all" else len(comparison.pairs)
        return pairs * measures
    if isinstance(comparison, Transfer):
        return sum(k * k for k in per_probes.values()) * (measures + 1)  # + the transfer accuracy
    if isinstance(comparison, CrossEpoch):
        return len(selected) * len(comparison.probes) * measures
    epochs = 1 if comparison.epochs == "final" else len(comparison.epochs)
    return len(selected) * epochs * measures


def _check_comparison(comparison: ComparisonSection, trials: list[TrialSpec]) -> None:
    """Trials named, epochs, datasets and layers of one comparison; raises ``ValueError("<field>: what")``."""
    by_name = {t.name: t for t in trials}
    kind = comparison.kind

    given = any(isinstance(t, ModelEntrySpec) for t in trials)

    def known(field: str, names: list[str]) -> list[TrialSpec]:
        for name in names:
            if name not in by_name:
                what, whose = ("trial or model", "trials and models") if given else ("trial", "trials")
                raise ValueError(
                    f"{field}: no {what} named {name!r} in this sweep; its {whose} are: {', '.join(by_name)}"
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
            if isinstance(trial, ModelEntrySpec):
                absent = [e for e in epochs if e not in trial.weights]
                if absent:
                    raise ValueError(f"epochs: {kind} epoch {absent[0]} has no weights file in model {trial.name!r} "
                                     f"(its epochs: {', '.join(map(str, trial.kept_epochs))})")
                continue
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
        for trial in selected:
            try:
                comparison.matrix_layers(trial.layers(comparison.layer_types))
            except ValueError as error:
                raise ValueError(f"layers: trial {trial.name!r}: {error}") from None


def _normalise(config: TrialConfig) -> TrialConfig:
    """eps 0 is standard training, and standard training has eps 0: one trial, one spelling."""
    if config.train.method == "standard" or config.train.eps == 0:
        train = config.train.model_copy(update={"method": "standard", "eps": 0.0})
        return config.model_copy(update={"train": train})
    return config
