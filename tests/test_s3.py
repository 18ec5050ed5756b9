"""rayrs against a real S3-compatible HTTP server: moto's standalone server (a dev dependency), started by the
session on 127.0.0.1 at a free port, reached the way AWS tools reach an endpoint (``AWS_ENDPOINT_URL`` and the
``AWS_*`` credential variables in the environment, nothing in the URI).

A sweep on ``s3://`` trains, is SIGKILLed mid-training, resumes through Ray (Tune and the comparison tasks on S3)
to the bits of an uninterrupted ``--local`` run on the same bucket, and is read back by ``rayrs status`` and
``rayrs analyze``; a reader never sees a half-written object; a bucket that does not
exist and refused credentials are one line within 10 s.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from safetensors.torch import load as load_safetensors
from test_inputs import one_line_error
from typer.testing import CliRunner

from rayrs import storage as layout
from rayrs.cli import app
from rayrs.storage import Storage

SWEEP = """
name: s3rt
data: {dataset: digits}
model: {arch: wrn, depth: 10, width: 1}
train: {method: standard, eps: 0, epochs: 2, batch_size: 128, lr: 0.05}
eval: {eps: 0.1, attack: {steps: 1}, train_subset: 32, test_subset: 32}
compare:
  - kind: cross_layer
cka: {probe_size: 64, batch_size: 64, passes: 1}
resources: {cpus_per_trial: 1}
"""
EPOCHS = 2
# moto's server accepts any key until IAM authentication is switched on (`refusing_credentials`).
KEY_ID, SECRET = "testing", "testing"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 directly, whatever the proxy settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (never 0.0.0.0) at a free port, for the session: (endpoint URL, its request log).

    Waits until the server answers; at the end it is terminated (killed if it does not stop within 10 s).
    """
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    port = _free_port()
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"moto's server exited with {server.returncode}: {log_path.read_text()[-2000:]}")
            try:
                _NO_PROXY.open(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not answer on {endpoint} within 60 s") from None
                time.sleep(0.1)
        yield endpoint, log_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str  # a fresh bucket for this test
    log: Path  # the server's log: one line per HTTP request

    def client(self, service: str = "s3", secret: str = SECRET, key_id: str = KEY_ID):
        import boto3  # moto's dependency: the tests' independent view of the store

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret)


