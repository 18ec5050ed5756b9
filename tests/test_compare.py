"""`rayrs.compare`: minibatch CKA of any two models in one call, against an independent float64 CKA."""

import pytest
import torch
from torch import nn

import rayrs
from rayrs.models import WideBasicBlock, build_model
from rayrs.schema import JACKKNIFE_FIELD, SECONDS_FIELD, SIMILARITY_SCHEMA, STD_ERROR_FIELD


def _wrn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("wrn", num_classes=10, depth=10, width=1)


def _images(n: int) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _activations(model: nn.Module, images: torch.Tensor, types=(nn.Conv2d, nn.BatchNorm2d, nn.ReLU,
                 nn.AdaptiveAvgPool2d, nn.Linear)) -> dict[str, torch.Tensor]:
    """The output of every module of ``types``, float64 (n, features), named module, module#1, ... per call."""
    outputs: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def hook(name):
        def record(module, args, output):
            call = calls.get(name, 0)
            calls[name] = call + 1
            outputs[name if call == 0 else f"{name}#{call}"] = output.detach().double().flatten(1).clone()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, types)]
    model.eval()
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return outputs


def _hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC of two (n, n) Grams (Song et al. 2012, eq. 5), written out term by term."""
    n = k.shape[0]
    k, l = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    ones = torch.ones(n, dtype=k.dtype)
    trace = torch.trace(k @ l)
    middle = (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
    last = 2 / (n - 2) * (ones @ k @ l @ ones)
    return (trace + middle - last) / (n * (n - 3))


def _reference(xs: dict[str, torch.Tensor], ys: dict[str, torch.Tensor], batches: list[torch.Tensor]) -> dict:
    """CKA of every (x layer, y layer) from HSIC summed over ``batches`` (one batch: full-batch unbiased CKA)."""
    values = {}
    for name_x, x in xs.items():
        for name_y, y in ys.items():
            xy = xx = yy = 0.0
            for batch in batches:
                k, l = x[batch] @ x[batch].T, y[batch] @ y[batch].T
                xy, xx, yy = xy + _hsic(k, l), xx + _hsic(k, k), yy + _hsic(l, l)
            values[name_x, name_y] = (xy / (xx * yy).sqrt()).item()
    return values


def test_compare_is_full_batch_unbiased_cka_with_one_minibatch() -> None:
    model_a, model_b, images = _wrn(1), _wrn(2), _images(40)
    rows = rayrs.compare(model_a, model_b, images, batch_size=64, names=("one", "two"))
    reference = _reference(_activations(model_a, images), _activations(model_b, images), [torch.arange(40)])
    assert rows.columns == [*SIMILARITY_SCHEMA.names, STD_ERROR_FIELD.name, JACKKNIFE_FIELD.name, SECONDS_FIELD.name]
    assert rows.height == len(reference) == 25 * 25  # WRN-10-1: 25 layers of the paper's five types
    got = {(r["name_a"], r["name_b"]): r["value"] for r in rows.iter_rows(named=True)}
    assert got.keys() == reference.keys()
    # float32 Grams against float64 activations: CKA values agree to ~1e-6; 1e-4 is far above that rounding
    # and far below any difference between layers.
    assert max(abs(got[key] - reference[key]) for key in reference) < 1e-4
    assert set(rows["model_a"]) == {"one"} and set(rows["model_b"]) == {"two"} and set(rows["kind"]) == {"cross_model"}
    assert (rows["std_error"] > 0).all() and rows["jackknife"].list.len().unique().to_list() == [20]


def test_compare_over_minibatches_sums_hsic_over_the_documented_order() -> None:
    model_a, model_b, images = _wrn(1), _wrn(3), _images(50)
    rows = rayrs.compare(model_a, model_b, images, layers=["conv", "block"], batch_size=20, passes=2)
    # Each pass's order: randperm seeded by the pass index (rayrs.similarity.run.probe_batches).
    batches = [b for p in range(2) for b in torch.randperm(50, generator=torch.Generator().manual_seed(p)).split(20)]
    kinds = (nn.Conv2d, WideBasicBlock)  # a residual block's output is what the block module returns
    reference = _reference(_activations(model_a, images, kinds), _activations(model_b, images, kinds), batches)
    got = {(r["name_a"], r["name_b"]): r["value"] for r in rows.iter_rows(named=True)}
    assert set(rows["type_a"]) == {"conv", "block"} and got.keys() == reference.keys()
    assert max(abs(got[key] - reference[key]) for key in reference) < 1e-4  # as above


def test_cross_layer_compares_a_model_with_itself_and_leaves_its_mode_alone() -> None:
    model, images = _wrn(1), _images(32)
    model.train()
    running_mean = model.bn.running_mean.clone()
    rows = rayrs.compare(model, None, images, kind="cross_layer", batch_size=32)
    assert all(m.training for m in model.modules())  # back in the mode it came in
    assert torch.equal(model.bn.running_mean, running_mean)  # run in eval mode: statistics untouched
    square = rows.pivot(on="layer_b", index="layer_a", values="value").drop("layer_a").to_torch().double()
    torch.testing.assert_close(square.diagonal(), torch.ones(25, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(square, square.T, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cross_layer compares one model's layers"):
        rayrs.compare(model, _wrn(2), images, kind="cross_layer")
