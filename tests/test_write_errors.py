"""A write the disk refuses mid-run (disk full, permission denied) stops with one line naming the file and the way
out, not a traceback, and leaves nothing half-written: a rerun with --resume goes on from what was finished."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayrs import storage as layout
from rayrs.cli import app
from rayrs.errors import UserError
from rayrs.storage import Storage

SWEEP = """
name: full
data: {dataset: digits}
model: {arch: wrn, depth: 10, width: 1}
train: {method: standard, epochs: 2, batch_size: 256}
eval: {train_subset: 16, test_subset: 16, attack: {steps: 1}}
"""


def disk_full_at(monkeypatch, ending: str) -> list[str]:
    """From now on, flushing a file whose path ends in ``ending`` fails as a full disk does (ENOSPC, at fsync:
    where a full disk surfaces for data the kernel buffered). Returns the list of paths refused so far."""
    real_fsync, refused = os.fsync, []

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.rsplit(".tmp-", 1)[0].endswith(ending):  # Storage writes through a temporary name
            refused.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return refused


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds a file descriptor's path through /proc")
def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    storage = Storage(tmp_path)
    storage.write_json("a/b.json", {"old": True})
    refused = disk_full_at(monkeypatch, "a/b.json")
    with pytest.raises(UserError) as caught:
        storage.write_json("a/b.json", {"new": True})
    assert refused
    assert str(caught.value) == (
        f"cannot write {tmp_path}/a/b.json (No space left on device); make room or fix the folder's permissions, then "
        "rerun: a sweep with --resume keeps everything it finished"
    )
    assert storage.read_json("a/b.json") == {"old": True}
    assert os.listdir(tmp_path / "a") == ["b.json"]  # the temporary file is gone


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds a file descriptor's path through /proc")
def test_a_full_disk_mid_sweep_is_one_line_and_resume_goes_on(tmp_path, monkeypatch):
    sweep = tmp_path / "full.yaml"
    sweep.write_text(SWEEP)
    results = tmp_path / "results"
    args = ["sweep", str(sweep), "--results", str(results), "--local", "--no-report"]
    second_epoch = layout.weights("trial", 2)
    refused = disk_full_at(monkeypatch, second_epoch)
    result = CliRunner().invoke(app, args, terminal_width=400)
    assert refused and result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]  # after the progress, one line
    assert lines[-1] == (
        f"error: cannot write {results / 'full' / second_epoch} (No space left on device); make room or fix the "
        "folder's permissions, then rerun: a sweep with --resume keeps everything it finished"
    )
    first = {rel: digest for rel, digest in tree(results / "full").items() if "epoch_0001" in rel}
    assert len(first) == 3 and not any(".tmp-" in rel for rel in tree(results / "full"))

    monkeypatch.undo()  # room made
    result = CliRunner().invoke(app, [*args, "--resume"], terminal_width=400)
    assert result.exit_code == 0, result.output
    after = tree(results / "full")
    kept = {rel: digest for rel, digest in first.items() if "optimizer" not in rel}
    assert {rel: after[rel] for rel in kept} == kept  # epoch 1 kept as it was, not trained again ...
    assert set(first) - set(kept) == {layout.optimizer_state("trial", 1)}  # ... but its optimiser state, which
    assert layout.optimizer_state("trial", 1) not in after  # checkpoint.optimizer: last drops once epoch 2 commits
    assert (results / "full" / layout.epoch_meta("trial", 2)).is_file()
