"""Damaged results never silently change a result (issue 12, "make the class impossible").

For every file kind of the results layout (`rayrs.storage`), the file is truncated, emptied, replaced with
another format, and swapped with another trial's or job's file of its kind (a file of another experiment
where the kind has one file per experiment). Then `rayrs status`, `rayrs analyze` and `rayrs sweep --resume`
each either proceed, and their output is checked against the undamaged run, or stop with exactly one line
that names the damaged file and the way out, having written nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rayrs import storage as layout
from rayrs.cli import app
from rayrs.config import load_experiment

runner = CliRunner()
TRIAL, OTHER = "seed0", "block1-from_epoch2"  # the finished sweep's trials (tests/conftest.py)
MODES = ("truncate", "empty", "other format", "swap")
LEASE = "lease.json"  # rayrs.storage.LEASE, spelled out so that these tests also run against older code
WAYS_OUT = ("--redo", "--resume", "delete it", "new name", "wait for it")


def files(root: Path) -> dict[str, str]:
    """Every file under ``root`` by its relative path: its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def stale_lease(host: str = "elsewhere", age: float = 3600) -> bytes:
    """A lease left by a driver on another machine, last heard from ``age`` seconds ago."""
    then = time.time() - age
    return json.dumps({"token": "f" * 32, "host": host, "pid": 4242, "machine": f"{host}:boot", "started": then,
                       "heartbeat": then}).encode()


class Results:
    """The finished sweep (conftest `finished_sweep`), its undamaged outputs, and fresh copies to damage."""

    def __init__(self, sweep_file: Path, results: Path, scratch: Path):
        self.sweep_file, self.source, self.scratch = sweep_file, results, scratch
        experiment = load_experiment(sweep_file)
        from rayrs.config import expand
        from rayrs.similarity.jobs import plan_jobs

        trials = expand(experiment)
        cross_layer = {job.a.trial: job.output for job in plan_jobs(experiment, trials) if job.kind == "cross_layer"}
        probes = sorted(p.name for p in (results / "kept" / layout.PROBES_DIR).iterdir())
        probe = {trial: f"{layout.PROBES_DIR}/{next(p for p in probes if f':{trial}@' in p)}" for trial in (TRIAL, OTHER)}
        # kind -> (the file damaged, the same kind of file of another trial or job; None: another experiment's)
        self.kinds: dict[str, tuple[str, str | None]] = {
            "sweep.json": (layout.SWEEP_CONFIG, None),
            "lease.json": (LEASE, None),
            "trial.json": (layout.trial_spec(TRIAL), layout.trial_spec(OTHER)),
            "meta.json": (layout.epoch_meta(TRIAL, 2), layout.epoch_meta(OTHER, 2)),
            "model.safetensors": (layout.weights(TRIAL, 2), layout.weights(OTHER, 2)),
            "optimizer.safetensors": (layout.optimizer_state(TRIAL, 2), layout.optimizer_state(OTHER, 2)),
            "metrics.parquet": (layout.METRICS, None),
            "similarity parquet": (cross_layer[TRIAL], cross_layer[OTHER]),
            "probe safetensors": (probe[TRIAL], probe[OTHER]),
        }
        self.count = 0
        self.baseline = baseline = self.copy("baseline")
        self.status = self.run_status(baseline)
        assert self.status.exit_code == 0, self.status.output
        self.report = scratch / "baseline-report"
        result = self.run_analyze(baseline, self.report)
        assert result.exit_code == 0, result.output
        self.manifest = json.loads((self.report / "manifest.json").read_text())
        self.files = files(baseline)

    def copy(self, label: str) -> Path:
        """A fresh copy of the results; returns its experiment folder."""
        self.count += 1
        target = self.scratch / f"{self.count:02d}-{label.replace(' ', '_')}"
        shutil.copytree(self.source, target)
        return target / "kept"

    def run_status(self, root: Path):
        return runner.invoke(app, ["status", str(root)], terminal_width=300)

    def run_analyze(self, root: Path, out: Path):
        return runner.invoke(app, ["analyze", str(root), "--out", str(out), "--format", "html"], terminal_width=300)

    def run_resume(self, root: Path):
        return runner.invoke(app, ["sweep", str(self.sweep_file), "--results", str(root.parent), "--resume",
                                   "--local", "--no-report"], terminal_width=300)


