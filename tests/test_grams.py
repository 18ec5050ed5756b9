"""Grams formed inside forward hooks equal Grams of activations captured by hand."""

import resource
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rayrs.similarity import GramRecorder, MinibatchCKA, centered_gram, cka_matrix, layer_grams, u_center


@dataclass(frozen=True)
class Layer:
    """Stand-in for rayrs.models.Layer: the three fields the recorder reads."""

    index: int
    module_name: str
    call: int = 0


class TinyNet(nn.Module):
    """conv-bn-relu twice with ONE relu module reused (as in torchvision's BasicBlock), then pool and linear."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        generator = torch.Generator().manual_seed(0)
        for bn in (self.bn1, self.bn2):  # non-trivial eval-mode batch norm
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.weight.data.copy_(torch.randn(bn.num_features, generator=generator))
            bn.bias.data.copy_(torch.randn(bn.num_features, generator=generator))

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))

    def activations(self, x):
        """Every layer's output, computed step by step without hooks and without in-place ops."""
        with torch.no_grad():
            a1 = self.conv1(x)
            a2 = self.bn1(a1)
            a3 = torch.relu(a2)
            a4 = self.conv2(a3)
            a5 = self.bn2(a4)
            a6 = torch.relu(a5)
            a7 = self.pool(a6)
            a8 = self.fc(a7.flatten(1))
        return [a1, a2, a3, a4, a5, a6, a7, a8]


LAYERS = [
    Layer(0, "conv1"),
    Layer(1, "bn1"),
    Layer(2, "relu", call=0),
    Layer(3, "conv2"),
    Layer(4, "bn2"),
    Layer(5, "relu", call=1),
    Layer(6, "pool"),
    Layer(7, "fc"),
]


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def expected_grams(model: TinyNet, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([u_center(centered_gram(a)) for a in model.activations(x)])


def test_layer_grams_equal_grams_of_hand_captured_activations():
    model, x = TinyNet().eval(), images(12)
    grams = layer_grams(model, LAYERS, x)
    assert grams.shape == (8, 12, 12) and grams.dtype == torch.float32
    torch.testing.assert_close(grams, expected_grams(model, x), rtol=1e-5, atol=1e-5)


def test_slots_follow_layer_index_not_list_order():
    model, x = TinyNet().eval(), images(10)
    torch.testing.assert_close(layer_grams(model, LAYERS[::-1], x), layer_grams(model, LAYERS, x))


def test_reused_module_calls_go_to_their_own_slots_on_every_pass():
    model = TinyNet().eval()
    relu_layers = [Layer(0, "relu", call=1), Layer(1, "relu", call=0)]
    with torch.no_grad(), GramRecorder(model, relu_layers) as recorder:
        for seed in (1, 2):
            x = images(9, seed)
            model(x)
            first, second = expected_grams(model, x)[[2, 5]]
            grams = recorder.take()
            torch.testing.assert_close(grams[0], second, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(grams[1], first, rtol=1e-5, atol=1e-5)
        # A pass that is never taken is simply replaced by the next one: the counts restart every pass.
        model(images(9, 3))
        model(images(9, 4))
        torch.testing.assert_close(
            recorder.take()[1], expected_grams(model, images(9, 4))[2], rtol=1e-5, atol=1e-5
        )


def test_batch_norm_row_is_the_same_with_in_place_relu():
    inplace, outplace = TinyNet(inplace=True).eval(), TinyNet(inplace=False).eval()
    outplace.load_state_dict(inplace.state_dict())
    x = images(16)
    bn1 = [Layer(0, "bn1")]
    torch.testing.assert_close(layer_grams(inplace, bn1, x), layer_grams(outplace, bn1, x), rtol=0, atol=0)

    # What the Gram-in-hook avoids: keeping the bn1 output tensor itself, ReLU(inplace=True) then
    # overwrites it, and the "batch-norm" activation is really the post-ReLU one.
    kept = []
    handle = inplace.bn1.register_forward_hook(lambda module, args, output: kept.append(output))
    with torch.no_grad():
        inplace(x)
    handle.remove()
    assert kept[0].min() >= 0 and inplace.activations(x)[1].min() < 0


def test_hooks_are_removed_on_exit_even_after_an_error():
    model = TinyNet()
    with GramRecorder(model, LAYERS):
        assert any(module._forward_hooks for module in model.modules())
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())
    with pytest.raises(ZeroDivisionError):
        with GramRecorder(model, LAYERS):
            1 / 0
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


def test_no_autograd_graph_is_kept():
    model = TinyNet().train()
    with GramRecorder(model, LAYERS) as recorder:
        model(images(8)).sum().backward()  # gradients enabled: the model's own graph exists
        grams = recorder.take()
    assert not grams.requires_grad and grams.grad_fn is None
    grams = layer_grams(model, LAYERS, images(8))
    assert not grams.requires_grad and grams.grad_fn is None


def test_layer_grams_restores_each_module_mode():
    model = TinyNet().train()
    model.bn1.eval()  # e.g. a frozen early block
    running_mean = model.bn2.running_mean.clone()
    layer_grams(model, LAYERS, images(8))
    assert model.training and not model.bn1.training and model.bn2.training
    assert torch.equal(model.bn2.running_mean, running_mean)  # the pass ran in eval mode


def test_streamed_minibatch_cka_matches_cka_matrix_on_one_batch():
    # The similarity stage's loop in miniature: Grams of two models per batch -> MinibatchCKA.
    model_a, model_b = TinyNet().eval(), TinyNet().eval()
    torch.nn.init.normal_(model_b.conv1.weight, generator=torch.Generator().manual_seed(5))
    x = images(20)
    cka = MinibatchCKA(len(LAYERS), len(LAYERS))
    cka.update(layer_grams(model_a, LAYERS, x), layer_grams(model_b, LAYERS, x))
    expected = cka_matrix(model_a.activations(x), model_b.activations(x))
    # layer_grams runs the convolutions channels-last, a different float32 kernel: a few 1e-6 apart.
    torch.testing.assert_close(cka.compute(), expected, rtol=0, atol=1e-5)


def test_pooled_grams_are_grams_of_spatially_averaged_maps_as_the_papers_pool_option():
    model, x = TinyNet().eval(), images(12)
    pooled = layer_grams(model, LAYERS, x, pool=True)
    # The paper's register_hooks(pool=True) keeps F.adaptive_avg_pool2d(output, (1, 1)).flatten(1) of a 4-D
    # output (tests/fixtures/paper_code/layer_listing.json: "holds_pooled") and the others as they are.
    features = [
        F.adaptive_avg_pool2d(a, (1, 1)).flatten(1) if a.dim() == 4 else a for a in model.activations(x)
    ]
    expected = torch.stack([u_center(centered_gram(f)) for f in features])
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)
    plain = layer_grams(model, LAYERS, x)
    assert not torch.allclose(pooled[:6], plain[:6], atol=1e-3)  # the conv maps: pooling changes them
    torch.testing.assert_close(pooled[6:], plain[6:])  # pool (n, 8, 1, 1) and fc (n, 5): nothing to average


