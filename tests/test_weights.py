"""Users' weights files: safetensors or weights-only PyTorch files, RobustBench layouts, nothing in them runs."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rayrs.errors import UserError
from rayrs.models import build_model
from rayrs.weights import load_weights_into, read_weights


def _wrn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("wrn", num_classes=10, depth=10, width=1).eval()


def _inputs() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("layout", ["safetensors", "bare", "state_dict", "model_state_dict", "data_parallel"])
def test_a_saved_model_comes_back_from_each_format(tmp_path: Path, layout: str) -> None:
    trained = _wrn(seed=1)
    state = {name: tensor.clone() for name, tensor in trained.state_dict().items()}
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pt")
    if layout == "safetensors":
        save_file(state, path)
    elif layout == "bare":
        torch.save(state, path)
    elif layout == "data_parallel":  # RobustBench's files from nn.DataParallel: every name prefixed, nested
        torch.save({"state_dict": {f"module.{name}": t for name, t in state.items()}, "epoch": 200}, path)
    else:
        torch.save({layout: state, "epoch": 3, "best_acc": 0.9}, path)
    model = load_weights_into(_wrn(seed=2), read_weights(path), str(path))
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(_inputs()), trained(_inputs()), rtol=0, atol=0)


class _RunsCode:
    """Unpickling this runs ``exec`` on a line that leaves a file behind: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_a_file_that_needs_unpickling_is_refused_and_nothing_in_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(UserError) as refused:
        read_weights(path)
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"weights file {path} refused: reading it needs arbitrary unpickling")
    assert "(it names exec)" in line and "convert it once to safetensors" in line
    assert not marker.exists()


def test_a_pickled_model_object_is_refused_with_the_way_to_convert_it(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pth"
    torch.save(_wrn(seed=1), path)  # the whole object, as many repositories share their models
    with pytest.raises(UserError, match=r"refused: .*\(it names rayrs\.models\.WideResNet\).*save_file\(torch\.load"):
        read_weights(path)


def test_mismatched_names_are_one_line_naming_the_first_missing_and_unexpected(tmp_path: Path) -> None:
    state = _wrn(seed=1).state_dict()
    state["fc.weights"] = state.pop("fc.weight")  # a typo'd name: one missing, one unexpected
    path = tmp_path / "w.safetensors"
    save_file(dict(state), path)
    with pytest.raises(UserError) as mismatch:
        load_weights_into(_wrn(seed=2), read_weights(path), str(path))
    line = str(mismatch.value)
    assert line == (f"weights file {path} does not fit the architecture (1 of the model's tensors missing, first "
                    f"fc.weight; 1 the model lacks, first fc.weights); check the architecture named for it, or the file")


def test_a_tensor_of_another_shape_is_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cifar100 = build_model("wrn", num_classes=100, depth=10, width=1)  # the same names, another classifier
    path = tmp_path / "cifar100.safetensors"
    save_file(cifar100.state_dict(), path)
    with pytest.raises(UserError, match=r"\(fc.weight is \(100, 64\) there, \(10, 64\) in the model\)$"):
        load_weights_into(_wrn(seed=2), read_weights(path), str(path))


def test_a_file_that_is_no_state_dict_says_what_to_save(tmp_path: Path) -> None:
    path = tmp_path / "metrics.pt"
    torch.save({"epoch": 3, "accuracy": 0.5}, path)
    with pytest.raises(UserError, match=r"'epoch' is not a tensor \(int\); save model.state_dict\(\) alone"):
        read_weights(path)
    with pytest.raises(UserError, match="does not exist"):
        read_weights(tmp_path / "absent.safetensors")


# -- a user's network as a model source (rayrs.sources.WeightsFileModel) --------------------------------------
def _torchvision_resnet18(seed: int) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.mark.parametrize("layout", ["safetensors", "data_parallel_pt"])
def test_a_torchvision_model_from_a_weights_file_is_the_saved_network(tmp_path: Path, layout: str) -> None:
    from rayrs.models import comparable_layers
    from rayrs.sources import WeightsFileModel

    saved = _torchvision_resnet18(seed=1)
    if layout == "safetensors":
        path = tmp_path / "resnet18.safetensors"
        save_file(saved.state_dict(), path)
    else:
        path = tmp_path / "resnet18.pt"
        torch.save({"model_state_dict": {f"module.{k}": v for k, v in saved.state_dict().items()}}, path)
    source = WeightsFileModel.of("torchvision:resnet18", path, num_classes=10, image_size=64)
    model = source.load(0)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(images), saved(images), rtol=0, atol=0)
    assert not model.training
    # The layer listing (built without weights) is the loaded network's own, blocks included.
    types = ["conv", "bn", "act", "pool", "linear", "block"]
    assert source.layers(types) == comparable_layers(saved, images[:1], types)
    assert "layer1.0.relu#1" in [layer.name for layer in source.layers()]  # torchvision reuses each block's ReLU


def test_imagenet_normalisation_is_applied_inside_without_renaming_the_weights(tmp_path: Path) -> None:
    from rayrs.models import IMAGENET_MEAN, IMAGENET_STD
    from rayrs.sources import WeightsFileModel

    saved = _torchvision_resnet18(seed=2)
    path = tmp_path / "resnet18.safetensors"
    save_file(saved.state_dict(), path)
    model = WeightsFileModel.of("torchvision:resnet18", path, num_classes=10, image_size=32, normalize="imagenet").load()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    normalised = (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(images), saved(normalised), rtol=1e-6, atol=1e-6)


