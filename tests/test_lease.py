"""One driver per experiment (issue 12, item 3): a lease with host, pid and heartbeat, refused to a second driver.

Two `--resume` runs at once both trained every trial and computed every comparison job. The lease
(`rayrs.lease`) is created if absent, expires after a stale heartbeat, and is shown by `rayrs status`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from rayrs import lease as leases
from rayrs import storage as layout
from rayrs.cli import app
from rayrs.lease import Lease, LeaseHeld, LeaseLost, read_holder
from rayrs.storage import Storage


def test_a_second_lease_is_refused_naming_the_first_and_granted_once_it_is_given_back(tmp_path):
    storage = Storage(tmp_path / "exp")
    first = Lease(storage)
    first.acquire()
    try:
        with pytest.raises(LeaseHeld) as caught:
            Lease(storage).acquire()
        message = str(caught.value)
        assert "\n" not in message
        assert f"in use by another rayrs driver (host {socket.gethostname()}, pid {os.getpid()}, started" in message
        assert str(tmp_path / "exp" / layout.LEASE) in message
    finally:
        first.release()
    assert not (tmp_path / "exp" / layout.LEASE).exists()
    with Lease(storage):
        assert read_holder(storage).pid == os.getpid()


def test_of_two_drivers_starting_together_exactly_one_gets_the_lease(tmp_path):
    storage = Storage(tmp_path / "exp")
    start, won, refused = threading.Barrier(8), [], []

    def contend():
        lease = Lease(storage)
        start.wait()
        try:
            lease.acquire()
            won.append(lease)
        except LeaseHeld:
            refused.append(lease)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(refused) == 7
    assert read_holder(storage).token == won[0].token
    won[0].release()


def write_lease(storage: Storage, host: str, pid: int, machine: str, age: float) -> None:
    then = time.time() - age
    storage.write_json(layout.LEASE, {"token": "e" * 32, "host": host, "pid": pid, "machine": machine,
                                      "started": then - 100, "heartbeat": then})


def test_a_lease_without_a_heartbeat_for_the_expiry_is_taken_over(tmp_path):
    storage = Storage(tmp_path / "exp")
    write_lease(storage, "elsewhere", 4242, "elsewhere:boot", age=leases.EXPIRY_SECONDS - 5)
    with pytest.raises(LeaseHeld, match="host elsewhere, pid 4242"):
        Lease(storage).acquire()  # another machine, heard from 55 s ago: alive
    write_lease(storage, "elsewhere", 4242, "elsewhere:boot", age=leases.EXPIRY_SECONDS + 5)
    with Lease(storage) as lease:  # 65 s ago: stale
        assert read_holder(storage).token == lease.token
    assert sorted(os.listdir(tmp_path / "exp")) == []  # nothing left aside


def test_a_lease_of_a_process_gone_from_this_machine_is_taken_over_at_once(tmp_path):
    storage = Storage(tmp_path / "exp")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lease(storage, socket.gethostname(), int(gone.stdout), leases.this_machine(), age=0)  # e.g. a SIGKILL
    with Lease(storage) as lease:
        assert read_holder(storage).token == lease.token


def test_the_holder_renews_its_heartbeat_and_stops_once_another_driver_took_over(tmp_path):
    storage = Storage(tmp_path / "exp")
    lease = Lease(storage, heartbeat=0.05)
    lease.acquire()
    try:
        first = read_holder(storage).heartbeat
        deadline = time.monotonic() + 10
        while read_holder(storage).heartbeat == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read_holder(storage).heartbeat > first
        lease.check()  # still ours
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # Another driver took over (we looked stale to it) and renews its heartbeat in turn. (A renewal of
            # ours may land just after its write: then its own next renewal finds ours, and it stops instead.)
            write_lease(storage, "usurper", 7, "usurper:boot", age=0)
            try:
                lease.check()
            except LeaseLost as lost:
                assert "lost its lease (it is held by host usurper, pid 7" in str(lost)
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the holder never noticed the takeover")
    finally:
        lease.release()
    assert read_holder(storage).host == "usurper"  # giving back never deletes another driver's lease


@pytest.fixture
def bucket(monkeypatch):
    """An in-memory object store (pyarrow's mock filesystem, the S3 code path: no rename, no link)."""
    memory = pafs._MockFileSystem()
    monkeypatch.setattr(layout, "_KNOWN_SCHEMES", (*layout._KNOWN_SCHEMES, "mock"))
    monkeypatch.setattr(layout, "_filesystem_from_uri", lambda uri: (memory, uri.split("://", 1)[1].lstrip("/")))
    return Storage("mock:///bucket/results/exp")


def test_on_an_object_store_the_last_put_wins_and_the_other_driver_steps_back(bucket):
    first = Lease(bucket, settle=0.3)
    rival = Lease(bucket, settle=0.3)
    # The race a conditional PUT would prevent: both find no lease, both PUT. The rival PUTs while the first
    # waits to read back, so the first reads the rival's token and steps back.
    found_none = threading.Event()
    real_exists = bucket.exists

    def first_check(rel):
        result = real_exists(rel)
        found_none.set()
        return result

    outcome = {}

    def take_first():
        try:
            first.acquire()
            outcome["first"] = "held"
        except LeaseHeld as refused:
            outcome["first"] = str(refused)

    bucket.exists = first_check
    thread = threading.Thread(target=take_first)
    thread.start()
    found_none.wait(5)
    time.sleep(0.1)  # the first driver's PUT is done; it is waiting to read back
    bucket.exists = lambda rel: False if rel == layout.LEASE else real_exists(rel)  # the rival saw no lease either
    rival.acquire()
    bucket.exists = real_exists
    thread.join()
    try:
        assert read_holder(bucket).token == rival.token
        assert outcome["first"].startswith("mock:///bucket/results/exp is in use by another rayrs driver")
    finally:
        rival.release()
    assert read_holder(bucket) is None
    with Lease(bucket, settle=0.01) as lease:  # and a plain acquisition on the object store
        assert read_holder(bucket).token == lease.token
        with pytest.raises(LeaseHeld):
            Lease(bucket, settle=0.01).acquire()


def test_a_second_sweep_on_the_experiment_is_refused_in_one_line_and_status_shows_the_holder(finished_sweep, tmp_path):
    sweep_file, source = finished_sweep
    results = shutil.copytree(source, tmp_path / "results")
    root = results / "kept"
    # The first driver, on another machine, renewed its lease a moment ago (written as rayrs writes it, so that
    # this test also runs against code without leases, where the second driver went ahead).
    now = time.time()
    (root / "lease.json").write_text(json.dumps({"token": "a" * 32, "host": "gpu-head", "pid": 31337,
                                                 "machine": "gpu-head:boot", "started": now - 600, "heartbeat": now}))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    resumed = CliRunner().invoke(app, ["sweep", str(sweep_file), "--results", str(results), "--resume", "--local",
                                       "--no-report"], terminal_width=400)
    lines = resumed.stderr.strip().splitlines()
    assert resumed.exit_code == 1 and len(lines) == 1, resumed.output
    assert "is in use by another rayrs driver (host gpu-head, pid 31337, started" in lines[0]
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # the second wrote nothing
    status = CliRunner().invoke(app, ["status", str(root)], terminal_width=400)
    assert status.exit_code == 0, status.output
    assert "driver: host gpu-head, pid 31337, started" in " ".join(status.stdout.split())
