"""Sources: the networks a stage runs and the images it feeds them.

Training (`rayrs.train`) and the similarity stage (`rayrs.similarity`) both stand on this floor; neither imports
the other. Two kinds of source feed a comparison:

- a **model source** yields a network in eval mode for an epoch, with its compared layers (`model_layers`)
  and the input normalisation it applies to its [0, 1] pixels. `TrialModel` is a trial's checkpoints: the
  architecture from the trial's configuration (`build_for`, the very network training builds) and the weights
  of an epoch from storage (`rayrs.checkpoint`). A user's network is another model source with the same three
  answers: `WeightsFileModel` (``torchvision:<name>``, ``timm:<name>``, a rayrs architecture or the user's
  own ``package.module:function``, and a safetensors or weights-only PyTorch file per epoch, `rayrs.weights`).
- a **probe source** holds the probe: the same test images, in the same order, for every compared model
  (`ProbeSource`: the TEST split alone, `rayrs.data.load_test_split`, so a comparison never reads or holds the
  training split), and the attack that crafts adversarial probes on a checkpoint (`probe_attack`: the source
  trial's evaluation attack, i.e. its threat model at its evaluation eps and steps; PGD-20 in the paper).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from rayrs import checkpoint
from rayrs.attacks import THREAT_MODELS
from rayrs.config import TrialConfig
from rayrs.data import ImageDataset, TestSplit, load_test_split, to_float
from rayrs.errors import UserError
from rayrs.methods import Attack
from rayrs.models import (
    MODELS,
    PAPER_LAYER_TYPES,
    Layer,
    build_model,
    comparable_layers,
    layer_types,
    model_layers,
    normalization_stats,
    register_residual_block,
)
from rayrs.storage import Storage
from rayrs.weights import load_weights_into, read_weights

# Either a whole dataset or its test split alone: whatever has ``test_images`` (N, C, H, W) uint8,
# ``test_labels`` (N,) int64, ``num_classes`` and ``in_channels``.
TestImages = ImageDataset | TestSplit


# -- the pieces training and comparisons share ------------------------------------------------------------
def build_for(config: TrialConfig, data: Any, device: torch.device | str) -> nn.Module:
    """The trial's freshly initialised model (seeded by ``train.seed``), on ``device``.

    ``data``: the dataset it is trained or probed on (an `ImageDataset` or `TestSplit`), which gives the
    classifier's width (``num_classes``) and the input channels (``in_channels``).
    """
    device = torch.device(device)
    torch.manual_seed(config.train.seed)
    model = build_model(
        config.model.arch,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        depth=config.model.depth,
        width=config.model.width,
        normalize=config.model.normalize,
    )
    model = model.to(device)
    if device.type == "cuda":  # tensor cores prefer NHWC; padded_crop yields it, the first conv converts the rest
        model = model.to(memory_format=torch.channels_last)
    return model


def make_attack(config: TrialConfig, phase: str, generator: torch.Generator) -> Attack:
    """The trial's ``phase`` ("train" or "eval") attack, drawing random starts from ``generator``."""
    eps, steps, step_size = config.attack_schedule(phase)
    settings = config.train.attack if phase == "train" else config.eval.attack
    return partial(
        THREAT_MODELS[config.train.threat_model].perturb,
        eps=eps,
        steps=steps,
        step_size=step_size,
        random_start=settings.random_start,
        generator=generator,
        bn_eval=settings.bn_eval,
    )


def fixed_subset(size: int, population: int, device: torch.device) -> torch.Tensor:
    """The same ``size`` example indices for every trial and epoch, so evaluations are comparable."""
    order = torch.randperm(population, generator=torch.Generator().manual_seed(0))
    return order[: min(size, population)].to(device)


# -- model sources ------------------------------------------------------------------------------------------
class ModelSource(Protocol):
    """A network to compare: its layers, what it does to its pixels, and its weights after an epoch."""

    # `rayrs.models.NORMALIZATIONS` (or explicit statistics): applied inside the model to its [0, 1] pixel inputs
    normalize: str | Mapping[str, Any]

    def layers(self, types: Any = PAPER_LAYER_TYPES) -> list[Layer]:
        """The compared layers of ``types``, in execution order (`rayrs.models.comparable_layers`)."""
        ...

    def load(self, epoch: int) -> nn.Module:
        """The network with its weights after ``epoch``, in eval mode, on the source's device."""
        ...


