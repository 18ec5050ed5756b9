"""Models rayrs did not train (issue 16, items 1-2): timm's and the user's own architectures, the zoos' input
normalisations, and layers selected by module name, each compared against the independent float64 CKA."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_compare import _reference
from torch import nn

import rayrs
from rayrs.errors import UserError
from rayrs.models import build_model, comparable_layers, layer_types
from rayrs.sources import WeightsFileModel, build_architecture

VIT = "timm:vit_tiny_patch16_224"  # timm's smallest ViT: 12 blocks of width 192, 5.7M weights


def _images(n: int, size: int, channels: int = 3) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(0))


def _named_outputs(model: nn.Module, images: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """The float64 (n, features) output of each module in ``names``, hooked by name (independent of rayrs)."""
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [modules[name].register_forward_hook(
        lambda module, args, output, name=name: outputs.__setitem__(name, output.detach().double().flatten(1).clone()))
        for name in names]
    model.eval()
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return {name: outputs[name] for name in names}


def _saved(model: nn.Module, path: Path) -> Path:
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, path)
    return path


# --- timm:<name> ------------------------------------------------------------------------------------------------


def test_a_timm_vit_from_safetensors_compares_its_blocks_like_the_float64_reference(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    torch.manual_seed(1)
    first = build_architecture(VIT, num_classes=10, image_size=32)  # 32 px: a 2 x 2 grid of 16 px patches
    torch.manual_seed(2)
    second = build_architecture(VIT, num_classes=10, image_size=32)
    a = WeightsFileModel.of(VIT, _saved(first, tmp_path / "a.safetensors"), num_classes=10, image_size=32)
    b = WeightsFileModel.of(VIT, _saved(second, tmp_path / "b.safetensors"), num_classes=10, image_size=32)
    images = _images(24, 32)
    model_a, model_b = a.load(), b.load()
    with torch.no_grad():
        torch.testing.assert_close(model_a(images), first.eval()(images), rtol=0, atol=0)
    blocks = [f"blocks.{i}" for i in range(12)]
    # The listing needs no weights (meta device): the twelve transformer blocks, not their insides, are the
    # `block` layers (residual blocks' outputs), by type or by name; a module of no type selected by name is "named".
    assert [(layer.name, layer.type) for layer in a.layers(["block"])] == [(n, "block") for n in blocks]
    assert [(layer.name, layer.type) for layer in a.layers(["name:blocks.*"])] == [(n, "block") for n in blocks]

    rows = rayrs.compare(model_a, model_b, images, layers=["block", "name:norm"], batch_size=24)
    names = [*blocks, "norm"]
    reference = _reference(_named_outputs(model_a, images, names), _named_outputs(model_b, images, names),
                           [torch.arange(24)])
    got = {(r["name_a"], r["name_b"]): r["value"] for r in rows.iter_rows(named=True)}
    assert got.keys() == reference.keys() and len(got) == 13 * 13
    # float32 Grams against float64 activations: ~1e-6 apart; 1e-4 is far above that, far below layer differences.
    assert max(abs(got[key] - reference[key]) for key in reference) < 1e-4
    assert set(rows["type_a"]) == set(rows["type_b"]) == {"block", "named"}

    # The rows draw: the heatmap's axis names each transformer block, under the dropdown's every type.
    from analysis.heatmaps import cross_layer_heatmap
    from analysis.layers import layer_table

    assert layer_table(rows)["block"].to_list() == [f"block{i}" for i in range(12)] + ["head"]
    spec = cross_layer_heatmap(rows, title="ViT").to_dict()
    labels = spec["encoding"]["x"]["axis"]["labelExpr"]
    assert "layer_type == 'named' ? (datum.value == 12 ? 'head' : '')" in labels
    assert "layer_type == 'block' ? (datum.value == 0 ? 'block0' : datum.value == 1 ? 'block1'" in labels


def test_block_layers_are_the_residual_blocks_of_timm_convnext_and_torchvision_resnets() -> None:
    pytest.importorskip("timm")
    example = torch.empty(1, 3, 32, 32, device="meta")
    with torch.device("meta"):
        convnext = build_architecture("timm:convnext_atto", num_classes=10)  # stages of 2, 2, 6, 2 blocks
        resnet = build_architecture("torchvision:resnet50", num_classes=10)  # stages of 3, 4, 6, 3 bottlenecks
    listed = [layer.name for layer in comparable_layers(convnext, example, ["block"])]
    assert listed == [f"stages.{s}.blocks.{b}" for s, depth in enumerate((2, 2, 6, 2)) for b in range(depth)]
    listed = [layer.name for layer in comparable_layers(resnet, example, ["block"])]
    assert listed == [f"layer{s + 1}.{b}" for s, depth in enumerate((3, 4, 6, 3)) for b in range(depth)]


def test_the_analysis_layer_types_are_every_type_a_listing_gives() -> None:
    from analysis.layers import LAYER_TYPES
    from rayrs.models import ALL_LAYER_TYPES, NAMED

    assert LAYER_TYPES == [*ALL_LAYER_TYPES, NAMED]


def test_timm_cnns_are_built_without_an_image_size_and_unknown_names_get_close_ones() -> None:
    pytest.importorskip("timm")
    with torch.device("meta"):  # convnext fixes no input size: image_size is not passed to it
        model = build_architecture("timm:convnext_atto", num_classes=10, image_size=32)
    assert model.head.fc.out_features == 10
    with pytest.raises(UserError, match=r"^unknown timm model 'vit_tiny_patch16_22'; close names: vit_tiny_patch16_224"):
        build_architecture("timm:vit_tiny_patch16_22", num_classes=10)


def test_without_timm_installed_the_line_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets where the extra is not installed
    with pytest.raises(UserError) as missing:
        build_architecture(VIT, num_classes=10)
    assert str(missing.value) == (f"{VIT} needs timm, an optional extra of rayrs: uv sync --extra timm "
                                  "(or pip install timm)")


# --- package.module:function ------------------------------------------------------------------------------------

FACTORIES = '''
from torch import nn

def small_cnn(num_classes, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))

def without_channels(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))

def not_a_model(num_classes):
    return "a string"

NOT_CALLABLE = 3
'''


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package of the user's own factories, written into tmp_path and put on sys.path; its import name."""
    package = tmp_path / "userzoo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userzoo.nets"
    for name in ("userzoo", "userzoo.nets"):
        sys.modules.pop(name, None)


