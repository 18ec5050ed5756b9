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
    """conv 3->16 -> BN -> ReLU -> conv 16->32 stride 2 -> BN -> ReLU -> average pool to pool x pool -> linear.

    Shapes: ``(n, 3, h, w)`` pixels in [0, 1] -> ``(n, 10)`` logits. ``pool = 1`` is a global average pool; it
    sees only 7 x 7 px patches, a bag of strokes, and stays at ~10-20% on 32 px tinted digits after 15 epochs of
    Adam (measured); ``pool = 4`` keeps where the strokes are and reaches ~80% in the same seconds.
    """

    def __init__(self, pool: int = 1) -> None:
        super().__init__()
        self.pool = pool
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * pool * pool, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        # pool 1 keeps the mean of the original TinyNet: fixtures made with it see the same float sums.
        pooled = x.mean((2, 3)) if self.pool == 1 else F.adaptive_avg_pool2d(x, self.pool).flatten(1)
        return self.fc(pooled)


def load_fixture(name: str) -> dict[str, torch.Tensor]:
    """The tensors of ``fixtures/paper_code/<name>.safetensors`` (safetensors: nothing is unpickled)."""
    return load_file(FIXTURES / f"{name}.safetensors")


def fixture_model(tensors: dict[str, torch.Tensor], prefix: str = "model.") -> TinyNet:
    """The `TinyNet` whose weights a fixture stores under ``prefix`` (its pool read from them), in eval mode."""
    model = TinyNet(pool=round((tensors[f"{prefix}fc.weight"].shape[1] // 32) ** 0.5))
    model.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
    return model.eval()
