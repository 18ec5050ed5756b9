"""Where every result lives, and how it is written so that nothing half-written is ever read.

One experiment's results sit under one root: a local folder (``results/<experiment>``) or any pyarrow
filesystem URI (``s3://bucket/prefix/<experiment>``) that every node of a cluster can reach. The layout,
relative to that root, is defined here and nowhere else::

    sweep.json                                   the validated sweep, as run (resume checks it)
    trials/<trial>/trial.json                    the trial's full parameters
    trials/<trial>/epoch_<eeee>/model.safetensors       weights after epoch e (e = 1..epochs)
    trials/<trial>/epoch_<eeee>/optimizer.safetensors   optimiser state, so training resumes exactly
    trials/<trial>/epoch_<eeee>/meta.json               epoch, metrics, parameters; written LAST:
                                                        an epoch exists iff its meta.json does
    metrics.parquet                              one row per trial x epoch (built from the meta.json files)
    summary.parquet                              numbers read off the figures (block structure, convergence)
    similarity/<kind>/<job>.parquet              one file per comparison job (schema in rayrs.schema)
    probes/<probe>.safetensors                   cached probe inputs (e.g. adversarial examples)
    report/                                      figures and index.html
    ray/                                         Ray Tune's own experiment state

Every file is written atomically: locally through a temporary name and a rename, on an object store in
one PUT (an object becomes visible only once complete). Nothing here is ever unpickled.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrs.errors import UserError

SWEEP_CONFIG = "sweep.json"
METRICS = "metrics.parquet"
SUMMARY = "summary.parquet"
SIMILARITY_DIR = "similarity"
PROBES_DIR = "probes"
REPORT_DIR = "report"
RAY_DIR = "ray"
TRIALS_DIR = "trials"


def trial_dir(trial: str) -> str:
    return f"{TRIALS_DIR}/{trial}"


def trial_spec(trial: str) -> str:
    return f"{trial_dir(trial)}/trial.json"


def epoch_dir(trial: str, epoch: int) -> str:
    return f"{trial_dir(trial)}/epoch_{epoch:04d}"


def weights(trial: str, epoch: int) -> str:
    return f"{epoch_dir(trial, epoch)}/model.safetensors"


def optimizer_state(trial: str, epoch: int) -> str:
    return f"{epoch_dir(trial, epoch)}/optimizer.safetensors"


def epoch_meta(trial: str, epoch: int) -> str:
    """The commit marker of an epoch's checkpoint: written after the weights, so its presence means complete."""
    return f"{epoch_dir(trial, epoch)}/meta.json"


def similarity(kind: str, job: str) -> str:
    return f"{SIMILARITY_DIR}/{kind}/{job}.parquet"


def probe(probe_id: str) -> str:
    return f"{PROBES_DIR}/{probe_id}.safetensors"


_KNOWN_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az")


def _filesystem_from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a URI and the path inside it (credentials from the environment, as for S3)."""
    return pafs.FileSystem.from_uri(uri)


class Storage:
    """Atomic reads and writes of files under one root folder or filesystem URI.

    Paths given to the methods are relative to the root and use ``/``.
    """

    def __init__(self, root: str | os.PathLike[str]):
        root = str(root)
        scheme = root.split("://", 1)[0] if "://" in root else ""
        if scheme and scheme not in _KNOWN_SCHEMES:
            raise UserError(
                f"results location {root!r}: unknown storage scheme '{scheme}://'; "
                f"use a local folder or one of {', '.join(s + '://' for s in _KNOWN_SCHEMES)}"
            )
        if scheme and scheme != "file":
            self.filesystem, base = _filesystem_from_uri(root)
            self.is_local = False
        else:
            local = Path(root.removeprefix("file://")).expanduser().resolve()
            if local.exists() and not local.is_dir():
                raise UserError(f"results location {local} is a file, not a folder; choose a folder path")
            self.filesystem, base = pafs.LocalFileSystem(), str(local)
            self.is_local = True
        self.root = root if not self.is_local else base
        self._base = base.rstrip("/")

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def __reduce__(self):
        # Ray ships a Storage to workers by its root; each process opens its own filesystem handle.
        return (Storage, (self.root,))

    def full_path(self, rel: str) -> str:
        """The filesystem path of ``rel`` (a local absolute path when the storage is local)."""
        return f"{self._base}/{rel}" if rel else self._base

    def local_path(self, rel: str = "") -> Path:
        """A local `Path` to ``rel``; only for local storage (e.g. to hand a folder to a browser)."""
        if not self.is_local:
            raise ValueError(f"{self.root} is not a local folder")
        return Path(self.full_path(rel))

    def child(self, rel: str) -> Storage:
        """Storage rooted at a sub-folder, e.g. one experiment inside a results folder."""
        return Storage(self.full_path(rel) if self.is_local else f"{self.root.rstrip('/')}/{rel}")

    # -- queries ---------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.filesystem.get_file_info(self.full_path(rel)).type != pafs.FileType.NotFound

    def list_dir(self, rel: str = "") -> list[str]:
        """Names of the entries directly inside ``rel`` (sorted; empty when it does not exist)."""
        info = self.filesystem.get_file_info(self.full_path(rel))
        if info.type != pafs.FileType.Directory:
            return []
        selector = pafs.FileSelector(self.full_path(rel), allow_not_found=True)
        return sorted(i.base_name for i in self.filesystem.get_file_info(selector) if ".tmp-" not in i.base_name)

    def list_files(self, rel: str, suffix: str = "") -> list[str]:
        """Relative paths of all files below ``rel`` ending in ``suffix`` (recursive, sorted)."""
        selector = pafs.FileSelector(self.full_path(rel), recursive=True, allow_not_found=True)
        prefix = self._base + "/"
        return sorted(
            i.path.removeprefix(prefix)
            for i in self.filesystem.get_file_info(selector)
            if i.type == pafs.FileType.File and i.path.endswith(suffix) and ".tmp-" not in i.base_name
        )

    # -- bytes -----------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` so that readers see either the old file, or all of the new one."""
        target = self.full_path(rel)
        parent = target.rsplit("/", 1)[0]
        self.filesystem.create_dir(parent, recursive=True)
        if not self.is_local:
            # An object store publishes an object only when its upload completes.
            with self.filesystem.open_output_stream(target) as out:
                out.write(data)
            return
        temporary = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)

    def read_bytes(self, rel: str) -> bytes:
        with self.filesystem.open_input_stream(self.full_path(rel)) as stream:
            return stream.read()

    def delete_dir(self, rel: str) -> None:
        if self.exists(rel):
            self.filesystem.delete_dir(self.full_path(rel))

    def delete_file(self, rel: str) -> None:
        if self.exists(rel):
            self.filesystem.delete_file(self.full_path(rel))

    # -- typed files -----------------------------------------------------------------------------
    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, rel: str) -> Any:
        try:
            return json.loads(self.read_bytes(rel))
        except json.JSONDecodeError as error:
            raise UserError(f"{self.full_path(rel)} is not valid JSON ({error}); delete it to redo that step") from None

    def write_table(self, rel: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.write_bytes(rel, buffer.getvalue())

    def read_table(self, rel: str) -> pa.Table:
        try:
            return pq.read_table(io.BytesIO(self.read_bytes(rel)))
        except pa.ArrowInvalid as error:
            raise UserError(f"{self.full_path(rel)} is not a readable Parquet file ({error}); delete it to recompute it") from None
