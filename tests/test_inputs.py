"""Inputs that cannot hurt: every mistake a person can make at the door gets one line (exit 1, no traceback,
nothing written, within 10 s), data files cannot run code, and hostile names cannot break the report.

Object stores are simulated with 127.0.0.1 and a port nobody listens on: no other address is ever contacted
(the AWS instance-metadata lookup is switched off, and the Google one is pointed at the same closed port).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rayrs import checkpoint
from rayrs import storage as layout
from rayrs.cli import app
from rayrs.config import TrialSpec, expand, load_experiment
from rayrs.errors import UserError
from rayrs.storage import Storage, parse_location
from test_data import _Py2Str, _write_py2_pickle, write_cifar10

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "sweeps" / "quickstart.yaml"
runner = CliRunner()

TINY_SWEEP = """
name: tiny
data: {dataset: digits}
model: {arch: wrn, depth: 10, width: 1}
train: {method: standard, epochs: 2, batch_size: 256}
eval: {train_subset: 16, test_subset: 16, attack: {steps: 1}}
cka: {probe_size: 16, batch_size: 16, passes: 1}
"""


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_line_error(args: list[str], seconds: float = 10.0, after_progress: bool = False) -> str:
    """Run ``rayrs ARGS``; assert exit 1 with exactly one line on stderr, no traceback, within ``seconds``.

    ``after_progress``: a sweep that got going prints its progress first; then the error is its one last line.
    """
    started = time.perf_counter()
    result = runner.invoke(app, args, terminal_width=400)
    elapsed = time.perf_counter() - started
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert (errors == lines[-1:] if after_progress else errors == lines) and len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    return errors[0]


@pytest.fixture
def no_cloud_credentials(monkeypatch):
    """No credentials, and no instance-metadata lookups anywhere but 127.0.0.1's closed port."""
    port = closed_port()
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")  # a fake key: the request fails at connect, unsigned or not
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("GCE_METADATA_ROOT", f"127.0.0.1:{port}")
    monkeypatch.setenv("CLOUDSDK_CONFIG", "/nonexistent")
    return port


# -- item 10: one line for every mistake ------------------------------------------------------------------------
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_results_under_a_file_is_one_line(tmp_path, dry_run):
    (tmp_path / "a_file").write_text("not a folder")
    results = tmp_path / "a_file" / "results"
    line = one_line_error(["sweep", str(QUICKSTART), "--results", str(results), "--local"] + (["--dry-run"] if dry_run else []))
    assert f"results location {results} is under {tmp_path / 'a_file'}, a file, not a folder" in line
    assert (tmp_path / "a_file").read_text() == "not a folder"


