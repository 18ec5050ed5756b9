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
    similarity/<kind>/<job>.parquet              one file per comparison job (schema in rayrs.schema)
    probes/<probe>.safetensors                   cached probe inputs (e.g. adversarial examples)
    report/                                      figures, index.html and summary.parquet (numbers read off
                                                 the figures: block structure, convergence)
    lease.json                                   the driver running the sweep now (`rayrs.lease`)
    ray/                                         Ray Tune's own experiment state

Every file is written atomically: locally through a temporary name and a rename, on an object store in
one PUT (an object becomes visible only once complete). Nothing here is ever unpickled.

Nothing is written or deleted outside the root: every relative path is checked (no ``..``, no absolute
path, no empty part), and locally no symbolic link may lie between the root and the file, so what a write
or a delete touches is the path it names. A trial's name is a safe path component (`safe_name`), which
`trial_dir` checks again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrs.errors import UserError

SWEEP_CONFIG = "sweep.json"
METRICS = "metrics.parquet"
SUMMARY = "summary.parquet"  # inside the report folder, wherever the report goes
SIMILARITY_DIR = "similarity"
PROBES_DIR = "probes"
REPORT_DIR = "report"
RAY_DIR = "ray"
TRIALS_DIR = "trials"
LEASE = "lease.json"

MAX_NAME_LENGTH = 100  # a trial name's characters; a longer one ends in a hash of the whole (`safe_name`)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{8}$")  # `Storage.write_bytes`'s temporary names


