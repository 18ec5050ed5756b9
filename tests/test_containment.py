"""Every path rayrs writes or deletes resolves inside the experiment folder (issue 12, "make the class impossible").

A sweep with hostile trial names (a grid value ``..``), a ``--redo`` of one of them, `rayrs status` and
`rayrs analyze` (into the report folder, its default) run in one process while two recorders watch: Python's
audit hooks (every file opened for writing, renamed, linked, removed, every folder made or removed, from any
library) and a recording wrapper of pyarrow's local filesystem (the C++ calls `rayrs.storage.Storage` makes,
which Python's hooks do not see). Every path either names must resolve inside the experiment folder; a
neighbouring experiment and a file next to the results are untouched. The same record shows that every file
is written atomically (the README's promise): under a temporary name, then moved into place.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from rayrs.cli import app

SWEEP = """
name: contained
data: {dataset: digits}
model: {arch: wrn, depth: 10, width: 1}
train: {method: standard, epochs: 1, batch_size: 256}
eval: {eps: 0.1, attack: {steps: 1}, train_subset: 16, test_subset: 16}
grid: [{data.root: [".."]}, {seed: [1]}]          # the first trial was named ".." once: trials/.. is the experiment
compare: [{kind: cross_layer}, {kind: benign_vs_adversarial}]
cka: {probe_size: 32, batch_size: 32, passes: 1}
"""

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_CHANGING_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.link", "os.symlink",
                    "os.truncate", "shutil.move", "shutil.copyfile", "os.chmod", "os.utime"}
_touched: list[tuple[str, str]] | None = None  # (what, path) while a test records; None otherwise


def _audit(event: str, args: tuple) -> None:
    if _touched is None:
        return
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (mode is None and flags & _WRITE_FLAGS)
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            _touched.append((event, os.fsdecode(path)))
    elif event in _CHANGING_EVENTS:
        for arg in args[:2]:
            if isinstance(arg, (str, bytes, os.PathLike)):
                _touched.append((event, os.fsdecode(arg)))


sys.addaudithook(_audit)  # hooks cannot be removed: this one records only while `_touched` is a list

_PYARROW_CHANGES = ("create_dir", "delete_dir", "delete_dir_contents", "delete_file", "move", "copy_file",
                    "open_output_stream", "open_append_stream")


class _RecordingFileSystem:
    """pyarrow's LocalFileSystem, recording the paths of the calls that change anything."""

    def __init__(self, *args, **kwargs):
        self._filesystem = _REAL_LOCAL(*args, **kwargs)

    def __getattr__(self, name):
        attribute = getattr(self._filesystem, name)
        if name not in _PYARROW_CHANGES:
            return attribute

        def recorded(*args, **kwargs):
            for arg in args[:2]:
                if isinstance(arg, str) and _touched is not None:
                    _touched.append((f"pyarrow.{name}", arg))
            return attribute(*args, **kwargs)

        return recorded


_REAL_LOCAL = pafs.LocalFileSystem


_DELETES = {"os.remove", "os.rmdir", "shutil.rmtree", "pyarrow.delete_dir", "pyarrow.delete_dir_contents",
            "pyarrow.delete_file"}


def inside(path: str, folder: Path, strictly: bool = False) -> bool:
    """Whether ``path`` resolves inside ``folder`` (or is ``folder`` itself, unless ``strictly``: a delete)."""
    resolved = os.path.realpath(path)
    return (resolved == str(folder) and not strictly) or resolved.startswith(str(folder) + os.sep)


def tree(root: Path, skip: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if not inside(str(p), skip)}


def test_every_path_rayrs_writes_or_deletes_resolves_inside_the_experiment_folder(tmp_path, monkeypatch):
    global _touched
    sweep = tmp_path / "contained.yaml"
    sweep.write_text(SWEEP)
    results = tmp_path / "results"
    experiment = (results / "contained").resolve()
    (results / "neighbour" / "trials" / "x").mkdir(parents=True)  # another experiment, next door
    (results / "neighbour" / "sweep.json").write_text("{}")
    (tmp_path / "precious.txt").write_text("keep me")
    before = tree(tmp_path, skip=experiment)
    monkeypatch.setattr(pafs, "LocalFileSystem", _RecordingFileSystem)
    from rayrs.config import expand, load_experiment

    first = expand(load_experiment(sweep))[0].name  # the trial of data.root "..": named "_." (it was "..")
    runner = CliRunner()
    _touched = []
    try:
        commands = [
            ["sweep", str(sweep), "--results", str(results), "--local", "--no-report"],
            ["sweep", str(sweep), "--results", str(results), "--local", "--no-report", "--redo", first],
            ["status", str(experiment)],
            ["analyze", str(experiment), "--format", "html"],
        ]
        for command in commands:
            result = runner.invoke(app, command, terminal_width=300)
            assert result.exit_code == 0, (command, result.output)
        touched = list(_touched)
    finally:
        _touched = None
    assert any(what == "pyarrow.delete_dir" for what, _ in touched)  # the recorders saw --redo's delete ...
    assert any(path.endswith(".safetensors") for _, path in touched)  # ... and the checkpoints written
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    # Not results: Python's bytecode caches, /dev/null, and torch's compile cache folder, which importing
    # torch._dynamo makes (os.makedirs(..., exist_ok=True)) whoever imports it.
    libraries = [Path(cache_dir()).resolve()]
    outside = sorted({(what, path) for what, path in touched
                      if not inside(path, experiment, strictly=what in _DELETES) and "__pycache__" not in path
                      and path != os.devnull and not any(inside(path, library) for library in libraries)})
    assert outside == []
    assert tree(tmp_path, skip=experiment) == before
    # And every file is written atomically: opened for writing only under a temporary name (then renamed or
    # linked into place: `Storage.write_bytes`, `Storage.create_new`), never in place.
    in_place = sorted({path for what, path in touched if what in ("open", "pyarrow.open_output_stream",
                                                                   "pyarrow.open_append_stream")
                       and inside(path, experiment) and not re.search(r"\.tmp-[0-9a-f]{8}$", path)})
    assert in_place == []
    assert any(what == "open" and re.search(r"\.tmp-[0-9a-f]{8}$", path) for what, path in touched)  # it sees them
    assert sorted(p.name for p in (experiment / "trials").iterdir()) == ["_.", "seed1"]


@pytest.mark.parametrize("rel", ["..", "../x", "a/../../x", "/tmp/x", "a//b", "./a", ""])
def test_storage_refuses_every_relative_path_that_escapes_its_root(tmp_path, rel):
    from rayrs.errors import UserError
    from rayrs.storage import Storage

    storage = Storage(tmp_path / "root")
    for change in (lambda: storage.write_bytes(rel, b"x"), lambda: storage.delete_file(rel),
                   lambda: storage.delete_dir(rel), lambda: storage.create_new(rel, b"x"),
                   lambda: storage.rename("a", rel)):
        with pytest.raises(UserError):
            change()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even the root was made
