"""Sweeps that survive what a week of GPU time meets: a lost node, a killed driver, a corrupt file.

Each scenario runs the real thing in its own process (a driver, or a multi-node Ray cluster in one process),
because a test process holds one Ray session at most; every process a test starts, it also stops.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from rayrs import storage as layout
from rayrs.cli import app

SWEEP = """
name: reliable
data: {dataset: digits}
model: {arch: wrn, depth: 10, width: 1}
train: {method: pgd, eps: 0.1, epochs: EPOCHS, batch_size: 128, attack: {steps: 2}}
eval: {eps: 0.1, attack: {steps: 2}, train_subset: 64, test_subset: 64}
grid: {seed: SEEDS}
cka: {probe_size: 128, batch_size: 128, passes: 1}
resources: {cpus_per_trial: 1}
"""


def sweep_file(tmp_path: Path, epochs: int, seeds: list[int]) -> Path:
    path = tmp_path / "reliable.yaml"
    path.write_text(SWEEP.replace("EPOCHS", str(epochs)).replace("SEEDS", str(seeds)))
    return path


def epoch_metas(root: Path) -> dict[tuple[str, int], str]:
    """Every committed epoch's meta.json text, keyed by (trial, epoch)."""
    return {
        (meta.parts[-3], int(meta.parts[-2].split("_")[1])): meta.read_text()
        for meta in root.glob("trials/*/epoch_*/meta.json")
    }


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def start_driver(args: list[str]) -> subprocess.Popen:
    """`python -m rayrs ...` in its own process group, so that everything it starts can be stopped with it."""
    return subprocess.Popen([sys.executable, "-m", "rayrs", *args], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_group(driver: subprocess.Popen) -> None:
    """Kill what the driver left behind in its process group (Ray's local processes after a SIGKILL)."""
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    driver.wait(timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_killed_driver_resumes_without_retraining_or_reading_half_written_files(tmp_path, sig):
    # Three epochs a trial: the driver dies once two are committed, in seed0's third epoch (two trials, six epochs:
    # four still to go), so the resume continues a trial half-way and trains one not yet started.
    sweep, results = sweep_file(tmp_path, epochs=3, seeds=[0, 1]), tmp_path / "results"
    root = results / "reliable"
    driver = start_driver(["sweep", str(sweep), "--results", str(results), "--local", "--no-report"])
    try:
        wait_for(lambda: len(epoch_metas(root)) >= 2, 120, "two committed epochs")
        driver.send_signal(sig)
        driver.wait(timeout=60)
    finally:
        stop_group(driver)
    assert driver.returncode != 0
    before = epoch_metas(root)
    assert 2 <= len(before) < 6  # interrupted mid-sweep

    # Nothing half-written is visible: every committed epoch's weights read back whole.
    from safetensors.torch import load_file

    for trial, epoch in before:
        load_file(root / layout.weights(trial, epoch))

    result = CliRunner().invoke(app, ["sweep", str(sweep), "--results", str(results), "--local", "--resume", "--no-report"])
    assert result.exit_code == 0, result.output
    after = epoch_metas(root)
    assert set(after) == {(trial, epoch) for trial in ("seed0", "seed1") for epoch in range(1, 4)}
    assert all(after[key] == text for key, text in before.items())  # finished epochs were not retrained
    metrics = pl.read_parquet(root / layout.METRICS)
    assert metrics.group_by("trial", "epoch").len()["len"].to_list() == [1] * 6
    assert len(list(root.glob("similarity/**/*.parquet"))) == 2


def test_a_truncated_checkpoint_is_named_with_the_way_out_and_redo_retrains_it(tmp_path):
    sweep, results = sweep_file(tmp_path, epochs=2, seeds=[0]), tmp_path / "results"
    root = results / "reliable"
    runner = CliRunner()
    assert runner.invoke(app, ["sweep", str(sweep), "--results", str(results), "--local", "--no-report"]).exit_code == 0
    (root / layout.epoch_meta("trial", 2)).unlink()  # epoch 2 never committed: a resume restores epoch 1 ...
    weights = root / layout.weights("trial", 1)
    weights.write_bytes(weights.read_bytes()[:100])  # ... whose weights are cut short

    result = runner.invoke(app, ["sweep", str(sweep), "--results", str(results), "--local", "--resume", "--no-report"])
    assert result.exit_code == 1
    assert f"checkpoint {weights} is unreadable" in result.stderr and "--redo trial" in result.stderr
    assert "Traceback" not in result.output

    result = runner.invoke(app, ["sweep", str(sweep), "--results", str(results), "--local", "--redo", "trial", "--no-report"])
    assert result.exit_code == 0, result.output
    assert sorted(epoch for _, epoch in epoch_metas(root)) == [1, 2]


def test_a_truncated_parquet_file_is_named_with_the_way_out(tmp_path):
    sweep, results = sweep_file(tmp_path, epochs=1, seeds=[0]), tmp_path / "results"
    root = results / "reliable"
    runner = CliRunner()
    assert runner.invoke(app, ["sweep", str(sweep), "--results", str(results), "--local", "--no-report"]).exit_code == 0
    (table,) = root.glob("similarity/**/*.parquet")
    table.write_bytes(table.read_bytes()[:64])
    result = runner.invoke(app, ["analyze", str(root)])
    assert result.exit_code == 1
    assert f"{table} is not a readable Parquet file" in result.stderr
    assert "delete it and rerun the sweep with --resume to recompute that comparison" in result.stderr


def test_redo_names_an_unknown_trial(tmp_path):
    sweep = sweep_file(tmp_path, epochs=1, seeds=[0, 1])
    result = CliRunner().invoke(app, ["sweep", str(sweep), "--results", str(tmp_path / "r"), "--redo", "seed7"])
    assert result.exit_code == 1
    assert "--redo seed7: no such trial in reliable; its trials are: seed0, seed1" in result.stderr
    assert not (tmp_path / "r").exists()


NODE_LOSS = """
import json, sys, threading, time
from pathlib import Path
from ray.cluster_utils import Cluster
from rayrs.config import load_experiment
from rayrs.sweep import SweepOptions, run_sweep

sweep, results = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no trials
workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
try:
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(run=run_sweep(
        load_experiment(sweep), SweepOptions(address=cluster.address, report=False, max_failures=3), results)))
    thread.start()
    first = Path(results) / "reliable" / "trials" / "trial" / "epoch_0001" / "meta.json"
    while not first.exists():
        time.sleep(0.1)
    node = json.loads(first.read_text())["ray_node"]
    lost = next(w for w in workers if w.node_id == node)
    cluster.remove_node(lost)  # the node running the trial disappears mid-training
    print(json.dumps({"removed": node, "epoch_1": first.read_text()}), flush=True)
    thread.join()
    print(json.dumps({"trained": outcome["run"].trained}), flush=True)
finally:
    import ray
    ray.shutdown()
    cluster.shutdown()
"""


def test_a_lost_node_costs_no_finished_epoch(tmp_path):
    # Two epochs are enough: the node goes as soon as epoch 1 is committed, so epoch 2 is the one it was training
    # and the one the surviving node trains. No comparisons: this test is about training (the lost node during
    # comparisons is the next test's).
    sweep, results = sweep_file(tmp_path, epochs=2, seeds=[0]), tmp_path / "results"
    sweep.write_text(sweep.read_text() + "compare: []\n")
    script = tmp_path / "node_loss.py"
    script.write_text(textwrap.dedent(NODE_LOSS))
    done = subprocess.run([sys.executable, str(script), str(sweep), str(results)], capture_output=True, text=True,
                          timeout=300, start_new_session=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    removal, finish = lines[0], lines[-1]
    root = results / "reliable"
    metas = epoch_metas(root)
    assert sorted(epoch for _, epoch in metas) == [1, 2]  # every epoch once
    assert metas[("trial", 1)] == removal["epoch_1"]  # epoch 1 was not retrained after the node was lost
    assert json.loads(metas[("trial", 2)])["ray_node"] != removal["removed"]  # finished on the surviving node
    assert finish["trained"] == ["trial"]


# The similarity stage on a head (no CPUs: it runs nothing) and two 1-CPU workers: each home trial's task (here
# 2 jobs, cross_layer at epochs 1 and 2) takes a worker's only CPU, so the two tasks run on different nodes. A
# setup hook in every Ray worker logs each task attempt (its jobs) and each file written, and holds a worker
# after each write until the driver says go: so the first task to write a job stops there, its node is removed
# (it has one job written, one not), and only then do the others go on. No sleeping on a guess.
CKA_NODE_LOSS = """
import json, os, sys, threading, time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from rayrs.config import expand, load_experiment
from rayrs.sweep import SweepOptions, experiment_storage, run_sweep
from rayrs.train import train_trial

sweep, results, events = sys.argv[1], sys.argv[2], Path(sys.argv[3])
go = events.with_name("go")


def worker_hook():
    # Runs in every Ray worker process (runtime_env's worker_process_setup_hook), so it patches the workers.
    import ray
    from rayrs.similarity import run
    from rayrs.storage import Storage

    node = ray.get_runtime_context().get_node_id()

    def log(**event):  # one short line per append: lines from several processes never interleave
        with open(events, "a") as out:
            out.write(json.dumps({**event, "node": node, "pid": os.getpid()}) + "\\n")

    start, write_table = run._TaskRun.__init__, Storage.write_table

    def logged_start(self, task, *args, **kwargs):
        log(event="start", trial=task.trial, jobs=[job.id for job in task.jobs])
        start(self, task, *args, **kwargs)

    def held_write(self, rel, table):
        write_table(self, rel, table)
        log(event="wrote", path=rel)
        deadline = time.monotonic() + 120
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    run._TaskRun.__init__, Storage.write_table = logged_start, held_write


def read_events():
    return [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []


experiment = load_experiment(sweep)
storage = experiment_storage(experiment, results)
for trial in expand(experiment):  # trained here, in this process: the test is about the comparisons
    train_trial(trial, storage, "cpu", threads=1)

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
try:
    ray.init(address=cluster.address, runtime_env={"worker_process_setup_hook": worker_hook},
             logging_level="ERROR", log_to_driver=False)
    outcome = {}

    def compare():
        try:
            outcome["run"] = run_sweep(experiment, SweepOptions(address=cluster.address, resume=True, report=False),
                                       results)
        except BaseException as error:
            outcome["error"] = repr(error)

    thread = threading.Thread(target=compare)
    thread.start()
    deadline = time.monotonic() + 240
    while not any(e["event"] == "wrote" for e in read_events()):
        assert time.monotonic() < deadline and thread.is_alive(), ("no job written", outcome, read_events())
        time.sleep(0.05)
    first = next(e for e in read_events() if e["event"] == "wrote")
    cluster.remove_node(next(w for w in workers if w.node_id == first["node"]))
    while True:  # the lost worker process is gone before anyone goes on: it can write nothing more
        try:
            os.kill(first["pid"], 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the removed node's worker is still alive"
        time.sleep(0.05)
    go.touch()
    thread.join(timeout=240)
    print(json.dumps({"removed": first["node"], "lost_pid": first["pid"], "error": outcome.get("error"),
                      "alive": thread.is_alive(),
                      "jobs_run": outcome["run"].jobs_run if "run" in outcome else None}), flush=True)
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_a_lost_node_during_comparisons_reruns_only_its_unfinished_jobs(tmp_path):
    from rayrs.config import expand, load_experiment
    from rayrs.models import model_layers
    from rayrs.similarity.jobs import plan_jobs

    sweep, results, events = sweep_file(tmp_path, epochs=2, seeds=[0, 1]), tmp_path / "results", tmp_path / "events"
    sweep.write_text(sweep.read_text().replace("method: pgd, eps: 0.1,", "method: standard,")
                     + "compare: [{kind: cross_layer, epochs: [1, 2]}]\n")
    script = tmp_path / "cka_node_loss.py"
    script.write_text(CKA_NODE_LOSS)
    done = subprocess.run([sys.executable, str(script), str(sweep), str(results), str(events)], capture_output=True,
                          text=True, timeout=400, start_new_session=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (summary,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert summary["error"] is None and not summary["alive"], summary
    log = [json.loads(line) for line in events.read_text().splitlines()]
    starts = [e for e in log if e["event"] == "start"]
    writes = [e for e in log if e["event"] == "wrote"]

    experiment = load_experiment(sweep)
    trials = {t.name: t for t in expand(experiment)}
    jobs = {job.output: job for job in plan_jobs(experiment, list(trials.values()))}
    assert len(jobs) == 4 and summary["jobs_run"] == 4  # the stage completed: every job of the sweep

    # The two tasks started on the two workers; the one on the removed node had written one of its two jobs.
    first = {trial: next(s for s in starts if s["trial"] == trial) for trial in trials}
    assert len({s["node"] for s in first.values()}) == 2
    (lost,) = [s for s in first.values() if s["node"] == summary["removed"]]
    written_before = jobs_of(jobs, [w["path"] for w in writes if w["pid"] == summary["lost_pid"]])
    assert len(lost["jobs"]) == 2 and len(written_before) == 1

    # Its task ran again, on the surviving node, with only the job it had not written: no finished job twice.
    (again,) = [s for s in starts if s["trial"] == lost["trial"] and s is not lost]
    assert again["node"] != summary["removed"]
    assert again["jobs"] == [job_id for job_id in lost["jobs"] if job_id not in written_before]
    assert sorted(w["path"] for w in writes) == sorted(jobs)  # every job written exactly once

    # Every file is whole: one row per (layer_a, layer_b) of the job's layer listing, all of this job.
    for output, job in jobs.items():
        table = pl.read_parquet(results / "reliable" / output)
        layers = len(model_layers(trials[job.a.trial].config, job.layer_types))
        assert table.height == layers * layers
        assert table["job"].unique().to_list() == [job.id]
        assert table.select("layer_a", "layer_b").unique().height == layers * layers
        assert table["value"].is_finite().all()


def jobs_of(jobs, outputs):
    """The ids of the jobs whose files are ``outputs``."""
    return {jobs[output].id for output in outputs}