def test_a_users_factory_is_built_loaded_and_compared(factories: str, tmp_path: Path) -> None:
    arch = f"{factories}:small_cnn"
    torch.manual_seed(3)
    saved = build_architecture(arch, num_classes=5, in_channels=1)
    assert saved[0].in_channels == 1  # in_channels reached the factory that takes it
    source = WeightsFileModel.of(arch, _saved(saved, tmp_path / "mine.safetensors"), num_classes=5, image_size=8,
                                 in_channels=1)
    model, images = source.load(), _images(12, 8, channels=1)
    with torch.no_grad():
        torch.testing.assert_close(model(images), saved.eval()(images), rtol=0, atol=0)
    assert [layer.name for layer in source.layers()] == ["0", "1", "2", "4"]
    rows = rayrs.compare(model, model, images, layers=["conv", "act"], batch_size=12)
    reference = _reference(*[_named_outputs(model, images, ["0", "1"])] * 2, [torch.arange(12)])
    got = {(r["name_a"], r["name_b"]): r["value"] for r in rows.iter_rows(named=True)}
    assert got.keys() == reference.keys()
    assert max(abs(got[key] - reference[key]) for key in reference) < 1e-4  # as above: float32 vs float64
    # A factory without in_channels is called with num_classes alone.
    assert build_architecture(f"{factories}:without_channels", num_classes=7)[1].out_features == 7


