"""What the golden-value tests share with the scripts that made their fixtures from the paper's own code.

The fixtures under ``tests/fixtures/paper_code/`` hold numbers produced by *running* the attack code of
Cianfarani et al. (inspire-group/robust_representation_similarity, whose ``attacks/`` are copies of Kang et
al.'s advex-uar) on a CPU, in a scratch environment outside this project: inputs, the random draws the
reference made, intermediate tensors and outputs. Each fixture's generating script lies beside it and says
how it was run. Nothing of the reference code is in this repository; the scripts import it from a checkout
whose path they are given.

Both sides need the same inputs and the same small model, defined once here:

- `tinted_digits`: scikit-learn's digits, upsampled to 32 x 32 and tinted one random colour per image, so
  that the RGB-only paths of the reference (JPEG's chroma subsampling, Snow's luminance) see colour;
- `TinyNet`: a small CNN for 3 x 32 x 32 inputs whose trained weights are stored in each fixture.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

FIXTURES = Path(__file__).parent / "fixtures" / "paper_code"


def tinted_digits(count: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` digits as ``(count, 3, size, size)`` float32 in [0, 1] and ``(count,)`` int64 labels.

    Each digit (ink in [0, 1]) is drawn in a random colour on a random background colour, both from a
    generator seeded with ``seed``; images are the first ``count`` of scikit-learn's digits, in its order.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = torch.from_numpy(digits.images[:count]).float().div(16).unsqueeze(1)  # (count, 1, 8, 8)
    ink = F.interpolate(ink, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    generator = torch.Generator().manual_seed(seed)
    foreground = torch.rand(count, 3, 1, 1, generator=generator)
    background = torch.rand(count, 3, 1, 1, generator=generator) * 0.5
    images = background + (foreground - background) * ink
    return images.clamp(0, 1), torch.from_numpy(digits.target[:count]).long()


class TinyNet(nn.Module):
    """conv 3->16 -> BN -> ReLU -> conv 16->32 stride 2 -> BN -> ReLU -> global average pool -> linear 32->10.

    Shapes: ``(n, 3, h, w)`` pixels in [0, 1] -> ``(n, 10)`` logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def load_fixture(name: str) -> dict[str, torch.Tensor]:
    """The tensors of ``fixtures/paper_code/<name>.safetensors`` (safetensors: nothing is unpickled)."""
    return load_file(FIXTURES / f"{name}.safetensors")


def fixture_model(tensors: dict[str, torch.Tensor], prefix: str = "model.") -> TinyNet:
    """The `TinyNet` whose weights a fixture stores under ``prefix``, in eval mode."""
    model = TinyNet()
    model.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
    return model.eval()
