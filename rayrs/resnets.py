"""torchvision's ImageNet ResNets, taking [0, 1] pixels (paper: Imagenette / Imagewoof models).

Kept apart from ``rayrs.models`` because importing torchvision costs seconds: only a ResNet trial pays it.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from rayrs.models import Normalize, normalization_stats, register_residual_block

# Their output (after the addition and the ReLU that follows it) is a compared layer of type `block`.
register_residual_block(BasicBlock)
register_residual_block(Bottleneck)


class PixelResNet(ResNet):
    """torchvision's ``ResNet`` on [0, 1] pixels: as they are (the paper's code), or normalised first.

    The paper's code calls torchvision's ``resnet18`` / ``resnet50`` on [0, 1] pixels with no normalisation
    (``normalize="none"``, the default); ``normalize="imagenet"`` (or another of `rayrs.models.NORMALIZATIONS`)
    puts a fixed ``(x - mean) / std`` with those statistics in front (a non-persistent buffer: the state dict
    is torchvision's either way).
    Subclassing (rather than wrapping) keeps torchvision's module names (``layer1.0.relu``) and state dict.
    With ``in_channels != 3`` the 7x7 stem conv is replaced by one with that many input channels.

    Shapes: ``(n, in_channels, h, w)`` pixels in [0, 1] -> ``(n, num_classes)`` logits.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        *,
        num_classes: int,
        in_channels: int = 3,
        normalize: str = "none",
    ) -> None:
        super().__init__(block, layers, num_classes=num_classes)
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        stats = normalization_stats(normalize, in_channels)
        self.normalize = None if stats is None else Normalize(*stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x if self.normalize is None else self.normalize(x))


# The block types and stage sizes of torchvision's resnet18 / resnet34 / resnet50 (He et al. 2016, Table 1).
RESNET_LAYOUTS: dict[int, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
}


def pixel_resnet(depth: int, *, num_classes: int, in_channels: int = 3, normalize: str = "none") -> PixelResNet:
    """A freshly initialised ResNet-``depth`` (18, 34 or 50) on [0, 1] pixels; ``normalize``: `NORMALIZATIONS`."""
    block, layers = RESNET_LAYOUTS[depth]
    return PixelResNet(block, layers, num_classes=num_classes, in_channels=in_channels, normalize=normalize)