@pytest.mark.parametrize(("arch", "line"), [
    ("nopackage_zz.nets:small_cnn", "architecture 'nopackage_zz.nets:small_cnn': no module 'nopackage_zz.nets' to "
     "import; write torchvision:<name>, timm:<name>, one of wrn, resnet18, resnet34, resnet50, or "
     "package.module:function for your own code, its package importable (installed or on PYTHONPATH)"),
    ("userzoo.nets:missing", "architecture 'userzoo.nets:missing': module userzoo.nets has no 'missing'"),
    ("userzoo.nets:NOT_CALLABLE", "architecture 'userzoo.nets:NOT_CALLABLE': userzoo.nets.NOT_CALLABLE is a int, "
     "not a function returning an nn.Module"),
    ("userzoo.nets:not_a_model", "architecture 'userzoo.nets:not_a_model': userzoo.nets.not_a_model(num_classes=...) "
     "returned a str, not an nn.Module"),
    ("userzoo.nets:", "architecture 'userzoo.nets:' names nothing after the colon: write userzoo.nets:<name>"),
])
def test_a_factory_that_cannot_give_a_model_is_one_line(factories: str, arch: str, line: str) -> None:
    with pytest.raises(UserError) as refused:
        build_architecture(arch, num_classes=10)
    assert str(refused.value) == line


# --- the zoos' normalisations ------------------------------------------------------------------------------------

