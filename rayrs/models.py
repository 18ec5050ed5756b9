"""The paper's architectures, by name, and the layers whose representations the paper compares.

Cianfarani et al. train WideResNets (WRN-28-{1,2,5,10}) on CIFAR-10 and torchvision's ImageNet ResNets on
Imagenette / Imagewoof (paper §2, "Models and datasets"), and compare "all layers, including convolutions,
pooling, activation, and batch-normalization layers" (§2, "Representation similarity").

- ``MODELS`` / ``build_model``: a registry from architecture name to constructor. Every model takes images
  with pixels in [0, 1]: attacks work in pixel space, so any normalisation lives inside the model
  (``NORMALIZATIONS``; by default none, as in the paper's code).
- ``comparable_layers``: the ordered list of compared layers of a built model, found by tracing one forward
  pass; a module that runs twice (torchvision's ``BasicBlock.relu``) is two layers. By default the paper's
  types (`PAPER_LAYER_TYPES`); ``block``, each residual block's output, is a type of its own to ask for
  (`RESIDUAL_BLOCKS`: WRN's, torchvision's ResNets' via `rayrs.resnets`, timm's ViT / ConvNeXt / ResNet blocks
  via `rayrs.sources`, each registered when such a model is first built).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rayrs.data import DATASETS
from rayrs.errors import UserError

if TYPE_CHECKING:  # config validates against this module, so it is imported for the type only
    from rayrs.config import TrialConfig

# ---------------------------------------------------------------------------------------------------------------
# WideResNet (Zagoruyko & Komodakis 2016, arXiv:1605.07146), the CIFAR-10 variant of robust training
# (Madry et al. 2018; Rice et al. 2020): pre-activation basic blocks, no dropout.
# ---------------------------------------------------------------------------------------------------------------

WRN_DEFAULT_DEPTH = 28  # the paper's WRN-28-10
WRN_DEFAULT_WIDTH = 10
WRN_STEM_CHANNELS = 16
WRN_GROUP_CHANNELS = (16, 32, 64)  # times the width factor k
WRN_GROUP_STRIDES = (1, 2, 2)


class WideBasicBlock(nn.Module):
    """Pre-activation basic block: bn1 -> relu1 -> conv1 3x3 -> bn2 -> relu2 -> conv2 3x3, plus a shortcut.

    The shortcut is the identity when shape is kept, else a 1x1 strided conv applied to the pre-activated input
    relu1(bn1(x)) (as in the WRN reference code). Submodules are registered in execution order; each ReLU is
    its own (not in-place) module so every activation is a separate layer.

    Shapes: ``(n, in_channels, h, w) -> (n, out_channels, ceil(h / stride), ceil(w / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        keeps_shape = in_channels == out_channels and stride == 1
        self.shortcut = (
            None if keeps_shape else nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        # The shortcut runs last so that execution order matches registration order.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k for small images: stem conv, 3 groups of n = (depth - 4) / 6 blocks, bn -> relu -> pool -> fc.

    Groups have 16k, 32k, 64k channels and strides 1, 2, 2; global average pooling makes any input size work.
    WRN-28-10 has about 36.5M parameters (Zagoruyko & Komodakis 2016, Table 1 lists 36.5M).

    Shapes: ``(n, in_channels, h, w)`` pixels in [0, 1] -> ``(n, num_classes)`` logits.
    """

    def __init__(self, *, depth: int, width: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        blocks_per_group = wrn_blocks_per_group(depth)
        channels = [c * width for c in WRN_GROUP_CHANNELS]
        self.conv1 = nn.Conv2d(in_channels, WRN_STEM_CHANNELS, 3, stride=1, padding=1, bias=False)
        self.block1 = _wrn_group(WRN_STEM_CHANNELS, channels[0], WRN_GROUP_STRIDES[0], blocks_per_group)
        self.block2 = _wrn_group(channels[0], channels[1], WRN_GROUP_STRIDES[1], blocks_per_group)
        self.block3 = _wrn_group(channels[1], channels[2], WRN_GROUP_STRIDES[2], blocks_per_group)
        self.bn = nn.BatchNorm2d(channels[2])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[2], num_classes)
        _init_wrn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.pool(self.relu(self.bn(x)))
        return self.fc(torch.flatten(x, 1))


def wrn_blocks_per_group(depth: int) -> int:
    """Blocks per group n of a WRN of the given depth; depth = 6n + 4 (n >= 1), else a UserError."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise UserError(
            f"depth {depth} is not valid for wrn: use depth = 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...)"
        )
    return (depth - 4) // 6


def _wrn_group(in_channels: int, out_channels: int, stride: int, num_blocks: int) -> nn.Sequential:
    """One WRN group: the first block changes shape (channels, stride), the rest keep it."""
    blocks = [WideBasicBlock(in_channels, out_channels, stride)]
    blocks += [WideBasicBlock(out_channels, out_channels, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def _init_wrn(model: nn.Module) -> None:
    """The WRN reference initialisation: He-normal (fan_out) convs, unit BN scale, zero BN/fc biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            # A build on the meta device (shapes only: the config's check, layer listings) has no values to draw,
            # and torch's meta normal_ imports torch._dynamo: 4 s of every `rayrs status` on a busy 2-core machine.
            if not module.weight.is_meta:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


def build_wrn(
    *, num_classes: int, in_channels: int = 3, depth: int | None = None, width: int | None = None,
    normalize: str = "none",
) -> WideResNet:
    """WRN-depth-width (default WRN-28-10); depth must be 6n + 4 (n >= 1) and width a positive integer.

    It takes [0, 1] pixels as they are (the paper's WRN does): ``normalize`` other than "none" is a UserError.
    """
    if normalize != "none":
        raise UserError(
            f"normalize {normalize!r} is not available for wrn, which takes [0, 1] pixels as the paper's WRN does; "
            "leave it unset (none), or use it with resnet18, resnet34 or resnet50"
        )
    depth = WRN_DEFAULT_DEPTH if depth is None else depth
    width = WRN_DEFAULT_WIDTH if width is None else width
    wrn_blocks_per_group(depth)  # validate before allocating anything
    if width < 1:
        raise UserError(f"width {width} is not valid for wrn: use a positive integer widening factor (1, 2, 5, 10)")
    return WideResNet(depth=depth, width=width, num_classes=num_classes, in_channels=in_channels)


# ---------------------------------------------------------------------------------------------------------------
# torchvision's ImageNet ResNets (He et al. 2016), for Imagenette / Imagewoof.
# ---------------------------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-10's training-set channel statistics as RobustBench writes them (robustbench/model_zoo/architectures/
# dm_wide_resnet.py, CIFAR10_MEAN / CIFAR10_STD): the normalisation its DeepMind WideResNets (Gowal et al. 2020,
# Rebuffi et al. 2021) apply inside the model, from deepmind-research's adversarial_robustness model zoo.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

# What a model does to its [0, 1] pixels before its first layer (``model.normalize``). The paper's code feeds
# [0, 1] pixels straight to torchvision's resnet18 / resnet50: its data.py ends every transform in ToTensor()
# with no Normalize, and cka.py asserts inputs in [0, 1] and calls the models on them. So "none" is the
# default, and the usual torchvision preprocessing is the separately named "imagenet". A model rayrs did not
# train takes what its zoo's convention is: RobustBench's CIFAR-10 models take [0, 1] pixels, most with no
# normalisation ("none"), its DeepMind WideResNets with CIFAR-10's ("cifar10"); its ImageNet models and
# torchvision's / timm's ImageNet weights with ImageNet's ("imagenet"). Any other statistics are written out
# as ``{"mean": [...], "std": [...]}`` (`normalization_stats`).
NORMALIZATIONS: dict[str, str] = {
    "none": "[0, 1] pixels straight into the first layer, as the paper's code feeds its ResNets",
    "imagenet": "(x - ImageNet mean) / ImageNet std inside the model first (torchvision's usual preprocessing)",
    "cifar10": "(x - CIFAR-10 mean) / CIFAR-10 std inside the model first (RobustBench's DeepMind WideResNets)",
}
# The per-channel RGB statistics of each named normalisation but "none".
NORMALIZATION_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
}


class Normalize(nn.Module):
    """Fixed per-channel ``(x - mean) / std``; not a compared layer. Shapes: ``(n, c, h, w) -> (n, c, h, w)``.

    The statistics are non-persistent buffers: they follow ``.to(device)`` but stay out of the state dict, so a
    model's weights load into plain torchvision and back.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def imagenet_stats(in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for RGB; for any other channel count every channel gets the RGB average."""
    return _stats_for(NORMALIZATION_STATS["imagenet"], in_channels)


def _stats_for(stats: tuple[tuple[float, ...], tuple[float, ...]],
               in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """RGB ``(mean, std)`` as they are for 3 channels; for any other count, every channel gets the RGB average."""
    mean, std = stats
    if in_channels == 3:
        return mean, std
    return (sum(mean) / 3,) * in_channels, (sum(std) / 3,) * in_channels


def normalization_stats(normalize: Any, in_channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The ``(mean, std)`` per channel (``in_channels`` of each) that ``normalize`` names, or None for "none".

    ``normalize``: a name of `NORMALIZATIONS`, or a mapping ``{"mean": [...], "std": [...]}`` of one value or
    ``in_channels`` values each (std > 0). Raises a one-line UserError for anything else.
    """
    if isinstance(normalize, str):
        if normalize not in NORMALIZATIONS:
            raise UserError(f"unknown normalize {normalize!r}: choose one of {', '.join(NORMALIZATIONS)}, "
                            "or write {mean: [...], std: [...]}")
        return None if normalize == "none" else _stats_for(NORMALIZATION_STATS[normalize], in_channels)
    if not isinstance(normalize, Mapping) or set(normalize) != {"mean", "std"}:
        raise UserError(f"normalize {normalize!r}: write one of {', '.join(NORMALIZATIONS)}, "
                        "or {mean: [...], std: [...]} with nothing else")
    stats = []
    for key in ("mean", "std"):
        value = normalize[key]
        values = [value] if isinstance(value, int | float) else value
        if (not isinstance(values, Sequence) or isinstance(values, str) or len(values) not in (1, in_channels)
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
            raise UserError(f"normalize {key} {value!r}: give 1 or {in_channels} numbers (one per input channel)")
        if key == "std" and min(values) <= 0:
            raise UserError(f"normalize std {value!r}: every std must be positive")
        stats.append(tuple(float(v) for v in values) * (in_channels if len(values) == 1 else 1))
    return stats[0], stats[1]


def _resnet_builder(fixed_depth: int) -> Callable[..., nn.Module]:
    """A builder for torchvision's ResNet-``fixed_depth``; depth must be None or ``fixed_depth``, width None.

    ``rayrs.resnets`` (and with it torchvision, whose import pulls in torch._dynamo: 4-5 s) is imported only
    when a ResNet is built, so a WideResNet trial's worker and the CLI start that much sooner.
    """

    def build(
        *, num_classes: int, in_channels: int = 3, depth: int | None = None, width: int | None = None,
        normalize: str = "none",
    ) -> nn.Module:
        arch = f"resnet{fixed_depth}"
        if depth not in (None, fixed_depth):
            raise UserError(f"depth {depth} is not valid for {arch}: its depth is fixed; leave depth unset")
        if width is not None:
            raise UserError(f"width {width} is not valid for {arch}: it has no width factor; leave width unset")
        from rayrs.resnets import pixel_resnet

        return pixel_resnet(fixed_depth, num_classes=num_classes, in_channels=in_channels, normalize=normalize)

    return build


# ---------------------------------------------------------------------------------------------------------------
# The registry.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """One architecture users can pick by name."""

    name: str
    description: str  # one line, shown in `rayrs sweep --help`
    build: Callable[..., nn.Module]  # build(num_classes=, in_channels=, depth=, width=, normalize=)
    default_depth: int | None
    default_width: int | None


MODELS: dict[str, ModelInfo] = {
    "wrn": ModelInfo(
        "wrn", "WideResNet-depth-width for CIFAR-sized images (depth = 6n+4; paper: WRN-28-{1,2,5,10})",
        build_wrn, default_depth=WRN_DEFAULT_DEPTH, default_width=WRN_DEFAULT_WIDTH,
    ),
    "resnet18": ModelInfo(
        "resnet18", "torchvision ImageNet ResNet-18 (Imagenette/Imagewoof); depth and width are fixed",
        _resnet_builder(18), default_depth=18, default_width=None,
    ),
    "resnet34": ModelInfo(
        "resnet34", "torchvision ImageNet ResNet-34 (Imagenette/Imagewoof); depth and width are fixed",
        _resnet_builder(34), default_depth=34, default_width=None,
    ),
    "resnet50": ModelInfo(
        "resnet50", "torchvision ImageNet ResNet-50 (Imagenette/Imagewoof); depth and width are fixed",
        _resnet_builder(50), default_depth=50, default_width=None,
    ),
}


def build_model(
    arch: str, *, num_classes: int, in_channels: int = 3, depth: int | None = None, width: int | None = None,
    normalize: str | Mapping[str, Any] = "none",
) -> nn.Module:
    """A freshly initialised model (deterministic under ``torch.manual_seed``) taking [0, 1] pixels.

    ``depth`` / ``width`` default to the architecture's ``default_depth`` / ``default_width``. The ResNets have
    a fixed depth and no width: ``depth`` must be None or their own depth, ``width`` None. ``normalize`` names
    what the model does to its pixels first (`NORMALIZATIONS`; wrn takes "none" only). An unknown
    ``arch`` or normalisation, or an invalid depth/width, raises a ``UserError`` naming the valid values.
    Validation happens before any allocation; to validate without the cost of initialising, build under
    ``torch.device("meta")``.
    """
    info = MODELS.get(arch)
    if info is None:
        raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(MODELS)}")
    normalization_stats(normalize, in_channels)  # a UserError for an unknown name or bad statistics
    return info.build(
        num_classes=num_classes,
        in_channels=in_channels,
        depth=info.default_depth if depth is None else depth,
        width=info.default_width if width is None else width,
        normalize=normalize,
    )


# ---------------------------------------------------------------------------------------------------------------
# The compared layers.
# ---------------------------------------------------------------------------------------------------------------

# The paper's "all layers" (§2: "including convolutions, pooling, activation, and batch-normalization layers",
# and the final linear layer): what a comparison compares unless it names other `layer_types`.
PAPER_LAYER_TYPES = ("conv", "bn", "act", "pool", "linear")
# A residual block's output, after the addition (torchvision's blocks: after the ReLU that follows it, which
# is what the block returns). Fig 6's "output of the first two blocks" is the output of a WRN group, i.e. of
# its last residual block: the paper's code hooks the group module `block1` (tests/test_paper_code_layers.py).
BLOCK = "block"
ALL_LAYER_TYPES = (*PAPER_LAYER_TYPES, BLOCK)

# Leaf modules of the paper's types.
LAYER_TYPES: dict[type[nn.Module], str] = {
    nn.Conv2d: "conv",
    nn.BatchNorm2d: "bn",
    nn.ReLU: "act",
    nn.ReLU6: "act",
    nn.LeakyReLU: "act",
    nn.ELU: "act",
    nn.GELU: "act",
    nn.SiLU: "act",
    nn.Softplus: "act",
    nn.Tanh: "act",
    nn.Sigmoid: "act",
    nn.MaxPool2d: "pool",
    nn.AvgPool2d: "pool",
    nn.AdaptiveAvgPool2d: "pool",
    nn.AdaptiveMaxPool2d: "pool",
    nn.Linear: "linear",
}


# Residual blocks, whose output is a `block` layer. Composite modules, so kept apart from the leaves above;
# rayrs.resnets adds torchvision's BasicBlock and Bottleneck when a ResNet is first built.
RESIDUAL_BLOCKS: list[type[nn.Module]] = [WideBasicBlock]


def register_residual_block(cls: type[nn.Module]) -> type[nn.Module]:
    """Make ``cls``'s output (a residual block's, after the addition) a compared layer of type ``block``."""
    if cls not in RESIDUAL_BLOCKS:
        RESIDUAL_BLOCKS.append(cls)
    return cls


# A layer spec item that selects modules by name rather than type: "name:<glob>" over the module paths of
# ``model.named_modules()``. ``*`` matches within one dotted part and ``**`` across parts, so "name:blocks.*"
# is a ViT's transformer blocks (blocks.0 .. blocks.11) and not their insides; "name:**.mlp" every block's MLP.
NAME_PATTERN = "name:"
# The type of a layer selected by name whose module is none of the types above (a transformer block, a stage).
NAMED = "named"


@dataclass(frozen=True)
class Layer:
    """One compared layer: the output of one call of one module (a leaf, or a residual block) in one forward pass."""

    index: int  # position in execution order among the listed layers, 0..L-1
    name: str  # module path, with "#k" appended for the k-th call (k >= 1) of a module that runs repeatedly
    type: str  # "conv" | "bn" | "act" | "pool" | "linear" (the paper's) | "block" | "named" (by name only)
    module_name: str  # path of the nn.Module, as in model.named_modules()
    call: int  # which call of that module in one forward pass (0 for most layers)


def layer_type(module: nn.Module) -> str | None:
    """The compared type of a module, or None if it is not compared: "block" for a residual block (see
    `RESIDUAL_BLOCKS`), else for a leaf module "conv", "bn", "act", "pool" or "linear".

    Subclasses count as their base (e.g. ``nn.LazyConv2d`` is a conv).
    """
    if isinstance(module, tuple(RESIDUAL_BLOCKS)):
        return BLOCK
    if next(module.children(), None) is not None:
        return None
    for cls in type(module).__mro__:
        if cls in LAYER_TYPES:
            return LAYER_TYPES[cls]
    return None


def is_name_pattern(item: str) -> bool:
    """Whether a layer spec item selects by module name (``name:<glob>``, `NAME_PATTERN`) rather than by type."""
    return item.startswith(NAME_PATTERN) and len(item) > len(NAME_PATTERN)


@lru_cache(maxsize=256)
def name_pattern(item: str) -> re.Pattern[str]:
    """The regular expression of a ``name:<glob>`` item: ``**`` any characters, ``*`` any within one dotted
    part, ``?`` one character but a dot; the whole module path must match."""
    glob = item[len(NAME_PATTERN):]
    parts = []
    for piece in re.split(r"(\*\*|\*|\?)", glob):
        parts.append({"**": ".*", "*": r"[^.]*", "?": r"[^.]"}.get(piece, re.escape(piece)))
    return re.compile("".join(parts))


def selects(types: Iterable[str], layer: Layer) -> bool:
    """Whether the layer spec ``types`` selects ``layer``: its type is listed, or its module path matches one of
    the spec's ``name:<glob>`` patterns (as `comparable_layers` selects). Picks a job's layers out of a listing
    made for a wider spec."""
    return any(item == layer.type or (is_name_pattern(item) and name_pattern(item).fullmatch(layer.module_name))
               for item in types)


def check_layer_spec(items: Iterable[str]) -> tuple[str, ...]:
    """The layer spec ``items`` (types of `ALL_LAYER_TYPES` and ``name:<glob>`` patterns) in canonical order
    (`layer_types`); a ValueError naming the first item that is neither, or for an empty spec."""
    items = list(items)
    unknown = [item for item in items if item not in ALL_LAYER_TYPES and not is_name_pattern(item)]
    if unknown or not items:
        raise ValueError(f"unknown layer types {unknown}; choose from {', '.join(ALL_LAYER_TYPES)}, "
                         f"or select modules by name with {NAME_PATTERN}<glob> (e.g. {NAME_PATTERN}blocks.*)")
    return layer_types(items)


def forward_once(model: nn.Module, example: torch.Tensor, hooks: dict[nn.Module, Callable[..., Any]]) -> None:
    """One forward pass of ``example`` through ``model`` in eval mode, without gradients, with each of ``hooks``
    (module -> forward hook) registered for it alone: the pass changes nothing in the model (BatchNorm
    statistics untouched, every module's train/eval flag restored, the hooks removed), whatever it raises."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training


def comparable_layers(
    model: nn.Module, example: torch.Tensor, types: Iterable[str] = PAPER_LAYER_TYPES
) -> list[Layer]:
    """Every compared layer of ``model`` whose type is in ``types``, in the order they run on ``example``.

    Runs one forward pass (eval mode, no grad) with a forward hook on each module of a listed type; each call
    of a hooked module is one ``Layer`` (torchvision's ``BasicBlock`` calls ``relu`` twice: ``layer1.0.relu``
    and ``layer1.0.relu#1``). A layer's place is when its output is complete, so a residual block comes right
    after the last operation inside it (``block1.0`` after ``block1.0.conv2``, or its shortcut). Modules that
    never run are absent. Every module's train/eval flag is restored afterwards and no gradient is recorded.

    ``example``: ``(n, c, h, w)`` input on the model's device; n = 1 is enough.
    ``types``: some of `ALL_LAYER_TYPES`; default the paper's five (`PAPER_LAYER_TYPES`), without blocks.
    Items ``name:<glob>`` (`NAME_PATTERN`, `name_pattern`) add the modules whose path matches, whatever
    their type (type `NAMED` if they have none); a pattern that matches no module that runs is a UserError
    naming a few of the model's modules.
    """
    wanted = set(types)
    patterns = {item: name_pattern(item) for item in wanted if is_name_pattern(item)}
    unknown = wanted - set(ALL_LAYER_TYPES) - set(patterns)
    if unknown:
        raise ValueError(f"unknown layer types {sorted(unknown)}; choose from {', '.join(ALL_LAYER_TYPES)}, "
                         f"or {NAME_PATTERN}<glob>")
    executed: list[str] = []
    hooks = {}
    for module_name, module in model.named_modules():
        by_name = module_name and any(p.fullmatch(module_name) for p in patterns.values())  # never the model itself
        if layer_type(module) in wanted or by_name:
            hooks[module] = _recorder(executed, module_name)
    forward_once(model, example, hooks)
    for item, pattern in sorted(patterns.items()):
        if not any(pattern.fullmatch(name) for name in executed):
            raise UserError(f"layer pattern {item!r} matches no module that runs; {_some_names(model, item)} "
                            "(in a pattern * stays within one dotted part, ** crosses parts)")
    return _layers_from_calls(model, executed)


def _some_names(model: nn.Module, item: str) -> str:
    """A few of the model's module names for an error line: those closest to the pattern, else the first ones."""
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(item[len(NAME_PATTERN):], names, n=5, cutoff=0.3)
    shown = close or names[:5]
    return f"the model's modules are named like {', '.join(shown)}" + (", ..." if len(names) > len(shown) else "")


def layer_types(types: Any) -> tuple[str, ...]:
    """A layer spec in canonical order: its types in `ALL_LAYER_TYPES` order, then its ``name:<glob>``
    patterns sorted, each once. One set, one spelling (and one job id)."""
    return (*(t for t in ALL_LAYER_TYPES if t in types),
            *sorted({t for t in types if isinstance(t, str) and is_name_pattern(t)}))


def model_layers(config: TrialConfig, types: Any = PAPER_LAYER_TYPES) -> list[Layer]:
    """The compared layers of ``types`` of a trial's model, without data or weights (built on the meta device).

    What `rayrs.config` checks layer names against (``train.freeze.through``, cross_epoch ``layers``)
    before anything runs, and what comparison jobs are planned over.
    """
    size = config.data.image_size or DATASETS[config.data.dataset].default_image_size
    return list(_meta_layers(config.model.arch, config.model.depth, config.model.width, size, layer_types(types)))


@lru_cache(maxsize=32)
def _meta_layers(arch: str, depth: int | None, width: int | None, size: int,
                 types: tuple[str, ...]) -> tuple[Layer, ...]:
    # Layer names and order do not depend on the number of input channels or classes.
    with torch.device("meta"):
        model = build_model(arch, num_classes=10, in_channels=3, depth=depth, width=width)
    return tuple(comparable_layers(model, torch.empty(1, 3, size, size, device="meta"), types))


def _recorder(executed: list[str], module_name: str) -> Callable[..., None]:
    """A forward hook that appends ``module_name`` to ``executed`` each time the module runs."""

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        executed.append(module_name)

    return hook


def _layers_from_calls(model: nn.Module, executed: list[str]) -> list[Layer]:
    """Number the recorded calls: the k-th call (k >= 1) of a module is named ``<module>#k``."""
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    layers = []
    for index, module_name in enumerate(executed):
        call = calls.get(module_name, 0)
        calls[module_name] = call + 1
        name = module_name if call == 0 else f"{module_name}#{call}"
        kind = layer_type(modules[module_name]) or NAMED  # a module of no type was selected by name
        layers.append(Layer(index=index, name=name, type=kind, module_name=module_name, call=call))
    return layers