def test_a_rayrs_wrn_from_a_weights_file_and_unknown_names_are_one_line(tmp_path: Path) -> None:
    from rayrs.sources import WeightsFileModel

    saved = _wrn(seed=3)
    path = tmp_path / "wrn.safetensors"
    save_file(saved.state_dict(), path)
    model = WeightsFileModel.of("wrn", path, num_classes=10, image_size=32, depth=10, width=1).load(0)
    with torch.no_grad():
        torch.testing.assert_close(model(_inputs()), saved(_inputs()), rtol=0, atol=0)
    with pytest.raises(UserError, match=r"unknown torchvision model 'resnet19': choose one of .*resnet18"):
        WeightsFileModel.of("torchvision:resnet19", path, num_classes=10, image_size=32).load()
    with pytest.raises(UserError, match=r"architecture 'timmm:vit': no module 'timmm' to import; write torchvision:<name>, timm:<name>"):
        WeightsFileModel.of("timmm:vit", path, num_classes=10, image_size=32).load()
    with pytest.raises(UserError, match=r"no weights file for epoch 5 \(have \[0\]\)"):
        WeightsFileModel.of("wrn", path, num_classes=10, image_size=32, depth=10, width=1).load(5)


# -- the paper's / RobustBench's WideResNet names -------------------------------------------------------------
PAPER_WRN = Path(__file__).parent / "fixtures" / "paper_code" / "wrn_paper_keys.safetensors"


def _paper_wrn() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The reference's WRN-10-1 state dict under its own names, its (8, 3, 32, 32) inputs and (8, 10) logits
    (tests/fixtures/paper_code/make_wrn_keys.py ran the paper's models/wide_resnet.py)."""
    from safetensors.torch import load_file

    state = load_file(PAPER_WRN)
    return state, state.pop("inputs"), state.pop("logits")


def _paper_wrn_model(path: Path) -> torch.nn.Module:
    from rayrs.sources import WeightsFileModel  # the path a sweep file's `models:` entry loads through

    return WeightsFileModel.of("wrn", path, num_classes=10, image_size=32, depth=10, width=1).load()


@pytest.mark.parametrize("layout", ["safetensors", "data_parallel"])
def test_the_papers_wideresnet_checkpoint_loads_into_wrn_and_gives_the_references_logits(
        tmp_path: Path, layout: str) -> None:
    state, inputs, logits = _paper_wrn()
    assert "block1.layer.0.conv1.weight" in state and "block2.layer.0.convShortcut.weight" in state
    if layout == "safetensors":
        path = tmp_path / "paper_wrn.safetensors"
        save_file(state, path)
    else:  # the paper's cka.py: torch.load(path)["state_dict"] into nn.DataParallel(models.<arch>); RobustBench alike
        path = tmp_path / "paper_wrn.pt"
        torch.save({"state_dict": {f"module.{name}": t for name, t in state.items()}, "epoch": 100}, path)
    model = _paper_wrn_model(path)
    # The fixture's network has an identity-shortcut block (block1: 16 -> 16 channels) and two 1x1-shortcut
    # blocks, with BatchNorm statistics far from the identity: a swapped or misplaced tensor moves the logits by
    # far more than float32 rounding, which is all that separates the two implementations.
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), logits, rtol=0, atol=1e-5)


def test_a_papers_wideresnet_file_that_does_not_fit_is_one_line_under_wrns_names(tmp_path: Path) -> None:
    state, inputs, logits = _paper_wrn()
    missing = dict(state)
    del missing["block3.layer.0.convShortcut.weight"]
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match=r"^weights file \S+missing.safetensors \(read with the paper's / RobustBench's "
                                        r"WideResNet names\) does not fit the architecture \(1 of the model's tensors "
                                        r"missing, first block3\.0\.shortcut\.weight\); check"):
        _paper_wrn_model(tmp_path / "missing.safetensors")
    extra = dict(state, **{"block1.layer.0.convShortcut.weight": torch.zeros(16, 16, 1, 1)})
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(UserError, match=r"\(1 the model lacks, first block1\.0\.shortcut\.weight\)"):
        _paper_wrn_model(tmp_path / "extra.safetensors")
    with pytest.raises(UserError, match=r"\(read with the paper's / RobustBench's WideResNet names\) does not fit the "
                                        r"architecture \(fc\.weight is \(10, 64\) there, \(100, 64\) in the model\)"):
        from rayrs.sources import WeightsFileModel

        save_file(state, tmp_path / "w1.safetensors")  # a 10-class checkpoint, a 100-class wrn
        WeightsFileModel.of("wrn", tmp_path / "w1.safetensors", num_classes=100, image_size=32, depth=10,
                            width=1).load()
    # TRADES's WideResNet also saves `sub_block1`, a group its forward never runs: dropped, the logits unchanged.
    trades = dict(state, **{"sub_block1.layer.0.conv1.weight": torch.ones(16, 16, 3, 3)})
    save_file(trades, tmp_path / "trades.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(_paper_wrn_model(tmp_path / "trades.safetensors")(inputs), logits, rtol=0, atol=1e-5)