@dataclass(frozen=True, eq=False)
class TrialModel:
    """A trained trial's checkpoints as a model source.

    ``data`` is what the trial is probed on (its test split suffices): it sizes the classifier and the input
    channels exactly as at training time, and its device is where models are loaded.
    """

    storage: Storage
    trial: str
    config: TrialConfig
    data: TestImages

    @property
    def normalize(self) -> str:
        return self.config.model.normalize

    def layers(self, types: Any = PAPER_LAYER_TYPES) -> list[Layer]:
        return model_layers(self.config, types)

    def load(self, epoch: int) -> nn.Module:
        model = build_for(self.config, self.data, self.data.test_images.device)
        checkpoint.load_model_weights(self.storage, self.trial, epoch, model)
        return model.eval()


def _torchvision_model(name: str, num_classes: int, in_channels: int, image_size: int | None = None) -> nn.Module:
    """torchvision's classification model ``name`` (``torchvision.models.get_model``), randomly initialised.

    ``image_size`` is unused: torchvision's classifiers pool globally and take any size their strides allow.
    """
    import torchvision

    import rayrs.resnets  # noqa: F401  (its BasicBlock / Bottleneck outputs become `block` layers)

    if in_channels != 3:
        raise UserError(f"torchvision:{name}: torchvision's models take 3 input channels, not {in_channels}")
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        names = ", ".join(torchvision.models.list_models(module=torchvision.models))
        raise UserError(f"unknown torchvision model {name!r}: choose one of {names}") from None


def _timm_model(name: str, num_classes: int, in_channels: int, image_size: int | None = None) -> nn.Module:
    """timm's model ``name`` (``timm.create_model``, no pretrained download), randomly initialised.

    timm is an optional extra (``uv sync --extra timm``). Its vision transformers fix their patch grid at
    construction (``fixed_input_size`` in their pretrained config): they are built for ``image_size`` (timm's
    ``img_size=``) when given; its CNNs pool globally, take any size and refuse the argument: built without it.
    """
    try:
        import timm
    except ImportError:
        raise UserError(f"timm:{name} needs timm, an optional extra of rayrs: uv sync --extra timm "
                        "(or pip install timm)") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"close names: {', '.join(close)}" if close else "timm.list_models() lists them"
        raise UserError(f"unknown timm model {name!r}; {hint}")
    settings = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    if image_size is not None and _takes_img_size(timm, name):
        settings["img_size"] = image_size
    _register_timm_blocks()
    return timm.create_model(name, **settings)


# timm's residual blocks, by module and class name, whose outputs are `block` layers (as torchvision's
# BasicBlock / Bottleneck are, `rayrs.resnets`): a vision transformer's ``blocks.<i>`` (attention and MLP, each
# added to the residual stream), a ConvNeXt's ``stages.<i>.blocks.<j>`` (its output after the addition), timm's
# ResNets' ``layer<i>.<j>``. Names a timm version lacks are skipped.
TIMM_RESIDUAL_BLOCKS: dict[str, tuple[str, ...]] = {
    "timm.models.vision_transformer": ("Block", "ResPostBlock", "ParallelScalingBlock", "ParallelThingsBlock"),
    "timm.models.convnext": ("ConvNeXtBlock",),
    "timm.models.resnet": ("BasicBlock", "Bottleneck"),
}


def _register_timm_blocks() -> None:
    """Make the classes of `TIMM_RESIDUAL_BLOCKS` residual blocks (`rayrs.models.register_residual_block`)."""
    for module_name, class_names in TIMM_RESIDUAL_BLOCKS.items():
        module = importlib.import_module(module_name)
        for class_name in class_names:
            cls = getattr(module, class_name, None)
            if isinstance(cls, type) and issubclass(cls, nn.Module):
                register_residual_block(cls)


def _takes_img_size(timm: Any, name: str) -> bool:
    """Whether timm's model ``name`` is built for one input size: its pretrained config says
    ``fixed_input_size`` (timm's vision transformers, which then take ``img_size=``)."""
    return bool(timm.models.get_pretrained_cfg_value(name, "fixed_input_size"))


