"""What Procrustes and SVCCA cost next to CKA (paper App. B.1), and how far they agree, on one layer grid.

Same model, same probe inputs, same device, every layer pair (L x L) of one model against itself, each measure as
rayrs computes it in a comparison job:

  cka          `layer_grams` (forward + one U-centred Gram per layer) + `MinibatchCKA`: all pairs in one GEMM
  procrustes   `layer_sample_spaces` (forward + float64 centred Gram + eigh per layer) + `procrustes`: one
               r x r nuclear norm (SVD) per pair
  svcca        the same sample spaces + `svcca`: per layer its top 20 directions (the paper's code), one SVD per pair

The ratios are what App. B.1's cost figure shows from a sweep's `seconds` column, measured here on a grid
large enough to matter. Agreement: Spearman rank correlation of CKA with each measure over the off-diagonal
pairs (Procrustes is a distance, so a measure that agrees with CKA gives a negative rho there).
The last line is one JSON object.

    uv run python benchmarks/measures.py --quick      # CPU, WRN-16-2 (44 layers), n = 256: ~1 minute
    uv run python benchmarks/measures.py              # n = 512
    uv run python benchmarks/measures.py --device cuda --n 1024
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rayrs.models import build_model, comparable_layers
from rayrs.similarity import MinibatchCKA, layer_grams
from rayrs.similarity.measures import layer_sample_spaces, procrustes, svcca


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls after one warm-up, and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho of two equally long vectors (Pearson correlation of their ranks; no ties expected)."""
    rank_x, rank_y = (np.argsort(np.argsort(v)).astype(np.float64) for v in (x, y))
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 256, one timed repeat")
    parser.add_argument("--n", type=int, default=None, help="probe inputs (one minibatch); default 512, 256 with --quick")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    n = args.n or (256 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 2)
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = build_model("wrn", num_classes=10, in_channels=3, depth=args.depth, width=args.width).to(device).eval()
    probe = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    layers = comparable_layers(model, probe[:1])
    count = len(layers)
    print(f"WRN-{args.depth}-{args.width} ({count} layers) on {device}, n = {n}, best of {repeats}", flush=True)

    def cka() -> torch.Tensor:
        grams = layer_grams(model, layers, probe)
        accumulator = MinibatchCKA(count, count, device=device)
        accumulator.update(grams, grams)
        return accumulator.compute()

    def spaces() -> torch.Tensor:
        return layer_sample_spaces(model, layers, probe)[0]

    seconds, grids = {}, {}
    seconds["cka"], grids["cka"] = timed(cka, device, repeats)
    seconds["sample_spaces"], z = timed(spaces, device, repeats)
    for name, measure in (("procrustes", procrustes), ("svcca", svcca)):
        pairs_seconds, grids[name] = timed(lambda measure=measure: measure(z, z), device, repeats)
        seconds[name] = seconds["sample_spaces"] + pairs_seconds
        seconds[f"{name}_pairs"] = pairs_seconds

    off_diagonal = ~np.eye(count, dtype=bool)
    values = {name: grid.double().cpu().numpy()[off_diagonal] for name, grid in grids.items()}
    summary = {
        "procrustes_over_cka": seconds["procrustes"] / seconds["cka"],
        "svcca_over_cka": seconds["svcca"] / seconds["cka"],
        "spearman_cka_procrustes": spearman(values["cka"], values["procrustes"]),
        "spearman_cka_svcca": spearman(values["cka"], values["svcca"]),
        "seconds": seconds,
        "layers": count,
        "pairs": count * count,
        "n": n,
        "device": str(device),
        "arch": f"wrn-{args.depth}-{args.width}",
    }
    print(f"\n{'measure':<12}{'seconds':>10}{'x CKA':>8}  of which")
    print(f"{'cka':<12}{seconds['cka']:>10.3f}{1:>8.1f}  forward + Grams + one L x L GEMM")
    for name in ("procrustes", "svcca"):
        print(f"{name:<12}{seconds[name]:>10.3f}{seconds[name] / seconds['cka']:>8.1f}  sample spaces "
              f"{seconds['sample_spaces']:.3f} s + {count * count} pair SVDs {seconds[f'{name}_pairs']:.3f} s")
    print(f"\nagreement with CKA over the {count * (count - 1)} off-diagonal pairs (Spearman rho): "
          f"Procrustes distance {summary['spearman_cka_procrustes']:+.3f}, SVCCA {summary['spearman_cka_svcca']:+.3f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