@pytest.fixture
def s3(s3_endpoint, monkeypatch) -> S3:
    """A fresh bucket on the session's server, with the endpoint and credentials in the environment only."""
    s3_endpoint, log = s3_endpoint
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("NO_PROXY", ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"])))
    store = S3(s3_endpoint, f"rayrs-{uuid.uuid4().hex[:12]}", log)
    store.client().create_bucket(Bucket=store.bucket)
    return store


def _exists(storage: Storage, rel: str) -> bool:
    try:
        return storage.exists(rel)
    except OSError:  # a transient answer of a busy server: ask again
        return False


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _start(args: list[str]) -> subprocess.Popen:
    """``python -m rayrs ARGS`` (the CLI) in its own process group, output to a pipe."""
    return subprocess.Popen([sys.executable, "-m", "rayrs", *args], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(process: subprocess.Popen, sig: int = signal.SIGKILL) -> str:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    output, _ = process.communicate(timeout=60)
    return output


def _finish(process: subprocess.Popen) -> str:
    """``process``'s output once it ends (at most 10 minutes); stopped if it is still running then."""
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            _stop(process)
    return output


@pytest.mark.slow
def test_a_sweep_on_s3_is_killed_resumes_bit_for_bit_and_reads_back(tmp_path, s3):
    sweep = tmp_path / "s3rt.yaml"
    sweep.write_text(SWEEP)
    results = f"s3://{s3.bucket}/prefix"
    remote = Storage(results).child("s3rt")
    assert remote.root == f"s3://{s3.bucket}/prefix/s3rt"  # nothing in the URI: the endpoint came from the environment
    trial = "trial"

    # The reference: the same sweep, uninterrupted, with --local into another prefix of the bucket (alongside, to
    # save wall time). The run under test is killed in --local mode and resumed through Ray, in a process of its
    # own (the session's Ray workers would not see this test's AWS_* variables, set after they started): one Ray
    # start, not two (a Ray run killed and resumed cost ~40 s more on 2 loaded cores). A Ray run stopped mid-training
    # and resumed through Ray is checked on local disk by tests/test_interrupt.py (Ctrl-C); SIGKILL in --local mode
    # by tests/test_reliability.py.
    reference = _start(["sweep", str(sweep), "--results", f"s3://{s3.bucket}/reference", "--local", "--no-report"])
    driver = _start(["sweep", str(sweep), "--results", results, "--local", "--no-report"])
    try:
        _wait_for(lambda: _exists(remote, layout.epoch_meta(trial, 1)) or driver.poll() is not None, 240,
                  "epoch 1's checkpoint on S3")
        killed_output = _stop(driver)
        assert driver.returncode == -signal.SIGKILL, killed_output  # killed, not finished
    finally:
        if driver.poll() is None:
            _stop(driver)
    committed = [e for e in range(1, EPOCHS + 1) if remote.exists(layout.epoch_meta(trial, e))]
    assert 1 in committed and EPOCHS not in committed, committed  # killed mid-training
    # Nothing half-written is visible: every weights object there is a whole safetensors file.
    visible_weights = remote.list_files(layout.trial_dir(trial), "model.safetensors")
    assert len(visible_weights) >= len(committed)
    for rel in visible_weights:
        load_safetensors(remote.read_bytes(rel))
    epoch_one = remote.read_bytes(layout.epoch_meta(trial, 1))

    resumed = _start(["sweep", str(sweep), "--results", results, "--resume", "--no-report"])
    resumed_output = _finish(resumed)
    assert resumed.returncode == 0, resumed_output
    assert "1 trials (0 already trained)" in resumed_output  # resumed mid-trial, not from an empty bucket
    assert remote.read_bytes(layout.epoch_meta(trial, 1)) == epoch_one  # a finished epoch was not retrained
    assert json.loads(remote.read_bytes(layout.epoch_meta(trial, EPOCHS)))["ray_node"]  # trained by a Ray worker
    reference_output = _finish(reference)
    assert reference.returncode == 0, reference_output
    local = Storage(f"s3://{s3.bucket}/reference/s3rt")

    # The resumed Ray run is the uninterrupted local run, bit for bit: every epoch's weights ...
    for epoch in range(1, EPOCHS + 1):
        assert remote.read_bytes(layout.weights(trial, epoch)) == local.read_bytes(layout.weights(trial, epoch)), epoch
    # ... and its CKA rows (all of them but the timing column).
    (table,) = remote.list_files(layout.SIMILARITY_DIR, ".parquet")
    assert local.list_files(layout.SIMILARITY_DIR, ".parquet") == [table]
    cka, expected = remote.read_table(table), local.read_table(table)
    assert cka.num_rows == expected.num_rows > 0
    assert cka.drop_columns(["seconds"]).equals(expected.drop_columns(["seconds"]))

    runner = CliRunner()
    status = runner.invoke(app, ["status", remote.root], terminal_width=200)
    assert status.exit_code == 0, status.output
    assert "trials: 1 done, 0 started, 0 pending; comparison jobs: 1/1 done" in status.output
    report = tmp_path / "report"
    analyzed = runner.invoke(app, ["analyze", remote.root, "--out", str(report), "--format", "html"])
    assert analyzed.exit_code == 0, analyzed.output
    assert (report / "index.html").is_file()
    assert not remote.exists(layout.REPORT_DIR)  # analyze wrote its report locally, nothing to the bucket


def _upload_of(client, bucket: str, key: str) -> list[dict]:
    return [u for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) if u["Key"] == key]


def test_an_object_under_one_part_goes_up_in_one_put(s3):
    # A checkpoint, a JSON or a Parquet file (< 10 MiB, pyarrow's part size) is one PutObject request: nothing to
    # leave half-done. A larger object is a multipart upload (initiated with POST ...?uploads), published whole
    # on completion. Read off the server's own request log.
    storage = Storage(f"s3://{s3.bucket}/puts")
    storage.write_bytes("small.bin", b"s" * 2**20)
    storage.write_bytes("large.bin", b"l" * 11 * 2**20)
    requests = [line for line in s3.log.read_text().splitlines() if f"/{s3.bucket}/puts/" in line]
    small = [line.split('"')[1] for line in requests if "/small.bin" in line]
    large = [line.split('"')[1] for line in requests if "/large.bin" in line]
    assert small == [f"PUT /{s3.bucket}/puts/small.bin HTTP/1.1"], small
    assert f"POST /{s3.bucket}/puts/large.bin?uploads HTTP/1.1" in large and len(large) == 4, large  # 2 parts
    assert storage.read_bytes("small.bin") == b"s" * 2**20 and storage.read_bytes("large.bin") == b"l" * 11 * 2**20


def test_a_reader_sees_no_object_or_all_of_it_while_a_large_write_happens(s3):
    storage = Storage(f"s3://{s3.bucket}/atomic")
    import numpy as np

    data = np.random.default_rng(0).bytes(24 * 2**20)  # more than one upload part (pyarrow's are 10 MB): multipart
    writer = threading.Thread(target=storage.write_bytes, args=("big.bin", data))
    seen: list[int | None] = []
    writer.start()
    while writer.is_alive():
        info = storage.filesystem.get_file_info(storage.full_path("big.bin"))
        seen.append(None if info.type == pafs.FileType.NotFound else info.size)
        time.sleep(0.01)  # leave the writer (same process, same GIL) room to upload
    writer.join()
    assert None in seen  # the reader looked while the write was under way ...
    assert set(seen) <= {None, len(data)}, sorted(set(seen), key=str)  # ... and saw nothing, or all of it
    assert storage.read_bytes("big.bin") == data


def test_a_writer_killed_mid_upload_leaves_no_object(s3):
    # The writer (a process of its own, as a trial's worker is) is killed while its multipart upload is under way:
    # S3 publishes an object only on CompleteMultipartUpload, so there is none; the unfinished upload stays listed
    # (invisible to readers) until it is aborted.
    key = "atomic/big.bin"
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, numpy as np\n"
         "from rayrs.storage import Storage\n"
         "Storage(sys.argv[1]).write_bytes('big.bin', np.random.default_rng(0).bytes(128 * 2**20))\n",
         f"s3://{s3.bucket}/atomic"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    client = s3.client()
    try:
        _wait_for(lambda: _upload_of(client, s3.bucket, key) or writer.poll() is not None, 120, "the upload to begin")
        writer.kill()
        output, _ = writer.communicate(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == -signal.SIGKILL, output
    assert _upload_of(client, s3.bucket, key)  # killed mid-upload, not after it
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])]
    assert key not in objects, objects  # and no object, whole or partial (only the empty "atomic/" folder marker)
    assert not Storage(f"s3://{s3.bucket}/atomic").exists("big.bin")