# CIFAR-10's channel statistics as RobustBench's DeepMind WideResNets carry them (dm_wide_resnet.py), written
# out here rather than read from rayrs.
CIFAR10_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
CIFAR10_STD = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "resnet18"])
def test_cifar10_normalisation_is_the_bare_model_on_hand_normalised_pixels(arch: str) -> None:
    torch.manual_seed(4)
    normalised = build_architecture(arch, num_classes=10, normalize="cifar10").eval()
    bare = build_architecture(arch, num_classes=10).eval()
    bare.load_state_dict(normalised.state_dict())  # the normalisation adds nothing to the state dict
    images = _images(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(normalised(images), bare((images - CIFAR10_MEAN) / CIFAR10_STD),
                                   rtol=1e-6, atol=1e-6)


def test_explicit_statistics_normalise_a_users_factory(factories: str) -> None:
    torch.manual_seed(5)
    arch = f"{factories}:small_cnn"
    normalised = build_architecture(arch, num_classes=3, normalize={"mean": [0.5, 0.25, 0.0], "std": 0.5}).eval()
    bare = build_architecture(arch, num_classes=3).eval()
    bare.load_state_dict(normalised.state_dict())
    images = _images(4, 8)
    expected = (images - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / 0.5
    with torch.no_grad():
        torch.testing.assert_close(normalised(images), bare(expected), rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match=r"^normalize mean \[0.5, 0.5\]: give 1 or 3 numbers \(one per input channel\)$"):
        build_architecture(arch, num_classes=3, normalize={"mean": [0.5, 0.5], "std": 0.5})
    with pytest.raises(UserError, match=r"^normalize std \[1, 0, 1\]: every std must be positive$"):
        build_architecture(arch, num_classes=3, normalize={"mean": 0.5, "std": [1, 0, 1]})


# --- layers selected by name ------------------------------------------------------------------------------------


def test_name_patterns_select_modules_star_within_a_part_double_star_across() -> None:
    with torch.device("meta"):
        model = build_model("resnet18", num_classes=10)
    example = torch.empty(1, 3, 32, 32, device="meta")

    def names(*spec: str) -> list[str]:
        return [layer.name for layer in comparable_layers(model, example, spec)]

    assert names("name:layer1.*") == ["layer1.0", "layer1.1"]  # the blocks, not what is inside them
    assert names("name:layer4.**.conv?") == ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    # A type and a pattern together: each layer once, in execution order; the fc is selected twice over.
    both = comparable_layers(model, example, ["linear", "name:fc", "name:layer4.1"])
    assert [(layer.name, layer.type) for layer in both] == [("layer4.1", "block"), ("fc", "linear")]
    # One spelling, one job id: types in their order, then the patterns sorted, each once.
    assert layer_types(["name:b.*", "conv", "name:a", "name:b.*", "block"]) == ("conv", "block", "name:a", "name:b.*")


def test_a_pattern_that_matches_nothing_names_real_modules() -> None:
    with torch.device("meta"):
        model = build_model("resnet18", num_classes=10)
    with pytest.raises(UserError) as nothing:
        comparable_layers(model, torch.empty(1, 3, 32, 32, device="meta"), ["conv", "name:layers.*"])
    line = str(nothing.value)
    assert "\n" not in line and line.startswith("layer pattern 'name:layers.*' matches no module that runs; "
                                                "the model's modules are named like layer")
    assert line.endswith("(in a pattern * stays within one dotted part, ** crosses parts)")
    with pytest.raises(ValueError, match=r"compare: unknown layer types \['blocks'\]; .* name:<glob>"):
        rayrs.compare(model, model, torch.rand(4, 3, 8, 8), layers=["blocks"])


def test_a_sweep_file_selects_layers_by_name_into_the_jobs(tmp_path: Path) -> None:
    from rayrs.config import SweepFileError, expand, load_experiment
    from rayrs.models import model_layers
    from rayrs.similarity.jobs import plan_jobs

    path = tmp_path / "named.yaml"
    head = "model: {arch: wrn, depth: 10, width: 1}\ntrain: {epochs: 1}\n"
    path.write_text(head + "compare: [{kind: cross_layer, layer_types: ['name:block1.*', act]}]\n")
    experiment = load_experiment(path)
    trials = expand(experiment)
    (job,) = plan_jobs(experiment, trials)
    assert job.layer_types == ("act", "name:block1.*")  # canonical order: it enters the job id
    layers = model_layers(trials[0].config, job.layer_types)
    assert [(layer.name, layer.type) for layer in layers if layer.type != "act"] == [("block1.0", "block")]
    path.write_text(head + "compare: [{kind: cross_layer, layer_types: [conv, 'name:']}]\n")
    with pytest.raises(SweepFileError) as bad:
        load_experiment(path)
    assert str(bad.value).startswith(f"{path}: compare.0.cross_layer.layer_types.1: Input should be 'conv', 'bn', "
                                     "'act', 'pool', 'linear' or 'block', or name:<glob> for modules by path")


def test_a_job_with_a_name_pattern_keeps_the_layers_it_names(tmp_path: Path) -> None:
    """A comparison job records its views' layers by type and pattern, then picks its own out of them: the
    blocks a pattern names are kept although their type ("block") is not in the spec."""
    import pyarrow.parquet as pq
    from test_data import write_cifar10
    from test_sources import _cifar10_trial

    from rayrs.similarity.jobs import ModelRef, SimilarityJob, run_job
    from rayrs.storage import Storage
    from rayrs.train import train_trial

    write_cifar10(tmp_path / "data", per_batch=8, test=12)
    spec = _cifar10_trial(tmp_path / "data")
    storage = Storage(tmp_path / "results")
    train_trial(spec, storage, "cpu")
    final = ModelRef(spec.name, spec.config.train.epochs, spec.fingerprint)
    job = SimilarityJob("cross_layer", final, final, 12, batch_size=12, passes=1,
                        layer_types=layer_types(["linear", "name:block*.0"]))
    run_job(job, {spec.name: spec.config}, storage, "cpu")
    rows = pq.read_table(tmp_path / "results" / job.output).to_pylist()
    names = [row["name_b"] for row in rows if row["layer_a"] == 0]
    assert names == ["block1.0", "block2.0", "block3.0", "fc"]  # WRN-10-1: one block a group, then the fc
    assert {(row["name_a"], row["type_a"]) for row in rows} == {("block1.0", "block"), ("block2.0", "block"),
                                                                ("block3.0", "block"), ("fc", "linear")}
