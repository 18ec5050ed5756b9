"""What a trial's checkpoints take, before and after issue 15, and what bf16 archives change in the results.

Usage (from the repository root):
    uv run python benchmarks/checkpoint_storage.py                       # bytes only: instant
    uv run rayrs sweep benchmarks/bf16_digits.yaml --local --results R --no-report       # ~5 min on 2 idle cores
    uv run python benchmarks/checkpoint_storage.py --bf16-effect benchmarks/bf16_digits.yaml --results R   # ~3 min

(any finished sweep with cross_layer comparisons works, e.g. sweeps/quickstart.yaml; bf16_digits.yaml holds the
quickstart's WRN-10-2 trained standard, 10 epochs, and PGD l_inf at eps 0.1, 4 epochs, to fit a loaded machine)

Bytes per trial-epoch (`rayrs.cost.trial_storage`: every parameter and buffer at its archived dtype; safetensors'
headers and meta.json add a few KB per epoch, measured in tests/test_checkpoint_storage.py) for the quickstart's
WRN-10-2 on digits (10 epochs) and the paper's WRN-28-10 on CIFAR-10 (100 epochs, as in sweeps/width_eps.yaml):

    before        every epoch's weights and optimiser state, float32 (rayrs before issue 15)
    last          every epoch's weights, the last epoch's optimiser state (the default now)
    last_bf16     as last, the weights archived in bfloat16 (the last epoch's float32 weights kept for resume)

and the headline ratios ``last_over_before`` and ``last_bf16_over_before`` (per trial-epoch, at those epochs),
plus the whole of sweeps/width_eps.yaml under each setting.

``--bf16-effect SWEEP_FILE`` takes a finished sweep with cross_layer comparisons (the quickstart; its results
under ``--results``, as `rayrs sweep --results` put them) and, for each
trial's final epoch, reads its weights as a bf16 archive would hold them (`rayrs.checkpoint.archived`): the
test-set clean and robust accuracy (robust: the trial's evaluation attack, the same random start both ways) and
every cross_layer CKA value, recomputed by rayrs's own comparison jobs (`rayrs.similarity.jobs.run_job`) from a
copy of the results whose final weights are bf16. Each CKA change is set against that value's jackknife
standard error (the Parquet's ``std_error``: how much the minibatch draw moves it): ``max_abs_cka_change``,
``median_abs_cka_change``, ``median_std_error`` and ``max_change_over_std_error``.

No timing here, so no rounds (`benchmarks/timing.py`): the figures are byte counts and differences, the same in
every run. The last line is one JSON object, as in the other benchmarks (`timing.emit`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from timing import emit, machine  # noqa: E402

from rayrs.config import TrialConfig, expand, load_experiment  # noqa: E402
from rayrs.cost import format_bytes, trial_storage  # noqa: E402

SETTINGS = {
    "before": {"optimizer": "every", "weights_dtype": "float32"},
    "last": {"optimizer": "last", "weights_dtype": "float32"},
    "last_bf16": {"optimizer": "last", "weights_dtype": "bfloat16"},
}
MODELS = {  # name: (sweep file, which of its trials)
    "quickstart_wrn_10_2": ("quickstart.yaml", 0),
    "wrn_28_10_cifar10": ("width_eps.yaml", -1),
}


def with_checkpoint(config: TrialConfig, checkpoint: dict[str, str]) -> TrialConfig:
    return TrialConfig.model_validate({**config.model_dump(mode="json"), "checkpoint": checkpoint})


def storage_figures() -> dict:
    figures = {}
    for name, (sweep, index) in MODELS.items():
        config = expand(load_experiment(REPO / "sweeps" / sweep))[index].config
        per_epoch = {setting: trial_storage(with_checkpoint(config, kept)).per_epoch for setting, kept in SETTINGS.items()}
        figures[name] = {
            "epochs": config.train.epochs,
            "bytes_per_trial_epoch": per_epoch,
            "last_over_before": per_epoch["last"] / per_epoch["before"],
            "last_bf16_over_before": per_epoch["last_bf16"] / per_epoch["before"],
        }
        print(f"{name} ({config.train.epochs} epochs): bytes per trial-epoch "
              + ", ".join(f"{setting} {format_bytes(b)}" for setting, b in per_epoch.items())
              + f"; last/before {figures[name]['last_over_before']:.3f}, "
              f"last_bf16/before {figures[name]['last_bf16_over_before']:.3f}", flush=True)
    trials = expand(load_experiment(REPO / "sweeps" / "width_eps.yaml"))
    sweep = {setting: sum(trial_storage(with_checkpoint(t.config, kept)).total for t in trials) for setting, kept in SETTINGS.items()}
    print(f"width_eps.yaml ({len(trials)} trials): " + ", ".join(f"{s} {format_bytes(b)}" for s, b in sweep.items()), flush=True)
    figures["width_eps_sweep_bytes"] = sweep
    return figures


def bf16_effect(sweep_file: Path, results: str | None) -> dict:
    """Accuracy and cross_layer CKA of each trial's final epoch, from float32 weights and from a bf16 archive."""
    import polars as pl
    import torch
    from safetensors.torch import load as load_safetensors
    from safetensors.torch import save as save_safetensors

    from rayrs import storage as layout
    from rayrs.checkpoint import archived, load_model_weights
    from rayrs.similarity.jobs import plan_jobs, run_job
    from rayrs.sweep import experiment_storage
    from rayrs.train import build_for, epoch_generator, evaluate, load_trial_data, make_attack, strongest_of

    experiment = load_experiment(sweep_file)
    storage = experiment_storage(experiment, results)
    trials = expand(experiment)
    jobs = [job for job in plan_jobs(experiment, trials) if job.kind == "cross_layer"]
    if not jobs or not all(storage.exists(job.output) for job in jobs):
        raise SystemExit(f"{storage.root}: give a finished sweep with cross_layer comparisons (e.g. the quickstart)")
    torch.manual_seed(0)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "bf16"
        shutil.copytree(storage.local_path(), copy, ignore=shutil.ignore_patterns("similarity", "report", "ray", "probes"))
        bf16_storage = type(storage)(copy)
        accuracy = {}
        for trial in trials:
            config, epoch = trial.config, trial.config.train.epochs
            path = layout.weights(trial.name, epoch)
            data = load_trial_data(config, device)
            model = build_for(config, data, device)
            weights = load_safetensors(storage.read_bytes(path))
            bf16_storage.write_bytes(path, save_safetensors(archived(model, weights, "bfloat16")))
            scores = {}
            for dtype, source in (("float32", storage), ("bfloat16", bf16_storage)):
                load_model_weights(source, trial.name, epoch, model)
                attack = strongest_of(make_attack(config, "eval", epoch_generator(config.train.seed, epoch, device)),
                                      config.eval.attack.restarts)
                scores[dtype] = evaluate(model, data.test_images, data.test_labels, attack, config.eval.batch_size, "fp32")
            accuracy[trial.name] = {
                f"{key}_{dtype}": scores[dtype][key] for key in ("clean_acc", "robust_acc") for dtype in scores}
            print(f"{trial.name}: test clean {scores['float32']['clean_acc']:.4f} -> {scores['bfloat16']['clean_acc']:.4f}, "
                  f"robust {scores['float32']['robust_acc']:.4f} -> {scores['bfloat16']['robust_acc']:.4f} "
                  f"({data.test_images.shape[0]} test digits)", flush=True)
        configs = {trial.name: trial.config for trial in trials}
        for job in jobs:
            run_job(job, configs, bf16_storage, device)
        keys = ["model_a", "layer_a", "layer_b", "measure"]
        fp32 = pl.concat([pl.read_parquet(storage.local_path(job.output)) for job in jobs])
        bf16 = pl.concat([pl.read_parquet(bf16_storage.local_path(job.output)) for job in jobs])
    joined = fp32.select(*keys, "value", "std_error").join(bf16.select(*keys, pl.col("value").alias("value_bf16")), on=keys)
    assert joined.height == fp32.height == bf16.height
    change = (joined["value_bf16"] - joined["value"]).abs()
    off_diagonal = joined.filter(pl.col("layer_a") != pl.col("layer_b"))  # CKA of a layer with itself is 1 both ways
    off_change = (off_diagonal["value_bf16"] - off_diagonal["value"]).abs()
    figures = {
        "cka_values": joined.height,
        "max_abs_cka_change": float(change.max()),
        "median_abs_cka_change": float(off_change.median()),
        "median_std_error": float(off_diagonal["std_error"].median()),
        "max_change_over_std_error": float((off_change / off_diagonal["std_error"]).max()),
        "median_change_over_std_error": float((off_change / off_diagonal["std_error"]).median()),
        "max_abs_accuracy_change": max(abs(a[f"{k}_bfloat16"] - a[f"{k}_float32"])
                                       for a in accuracy.values() for k in ("clean_acc", "robust_acc")),
        "accuracy": accuracy,
    }
    print(f"cross_layer CKA, {joined.height} values: |change| max {figures['max_abs_cka_change']:.2e}, median "
          f"{figures['median_abs_cka_change']:.2e}; jackknife std_error median {figures['median_std_error']:.2e}; "
          f"change / std_error max {figures['max_change_over_std_error']:.3f}, median "
          f"{figures['median_change_over_std_error']:.3f}; accuracy |change| max {figures['max_abs_accuracy_change']:.4f}",
          flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bf16-effect", metavar="SWEEP_FILE", type=Path,
                        help="a finished sweep with cross_layer comparisons, e.g. sweeps/quickstart.yaml")
    parser.add_argument("--results", help="where that sweep's results are (its `rayrs sweep --results`)")
    parser.add_argument("--json", metavar="PATH", help="also write the final JSON object to PATH")
    args = parser.parse_args()
    summary = {"storage": storage_figures()}
    for name in MODELS:
        for key in ("last_over_before", "last_bf16_over_before"):
            summary[f"{key}_{name}"] = summary["storage"][name][key]
    if args.bf16_effect is not None:
        summary["bf16_effect"] = bf16_effect(args.bf16_effect, args.results)
    summary["machine"] = machine()
    emit(summary, args.json)


if __name__ == "__main__":
    main()
