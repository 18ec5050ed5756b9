"""End to end: a tiny sweep through Ray Tune and Ray tasks into checkpoints, Parquet and a report."""

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from rayrs import storage as layout
from rayrs.cli import app
from rayrs.config import load_experiment
from rayrs.errors import UserError
from rayrs.sweep import SweepOptions, run_sweep

TINY = """
name: tiny
data: {dataset: digits}
model: {arch: wrn, depth: 10, width: 1}
train: {method: pgd, epochs: 2, batch_size: 128, attack: {steps: 2}}
eval: {eps: 0.1, attack: {steps: 2}, train_subset: 64, test_subset: 64}
grid: {eps: [0, 0.1]}
cka: {probe_size: 128, batch_size: 64, passes: 2}
"""


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, ray_session):
    folder = tmp_path_factory.mktemp("sweep")
    sweep_file = folder / "tiny.yaml"
    sweep_file.write_text(TINY)
    experiment = load_experiment(sweep_file)
    outcome = run_sweep(experiment, SweepOptions(), results=str(folder / "results"))
    return sweep_file, experiment, outcome


def test_local_mode_trains_the_same_floats_as_ray(tiny_sweep, tmp_path):
    """--local and a Ray worker train with the same CPU thread count (resources.cpus_per_trial), so the same
    trial gives bit-identical checkpoints in both modes (a plain process would use one thread per core)."""
    import torch

    from rayrs.checkpoint import load_weights

    _, experiment, through_ray = tiny_sweep
    local = run_sweep(experiment.model_copy(update={"compare": []}), SweepOptions(local=True, report=False),
                      results=str(tmp_path))
    for trial in ("eps0", "eps0.1"):
        ours, theirs = load_weights(local.storage, trial, 2), load_weights(through_ray.storage, trial, 2)
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs), trial


def test_every_trial_has_a_checkpoint_of_every_epoch(tiny_sweep):
    """Weights of every epoch; the optimiser state of the last only (checkpoint.optimizer: last, the default)."""
    _, _, outcome = tiny_sweep
    root = Path(outcome.storage.root)
    assert sorted(outcome.trained) == ["eps0", "eps0.1"]
    for trial in ("eps0", "eps0.1"):
        for epoch, kept in ((1, []), (2, ["optimizer.safetensors"])):
            folder = root / layout.epoch_dir(trial, epoch)
            assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors", *kept]


def test_metrics_parquet_has_one_row_per_trial_and_epoch(tiny_sweep):
    _, _, outcome = tiny_sweep
    metrics = pl.read_parquet(Path(outcome.storage.root) / layout.METRICS)
    assert sorted(zip(metrics["trial"], metrics["epoch"])) == [("eps0", 1), ("eps0", 2), ("eps0.1", 1), ("eps0.1", 2)]
    assert metrics.filter(pl.col("trial") == "eps0")["method"].unique().to_list() == ["standard"]
    assert metrics["test_clean_acc"].is_between(0, 1).all()


def test_similarity_parquet_has_every_layer_pair_of_every_trial(tiny_sweep):
    _, _, outcome = tiny_sweep
    similarity = pl.read_parquet(Path(outcome.storage.root) / layout.SIMILARITY_DIR / "**" / "*.parquet")
    layers = 25  # WRN-10-1 (tests/test_models.py pins the list)
    assert similarity.group_by("model_a").len().sort("model_a").rows() == [("eps0", layers**2), ("eps0.1", layers**2)]
    assert (similarity["kind"] == "cross_layer").all() and (similarity["epoch_a"] == 2).all()
    diagonal = similarity.filter(pl.col("layer_a") == pl.col("layer_b"))["value"]
    assert diagonal.to_numpy() == pytest.approx(1.0, abs=1e-5)  # CKA(X, X) = 1
    assert similarity["value"].is_between(-1e-6, 1 + 1e-6).all() and not similarity["value"].is_nan().any()
    assert (similarity["n_examples"] == 128).all() and (similarity["passes"] == 2).all()


def test_the_report_has_png_figures_and_an_offline_index(tiny_sweep):
    _, _, outcome = tiny_sweep
    report = outcome.report_dir
    for png in ("accuracy_curves.png", "cross_layer.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (report / "index.html").read_text()
    assert "vegaEmbed" in html and "<script src=" not in html


def test_a_resumed_sweep_redoes_nothing(tiny_sweep):
    sweep_file, experiment, outcome = tiny_sweep
    again = run_sweep(experiment, SweepOptions(resume=True), results=str(Path(outcome.storage.root).parent))
    assert again.trained == [] and again.jobs_run == 0 and again.jobs_skipped == 2


def test_running_over_existing_results_without_resume_is_refused(tiny_sweep):
    _, experiment, outcome = tiny_sweep
    with pytest.raises(UserError, match="already holds results of sweep 'tiny'; add --resume"):
        run_sweep(experiment, SweepOptions(), results=str(Path(outcome.storage.root).parent))


def test_analyze_rerenders_the_report_from_parquet_alone(tiny_sweep, tmp_path):
    _, _, outcome = tiny_sweep
    result = CliRunner().invoke(app, ["analyze", outcome.storage.root, "--out", str(tmp_path), "--format", "png,svg,html"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.iterdir()} >= {"index.html", "cross_layer.png", "cross_layer.svg"}


def test_a_local_sweep_runs_without_ray(tmp_path):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(TINY.replace("eps: [0, 0.1]", "eps: [0]").replace("epochs: 2", "epochs: 1"))
    outcome = run_sweep(load_experiment(sweep_file), SweepOptions(local=True, report=False), results=str(tmp_path / "r"))
    assert outcome.trained == ["trial"] and outcome.jobs_run == 1  # one trial: no grid axis varies, no name


def test_status_reads_progress_from_storage_alone(tiny_sweep):
    _, _, outcome = tiny_sweep
    result = CliRunner().invoke(app, ["status", outcome.storage.root], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "eps0.1" in result.output and "2/2" in result.output
    assert "trials: 2 done, 0 started, 0 pending; comparison jobs: 2/2 done" in result.output


def test_asking_for_gpus_where_ray_has_none_is_refused_before_anything_is_written(tmp_path, ray_session):
    sweep_file = tmp_path / "gpu.yaml"
    sweep_file.write_text(TINY + "resources: {gpus_per_trial: 0.25}\n")
    with pytest.raises(UserError, match="resources.gpus_per_trial is 0.25 but the Ray cluster has no GPUs; set it to 0"):
        run_sweep(load_experiment(sweep_file), SweepOptions(), results=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_asking_for_gpus_with_local_falls_back_to_the_cpu_with_a_warning(tmp_path):
    import io

    from rich.console import Console

    sweep_file = tmp_path / "gpu.yaml"
    one_epoch = TINY.replace("eps: [0, 0.1]", "eps: [0]").replace("epochs: 2", "epochs: 1")
    sweep_file.write_text(one_epoch + "compare: []\nresources: {gpus_per_trial: 1}\n")
    log = io.StringIO()
    outcome = run_sweep(load_experiment(sweep_file), SweepOptions(local=True, report=False), str(tmp_path / "r"),
                        Console(file=log, width=200))
    assert "warning: resources.gpus_per_trial is 1.0 but this machine has no GPU; using the CPU" in log.getvalue()
    assert outcome.trained == ["trial"]