def test_a_bucket_that_does_not_exist_is_one_line_within_seconds(tmp_path, s3):
    sweep = tmp_path / "s3rt.yaml"
    sweep.write_text(SWEEP)
    missing = f"no-such-{s3.bucket}"
    line = one_line_error(["sweep", str(sweep), "--results", f"s3://{missing}/prefix", "--local"])
    assert line.startswith(f"error: results location s3://{missing}/prefix/s3rt: bucket '{missing}' does not exist")
    assert f"aws s3 mb s3://{missing}" in line
    line = one_line_error(["status", f"s3://{missing}/prefix/s3rt"])
    assert f"bucket '{missing}' does not exist" in line
    assert missing not in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]  # nothing created on the way


def _moto_authentication(endpoint: str, enforce: bool) -> None:
    """Switch moto's IAM authentication (signatures and policies checked) on, or back off (any key accepted)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0" if enforce else b"inf",
                                     method="POST", headers={"Content-Type": "text/plain"})
    _NO_PROXY.open(request, timeout=10).close()


@pytest.fixture
def refusing_credentials(s3):
    """The server checks credentials (moto does only with IAM authentication on): a user with every S3 right.

    Returns the user's (access key id, secret). Authentication is switched off again afterwards.
    """
    iam = s3.client("iam")
    user = f"rayrs-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    _moto_authentication(s3.endpoint, enforce=True)
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        _moto_authentication(s3.endpoint, enforce=False)


def test_refused_credentials_are_one_line_within_seconds(tmp_path, s3, refusing_credentials, monkeypatch):
    sweep = tmp_path / "s3rt.yaml"
    sweep.write_text(SWEEP)
    key_id, secret = refusing_credentials
    results = f"s3://{s3.bucket}/prefix"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    Storage(results).child("s3rt").check(write=True)  # the right secret is accepted ...

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-" + secret)  # ... a wrong one is refused (a bad signature)
    for args in (["sweep", str(sweep), "--results", results, "--local"], ["status", f"{results}/s3rt"]):
        line = one_line_error(args)
        assert line.startswith(f"error: results location {results}/s3rt: ")
        assert "ACCESS_DENIED" in line and "check the bucket name, the network and the AWS credentials" in line
    assert "Contents" not in s3.client(key_id=key_id, secret=secret).list_objects_v2(Bucket=s3.bucket)
