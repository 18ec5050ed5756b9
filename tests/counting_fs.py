"""An object store on this machine whose requests are counted: pyarrow's in-memory filesystem behind a handler
that counts each call by kind, for tests and benchmarks that pin how many requests a reader makes.

    listings   get_file_info(FileSelector): one LIST (paginated by 1,000 keys on S3)
    infos      get_file_info(path): one HEAD per path
    reads      open_input_stream / open_input_file: one GET
    writes     open_output_stream: one PUT

`object_store(monkeypatch)` makes ``mock:///...`` URIs open it, as `tests/test_storage.py` does for the plain
in-memory filesystem; `copy_tree` puts a local results folder into it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.fs as pafs


class CountingHandler(pafs.FileSystemHandler):
    """Every call forwarded to ``inner``, counted in ``calls`` (a `Counter` of the kinds above)."""

    def __init__(self, inner: pafs.FileSystem):
        self.inner, self.calls = inner, Counter()

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path):
        return self.inner.normalize_path(path)

    def get_file_info(self, paths):
        self.calls["infos"] += len(paths)
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector):
        self.calls["listings"] += 1
        return self.inner.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.inner.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.inner.delete_file(path)

    def move(self, src, dest):
        self.inner.move(src, dest)

    def copy_file(self, src, dest):
        self.inner.copy_file(src, dest)

    def open_input_stream(self, path):
        self.calls["reads"] += 1
        return self.inner.open_input_stream(path)

    def open_input_file(self, path):
        self.calls["reads"] += 1
        return self.inner.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self.calls["writes"] += 1
        return self.inner.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.inner.open_append_stream(path, metadata=metadata)


def object_store(monkeypatch) -> CountingHandler:
    """A fresh counted in-memory store that ``mock:///...`` URIs open (for the test's duration)."""
    from rayrs import storage as layout

    handler = CountingHandler(pafs._MockFileSystem())
    filesystem = pafs.PyFileSystem(handler)
    monkeypatch.setattr(layout, "_KNOWN_SCHEMES", (*layout._KNOWN_SCHEMES, "mock"))
    monkeypatch.setattr(layout, "_filesystem_from_uri", lambda uri: (filesystem, uri.split("://", 1)[1].lstrip("/")))
    return handler


def copy_tree(folder: Path, handler: CountingHandler, prefix: str) -> None:
    """Every file under the local ``folder`` into the store at ``prefix`` (not counted)."""
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        target = f"{prefix}/{path.relative_to(folder).as_posix()}"
        handler.inner.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with handler.inner.open_output_stream(target) as out:
            out.write(path.read_bytes())
