"""Shared fixtures: one Ray instance for the tests that need one (always shut down), and digits models trained once."""

import pytest

from digits import digits_spec


@pytest.fixture(autouse=True)
def fixed_global_seeds():
    """Every test starts from the same global random state, whatever ran before it and in whatever order.

    Tests draw from their own seeded generators where the values matter; this is the backstop for the draws that
    only make shapes or weights to run through (``torch.rand(2, 3, 32, 32)``, a freshly built model's
    initialisation): without it, their values would depend on which tests ran first.
    """
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs for the whole session (starting Ray costs seconds); shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """A standard and a PGD-trained (eps 0.1) WRN-10-2 on digits, trained once for the whole session.

    Returns ``(storage, {"standard": spec, "robust": spec}, {"standard": last metrics, "robust": last metrics})``.
    """
    from rayrs.storage import Storage
    from rayrs.train import train_trial

    storage = Storage(tmp_path_factory.mktemp("trained_digits"))
    specs = {"standard": digits_spec("standard"), "robust": digits_spec("robust", train={"method": "pgd", "eps": 0.1, "epochs": 6})}
    metrics = {kind: train_trial(spec, storage, "cpu")[-1] for kind, spec in specs.items()}
    return storage, specs, metrics



FINISHED_SWEEP = """
name: kept
data: {dataset: digits}
model: {arch: wrn, depth: 10, width: 1}
train: {method: standard, epochs: 2, batch_size: 256, lr: 0.05}
eval: {eps: 0.1, attack: {steps: 2}, train_subset: 64, test_subset: 64}
grid:                                  # axes not in sorted order: through, then from_epoch (issue 12 item 4)
  - {seed: [0]}
  - {train.freeze.through: [block1], train.freeze.from_epoch: [2]}
compare:
  - {kind: cross_layer}
  - {kind: benign_vs_adversarial}
cka: {probe_size: 64, batch_size: 64, passes: 1}
"""


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory):
    """A finished tiny sweep, run once (``--local``): trials ``seed0`` and ``block1-from_epoch2``, 2 epochs each,
    4 comparison jobs and 2 adversarial probes. Returns ``(sweep file, results folder)``; the experiment is
    ``<results>/kept``. Tests copy it (`shutil.copytree`) before changing anything.
    """
    from typer.testing import CliRunner

    from rayrs.cli import app

    folder = tmp_path_factory.mktemp("finished")
    sweep_file = folder / "kept.yaml"
    sweep_file.write_text(FINISHED_SWEEP)
    result = CliRunner().invoke(app, ["sweep", str(sweep_file), "--results", str(folder / "results"), "--local",
                                      "--no-report"])
    assert result.exit_code == 0, result.output
    return sweep_file, folder / "results"


# The comparisons of `digits_results`: every kind the report reads that two models can give (cross_model and the
# other measures need more models or time; the synthetic tree covers their figures).
DIGITS_COMPARISONS = [
    {"kind": "cross_layer"},
    {"kind": "cross_epoch"},
    {"kind": "benign_vs_adversarial"},
    {"kind": "transfer"},
]


@pytest.fixture(scope="session")
def digits_results(trained_digits, tmp_path_factory):
    """A real results tree for the report's own functions: `trained_digits`' two models (standard, 8 epochs;
    PGD-AT at eps 0.1, 6 epochs; accuracies on 256 train and all 450 test digits) with their metrics.parquet
    and the comparisons of `DIGITS_COMPARISONS` on all 450 test digits, computed in this process (about a
    minute on 2 cores; the training is shared with the tests that need trained models).

    Returns ``(storage, specs)``: the `Storage` of the tree and ``{"standard": spec, "robust": spec}``.
    Tests read it; a test that changes it works on a copy.
    """
    import shutil

    import torch

    from rayrs import catalog
    from rayrs import storage as layout
    from rayrs.config import Experiment
    from rayrs.similarity.jobs import plan_jobs, plan_tasks, run_task
    from rayrs.storage import Storage

    trained, specs, _ = trained_digits
    root = tmp_path_factory.mktemp("digits_results")
    shutil.copytree(trained.local_path(layout.TRIALS_DIR), root / layout.TRIALS_DIR)
    storage = Storage(root)
    catalog.write_metrics(storage, [spec.name for spec in specs.values()])
    experiment = Experiment.model_validate(
        {"name": "test", "compare": DIGITS_COMPARISONS, "cka": {"probe_size": 450, "batch_size": 450, "passes": 1}}
    )
    configs = {spec.name: spec.config for spec in specs.values()}
    for task in plan_tasks(plan_jobs(experiment, list(specs.values()))):
        for _ in run_task(task, configs, storage, torch.device("cpu")):
            pass
    return storage, specs


def pytest_addoption(parser):
    parser.addoption(
        "--order", default="file",
        help="file (as written, the default) | reverse | shuffle:SEED — run the tests in another order, to show "
        "that none depends on what another left behind (issue: a suite that never flakes)",
    )


def pytest_collection_modifyitems(config, items):
    import random

    order = config.getoption("--order")
    if order == "reverse":
        items.reverse()
    elif order.startswith("shuffle:") and order[len("shuffle:"):].isdigit():
        random.Random(int(order[len("shuffle:"):])).shuffle(items)
    elif order != "file":
        raise pytest.UsageError(f"--order {order!r}: use file, reverse or shuffle:SEED (e.g. shuffle:7)")
