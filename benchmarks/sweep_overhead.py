"""What the sweep machinery costs on top of the training it schedules.

A small sweep (digits, WRN-10-1, PGD-AT, several seeds) runs through Ray Tune exactly as `rayrs sweep` runs it,
from Ray's start to its shutdown, comparisons and report off. The ideal is the trials' own time (the sum of their
epochs' seconds, as each trial measured them) spread over the parallel slots (CPUs / CPUs per trial); anything
above it is Ray's start, worker start-up (imports, data loading, model building), scheduling, checkpoint I/O
and the catalog.

The sweep runs `--rounds` times (default 3, each in a fresh results folder, Ray started and shut down each
time). A sweep and its ideal come from the same run, so each run gives one paired ratio, both sides under the
same load (there is no second contender to interleave). The last line is one JSON object; its headline key is
the median over the runs of each run's own ratio, with the min-max under "spread":

    sweep_over_ideal   sweep wall time / (sum of trial times / parallel slots)     goal <= 1.5 on 2 cores

    uv run python benchmarks/sweep_overhead.py            # 3 runs of ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import polars as pl

from rayrs import storage as layout
from rayrs.config import Experiment
from rayrs.sweep import SweepOptions, run_sweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (  # noqa: E402 (a sibling file, not a package)
    MIN_ROUNDS,
    Ratio,
    check_rounds,
    describe,
    emit,
    figure_spreads,
    headlines,
    machine,
    run_rounds,
)


def experiment(trials: int, epochs: int) -> Experiment:
    return Experiment.model_validate({
        "name": "overhead",
        "data": {"dataset": "digits"},
        "model": {"arch": "wrn", "depth": 10, "width": 1},
        "train": {"method": "pgd", "eps": 0.1, "epochs": epochs, "batch_size": 64, "attack": {"steps": 3}},
        "eval": {"attack": {"steps": 5}, "train_subset": 128, "test_subset": 128},
        "grid": {"seed": list(range(trials))},
        "compare": [],
        "resources": {"cpus_per_trial": 1},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"sweeps to run (at least {MIN_ROUNDS})")
    parser.add_argument("--json", metavar="PATH", help="also write the final JSON object to PATH")
    args = parser.parse_args()
    check_rounds(args.rounds)
    slots = min(args.trials, os.cpu_count() or 1)

    def sweep(round_index: int) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as results:
            outcome = run_sweep(experiment(args.trials, args.epochs), SweepOptions(report=False), results=results)
            metrics = pl.read_parquet(Path(outcome.storage.root) / layout.METRICS)
        trial_seconds = metrics["epoch_seconds"].sum()
        return {"sweep_s": outcome.seconds, "trial_s_sum": trial_seconds, "ideal_s": trial_seconds / slots}

    def progress(r: int, position: int, name: str, figures: dict[str, float]) -> None:
        print(f"run {r + 1}/{args.rounds}: sweep {figures['sweep_s']:.1f} s, trials {figures['trial_s_sum']:.1f} s "
              f"in all, ideal {figures['ideal_s']:.1f} s: {figures['sweep_s'] / figures['ideal_s']:.3f}", flush=True)

    per_round = [run["sweep"] for run in run_rounds({"sweep": sweep}, args.rounds, on_result=progress)]
    figures = figure_spreads(per_round)
    values, spreads = headlines(per_round, {"sweep_over_ideal": Ratio("sweep_s", "ideal_s")})
    print(f"{args.trials} trials x {args.epochs} epochs on {slots} slots, {args.rounds} runs, median [min-max]: "
          f"sweep_over_ideal {describe(spreads['sweep_over_ideal'], '.3f')} (goal <= 1.5 on 2 cores); sweep "
          f"{describe(figures['sweep_s'], '.1f')} s, ideal {describe(figures['ideal_s'], '.1f')} s")
    emit({
        **values,
        "sweep_s": figures["sweep_s"]["median"],
        "trial_s_sum": figures["trial_s_sum"]["median"],
        "spread": spreads,
        "figures": figures,
        "rounds": args.rounds,
        "slots": slots,
        "trials": args.trials,
        "epochs": args.epochs,
        "machine": machine(),
    }, args.json)


if __name__ == "__main__":
    main()
