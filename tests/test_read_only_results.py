"""Reading results never writes them: `rayrs analyze RESULTS --out DIR` and `rayrs status` leave RESULTS as they were.

Issue 12, item 5: analyze wrote ``summary.parquet`` into the results, so it failed on a read-only copy.
"""

import hashlib
import os
import stat
from pathlib import Path

from typer.testing import CliRunner

import synthetic
from analysis.summary import SUMMARY
from rayrs.cli import app


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``root``: its content hash (files) and modification time."""
    return {
        str(path.relative_to(root)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir",
            path.stat().st_mtime_ns,
        )
        for path in sorted(root.rglob("*"))
    } | {".": ("dir", root.stat().st_mtime_ns)}


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (stat.S_IXUSR | stat.S_IXGRP if path.is_dir() else 0))


def test_analyze_renders_read_only_results_elsewhere_and_writes_nothing_into_them(tmp_path):
    results = tmp_path / "results"
    synthetic.write_results(results)
    make_read_only(results)  # as root (CI containers) permissions do not bite: the snapshot is the check
    before = snapshot(results)
    try:
        out = tmp_path / "report"
        result = CliRunner().invoke(app, ["analyze", str(results), "--out", str(out), "--format", "html"],
                                    terminal_width=400)
        assert result.exit_code == 0, result.output
        assert snapshot(results) == before
        assert (out / "index.html").exists() and (out / SUMMARY).exists()
    finally:
        for path in [results, *results.rglob("*")]:
            path.chmod(stat.S_IRWXU)


def test_status_writes_nothing(tmp_path):
    import json

    from rayrs import storage as layout
    from rayrs.storage import Storage

    root = tmp_path / "exp"
    Storage(root).write_json(layout.SWEEP_CONFIG, {"name": "exp", "data": {"dataset": "digits"},
                                                   "grid": {"eps": [0, 0.1]}, "compare": []})
    before = snapshot(root)
    result = CliRunner().invoke(app, ["status", str(root)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "trials: 0 done, 0 started, 2 pending" in result.output and "driver: none running" in result.output
    assert snapshot(root) == before
    assert json.loads((root / layout.SWEEP_CONFIG).read_text())["name"] == "exp"
    assert os.listdir(root) == [layout.SWEEP_CONFIG]