def _user_factory(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    """The network ``package.module:function`` returns: the user's own code, named in their own sweep file or
    call. Importing a module runs it, by design, as ``python -c "import package.module"`` would; this is the
    user's code, never anything read from a results or data folder (weights come from `rayrs.weights` only).

    ``function`` is called with ``num_classes=`` and, when its signature takes it (or ``**kwargs``),
    ``in_channels=``; it must return an ``nn.Module`` taking [0, 1] pixels (normalisation: `build_architecture`).
    A module that cannot be found, a missing or non-callable name and a return value that is no ``nn.Module``
    are one-line UserErrors; an exception raised inside the user's function is left as it is, with its
    traceback, since it points into their code. Where the similarity stage runs on Ray workers, the package
    must be importable there too (installed, or on their PYTHONPATH).
    """
    module_name, _, function_name = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and (module_name == err.name or module_name.startswith(f"{err.name}.")):
            raise UserError(
                f"architecture {arch!r}: no module {module_name!r} to import; write "
                f"{', '.join(f'{f}:<name>' for f in ARCHITECTURE_FAMILIES)}, one of {', '.join(MODELS)}, or "
                "package.module:function for your own code, its package importable (installed or on PYTHONPATH)"
            ) from None
        raise UserError(f"architecture {arch!r}: importing {module_name} failed: {err}") from None
    function = getattr(module, function_name, None)
    if function is None:
        raise UserError(f"architecture {arch!r}: module {module_name} has no {function_name!r}")
    if not callable(function):
        raise UserError(f"architecture {arch!r}: {module_name}.{function_name} is a "
                        f"{type(function).__name__}, not a function returning an nn.Module")
    settings: dict[str, Any] = {"num_classes": num_classes}
    if _accepts(function, "in_channels"):
        settings["in_channels"] = in_channels
    model = function(**settings)
    if not isinstance(model, nn.Module):
        raise UserError(f"architecture {arch!r}: {module_name}.{function_name}(num_classes=...) returned a "
                        f"{type(model).__name__}, not an nn.Module")
    return model


def _accepts(function: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it the required arguments only
        return False
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


# Architecture families a weights file can name as ``<family>:<name>``: family(name, num_classes, in_channels,
# image_size). A bare name is one of rayrs's own (`rayrs.models.MODELS`: wrn with its depth and width, the
# ResNets); any other ``module:function`` (the part before the colon not a family) is the user's own factory
# (`_user_factory`), e.g. ``mypkg.models:make_net``.
ARCHITECTURE_FAMILIES: dict[str, Callable[[str, int, int, int | None], nn.Module]] = {
    "torchvision": _torchvision_model,
    "timm": _timm_model,
}


def build_architecture(arch: str, *, num_classes: int, in_channels: int = 3, depth: int | None = None,
                       width: int | None = None, normalize: str | Mapping[str, Any] = "none",
                       image_size: int | None = None) -> nn.Module:
    """A freshly initialised network of ``arch`` taking [0, 1] pixels: ``torchvision:<name>``, ``timm:<name>``
    (`ARCHITECTURE_FAMILIES`), a rayrs architecture (`rayrs.models.build_model`), or ``package.module:function``
    (the user's own factory, `_user_factory`).

    ``normalize`` (a name of `rayrs.models.NORMALIZATIONS`, or ``{"mean": [...], "std": [...]}``) is applied to
    the pixels first, without changing the state dict's names (`_normalize_inputs`: a pre-hook), for
    every family and factory (rayrs's own architectures apply it themselves, `rayrs.models.build_model`): a
    checkpoint's zoo decides it (RobustBench's CIFAR-10 models: mostly none, cifar10 for those that normalise
    inside; ImageNet weights: imagenet). ``image_size``: the input side the network is built for, where the
    family fixes it at construction (timm's vision transformers); ignored elsewhere.
    """
    family, colon, name = arch.partition(":")
    if not colon:  # rayrs's own: its builder applies (or, for wrn, refuses) the normalisation
        return build_model(arch, num_classes=num_classes, in_channels=in_channels, depth=depth, width=width,
                           normalize=normalize)
    stats = normalization_stats(normalize, in_channels)
    if depth is not None or width is not None:
        raise UserError(f"{arch}: depth and width apply to rayrs's wrn only; leave them unset")
    if not name:
        raise UserError(f"architecture {arch!r} names nothing after the colon: write {family}:<name>")
    if family in ARCHITECTURE_FAMILIES:
        model = ARCHITECTURE_FAMILIES[family](name, num_classes, in_channels, image_size)
    else:
        model = _user_factory(arch, num_classes, in_channels)
    if stats is not None:
        _normalize_inputs(model, arch, stats)
    return model


# The names of the statistics `_normalize_inputs` gives a network (non-persistent buffers).
INPUT_MEAN, INPUT_STD = "input_mean", "input_std"


def _normalize_inputs(model: nn.Module, arch: str, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    """Make ``model`` compute ``(x - mean) / std`` on its input first: a forward pre-hook with the statistics as
    non-persistent (1, C, 1, 1) buffers, so they follow ``.to(device)``, stay out of the state dict, and add
    no submodule (an ``nn.Sequential`` would run a child module as its last layer)."""
    taken = [name for name in (INPUT_MEAN, INPUT_STD) if hasattr(model, name)]
    if taken:
        raise UserError(f"{arch}: the network already has an attribute {taken[0]!r}; leave normalize unset and "
                        "normalise inside your network instead")
    mean, std = stats
    model.register_buffer(INPUT_MEAN, torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
    model.register_buffer(INPUT_STD, torch.tensor(std).view(1, -1, 1, 1), persistent=False)
    model.register_forward_pre_hook(
        lambda module, args: ((args[0] - getattr(module, INPUT_MEAN)) / getattr(module, INPUT_STD), *args[1:]))


@dataclass(frozen=True, eq=False)
class WeightsFileModel:
    """A user's network as a model source: an architecture (`build_architecture`) and its weights files.

    ``weights``: epoch -> weights file (safetensors, or a PyTorch state dict read with ``weights_only=True``;
    `rayrs.weights`); a single file is epoch 0. ``image_size`` sizes the layer listing's example input.
    Models load on ``device``. ``sha256``: epoch -> the SHA-256 each file must still have (a sweep's model
    entries: the hashes it was planned with), checked on the very bytes that are loaded; None: unchecked.
    """

    arch: str
    weights: Mapping[int, str | Path]
    num_classes: int
    image_size: int
    in_channels: int = 3
    normalize: str | Mapping[str, Any] = "none"  # `rayrs.models.normalization_stats`
    depth: int | None = None
    width: int | None = None
    device: torch.device | str = "cpu"
    sha256: Mapping[int, str] | None = None

    @classmethod
    def of(cls, arch: str, path: str | Path, **settings: Any) -> WeightsFileModel:
        """One weights file, as epoch 0."""
        return cls(arch, {0: path}, **settings)

    def build(self) -> nn.Module:
        """The architecture, freshly initialised on the current default device (no weights loaded)."""
        return build_architecture(self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                                  depth=self.depth, width=self.width, normalize=self.normalize,
                                  image_size=self.image_size)

    def layers(self, types: Any = PAPER_LAYER_TYPES) -> list[Layer]:
        with torch.device("meta"):
            model = self.build()
        example = torch.empty(1, self.in_channels, self.image_size, self.image_size, device="meta")
        return comparable_layers(model, example, layer_types(types))

    def load(self, epoch: int = 0) -> nn.Module:
        if epoch not in self.weights:
            raise UserError(f"{self.arch}: no weights file for epoch {epoch} (have {sorted(self.weights)})")
        path = Path(self.weights[epoch]).expanduser()
        state = read_weights(path, None if self.sha256 is None else self.sha256[epoch])
        model = load_weights_into(self.build(), state, str(path))
        return model.to(self.device).eval()


# -- probe sources ------------------------------------------------------------------------------------------
def load_probe_data(config: TrialConfig, device: torch.device | str) -> TestSplit:
    """The test split of the dataset a trial is probed on (`rayrs.config.probe_dataset`), alone: the
    training split is neither read nor held."""
    return load_test_split(config.data.dataset, root=config.data.root, image_size=config.data.image_size, device=device)


def probe_indices(data: Any, size: int) -> torch.Tensor:
    """(n,) int64 indices of the probe's test images, n = min(size, test set): the same for every model."""
    return fixed_subset(size, data.test_images.shape[0], data.test_images.device)


def probe_attack(config: TrialConfig, generator: torch.Generator) -> Attack:
    """The attack that crafts a trial's adversarial probes: its evaluation attack (threat model, eval eps and
    steps; PGD-20 at the training eps in the paper's settings), random starts drawn from ``generator``."""
    return make_attack(config, "eval", generator)


@dataclass(frozen=True, eq=False)
class ProbeSource:
    """The benign probe: ``size`` test images of ``data``, the same ones in the same order for every model.

    ``data``: an `ImageDataset` or a `TestSplit` (what `load_probe_data` returns); its device is the probe's.
    """

    data: TestImages
    size: int

    @classmethod
    def of(cls, config: TrialConfig, size: int, device: torch.device | str) -> ProbeSource:
        """The probe of a trial's probe dataset, loaded from its test split alone."""
        return cls(load_probe_data(config, device), size)

    @cached_property
    def indices(self) -> torch.Tensor:
        """(n,) int64 positions of the probe's images in the test split."""
        return probe_indices(self.data, self.size)

    @property
    def count(self) -> int:
        return min(self.size, self.data.test_images.shape[0])

    @cached_property
    def labels(self) -> torch.Tensor:
        """(n,) int64 true labels of the probe's images."""
        return self.data.test_labels[self.indices]

    def benign(self, positions: torch.Tensor) -> torch.Tensor:
        """(b, C, H, W) float32 in [0, 1]: the probe's images at ``positions`` (b,) of the probe, on its device."""
        return to_float(self.data.test_images[self.indices[positions.to(self.data.test_images.device)]])


__all__ = [
    "ARCHITECTURE_FAMILIES",
    "ModelSource",
    "ProbeSource",
    "TestImages",
    "TrialModel",
    "WeightsFileModel",
    "build_architecture",
    "build_for",
    "fixed_subset",
    "load_probe_data",
    "make_attack",
    "probe_attack",
    "probe_indices",
]