def test_a_residual_blocks_gram_is_that_of_its_output_after_the_addition():
    from rayrs.models import ALL_LAYER_TYPES, build_model, comparable_layers

    torch.manual_seed(0)
    model = build_model("wrn", num_classes=10, depth=10, width=1).eval()
    x = images(10)
    blocks = comparable_layers(model, x[:1], ["block"])
    grams = layer_grams(model, blocks, x)
    with torch.no_grad():
        first = model.block1[0]
        stem = model.conv1(x)
        pre = first.relu1(first.bn1(stem))
        added = first.conv2(first.relu2(first.bn2(first.conv1(pre)))) + stem  # block1.0 keeps the shape: identity
    expected = u_center(centered_gram(added))
    # layer_grams runs the convolutions channels-last, another float32 kernel: within 1e-5 of the largest entry.
    torch.testing.assert_close(grams[0], expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    every = comparable_layers(model, x[:1], ALL_LAYER_TYPES)
    position = next(layer.index for layer in every if layer.name == "block1.0")
    torch.testing.assert_close(layer_grams(model, every, x)[position], grams[0])


def test_batches_too_small_for_the_estimator_give_zero_slots():
    grams = layer_grams(TinyNet(), LAYERS, images(3))
    assert grams.shape == (8, 3, 3) and torch.all(grams == 0)


def test_bad_layer_lists_are_reported():
    model = TinyNet()
    with pytest.raises(ValueError, match="no module named 'conv9'"):
        GramRecorder(model, [Layer(0, "conv9")])
    with pytest.raises(ValueError, match=r"indices must be 0\.\.1"):
        GramRecorder(model, [Layer(0, "conv1"), Layer(2, "bn1")])
    with pytest.raises(ValueError, match="both call 0 of module 'relu'"):
        GramRecorder(model, [Layer(0, "relu"), Layer(1, "relu")])
    with pytest.raises(RuntimeError, match="'relu' call 2"):
        layer_grams(model, [Layer(0, "relu", call=2)], images(5))


PAGE_FAULTS_OF_A_PROBING_PASS = """
import resource, sys, torch
from torch import nn
from rayrs.similarity.grams import reuse_freed_memory

# 64 MB activations (64 x 16 x 128 x 128 float32): above glibc's 32 MB mmap ceiling, like a WRN's at n = 1024.
model = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)
)
x = torch.rand(64, 3, 128, 128)

def faults_of_a_pass():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.no_grad():
        model(x)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_a_pass()
default = faults_of_a_pass()
applied = reuse_freed_memory()
faults_of_a_pass()
print(default, faults_of_a_pass(), applied)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_reuse_freed_memory_spares_the_page_faults_of_a_forward_pass():
    # In a child process: the setting is process-wide, and the default must be measured before it.
    result = subprocess.run([sys.executable, "-c", PAGE_FAULTS_OF_A_PROBING_PASS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    default, reusing, applied = result.stdout.split()
    pages_of_one_activation = (64 << 20) // resource.getpagesize()
    assert int(default) > 2 * pages_of_one_activation  # every 64 MB activation is mapped afresh, every pass
    assert applied == "True" and int(reusing) < int(default) // 4