@pytest.fixture(scope="module")
def results(finished_sweep, tmp_path_factory) -> Results:
    return Results(*finished_sweep, tmp_path_factory.mktemp("damage"))


def damage(results: Results, root: Path, kind: str, mode: str) -> list[str]:
    """Damage ``kind``'s file under ``root`` in ``mode``; returns the paths a refusal may name."""
    rel, partner = results.kinds[kind]
    path = root / rel
    if kind == "lease.json":  # a lease exists while a driver runs, or after one was killed: a killed one's here
        path.write_bytes(stale_lease())
    original = path.read_bytes()
    if mode == "truncate":
        path.write_bytes(original[: len(original) // 2])
    elif mode == "empty":
        path.write_bytes(b"")
    elif mode == "other format":  # JSON where a binary file belongs, a binary file where JSON belongs
        other = layout.trial_spec(OTHER) if rel.endswith((".parquet", ".safetensors")) else layout.weights(OTHER, 1)
        path.write_bytes((root / other).read_bytes())
    elif partner is not None:  # swap with another trial's (or job's) file of the same kind
        theirs = (root / partner).read_bytes()
        (root / partner).write_bytes(original)
        path.write_bytes(theirs)
        return [str(path), str(root / partner)]
    else:  # one file per experiment: another experiment's
        path.write_bytes(another_experiments(kind, root))
    return [str(path)]


def another_experiments(kind: str, root: Path) -> bytes:
    if kind == "sweep.json":  # the same sweep under another name, with another learning rate
        sweep = json.loads((root / layout.SWEEP_CONFIG).read_text())
        return json.dumps(sweep | {"name": "other", "train": sweep["train"] | {"lr": 0.06}}).encode()
    if kind == "metrics.parquet":
        import synthetic

        other = synthetic.write_results(root.parent.parent / "other-experiment")
        return Path(other.full_path(layout.METRICS)).read_bytes()
    return stale_lease(host="busy", age=0)  # lease.json: another driver's, alive


def status_lines(output: str) -> list[str]:
    """`rayrs status`'s rows of the trials and its counts (not the folder's path, nor the driver: a lease may be
    damaged)."""
    rows = [" ".join(line.split()) for line in output.splitlines() if TRIAL in line or OTHER in line]
    counts = re.search(r"trials: .*? trial-hours", " ".join(output.split()))
    return [*rows, counts[0] if counts else "no counts"]


def check_refusal(result, named: list[str]) -> None:
    """Exit 1 with exactly one line that names the file (or its swap partner) and the way out."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert any(path in lines[0] for path in named), lines[0]
    assert any(way in lines[0] for way in WAYS_OUT), lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kind",
    ["sweep.json", "lease.json", "trial.json", "meta.json", "model.safetensors", "optimizer.safetensors",
     "metrics.parquet", "similarity parquet", "probe safetensors"],
)
def test_a_damaged_file_is_named_or_changes_no_result(results, kind, mode):
    root = results.copy(f"{kind}-{mode}")
    named = damage(results, root, kind, mode)
    damaged = files(root)
    outcomes = {}

    status = results.run_status(root)
    outcomes["status"] = status.exit_code
    if status.exit_code == 0:  # the same trials, epochs, accuracies and comparisons as the undamaged run
        assert status_lines(status.stdout) == status_lines(results.status.stdout)
    else:
        check_refusal(status, named)
    assert files(root) == damaged  # status only reads

    out = results.scratch / f"report-{kind}-{mode}".replace(" ", "_")
    shutil.copytree(results.report, out)  # figures whose inputs are unchanged are not redrawn: fast
    analyze = results.run_analyze(root, out)
    outcomes["analyze"] = analyze.exit_code
    if analyze.exit_code == 0:  # every figure drawn from the same rows as the undamaged run's
        assert json.loads((out / "manifest.json").read_text()) == results.manifest
        assert pq.read_table(out / "summary.parquet").equals(pq.read_table(results.report / "summary.parquet"))
    else:
        check_refusal(analyze, named)
    assert files(root) == damaged  # analyze writes into --out only

    resume = results.run_resume(root)
    outcomes["resume"] = resume.exit_code
    if resume.exit_code == 0:
        assert "0 trials trained, 0 comparison jobs computed (4 already done)" in " ".join(resume.stderr.split())
        after = files(root)
        rewritten = {layout.SWEEP_CONFIG, layout.METRICS}  # written again from the sweep file and the checkpoints
        for rel, digest in results.files.items():
            if rel in rewritten or rel not in damaged or damaged[rel] == results.files[rel]:
                assert after.get(rel) == digest, rel  # as in the undamaged run, or restored to it
            else:
                assert after[rel] == damaged[rel], rel  # not needed, not read, left as it was
        assert set(after) == set(results.files), "resume left or removed files"
    else:
        check_refusal(resume, named)
        assert files(root) == damaged  # refused before writing anything
    print(kind, mode, outcomes)


# -- issue 12, item 2: --resume checks every trial in storage against the sweep before writing anything ------------
def refused_resume(results: Results, root: Path, sweep_text: str | None = None):
    """`sweep --resume` on ``root`` (with ``sweep_text`` as the sweep file if given): refused, nothing written."""
    sweep_file = results.sweep_file
    if sweep_text is not None:
        sweep_file = root.parent / "edited.yaml"
        sweep_file.write_text(sweep_text)
    before = files(root)
    result = runner.invoke(app, ["sweep", str(sweep_file), "--results", str(root.parent), "--resume", "--local",
                                 "--no-report"], terminal_width=300)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert files(root) == before and not (root / LEASE).exists()
    return lines[0]


def test_resume_refuses_a_trial_json_copied_from_another_trial(results):
    root = results.copy("copied trial.json")
    shutil.copy(root / layout.trial_spec(OTHER), root / layout.trial_spec(TRIAL))
    line = refused_resume(results, root)
    assert f"{root / layout.trial_spec(TRIAL)} does not describe trial {TRIAL!r} (it names trial {OTHER!r})" in line
    assert f"--redo {TRIAL}" in line and "new name" in line


def test_resume_refuses_checkpoints_whose_trial_json_is_missing(results):
    root = results.copy("missing trial.json")
    (root / layout.trial_spec(TRIAL)).unlink()
    line = refused_resume(results, root)
    assert f"{root / layout.trial_spec(TRIAL)} is missing, so the checkpoints of trial {TRIAL!r} have no identity" in line
    assert f"--redo {TRIAL}" in line


def test_resume_refuses_a_sweep_file_edited_since(results):
    root = results.copy("edited sweep")
    line = refused_resume(results, root, results.sweep_file.read_text().replace("lr: 0.05", "lr: 0.06"))
    # Both trials changed; the first in storage's (sorted) order is named.
    assert f"trial {OTHER!r} was trained with another configuration than the sweep file gives it" in line
    assert f"--redo {OTHER}" in line


def test_resume_refuses_new_cka_settings_for_finished_comparisons(results):
    root = results.copy("edited cka")
    line = refused_resume(results, root, results.sweep_file.read_text().replace("probe_size: 64", "probe_size: 32"))
    assert "cka.probe_size is 32 in the sweep file but was 64 for the comparisons in" in line


def test_resume_refuses_a_trial_folder_the_sweep_no_longer_has(results):
    root = results.copy("dropped trial")
    text = results.sweep_file.read_text().replace("  - {train.freeze.through: [block1], train.freeze.from_epoch: [2]}\n", "")
    line = refused_resume(results, root, text.replace("  - {seed: [0]}", "  - {seed: [0, 1]}"))
    assert f"{root / 'trials' / OTHER} is not a trial of this sweep (its trials: seed0, seed1)" in line


def test_redo_leaves_out_of_the_check_the_trial_it_retrains(results):
    from rayrs.config import expand
    from rayrs.storage import Storage
    from rayrs.sweep import check_resume

    root = results.copy("redo")
    shutil.copy(root / layout.trial_spec(OTHER), root / layout.trial_spec(TRIAL))
    experiment = load_experiment(results.sweep_file)
    check_resume(Storage(root), experiment, expand(experiment), redo=(TRIAL,))  # no error: it is about to go


def test_a_checkpoint_of_another_trial_or_epoch_is_refused_where_it_is_read(tmp_path):
    import torch

    from rayrs import checkpoint
    from rayrs.errors import UserError
    from rayrs.storage import Storage

    storage = Storage(tmp_path)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for trial in ("a", "b"):
        checkpoint.save_epoch(storage, trial, 1, model, optimizer, {"metrics": {}})
    shutil.copy(tmp_path / layout.weights("b", 1), tmp_path / layout.weights("a", 1))
    with pytest.raises(UserError, match=r"model.safetensors holds trial 'b''s epoch 1, not trial 'a''s epoch 1 .*--redo a"):
        checkpoint.load_weights(storage, "a", 1)
    with pytest.raises(UserError, match=r"meta.json is not an epoch record of rayrs \(it is of epoch 1, not 2\); rerun the sweep with --redo a"):
        shutil.copytree(tmp_path / layout.epoch_dir("a", 1), tmp_path / layout.epoch_dir("a", 2))
        checkpoint.read_meta(storage, "a", 2)
    shutil.copy(tmp_path / layout.epoch_meta("b", 1), tmp_path / layout.epoch_meta("a", 1))
    with pytest.raises(UserError, match=r"meta.json is not an epoch record of rayrs \(it is of trial 'b', not 'a'\); .*--redo a"):
        checkpoint.read_meta(storage, "a", 1)
    (tmp_path / layout.weights("b", 1)).unlink()
    with pytest.raises(UserError) as caught:  # a file that is not there is missing, not "unreadable"
        checkpoint.load_weights(storage, "b", 1)
    assert "is missing" in str(caught.value) and "unreadable" not in str(caught.value)


# -- follow-up: analyze and status read only the comparisons the sweep plans ------------------------------------
def test_an_older_runs_comparison_files_are_not_read_beside_the_sweeps(results):
    """Files of jobs sweep.json does not plan (an older run's: another probe size, a cross_epoch job since dropped)
    are left out of the figures, the summary and status's counts, with one line saying so."""
    from dataclasses import replace

    import pyarrow as pa

    from rayrs.config import expand
    from rayrs.similarity.jobs import plan_jobs

    root = results.copy("stale comparisons")
    experiment = load_experiment(results.sweep_file)
    job = next(j for j in plan_jobs(experiment, expand(experiment)) if j.kind == "cross_layer" and j.a.trial == TRIAL)
    rows = pq.read_table(root / job.output)
    stale = [replace(job, probe_size=32), replace(job, kind="cross_epoch", epochs=(1,))]
    for old in stale:  # each holds rows of its own job, so only the plan tells it from the sweep's
        table = rows.set_column(rows.schema.get_field_index("job"), "job", pa.array([old.id] * len(rows)))
        table = table.set_column(table.schema.get_field_index("kind"), "kind", pa.array([old.kind] * len(rows)))
        table = table.set_column(table.schema.get_field_index("value"), "value", pa.compute.subtract(1.0, rows["value"]))
        (root / old.output).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / old.output)
    before = files(root)

    out = results.scratch / "report-stale"
    shutil.copytree(results.report, out)
    analyze = results.run_analyze(root, out)
    assert analyze.exit_code == 0, analyze.output
    # Every figure's inputs and the summary's numbers are the undamaged run's: the stale rows were not read.
    assert json.loads((out / "manifest.json").read_text()) == results.manifest
    assert pq.read_table(out / "summary.parquet").equals(pq.read_table(results.report / "summary.parquet"))
    note = [line for line in analyze.stderr.splitlines() if line.startswith("comparisons:")]
    assert note == [f"comparisons: 2 files under {root / layout.SIMILARITY_DIR} are not of a comparison that sweep.json "
                    f"plans (e.g. {min(old.output for old in stale)}, an older run's) and were not read; delete or "
                    "move them to keep the folder to this sweep"]

    status = results.run_status(root)
    assert status.exit_code == 0, status.output
    assert status_lines(status.stdout) == status_lines(results.status.stdout)  # 4/4 comparison jobs, not 6
    assert f"comparisons: 2 files under {root / layout.SIMILARITY_DIR} are not of a comparison" in " ".join(status.stdout.split())
    assert files(root) == before  # both only read
