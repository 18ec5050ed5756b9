"""Hundreds of trials: the driver's memory, the sweep's wall time over the ideal, and `status` / `analyze` over the
results (issue 15, section 3).

For each trial count N (``--trials 50,200,500``; ``--quick``: 20,50), a sweep of N trials of the smallest
configuration (digits, WRN-10-1, standard training, 1 epoch, 32-image eval subsets, no comparisons) runs as
`rayrs sweep` runs it (Ray Tune, Ray started and shut down), in a child process of its own: the driver. It reports

    driver_peak_rss_mb   the driver's peak resident memory (getrusage), less its resident memory once its imports
                         are done (sweep_rss_mb: what the sweep added), and that growth per trial across the
                         counts, (sweep_rss(N_max) - sweep_rss(N_min)) / (N_max - N_min)   goal < 2 MB per trial
                         (the imports' share moves by ~150 MB from run to run on a machine short of memory)
    sweep_over_ideal     sweep wall time / (sum of the trials' own epoch seconds / slots), from Ray's start to
                         its shutdown, as `sweep_overhead.py` defines it                  goal <= 1.3 at 500

Then, over the resulting tree (nothing running), as a user runs them (a fresh `python -m rayrs` process each):

    status_s             `rayrs status` wall time, median of 3                         goal < 5 s at 500 x 1 epoch
    status_warm_s        the same call in a process that made it once already: the part that grows with the
                         trials (the rest is imports and the config's first model build)
    analyze_s            `rayrs analyze` wall time (png,html), once
    status_requests      what `rayrs status` asks an object store for, per trial: the tree copied into pyarrow's
                         in-memory filesystem behind a counting handler (`tests/counting_fs.py`)
                                                                             goal: one listing per trial, not per file

With ``--compare-old`` the largest count runs twice more, alternating with the current code (old, current): "old"
undoes this session's two per-trial cuts (Tune's grid of plain dicts, deep-copied whole for every trial it creates;
a dataset load in every trial instead of one per reused actor), so both are measured side by side under one load.

Each trial count runs once (a 500-trial sweep is ~half an hour on 2 cores): the memory figures do not depend on the
machine's load; the wall ratio does, but both its sides come from the same run (the trials time themselves under
the load the sweep saw). The last line is one JSON object, like the other benchmarks'.

    uv run python benchmarks/sweep_scale.py --quick                  # 20 and 50 trials: ~5 minutes on 2 cores
    uv run python benchmarks/sweep_scale.py --trials 50,200,500      # ~45 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # counting_fs: the counted object store the tests use
from timing import emit, machine  # noqa: E402 (a sibling file, not a package)

NAME = "scale"


def experiment(trials: int):
    from rayrs.config import Experiment

    return Experiment.model_validate({
        "name": NAME,
        "data": {"dataset": "digits"},
        "model": {"arch": "wrn", "depth": 10, "width": 1},
        "train": {"method": "standard", "epochs": 1, "batch_size": 128},
        "eval": {"attack": {"steps": 1}, "train_subset": 32, "test_subset": 32},
        "grid": {"seed": list(range(trials))},
        "compare": [],
        "resources": {"cpus_per_trial": 1},
    })


def rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _trainable_loading_every_trial(config) -> None:
    """`rayrs.sweep._tune_trainable` as before the per-actor dataset: every trial loads its own (``--compare-old``).

    Defined in the driver's ``__main__``, so Tune ships it to the workers by value; there it calls the worker's own
    (unpatched) trainable."""
    import rayrs.sweep
    from rayrs.train import load_trial_data

    rayrs.sweep._trial_data = load_trial_data
    rayrs.sweep._tune_trainable(config)


def drive(trials: int, results: str, old: bool = False) -> None:
    """The child: one sweep of ``trials`` trials into ``results``; prints one JSON line of its figures."""
    import polars as pl

    import rayrs.sweep
    from rayrs import storage as layout
    from rayrs.sweep import SweepOptions, run_sweep

    if old:  # the Tune setup before the per-trial cuts (benchmarks/README.md)
        rayrs.sweep._GridValue = dict
        rayrs.sweep._tune_trainable = _trainable_loading_every_trial
    sweep = experiment(trials)
    before = current_rss_mb()  # imports done: what the driver holds before any trial
    outcome = run_sweep(sweep, SweepOptions(report=False), results=results)
    metrics = pl.read_parquet(Path(outcome.storage.root) / layout.METRICS)
    assert metrics.height == trials, f"{metrics.height} epochs in metrics.parquet, expected {trials}"
    print(json.dumps({"sweep_s": outcome.seconds, "trial_s_sum": float(metrics["epoch_seconds"].sum()),
                      "rss_before_mb": before, "driver_peak_rss_mb": rss_mb()}), flush=True)


def timed_command(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rayrs", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"rayrs {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def status_warm(root: Path) -> float:
    """`rayrs status` in this process, after a first call: without the imports and the first model build
    (config validation), what is left is what grows with the trials."""
    from typer.testing import CliRunner

    from rayrs.cli import app

    for _ in range(2):
        started = time.perf_counter()
        result = CliRunner().invoke(app, ["status", str(root)])
        assert result.exit_code == 0, result.output
    return time.perf_counter() - started


def status_requests(root: Path) -> dict[str, int]:
    """The requests `rayrs status` makes of an object store holding the tree at ``root`` (counted by kind)."""
    import pytest
    from typer.testing import CliRunner

    from counting_fs import copy_tree, object_store
    from rayrs.cli import app

    with pytest.MonkeyPatch.context() as patch:
        store = object_store(patch)
        copy_tree(root, store, f"bucket/{NAME}")
        result = CliRunner().invoke(app, ["status", f"mock:///bucket/{NAME}"])
        assert result.exit_code == 0, result.output
        return dict(store.calls)


def sweep_only(trials: int, slots: int, old: bool) -> dict[str, float]:
    """One sweep of ``trials`` (``old``: before the per-trial cuts), its wall over ideal and nothing else."""
    with tempfile.TemporaryDirectory() as scratch:
        args = ["--drive", str(trials), str(Path(scratch) / "r")] + (["--old"] if old else [])
        child = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"the {trials}-trial sweep failed:\n{child.stdout[-3000:]}{child.stderr[-3000:]}")
        figures = json.loads(child.stdout.strip().splitlines()[-1])
    figures["sweep_over_ideal"] = figures["sweep_s"] / (figures["trial_s_sum"] / slots)
    return figures


def measure(trials: int, slots: int, keep: Path | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        results = Path(keep or scratch) / f"n{trials}"
        child = subprocess.run([sys.executable, __file__, "--drive", str(trials), str(results)], capture_output=True,
                               text=True)
        if child.returncode != 0:
            raise SystemExit(f"the {trials}-trial sweep failed:\n{child.stdout[-3000:]}{child.stderr[-3000:]}")
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        figures["sweep_rss_mb"] = figures["driver_peak_rss_mb"] - figures["rss_before_mb"]
        figures["ideal_s"] = figures["trial_s_sum"] / slots
        figures["sweep_over_ideal"] = figures["sweep_s"] / figures["ideal_s"]
        root = results / NAME
        figures["status_s"] = statistics.median(timed_command(["status", str(root)]) for _ in range(3))
        figures["status_warm_s"] = status_warm(root)
        figures["analyze_s"] = timed_command(["analyze", str(root), "--out", str(Path(scratch) / f"report{trials}")])
        calls = status_requests(root)
        figures.update({f"status_{kind}": count for kind, count in sorted(calls.items())})
        figures["status_listings_per_trial"] = calls.get("listings", 0) / trials
        figures["status_requests_per_trial"] = sum(calls.values()) / trials
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", default="50,200,500", help="comma-separated trial counts")
    parser.add_argument("--quick", action="store_true", help="20 and 50 trials")
    parser.add_argument("--keep", metavar="DIR", help="keep the results trees under DIR")
    parser.add_argument("--json", metavar="PATH", help="also write the final JSON object to PATH")
    parser.add_argument("--compare-old", action="store_true",
                        help="also run the largest count before the per-trial cuts, alternating with the current code")
    parser.add_argument("--drive", nargs=2, metavar=("TRIALS", "RESULTS"), help=argparse.SUPPRESS)
    parser.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(int(args.drive[0]), args.drive[1], old=args.old)
        return
    counts = [20, 50] if args.quick else sorted(int(n) for n in args.trials.split(","))
    slots = os.cpu_count() or 1  # cpus_per_trial 1
    per_count = {}
    for trials in counts:
        figures = measure(trials, slots, Path(args.keep) if args.keep else None)
        per_count[trials] = figures
        print(f"{trials} trials: driver peak {figures['driver_peak_rss_mb']:.0f} MB "
              f"(before the sweep {figures['rss_before_mb']:.0f} MB), sweep {figures['sweep_s']:.0f} s over ideal "
              f"{figures['ideal_s']:.0f} s: {figures['sweep_over_ideal']:.2f}; status {figures['status_s']:.2f} s "
              f"({figures['status_listings_per_trial']:.2f} listings, {figures['status_requests_per_trial']:.2f} "
              f"requests per trial on an object store), analyze {figures['analyze_s']:.1f} s; load "
              f"{os.getloadavg()[0]:.1f}; warm status {figures['status_warm_s']:.2f} s", flush=True)
    low, high = counts[0], counts[-1]
    side_by_side = {}
    if args.compare_old:  # current (above), old, current again: the same load on each side
        runs = [("old", sweep_only(high, slots, old=True)), ("current", sweep_only(high, slots, old=False))]
        side_by_side = {"current": [per_count[high]["sweep_over_ideal"], runs[1][1]["sweep_over_ideal"]],
                        "old": [runs[0][1]["sweep_over_ideal"]]}
        print(f"{high} trials side by side (current, old, current): sweep_over_ideal "
              f"{side_by_side['current'][0]:.3f}, {side_by_side['old'][0]:.3f}, {side_by_side['current'][1]:.3f}; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    growth = (per_count[high]["sweep_rss_mb"] - per_count[low]["sweep_rss_mb"]) / max(high - low, 1)
    largest = per_count[high]
    print(f"driver memory grows {growth:.3f} MB per trial from {low} to {high} trials (goal < 2); at {high}: "
          f"sweep_over_ideal {largest['sweep_over_ideal']:.2f} (goal <= 1.3), status {largest['status_s']:.2f} s "
          f"(goal < 5), {largest['status_listings_per_trial']:.2f} listings per trial (goal 1)")
    emit({
        "driver_mb_per_trial": growth,
        "sweep_over_ideal": largest["sweep_over_ideal"],
        "status_s": largest["status_s"],
        "status_warm_s": largest["status_warm_s"],
        "status_listings_per_trial": largest["status_listings_per_trial"],
        "per_trials": per_count,
        "side_by_side_over_ideal": side_by_side,
        "slots": slots,
        "machine": machine(),
    }, args.json)


if __name__ == "__main__":
    main()
