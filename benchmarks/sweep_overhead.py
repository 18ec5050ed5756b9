"""What the sweep machinery costs on top of the training it schedules.

A small sweep (digits, WRN-10-1, PGD-AT, several seeds) runs through Ray Tune exactly as `rayrs sweep` runs it,
from Ray's start to its shutdown, comparisons and report off. The ideal is the trials' own time (the sum of their
epochs' seconds, as each trial measured them) spread over the parallel slots (CPUs / CPUs per trial); anything
above it is Ray's start, worker start-up (imports, data loading, model building), scheduling, checkpoint I/O
and the catalog. The last line is one JSON object:

    sweep_over_ideal   sweep wall time / (sum of trial times / parallel slots)     goal <= 1.5 on 2 cores

    uv run python benchmarks/sweep_overhead.py            # ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import polars as pl

from rayrs import storage as layout
from rayrs.config import Experiment
from rayrs.sweep import SweepOptions, run_sweep


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
    args = parser.parse_args()
    slots = min(args.trials, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as results:
        outcome = run_sweep(experiment(args.trials, args.epochs), SweepOptions(report=False), results=results)
        metrics = pl.read_parquet(Path(outcome.storage.root) / layout.METRICS)
    trial_seconds = metrics["epoch_seconds"].sum()
    ideal = trial_seconds / slots
    print(f"{args.trials} trials x {args.epochs} epochs on {slots} slots: sweep {outcome.seconds:.1f} s, "
          f"trials {trial_seconds:.1f} s in all, ideal {ideal:.1f} s")
    print(json.dumps({
        "sweep_over_ideal": round(outcome.seconds / ideal, 3),
        "sweep_s": round(outcome.seconds, 2),
        "trial_s_sum": round(trial_seconds, 2),
        "slots": slots,
        "trials": args.trials,
        "epochs": args.epochs,
    }))


if __name__ == "__main__":
    main()
