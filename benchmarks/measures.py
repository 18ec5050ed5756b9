"""What Procrustes and SVCCA cost next to CKA (paper App. B.1), and how far they agree, on one layer grid.

Same model, same probe inputs, same device, every layer pair (L x L) of one model against itself, each measure as
rayrs computes it in a comparison job:

  cka          `layer_grams` (forward + one U-centred Gram per layer) + `MinibatchCKA`: all pairs in one GEMM
  procrustes   `layer_sample_spaces` (forward + float64 centred Gram + eigh per layer) + `procrustes`: one
               r x r nuclear norm (SVD) per pair
  svcca        the same sample spaces + `svcca`: per layer its top 20 directions (the paper's code), one SVD per pair

The ratios are what App. B.1's cost figure shows from a sweep's `seconds` column, measured here on a grid
large enough to matter. Each measure is timed as a comparison job runs it (Procrustes and SVCCA each compute
their sample spaces), in ROUNDS (`benchmarks/timing.py`): procrustes, cka, svcca, reversed every other round, so
CKA runs back to back with each; `procrustes_over_cka` and `svcca_over_cka` are medians over the rounds of each
round's own ratio, with their min-max under "spread". Agreement: Spearman rank correlation of CKA with each measure over the off-diagonal
pairs (Procrustes is a distance, so a measure that agrees with CKA gives a negative rho there).
The last line is one JSON object.

    uv run python benchmarks/measures.py --quick      # CPU, WRN-16-2 (44 layers), n = 256: ~2 minutes
    uv run python benchmarks/measures.py              # n = 512
    uv run python benchmarks/measures.py --device cuda --n 1024
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from rayrs.models import build_model, comparable_layers
from rayrs.similarity import MinibatchCKA, layer_grams
from rayrs.similarity.measures import layer_sample_spaces, procrustes, svcca

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (  # noqa: E402 (a sibling file, not a package)
    MIN_ROUNDS,
    ORDER_NOTE,
    Ratio,
    check_rounds,
    describe,
    emit,
    figure_spreads,
    headlines,
    machine,
    run_rounds,
    stopwatch,
)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho of two equally long vectors (Pearson correlation of their ranks; no ties expected)."""
    rank_x, rank_y = (np.argsort(np.argsort(v)).astype(np.float64) for v in (x, y))
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"n = 256, {MIN_ROUNDS} rounds")
    parser.add_argument("--n", type=int, default=None, help="probe inputs (one minibatch); default 512, 256 with --quick")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"rounds of interleaved timings (at least {MIN_ROUNDS})")
    parser.add_argument("--json", metavar="PATH", help="also write the final JSON object to PATH")
    args = parser.parse_args(argv)
    check_rounds(args.rounds)
    n = args.n or (256 if args.quick else 512)
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.manual_seed(0)
    model = build_model("wrn", num_classes=10, in_channels=3, depth=args.depth, width=args.width).to(device).eval()
    probe = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    layers = comparable_layers(model, probe[:1])
    count = len(layers)

    def cka() -> torch.Tensor:
        grams = layer_grams(model, layers, probe)
        accumulator = MinibatchCKA(count, count, device=device)
        accumulator.update(grams, grams)
        return accumulator.compute()

    def spaces() -> torch.Tensor:
        return layer_sample_spaces(model, layers, probe)[0]

    grids: dict[str, torch.Tensor] = {}

    def time_cka(r: int) -> dict[str, float]:
        seconds, grids["cka"] = stopwatch(cka, sync)
        return {"cka": seconds}

    def time_pairs(name: str, measure):
        def run(r: int) -> dict[str, float]:
            spaces_seconds, z = stopwatch(spaces, sync)
            pairs_seconds, grids[name] = stopwatch(lambda: measure(z, z), sync)
            return {name: spaces_seconds + pairs_seconds, f"{name}_sample_spaces": spaces_seconds,
                    f"{name}_pairs": pairs_seconds}

        return run

    contenders = {"procrustes": time_pairs("procrustes", procrustes), "cka": time_cka,
                  "svcca": time_pairs("svcca", svcca)}
    print(f"WRN-{args.depth}-{args.width} ({count} layers) on {device}, n = {n}, {args.rounds} rounds of "
          f"{', '.join(contenders)} ({ORDER_NOTE}), after one untimed call each", flush=True)
    for run in contenders.values():  # warm-up: first-call set-up is not a measure's cost
        run(-1)
    per_round = [{k: v for figures in round_.values() for k, v in figures.items()}
                 for round_ in run_rounds(contenders, args.rounds)]
    seconds = figure_spreads(per_round)
    values, spreads = headlines(per_round, {"procrustes_over_cka": Ratio("procrustes", "cka"),
                                            "svcca_over_cka": Ratio("svcca", "cka")})

    off_diagonal = ~np.eye(count, dtype=bool)
    grid_values = {name: grid.double().cpu().numpy()[off_diagonal] for name, grid in grids.items()}
    summary = {
        **values,
        "spearman_cka_procrustes": spearman(grid_values["cka"], grid_values["procrustes"]),
        "spearman_cka_svcca": spearman(grid_values["cka"], grid_values["svcca"]),
        "spread": spreads,
        "seconds": seconds,
        "rounds": args.rounds,
        "order": f"{ORDER_NOTE}: {', '.join(contenders)}",
        "layers": count,
        "pairs": count * count,
        "n": n,
        "device": str(device),
        "arch": f"wrn-{args.depth}-{args.width}",
        "machine": machine(),
    }
    print(f"\nmedian [min-max, rounds] over {args.rounds} rounds; x CKA: median of each round's own ratio")
    print(f"{'measure':<12}{'seconds':>28}{'x CKA':>28}  of which")
    print(f"{'cka':<12}{describe(seconds['cka'], '.3f'):>28}{'1':>28}  forward + Grams + one L x L GEMM")
    for name in ("procrustes", "svcca"):
        print(f"{name:<12}{describe(seconds[name], '.3f'):>28}{describe(spreads[f'{name}_over_cka'], '.3g'):>28}  "
              f"sample spaces {seconds[f'{name}_sample_spaces']['median']:.3f} s + {count * count} pair SVDs "
              f"{seconds[f'{name}_pairs']['median']:.3f} s")
    print(f"\nagreement with CKA over the {count * (count - 1)} off-diagonal pairs (Spearman rho): "
          f"Procrustes distance {summary['spearman_cka_procrustes']:+.3f}, SVCCA {summary['spearman_cka_svcca']:+.3f}")
    emit(summary, args.json)


if __name__ == "__main__":
    main()