def _without_root_privileges() -> None:
    """In the child, before exec: as root, give up the capabilities that let root write into any folder."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone from this process and its exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_results_in_a_read_only_folder_is_one_line_and_nothing_is_written(tmp_path):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(TINY_SWEEP)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rayrs", "sweep", str(sweep), "--results", str(read_only / "results"), "--local"],
            capture_output=True, text=True, timeout=300, preexec_fn=_without_root_privileges,
        )
    finally:
        read_only.chmod(0o755)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"results location {read_only / 'results' / 'tiny'}: cannot write in {read_only} (permission denied)" in lines[0]
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_an_unreachable_s3_location_is_one_line_within_seconds(tmp_path, no_cloud_credentials, dry_run):
    results = f"s3://bucket/prefix?region=us-east-1&endpoint_override=127.0.0.1:{closed_port()}&scheme=http"
    line = one_line_error(["sweep", str(QUICKSTART), "--results", results, "--local"] + (["--dry-run"] if dry_run else []))
    assert line.startswith("error: results location s3://bucket/prefix/quickstart?region=us-east-1&endpoint_override=")
    assert "check the bucket name, the network and the AWS credentials" in line


def test_gs_without_credentials_does_not_hang(no_cloud_credentials):
    # Credentials discovery asks the (here: closed) metadata server and retries for minutes; rayrs gives up
    # after DOOR_SECONDS and names what to configure.
    results = f"gs://bucket/prefix?endpoint_override=127.0.0.1:{no_cloud_credentials}&scheme=http"
    line = one_line_error(["status", results], seconds=layout.DOOR_SECONDS + 2)
    assert line.startswith(f"error: results location {results}: ")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in line


def test_hdfs_without_hadoop_is_one_line():
    line = one_line_error(["status", f"hdfs://127.0.0.1:{closed_port()}/results/tiny"])
    assert "hdfs:// needs Hadoop's libhdfs and a Java runtime on every node" in line


def _results_with_one_epoch(tmp_path: Path, meta: object | None = None, width: int | None = None) -> tuple[Path, Path]:
    """A tiny sweep's results as a run leaves them after epoch 1 of 2 (no training: the files are written here).

    ``meta`` replaces epoch 1's meta.json; ``width`` writes epoch 1's weights from a WRN-10 of that width.
    Returns (sweep file, results folder).
    """
    from rayrs.models import build_model
    from rayrs.train import trial_record

    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(TINY_SWEEP)
    experiment = load_experiment(sweep)
    (trial,) = expand(experiment)
    storage = Storage(tmp_path / "results" / "tiny")
    storage.write_json(layout.SWEEP_CONFIG, experiment.model_dump(mode="json"))
    storage.write_json(layout.trial_spec(trial.name), trial_record(trial))
    torch.manual_seed(0)
    model = build_model("wrn", num_classes=10, in_channels=1, depth=10, width=width or 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    metrics = {"epoch": 1, "lr": 0.1, "train_objective": 2.0, "eval_eps": 0.1, "epoch_seconds": 1.0,
               **{f"{s}_{k}_{m}": 0.5 for s in ("train", "test") for k in ("clean", "robust") for m in ("acc", "loss")}}
    checkpoint.save_epoch(storage, trial.name, 1, model, optimizer, {"metrics": metrics})
    if meta is not None:
        storage.write_json(layout.epoch_meta(trial.name, 1), meta)
    return sweep, tmp_path / "results"


@pytest.mark.parametrize(
    ("meta", "problem"),
    [({}, "no epoch"), ([1], "a JSON list, not an object"), ({"epoch": 2, "metrics": {}}, "it is of epoch 2, not 1"),
     ({"epoch": 1, "metrics": "good"}, "no metrics"), ({"epoch": 1, "metrics": {"epoch": 1}}, "metric 'lr' is missing"),
     ({"epoch": 1, "metrics": {"epoch": 1, "lr": "high"}}, "metric 'lr' is not a number")],
    ids=["empty", "list", "other epoch", "metrics not an object", "metric missing", "metric not a number"],
)
def test_a_damaged_meta_json_is_one_line_naming_it_in_status(tmp_path, meta, problem):
    _, results = _results_with_one_epoch(tmp_path, meta=meta)
    path = results / "tiny" / layout.epoch_meta("trial", 1)
    line = one_line_error(["status", str(results / "tiny")])
    assert line == f"error: {path} is not an epoch record of rayrs ({problem}); rerun the sweep with --redo trial to retrain that trial"


def test_an_empty_meta_json_is_one_line_naming_it_on_resume(tmp_path):
    sweep, results = _results_with_one_epoch(tmp_path, meta={})
    meta = results / "tiny" / layout.epoch_meta("trial", 1)
    line = one_line_error(["sweep", str(sweep), "--results", str(results), "--local", "--resume", "--no-report"], seconds=60,
                          after_progress=True)
    assert f"{meta} is not an epoch record of rayrs (no epoch)" in line


def test_a_schema_invalid_sweep_json_is_one_line_in_status(tmp_path):
    _, results = _results_with_one_epoch(tmp_path)
    sweep_json = results / "tiny" / layout.SWEEP_CONFIG
    sweep_json.write_text(json.dumps({"name": "tiny", "grid": 5, "train": {"epochs": "many"}}))
    line = one_line_error(["status", str(results / "tiny")])
    assert f"{sweep_json} is not a sweep this rayrs can read (" in line and "rerun the sweep file with --resume" in line


def test_a_checkpoint_of_another_architecture_is_one_line_naming_it(tmp_path):
    sweep, results = _results_with_one_epoch(tmp_path, width=2)  # the sweep's model is WRN-10-1
    weights = results / "tiny" / layout.weights("trial", 1)
    line = one_line_error(["sweep", str(sweep), "--results", str(results), "--local", "--resume", "--no-report"], seconds=60,
                          after_progress=True)
    assert f"checkpoint {weights} holds the weights of another model (block1.0.conv1.weight is (32, 16, 3, 3) there, (16, 16, 3, 3) " in line
    assert line.endswith("rerun the sweep with --redo trial to retrain that trial")


def test_comparisons_name_a_checkpoint_of_another_architecture(tmp_path):
    from rayrs.similarity.jobs import ModelRef, load_checkpoint_model
    from rayrs.train import load_trial_data

    sweep, results = _results_with_one_epoch(tmp_path, width=2)
    (trial,) = expand(load_experiment(sweep))
    data = load_trial_data(trial.config, torch.device("cpu"))
    with pytest.raises(UserError, match=r"holds the weights of another model \(block1.0.conv1.weight is \(32, 16, 3, 3\) there"):
        load_checkpoint_model(Storage(results / "tiny"), ModelRef("trial", 1, trial.fingerprint), trial.config, data)


@pytest.mark.parametrize("value", ["0", "-50", "nan", "inf"])
def test_gpu_tflops_must_be_a_positive_number(tmp_path, value):
    line = one_line_error(["sweep", str(QUICKSTART), "--dry-run", "--results", str(tmp_path), f"--gpu-tflops={value}"])
    assert "--gpu-tflops" in line and "a positive number" in line


def test_a_folder_given_as_the_sweep_file_is_one_line(tmp_path):
    line = one_line_error(["sweep", str(REPO / "sweeps"), "--dry-run", "--results", str(tmp_path)])
    assert f"{REPO / 'sweeps'} is a folder, not a sweep file; give one YAML file, e.g. {REPO / 'sweeps' / 'dynamics.yaml'}" in line


# -- item 13: storage URIs parsed once, as users type them ---------------------------------------------------------
LOCATIONS = {
    # typed                                          -> where the experiment "exp" goes (str of the child)
    "results": str(Path("results").resolve() / "exp"),
    "~/results": str(Path("~/results").expanduser() / "exp"),
    "/data/results/": "/data/results/exp",
    "file:///data/results": "/data/results/exp",
    "file://localhost/data/results": "/data/results/exp",
    "s3://bucket": "s3://bucket/exp",
    "s3://bucket/prefix/": "s3://bucket/prefix/exp",
    "s3://bucket/prefix?region=eu-west-1": "s3://bucket/prefix/exp?region=eu-west-1",
    "S3://Bucket/prefix?region=eu-west-1&endpoint_override=127.0.0.1:9": "s3://Bucket/prefix/exp?region=eu-west-1&endpoint_override=127.0.0.1:9",
    "gs://bucket/prefix?anonymous=true": "gs://bucket/prefix/exp?anonymous=true",
}


@pytest.mark.parametrize("typed", list(LOCATIONS))
def test_a_results_location_keeps_its_query_apart_from_its_path(typed):
    assert str(parse_location(typed).child("exp")) == LOCATIONS[typed]


def test_two_experiments_under_one_s3_prefix_with_a_query_get_two_folders(no_cloud_credentials):
    root = Storage("s3://bucket/prefix?region=eu-west-1")  # a region given: nothing is asked over the network
    a, b = root.child("width_eps"), root.child("dynamics")
    assert a.root == "s3://bucket/prefix/width_eps?region=eu-west-1"
    assert (a.full_path("sweep.json"), b.full_path("sweep.json")) == ("bucket/prefix/width_eps/sweep.json",
                                                                      "bucket/prefix/dynamics/sweep.json")
    assert a.filesystem.region == "eu-west-1"
    assert pickle.loads(pickle.dumps(a)).root == a.root  # how Ray ships it to workers


BAD_LOCATIONS = {
    "file://tmp/x": "results location 'file://tmp/x' names the host 'tmp'; for the folder /tmp/x write file:///tmp/x, "
                    "for tmp/x under the working directory write tmp/x",
    "file:/tmp/x": "write file:// with two slashes, e.g. file:///tmp/x",
    "s3:/bucket/prefix": "write s3:// with two slashes, e.g. s3://bucket/prefix",
    "s3://": "names no bucket; write s3://BUCKET/prefix",
    "s3://bucket//prefix": "empty, '.' or '..' path segments are not allowed",
    "s3://bucket/../prefix": "empty, '.' or '..' path segments are not allowed",
    "s3://bucket/prefix?regoin=eu-west-1": "unknown option 'regoin' for s3://; allowed: region, endpoint_override",
    "s3://bucket/prefix?region=us-east-1&anonymous=maybe": "?anonymous= takes true or false, got 'maybe'",
    "s3://bucket/prefix#results": "'#' starts a URI fragment",
    "file:///tmp/x?mode=fast": "a local folder takes no ?options",
    "ftp://host/results": "unknown storage scheme 'ftp://'",
    "": "results location is empty",
}


@pytest.mark.parametrize("typed", list(BAD_LOCATIONS))
def test_an_ambiguous_results_location_is_refused_in_one_line(typed, no_cloud_credentials):
    with pytest.raises(UserError) as caught:
        Storage(typed)
    assert BAD_LOCATIONS[typed] in str(caught.value) and "\n" not in str(caught.value)


# -- item 8: CIFAR-10's pickles cannot run code --------------------------------------------------------------------
class _RunsCode:
    """What a hostile data_batch_1 holds: unpickling it calls exec (here: it would create a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_a_cifar10_batch_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    write_cifar10(tmp_path / "data")
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1"
    marker = tmp_path / "payload-ran"
    _write_py2_pickle(batch, {_Py2Str(b"data"): np.zeros((2, 3072), np.uint8), _Py2Str(b"labels"): [0, 1],
                              _Py2Str(b"filenames"): _RunsCode(marker)})
    from rayrs.data import load_dataset

    with pytest.raises(UserError) as caught:
        load_dataset("cifar10", root=tmp_path / "data")
    assert not marker.exists()  # the payload never ran
    message = str(caught.value)
    assert message.startswith(f"cifar10: refused to read {batch}: it asks to run ") and "exec, which a CIFAR-10 batch never does" in message
    assert "\n" not in message


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_batches_pickled_again_by_python_3_read_the_same(tmp_path, protocol):
    # Re-pickled copies (str keys, numpy's protocol-4/5 array pickles) read as the Python 2 originals do.
    from rayrs.data import load_dataset, read_cifar10_batch

    train_data, train_labels, test_data, test_labels = write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"):
        batch = read_cifar10_batch(folder / name)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    ds = load_dataset("cifar10", root=tmp_path)
    assert np.array_equal(ds.train_images.numpy().reshape(-1, 3072), train_data)
    assert np.array_equal(ds.test_images.numpy().reshape(-1, 3072), test_data)
    assert ds.train_labels.tolist() == train_labels.tolist() and ds.test_labels.tolist() == test_labels.tolist()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (np.array([1, "x"], dtype=object), "could not read"),  # object arrays hold pickled Python objects
        (np.zeros(3, dtype=[("a", "u1"), ("b", "f4")]), "not plain numbers"),
        ({1, 2}, "refused to read"),  # a set is built by calling builtins.set
        (3.5, "it holds a float, which a CIFAR-10 batch never does"),
    ],
    ids=["object array", "structured array", "set", "float"],
)
def test_a_cifar10_batch_holding_anything_but_plain_data_is_refused(tmp_path, payload, expected):
    from rayrs.data import read_cifar10_batch

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "extra": payload}, protocol=2))
    with pytest.raises(UserError) as caught:
        read_cifar10_batch(path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


# -- item 14: the report's embedded JSON ------------------------------------------------------------------------------
HOSTILE = "<!--<script>"  # inside a <script>, "<!--" then "<script" makes the next "</script>" not end it


def test_embedded_json_escapes_every_angle_bracket_and_reads_back():
    from analysis.report import _script_json

    spec = {"data": {"values": [{"trial": HOSTILE}, {"trial": "</script><b>"}]}}
    text = _script_json(spec)
    assert "<" not in text and json.loads(text) == spec


def test_a_hostile_trial_name_leaves_every_chart_drawn(tmp_path):
    import polars as pl

    import synthetic
    from analysis.report import render_report
    from test_report_browser import CHROMIUM, MARKS, charts, dump_dom

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    results = synthetic.write_results(tmp_path / "results")
    victim = pl.read_parquet(tmp_path / "results" / layout.METRICS)["trial"][0]
    for table in (tmp_path / "results").rglob("*.parquet"):  # the trial's name, everywhere it appears
        frame = pl.read_parquet(table)
        names = [c for c in ("trial", "model_a", "model_b") if c in frame.columns]
        frame.with_columns(pl.col(c).replace(victim, HOSTILE) for c in names).write_parquet(table)
    report = render_report(results, formats=("html",))
    dom = dump_dom(report.index, tmp_path / "profile")
    drawn = charts(dom)
    assert sorted(drawn) == sorted(MARKS)
    assert all("<svg" in drawn[name] for name in MARKS), [name for name in MARKS if "<svg" not in drawn[name]]


# -- item 7: one data layout ---------------------------------------------------------------------------------------------
def test_every_sweep_file_reads_the_data_folder_the_readme_documents():
    readme = (REPO / "README.md").read_text()
    documented = re.search(r"root: null +# folder holding the files: (\S+)/ with cifar-10-batches-py/, imagenette2-320/", readme)
    assert documented, "the README's sweep-file reference no longer documents the data folder"
    roots = {}
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        for trial in expand(load_experiment(path)):
            if trial.config.data.dataset != "digits":  # digits ships with scikit-learn: no folder
                roots[f"{path.name}: {trial.name}"] = trial.config.data.root
    assert roots and set(roots.values()) == {documented[1]}, roots


def test_trial_spec_round_trips_through_json():
    # TrialSpec is what Ray ships to workers; the new validation must not refuse what it wrote itself.
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        for trial in expand(load_experiment(path)):
            assert TrialSpec.model_validate(json.loads(trial.model_dump_json())) == trial