def safe_name(text: str) -> str:
    """``text`` as a safe, bounded path component: the characters ``A-Za-z0-9_.-``, not starting with ``.``
    or ``-`` (so never ``.``, ``..``, a hidden file or an option), at most `MAX_NAME_LENGTH` characters.

    Other characters become ``_``; a longer text keeps its start and ends in ``-`` and 12 hex digits of its
    SHA-256, so two long texts stay apart. Two texts may still meet after sanitising (``a/b``, ``a_b``):
    `rayrs.config.expand` refuses a sweep whose trials would share a name.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
    name = re.sub(r"^[.-]", "_", name) or "_"
    name = name.replace(".tmp-", "_tmp-")
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        name = f"{name[: MAX_NAME_LENGTH - 13]}-{digest}"
    return name


def is_safe_name(name: str) -> bool:
    """Whether ``name`` is what `safe_name` makes: one path component that names nothing but itself."""
    return (
        isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and _SAFE_NAME.fullmatch(name) is not None
        and ".tmp-" not in name
    )


def trial_dir(trial: str) -> str:
    if not is_safe_name(trial):
        raise UserError(
            f"{trial!r} is not a trial name rayrs makes (letters, digits, _ . -, at most {MAX_NAME_LENGTH}); "
            "name trials through the sweep file's grid"
        )
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
        return f"{self._base}/{_relative(rel, self.root)}" if rel else self._base

    def _changeable(self, rel: str, action: str) -> str:
        """The full path of ``rel``, checked to be strictly inside the root before it is written or deleted.

        Besides `_relative`'s lexical check, a local path must not pass through a symbolic link below the
        root: the file changed is then the one named, never a link's target elsewhere (or another trial's).
        """
        if not rel:
            raise UserError(f"refusing to {action} the whole of {self.root}")
        target = self.full_path(rel)
        if self.is_local and os.path.realpath(target) != os.path.normpath(target):
            raise UserError(
                f"refusing to {action} {target}: a symbolic link inside {self.root} leads elsewhere; "
                "replace the link with a real folder (or link the whole results folder instead)"
            )
        return target

    def local_path(self, rel: str = "") -> Path:
        """A local `Path` to ``rel``; only for local storage (e.g. to hand a folder to a browser)."""
        if not self.is_local:
            raise ValueError(f"{self.root} is not a local folder")
        return Path(self.full_path(rel))

    def child(self, rel: str) -> Storage:
        """Storage rooted at a sub-folder, e.g. one experiment inside a results folder."""
        rel = _relative(rel, self.root)
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
        return sorted(i.base_name for i in self.filesystem.get_file_info(selector) if not _TEMPORARY.search(i.base_name))

    def list_files(self, rel: str, suffix: str = "") -> list[str]:
        """Relative paths of all files below ``rel`` ending in ``suffix`` (recursive, sorted)."""
        selector = pafs.FileSelector(self.full_path(rel), recursive=True, allow_not_found=True)
        prefix = self._base + "/"
        return sorted(
            i.path.removeprefix(prefix)
            for i in self.filesystem.get_file_info(selector)
            if i.type == pafs.FileType.File and i.path.endswith(suffix) and not _TEMPORARY.search(i.base_name)
        )

    # -- bytes -----------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` so that readers see either the old file, or all of the new one."""
        target = self._changeable(rel, "write")
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

    def create_new(self, rel: str, data: bytes) -> bool:
        """Write ``data`` at ``rel`` only if nothing is there; returns whether this call created it.

        Locally (and on NFS) this is atomic: a complete temporary file is hard-linked to ``rel``, which fails
        if ``rel`` exists, so of two callers exactly one creates it. An object store has no conditional PUT:
        this checks, then PUTs, and two callers can both succeed; `rayrs.lease` reads back to settle that.
        """
        target = self._changeable(rel, "write")
        if not self.is_local:
            if self.exists(rel):
                return False
            self.write_bytes(rel, data)
            return True
        self.filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        temporary = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, target)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)

    def rename(self, rel: str, new_rel: str) -> bool:
        """Move the file ``rel`` to ``new_rel`` (replacing it); False if ``rel`` was not there.

        Atomic locally, so of two callers renaming the same file exactly one succeeds; on an object store a
        copy and a delete.
        """
        source, target = self._changeable(rel, "move"), self._changeable(new_rel, "write")
        try:
            if self.is_local:
                os.replace(source, target)
            else:
                self.filesystem.move(source, target)
        except FileNotFoundError:
            return False
        return True

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of ``rel``; a missing file is a `MissingFile` (a user error naming it and the way out)."""
        try:
            with self.filesystem.open_input_stream(self.full_path(rel)) as stream:
                return stream.read()
        except FileNotFoundError:
            raise MissingFile(f"{self.full_path(rel)} is missing; {way_out(rel)}") from None

    def delete_dir(self, rel: str) -> None:
        """Delete the folder ``rel`` and everything in it; only ever a folder strictly inside the root."""
        target = self._changeable(rel, "delete")
        if self.exists(rel):
            self.filesystem.delete_dir(target)

    def delete_file(self, rel: str) -> None:
        target = self._changeable(rel, "delete")
        if self.exists(rel):
            self.filesystem.delete_file(target)

    # -- typed files -----------------------------------------------------------------------------
    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, rel: str) -> Any:
        try:
            return json.loads(self.read_bytes(rel))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DamagedFile(f"{self.full_path(rel)} is not valid JSON ({error}); {way_out(rel)}") from None

    def write_table(self, rel: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.write_bytes(rel, buffer.getvalue())

    def read_table(self, rel: str) -> pa.Table:
        try:
            return pq.read_table(io.BytesIO(self.read_bytes(rel)))
        except pa.ArrowInvalid as error:
            raise DamagedFile(f"{self.full_path(rel)} is not a readable Parquet file ({error}); {way_out(rel)}") from None


class DamagedFile(UserError):
    """A results file that exists but cannot be read as what it should be; the message names it and the way out."""


class MissingFile(UserError):
    """A results file that should be there and is not; the message names it and the way out."""


def _relative(rel: str, root: str) -> str:
    """``rel`` itself, once checked to name a path inside the root: relative, with no empty, ``.`` or ``..``
    part (``a/../..``, ``/etc``, ``a//b`` are refused as a `UserError`)."""
    if not isinstance(rel, str) or rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
        raise UserError(f"refusing the path {rel!r}: it does not stay inside {root}")
    return rel


def way_out(rel: str) -> str:
    """What a person does about a damaged or missing file at ``rel``, by its place in the layout."""
    parts = rel.split("/")
    if parts[0] == TRIALS_DIR and len(parts) > 1:
        return f"rerun the sweep with --redo {parts[1]} to retrain that trial (and redo its comparisons)"
    return _WAYS_OUT.get(parts[0], "delete it to redo that step")


_WAYS_OUT = {
    SWEEP_CONFIG: "rerun `rayrs sweep` on the sweep file with --resume to write it again",
    METRICS: "rerun the sweep with --resume to rebuild it from the checkpoints",
    SIMILARITY_DIR: "delete it and rerun the sweep with --resume to recompute that comparison",
    PROBES_DIR: "delete it; the sweep crafts that probe again",
    REPORT_DIR: "delete it and rerun `rayrs analyze` to draw the report again",
    LEASE: "delete it if no rayrs driver is running on this experiment",
}
