"""The architecture registry and the compared-layer tracing of rayrs.models."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from rayrs.errors import UserError
from rayrs.models import (
    ALL_LAYER_TYPES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYER_TYPES,
    MODELS,
    PAPER_LAYER_TYPES,
    build_model,
    comparable_layers,
)

# WRN-10-1 (one block per group), as traced: the stem, three pre-activation blocks (the 16 -> 16 first block
# keeps its shape so it has no shortcut conv; the others have a 1x1 one, run last), then bn -> relu -> pool -> fc.
WRN_10_1_LAYERS = [
    ("conv1", "conv"),
    ("block1.0.bn1", "bn"),
    ("block1.0.relu1", "act"),
    ("block1.0.conv1", "conv"),
    ("block1.0.bn2", "bn"),
    ("block1.0.relu2", "act"),
    ("block1.0.conv2", "conv"),
    ("block2.0.bn1", "bn"),
    ("block2.0.relu1", "act"),
    ("block2.0.conv1", "conv"),
    ("block2.0.bn2", "bn"),
    ("block2.0.relu2", "act"),
    ("block2.0.conv2", "conv"),
    ("block2.0.shortcut", "conv"),
    ("block3.0.bn1", "bn"),
    ("block3.0.relu1", "act"),
    ("block3.0.conv1", "conv"),
    ("block3.0.bn2", "bn"),
    ("block3.0.relu2", "act"),
    ("block3.0.conv2", "conv"),
    ("block3.0.shortcut", "conv"),
    ("bn", "bn"),
    ("relu", "act"),
    ("pool", "pool"),
    ("fc", "linear"),
]


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the registry ------------------------------------------------------------------------------------------------


def test_registry_lists_the_papers_architectures() -> None:
    assert list(MODELS) == ["wrn", "resnet18", "resnet34", "resnet50"]
    for name, info in MODELS.items():
        assert info.name == name
        assert info.description and "\n" not in info.description


def test_wrn_28_10_has_the_well_known_parameter_count() -> None:
    model = build_model("wrn", num_classes=10, depth=28, width=10)
    assert abs(num_parameters(model) - 36.5e6) / 36.5e6 < 0.01


def test_wrn_defaults_to_28_10() -> None:
    with torch.device("meta"):  # no need to initialise 36M weights to compare shapes
        default = build_model("wrn", num_classes=10)
        explicit = build_model("wrn", num_classes=10, depth=28, width=10)
    assert num_parameters(default) == num_parameters(explicit)


@pytest.mark.parametrize(("depth", "width"), [(16, 2), (10, 1), (10, 2)])
@pytest.mark.parametrize(("in_channels", "size"), [(1, 16), (3, 32), (3, 8)])
def test_wrn_outputs_logits(depth: int, width: int, in_channels: int, size: int) -> None:
    model = build_model("wrn", num_classes=7, in_channels=in_channels, depth=depth, width=width)
    logits = model(torch.rand(2, in_channels, size, size))
    assert logits.shape == (2, 7)


@pytest.mark.parametrize(("arch", "in_channels"), [("resnet18", 1), ("resnet18", 3), ("resnet34", 3), ("resnet50", 1)])
def test_resnets_output_logits(arch: str, in_channels: int) -> None:
    model = build_model(arch, num_classes=10, in_channels=in_channels).eval()
    assert model(torch.rand(2, in_channels, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("arch", list(MODELS))
def test_building_is_deterministic_under_a_seed(arch: str) -> None:
    torch.manual_seed(0)
    first = build_model(arch, num_classes=10, in_channels=1, depth=10 if arch == "wrn" else None)
    torch.manual_seed(0)
    second = build_model(arch, num_classes=10, in_channels=1, depth=10 if arch == "wrn" else None)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(("arch", "module"), [("resnet18", "resnet18"), ("resnet50", "resnet50")])
def test_resnet_is_torchvisions_on_the_pixels_as_in_the_papers_code(arch: str, module: str) -> None:
    # The paper's code calls torchvision's resnet18 / resnet50 on [0, 1] pixels (data.py ends in ToTensor(),
    # cka.py asserts [0, 1] and feeds them to the model): no normalisation by default.
    ours = build_model(arch, num_classes=10).eval()
    reference = getattr(torchvision.models, module)(weights=None, num_classes=10).eval()
    reference.load_state_dict(ours.state_dict())  # same keys and shapes, strict
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels), reference(pixels))


@pytest.mark.parametrize(("arch", "module"), [("resnet18", "resnet18"), ("resnet50", "resnet50")])
def test_resnet_with_imagenet_normalisation_is_torchvisions_on_normalised_pixels(arch: str, module: str) -> None:
    ours = build_model(arch, num_classes=10, normalize="imagenet").eval()
    reference = getattr(torchvision.models, module)(weights=None, num_classes=10).eval()
    reference.load_state_dict(ours.state_dict())  # the statistics stay out of the state dict
    pixels = torch.rand(2, 3, 64, 64)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels), reference((pixels - mean) / std))


def test_normalisation_is_a_resnet_option_with_known_names() -> None:
    with pytest.raises(UserError, match="normalize 'imagenet' is not available for wrn.*resnet18"):
        build_model("wrn", num_classes=10, depth=10, width=1, normalize="imagenet")
    with pytest.raises(UserError, match="unknown normalize 'cifar': choose one of none, imagenet, cifar10"):
        build_model("resnet18", num_classes=10, normalize="cifar")


@pytest.mark.parametrize("depth", [27, 4, 0, 11])
def test_bad_wrn_depth_names_the_valid_depths(depth: int) -> None:
    with pytest.raises(UserError, match=r"6n \+ 4.*10, 16, 22, 28"):
        build_model("wrn", num_classes=10, depth=depth)


def test_bad_wrn_width_is_a_user_error() -> None:
    with pytest.raises(UserError, match="positive integer"):
        build_model("wrn", num_classes=10, depth=10, width=0)


def test_unknown_arch_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="'vgg16'.*wrn, resnet18, resnet34, resnet50"):
        build_model("vgg16", num_classes=10)


def test_resnets_have_fixed_depth_and_no_width() -> None:
    build_model("resnet34", num_classes=10, depth=34)  # its own depth is accepted
    with pytest.raises(UserError, match="resnet34.*leave depth unset"):
        build_model("resnet34", num_classes=10, depth=18)
    with pytest.raises(UserError, match="resnet18.*leave width unset"):
        build_model("resnet18", num_classes=10, width=2)


# --- the compared layers ------------------------------------------------------------------------------------------


def test_wrn_10_1_layers_in_execution_order() -> None:
    model = build_model("wrn", num_classes=10, in_channels=1, depth=10, width=1)
    layers = comparable_layers(model, torch.rand(1, 1, 16, 16))

    assert [(layer.name, layer.type) for layer in layers] == WRN_10_1_LAYERS
    assert [layer.index for layer in layers] == list(range(len(layers)))
    assert len({layer.name for layer in layers}) == len(layers)
    modules = dict(model.named_modules())
    for layer in layers:
        assert layer.call == 0 and layer.module_name == layer.name
        assert isinstance(modules[layer.module_name], nn.Module)
        assert layer.type in {"conv", "bn", "act", "pool", "linear"}


def test_wrn_modules_are_registered_in_execution_order() -> None:
    model = build_model("wrn", num_classes=10, depth=10, width=1)
    layers = comparable_layers(model, torch.rand(1, 3, 8, 8))
    registered = [name for name, module in model.named_modules() if type(module) in LAYER_TYPES]
    assert registered == [layer.module_name for layer in layers]


@pytest.mark.parametrize(("depth", "width"), [(28, 1), (28, 2), (28, 10), (16, 2), (10, 1)])
def test_wrn_layer_count_formula(depth: int, width: int) -> None:
    # stem conv; 6 leaves a block (bn, relu, conv twice) plus a 1x1 shortcut conv in each group's first block
    # whose shape changes (groups 2 and 3 always, group 1 unless 16 -> 16k keeps 16 channels, i.e. k = 1);
    # then bn, relu, pool, fc.
    blocks_per_group = (depth - 4) // 6
    shortcuts = 2 + (width != 1)
    expected = 1 + 3 * blocks_per_group * 6 + shortcuts + 4
    with torch.device("meta"):  # shapes are all that tracing needs
        model = build_model("wrn", num_classes=10, depth=depth, width=width)
        layers = comparable_layers(model, torch.empty(1, 3, 8, 8))
    assert len(layers) == expected
    if (depth, width) == (28, 10):
        assert expected == 80


def test_resnet18_reused_relu_is_one_layer_per_call() -> None:
    model = build_model("resnet18", num_classes=10)
    model.train()
    layers = comparable_layers(model, torch.rand(1, 3, 32, 32))
    names = [layer.name for layer in layers]
    position = {name: i for i, name in enumerate(names)}

    # BasicBlock: conv1 -> bn1 -> relu -> conv2 -> bn2 -> (+ shortcut) -> relu again.
    assert names[position["layer1.0.bn1"] + 1] == "layer1.0.relu"
    assert position["layer1.0.bn2"] < position["layer1.0.relu#1"] < position["layer1.1.conv1"]
    second = layers[position["layer1.0.relu#1"]]
    assert (second.module_name, second.call, second.type) == ("layer1.0.relu", 1, "act")
    assert "layer1.0.relu#2" not in position
    # Downsampling blocks run their 1x1 shortcut before the second relu.
    assert position["layer2.0.downsample.1"] < position["layer2.0.relu#1"]
    # The stem's relu runs once; the normalisation module is not a compared layer.
    assert "relu#1" not in position and not any(name.startswith("normalize") for name in names)
    assert names[-2:] == ["avgpool", "fc"]
    # 1 stem each of conv/bn/relu/maxpool, 8 blocks x 6 calls, 3 downsample conv+bn pairs, avgpool, fc.
    assert len(layers) == 4 + 8 * 6 + 3 * 2 + 2

    assert model.training and all(module.training for module in model.modules())
    assert all(parameter.grad is None for parameter in model.parameters())


def test_resnet50_bottleneck_relu_runs_three_times() -> None:
    with torch.device("meta"):
        model = build_model("resnet50", num_classes=10)
        names = [layer.name for layer in comparable_layers(model, torch.empty(1, 3, 32, 32))]
    block = [name for name in names if name.startswith("layer1.0.")]
    assert block == [
        "layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu",
        "layer1.0.conv2", "layer1.0.bn2", "layer1.0.relu#1",
        "layer1.0.conv3", "layer1.0.bn3", "layer1.0.downsample.0", "layer1.0.downsample.1", "layer1.0.relu#2",
    ]  # fmt: skip


def test_block_layers_are_residual_block_outputs_placed_after_their_last_operation() -> None:
    model = build_model("wrn", num_classes=10, in_channels=1, depth=10, width=1)
    example = torch.rand(1, 1, 16, 16)
    every = comparable_layers(model, example, ALL_LAYER_TYPES)
    # The paper's five types are the default listing, unchanged; blocks come on request, each right after the
    # last operation of its block (the shortcut where there is one).
    assert [(layer.name, layer.type) for layer in every if layer.type != "block"] == WRN_10_1_LAYERS
    assert comparable_layers(model, example) == comparable_layers(model, example, PAPER_LAYER_TYPES)
    names = [layer.name for layer in every]
    assert names[names.index("block1.0.conv2") + 1] == "block1.0"
    assert names[names.index("block2.0.shortcut") + 1] == "block2.0"
    assert names[names.index("block3.0.shortcut") + 1 :] == ["block3.0", "bn", "relu", "pool", "fc"]
    blocks = comparable_layers(model, example, ["block"])
    assert [(layer.index, layer.name, layer.type, layer.call) for layer in blocks] == [
        (0, "block1.0", "block", 0), (1, "block2.0", "block", 0), (2, "block3.0", "block", 0),
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown layer types \['blocks'\]"):
        comparable_layers(model, example, ["blocks"])


def test_sweep_files_know_the_same_layer_types() -> None:
    from typing import get_args

    from rayrs.config import PAPER_LAYERS, LayerType

    assert get_args(LayerType) == ALL_LAYER_TYPES and PAPER_LAYERS == PAPER_LAYER_TYPES


@pytest.mark.parametrize(("arch", "per_stage"), [("resnet18", [2, 2, 2, 2]), ("resnet50", [3, 4, 6, 3])])
def test_torchvision_residual_blocks_are_block_layers(arch: str, per_stage: list[int]) -> None:
    with torch.device("meta"):
        model = build_model(arch, num_classes=10)
        every = comparable_layers(model, torch.empty(1, 3, 32, 32), ALL_LAYER_TYPES)
    blocks = [layer.name for layer in every if layer.type == "block"]
    assert blocks == [f"layer{stage + 1}.{i}" for stage, count in enumerate(per_stage) for i in range(count)]
    names = [layer.name for layer in every]
    last_relu = "layer1.0.relu#1" if arch == "resnet18" else "layer1.0.relu#2"
    assert names[names.index(last_relu) + 1] == "layer1.0"  # after the addition and the ReLU that follows it


def test_tracing_restores_each_modules_mode_and_records_no_graph() -> None:
    model = build_model("wrn", num_classes=10, depth=10, width=1)
    model.train()
    model.block1.eval()  # e.g. a frozen early group (paper App. D.5) keeps its BN statistics fixed
    running_mean = model.bn.running_mean.clone()
    example = torch.rand(2, 3, 8, 8, requires_grad=True)

    comparable_layers(model, example)

    assert model.training and model.block2.training and not model.block1.training
    assert not any(module.training for module in model.block1.modules())
    assert torch.equal(model.bn.running_mean, running_mean)  # traced in eval mode: BN statistics untouched
    assert example.grad is None and all(p.grad is None for p in model.parameters())


# --- the forward/backward path learns -----------------------------------------------------------------------------


def test_tiny_wrn_memorises_random_labels() -> None:
    torch.manual_seed(0)
    images = torch.rand(64, 1, 16, 16)
    labels = torch.randint(0, 10, (64,))
    model = build_model("wrn", num_classes=10, in_channels=1, depth=10, width=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def eval_accuracy() -> float:
        model.eval()  # eval mode: the BN running statistics must have caught up too
        with torch.no_grad():
            return (model(images).argmax(dim=1) == labels).float().mean().item()

    for step in range(1, 201):
        model.train()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        if step % 10 == 0 and eval_accuracy() == 1.0:
            break
    assert eval_accuracy() == 1.0
