"""Ctrl-C stops a sweep at once and says how to go on (issue 12, item 6).

SIGINT to the driver's process group, as a terminal sends it, 18 s into a Ray sweep: Ray Tune swallowed it,
rayrs went on to compare unfinished trials and failed with a Ray traceback calling a checkpoint that was
simply not written yet "unreadable ... --redo" (destructive advice). Here one sweep is interrupted three times
through Ray, in training, in adversarial-probe crafting and in the comparisons; each time the driver stops
with the resume line and no traceback, nothing is compared before training is complete, and a last
``--resume`` finishes the sweep without redoing what was done.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from test_reliability import epoch_metas, start_driver, stop_group, wait_for
from typer.testing import CliRunner

from rayrs.cli import app

# Probes are crafted by the evaluation attack: 20 steps on the 450 test images take seconds per epoch's probe,
# so an interrupt can land between two of them; evaluation itself runs on 16 + 16 images only. Once the three
# probes are there, the task forms the Grams of 6 views in 6 minibatches before it writes any of its 6 jobs.
SWEEP = """
name: interrupted
data: {dataset: digits}
model: {arch: wrn, depth: 10, width: 1}
train: {method: standard, epochs: 3, batch_size: 128, lr: 0.05}
eval: {eps: 0.1, attack: {steps: 20}, train_subset: 16, test_subset: 16}
compare:
  - {kind: benign_vs_adversarial, epochs: [1, 2, 3]}
  - {kind: cross_layer, epochs: [1, 2, 3]}
cka: {probe_size: 450, batch_size: 150, passes: 2}
resources: {cpus_per_trial: 1, cpus_per_job: 1}
"""
JOBS = 3 + 3
RESUME_LINE = "interrupted: everything finished so far is kept; rerun with --resume to go on"


def interrupt_when(args: list[str], ready, what: str) -> tuple[str, float]:
    """Run the driver (Ray, not --local); once ``ready()``, SIGINT its process group. Returns (output, seconds
    from the signal to the driver's exit)."""
    driver = start_driver(args)
    try:
        wait_for(ready, 600, what)
        os.killpg(driver.pid, signal.SIGINT)
        sent = time.monotonic()
        output, _ = driver.communicate(timeout=300)
        stopped = time.monotonic() - sent
    finally:
        stop_group(driver)  # whatever Ray left behind in the group
    assert driver.returncode == 130, output[-3000:]
    return output, stopped


def check_stopped(output: str, stopped: float, root: Path) -> None:
    tail = " ".join(output.split())
    assert RESUME_LINE in tail, output[-3000:]
    assert "Traceback" not in output and "unreadable" not in output and "--redo" not in output, output[-3000:]
    assert not (root / "lease.json").exists()  # given back on Ctrl-C
    # At once: Ray's shutdown included (under a loaded 2-core CI machine it takes seconds, not minutes).
    assert stopped < 120, stopped


@pytest.mark.slow
def test_ctrl_c_in_training_probe_crafting_and_comparisons_stops_at_once_and_resume_finishes(tmp_path):
    sweep = tmp_path / "interrupted.yaml"
    sweep.write_text(SWEEP)
    results = tmp_path / "results"
    root = results / "interrupted"
    args = ["sweep", str(sweep), "--results", str(results), "--no-report"]
    similarity = lambda: list(root.glob("similarity/**/*.parquet"))  # noqa: E731
    probes = lambda: list(root.glob("probes/*.safetensors"))  # noqa: E731

    # 1. Training: after the first epoch is committed, two to go.
    output, stopped = interrupt_when(args, lambda: len(epoch_metas(root)) >= 1, "the first epoch")
    check_stopped(output, stopped, root)
    trained = epoch_metas(root)
    assert 1 <= len(trained) < 3
    assert not similarity() and not probes() and not (root / "metrics.parquet").exists()  # nothing compared

    # 2. Probe crafting: one probe per epoch, crafted one after another; interrupted after the first.
    output, stopped = interrupt_when([*args, "--resume"], lambda: len(probes()) >= 1, "the first probe")
    check_stopped(output, stopped, root)
    assert len(epoch_metas(root)) == 3 and 1 <= len(probes()) < 3 and not similarity()
    assert all(epoch_metas(root)[key] == text for key, text in trained.items())  # not trained again

    # 3. Comparisons: the probes are all there (read or crafted); the Grams of every minibatch are under way.
    output, stopped = interrupt_when([*args, "--resume"], lambda: len(probes()) == 3, "the last probe")
    check_stopped(output, stopped, root)
    assert len(similarity()) < JOBS
    done = {path: path.read_bytes() for path in similarity()}

    result = CliRunner().invoke(app, [*args, "--resume", "--local"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert f"{JOBS - len(done)} comparison jobs computed ({len(done)} already done)" in " ".join(result.stderr.split())
    assert len(similarity()) == JOBS and all(path.read_bytes() == data for path, data in done.items())
    assert all(epoch_metas(root)[key] == text for key, text in trained.items())
