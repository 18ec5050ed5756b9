"""Where every result lives, and how it is written so that nothing half-written is ever read.

One experiment's results sit under one root: a local folder (``results/<experiment>``) or any pyarrow
filesystem URI (``s3://bucket/prefix/<experiment>``) that every node of a cluster can reach. The layout,
relative to that root, is defined here and nowhere else::

    sweep.json                                   the validated sweep, as run (resume checks it)
    models.json                                  the sweep's `models:` entries, their files' SHA-256 (rayrs.entries)
    trials/<trial>/trial.json                    the trial's full parameters
    trials/<trial>/epoch_<eeee>/model.safetensors       weights after epoch e (e = 1..epochs)
    trials/<trial>/epoch_<eeee>/optimizer.safetensors   resume state, so training resumes exactly; by default
                                                        the latest epoch's only (`rayrs.checkpoint`)
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

A location is parsed once (`parse_location`), with a URI's options kept apart from its path:
``s3://bucket/prefix?region=eu-west-1`` holds experiment ``exp`` at ``s3://bucket/prefix/exp?region=eu-west-1``.
`Storage.check` asks a remote store one question, given up after `DOOR_SECONDS`, so that an unreachable or
misconfigured location is one line before anything runs.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import io
import json
import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrs.errors import UserError

SWEEP_CONFIG = "sweep.json"
METRICS = "metrics.parquet"
MODELS = "models.json"  # the sweep's model entries (`rayrs.entries`): settings, weights files and their digests
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
# The options a results URI may carry after "?", for the stores rayrs opens itself (pyarrow's keyword arguments
# of the same names); hdfs, viewfs and Azure URIs go to pyarrow's FileSystem.from_uri as written.
_URI_OPTIONS = {
    "s3": ("region", "endpoint_override", "scheme", "anonymous", "connect_timeout", "request_timeout",
           "force_virtual_addressing"),
    "gs": ("anonymous", "endpoint_override", "scheme", "project_id", "retry_time_limit"),
}
_URI_OPTIONS["gcs"] = _URI_OPTIONS["gs"]
DOOR_SECONDS = 8.0  # how long a remote store may take to answer the first question before rayrs gives up on it
_WAY_OUT = {
    "s3": "check the bucket name, the network and the AWS credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE or an "
          "instance profile), or add ?region=REGION (or ?endpoint_override=HOST:PORT for an S3-compatible store)",
    "gs": "check the bucket name, the network and the Google credentials: set GOOGLE_APPLICATION_CREDENTIALS to a "
          "service-account key file (or run `gcloud auth application-default login`), or add ?anonymous=true for a "
          "public bucket",
    "hdfs": "hdfs:// needs Hadoop's libhdfs and a Java runtime on every node (JAVA_HOME, HADOOP_HOME, "
            "CLASSPATH=$(hadoop classpath --glob)); or use s3:// or a folder every node mounts",
}
_WAY_OUT.update({"gcs": _WAY_OUT["gs"], "viewfs": _WAY_OUT["hdfs"]})
_MAKE_BUCKET = {"s3": "aws s3 mb s3://{bucket}", "gs": "gcloud storage buckets create gs://{bucket}"}
_MAKE_BUCKET["gcs"] = _MAKE_BUCKET["gs"]


@dataclass(frozen=True)
class Location:
    """A results location, parsed once (`parse_location`): a local folder, or a URI with its options kept apart.

    ``path`` is an absolute local path, or for a URI what follows ``scheme://`` up to the query
    (``bucket/prefix``); ``query`` is the URI's query as written, without the ``?``.
    """

    scheme: str  # "" for a local folder
    path: str
    query: str = ""

    @property
    def is_local(self) -> bool:
        return not self.scheme

    def __str__(self) -> str:
        if self.is_local:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def child(self, rel: str) -> Location:
        """The location of ``rel`` inside this one: ``s3://b/p?region=r`` -> ``s3://b/p/rel?region=r``."""
        return replace(self, path=f"{self.path.rstrip('/')}/{rel}")

    def options(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))


def parse_location(root: str | os.PathLike[str]) -> Location:
    """A results location as a user types it; a form that could mean two things is refused in one line.

    ``results``, ``~/results``, ``/data/results``: a local folder (relative to the working directory).
    ``file:///data/results`` (or ``file://localhost/data/results``): the local folder /data/results; ``file://data/x``
    would name a host ``data`` and is refused. ``s3://bucket/prefix?region=eu-west-1``: an object store, with
    pyarrow's options after ``?`` (`_URI_OPTIONS`); the query stays out of the path, so an experiment's folder is
    ``s3://bucket/prefix/<name>?region=eu-west-1``.
    """
    text = os.fspath(root)
    if not text:
        raise UserError("results location is empty; give a folder such as results, or a URI such as s3://bucket/prefix")
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):(//)?", text)
    scheme = match[1].lower() if match else ""
    if not match or (not match[2] and scheme not in _KNOWN_SCHEMES):  # a folder, even one named like "run:1"
        return Location("", str(Path(text).expanduser().resolve()))
    if scheme not in _KNOWN_SCHEMES:
        raise UserError(
            f"results location {text!r}: unknown storage scheme '{scheme}://'; "
            f"use a local folder or one of {', '.join(s + '://' for s in _KNOWN_SCHEMES)}"
        )
    if not match[2]:
        rest = text[len(scheme) + 1 :].lstrip("/")
        example = f"file:///{rest}" if scheme == "file" else f"{scheme}://{rest}"
        raise UserError(f"results location {text!r}: write {scheme}:// with two slashes, e.g. {example}")
    parts = urlsplit(text)
    if parts.fragment or text.endswith("#"):
        raise UserError(f"results location {text!r}: '#' starts a URI fragment, which a storage location cannot have; remove it")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            rest = f"{parts.netloc}{parts.path}"
            raise UserError(
                f"results location {text!r} names the host {parts.netloc!r}; for the folder /{rest} write "
                f"file:///{rest}, for {rest} under the working directory write {rest}"
            )
        if parts.query:
            raise UserError(f"results location {text!r}: a local folder takes no ?options; remove ?{parts.query}")
        return Location("", str(Path(unquote(parts.path) or "/").resolve()))
    if scheme in _URI_OPTIONS and not parts.netloc:
        raise UserError(f"results location {text!r} names no bucket; write {scheme}://BUCKET/prefix")
    inside = parts.path.removeprefix("/").rstrip("/")
    segments = inside.split("/") if inside else []
    if any(segment in ("", ".", "..") for segment in segments):
        raise UserError(f"results location {text!r}: empty, '.' or '..' path segments are not allowed in a URI; write the plain path")
    allowed = _URI_OPTIONS.get(scheme)
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if allowed is not None and key not in allowed:
            raise UserError(f"results location {text!r}: unknown option {key!r} for {scheme}://; allowed: {', '.join(allowed)}")
    return Location(scheme, parts.netloc + parts.path.rstrip("/"), parts.query)


def _filesystem_from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a URI and the path inside it (credentials from the environment, as for S3).

    S3 and GCS filesystems are built here from the parsed options; other schemes go to pyarrow's own parser.
    A store pyarrow cannot open (no libhdfs, no JVM, a malformed option) is a one-line `UserError`.
    """
    location = parse_location(uri)
    options = location.options()
    try:
        if location.scheme == "s3":
            return _s3_filesystem(location, options), location.path
        if location.scheme in ("gs", "gcs"):
            return _gcs_filesystem(options), location.path
        return pafs.FileSystem.from_uri(str(location))
    except (OSError, ValueError, pa.ArrowException) as error:
        way_out = _WAY_OUT.get(location.scheme, "check the URI and the network")
        raise UserError(f"results location {uri}: cannot open it ({_first_line(error)}); {way_out}") from None


def _flag(options: dict[str, str], key: str) -> bool | None:
    if key not in options:
        return None
    value = options[key].lower()
    if value not in ("true", "false", "1", "0"):
        raise ValueError(f"?{key}= takes true or false, got {options[key]!r}")
    return value in ("true", "1")


def _seconds(options: dict[str, str], key: str) -> float | None:
    if key not in options:
        return None
    try:
        value = float(options[key])
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"?{key}= takes a positive number of seconds, got {options[key]!r}")
    return value


def _s3_filesystem(location: Location, options: dict[str, str]) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem for ``location``: the URI's options first, then the AWS environment.

    Writes: an object smaller than one upload part (checkpoints, JSON, Parquet) goes up in one PutObject
    (``allow_delayed_open``); a larger one as a multipart upload. S3 makes either visible only once complete
    (a multipart upload on CompleteMultipartUpload, which `write_bytes` reaches when it closes the stream), so a
    reader sees no object or all of it; a writer killed mid-upload leaves an invisible, unfinished upload
    (a bucket lifecycle rule AbortIncompleteMultipartUpload deletes those).
    """
    # The endpoint of an S3-compatible store (MinIO, Ceph, moto) as the AWS CLI and SDKs read it. pyarrow reads
    # AWS_ENDPOINT_URL(_S3) only in FileSystem.from_uri (pyarrow >= 15; Ray Tune opens its storage_path so), not
    # in the S3FileSystem constructor used here (apache/arrow#49643, still so in pyarrow 26), so rayrs reads it.
    # ``http://host:port`` selects plain HTTP, as it does for the AWS CLI.
    endpoint = options.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {
        "region": options.get("region"),
        "endpoint_override": endpoint or None,
        "scheme": options.get("scheme"),
        "anonymous": _flag(options, "anonymous"),
        "connect_timeout": _seconds(options, "connect_timeout"),
        "request_timeout": _seconds(options, "request_timeout"),
        "force_virtual_addressing": _flag(options, "force_virtual_addressing"),
        "allow_delayed_open": True,  # small objects in one PUT (see above); errors surface at close, where we wait
    }
    region_known = kwargs["region"] or kwargs["endpoint_override"] or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region_known:  # as pyarrow's from_uri does: ask where the bucket is, but give up after DOOR_SECONDS
        bucket = location.path.split("/", 1)[0]
        try:
            kwargs["region"] = _within(DOOR_SECONDS, partial(_bucket_region, bucket))
        except TimeoutError:
            raise OSError(f"no answer within {DOOR_SECONDS:g} s to the question of bucket {bucket!r}'s region") from None
    return pafs.S3FileSystem(**{key: value for key, value in kwargs.items() if value is not None})


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str:
    return pafs.resolve_s3_region(bucket)


def _gcs_filesystem(options: dict[str, str]) -> pafs.GcsFileSystem:
    retry = _seconds(options, "retry_time_limit")
    kwargs = {
        "anonymous": _flag(options, "anonymous"),
        "endpoint_override": options.get("endpoint_override"),
        "scheme": options.get("scheme"),
        "project_id": options.get("project_id"),
        "retry_time_limit": None if retry is None else datetime.timedelta(seconds=retry),
    }
    return pafs.GcsFileSystem(**{key: value for key, value in kwargs.items() if value is not None})


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``, given up after ``seconds`` with `TimeoutError` (a cloud SDK may retry for minutes).

    The call runs in a daemon thread: one that never returns is left behind and does not keep the process alive.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread below
            outcome["error"] = error

    thread = threading.Thread(target=run, name="rayrs-storage-door", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _first_line(error: BaseException) -> str:
    """An SDK's error in one short line (S3 and GCS errors run to several lines and hundreds of characters)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 240 else text[:237] + "..."


class Storage:
    """Atomic reads and writes of files under one root folder or filesystem URI.

    Paths given to the methods are relative to the root and use ``/``.
    """

    def __init__(self, root: str | os.PathLike[str] | Location):
        self.location = root if isinstance(root, Location) else parse_location(root)
        self.is_local = self.location.is_local
        if self.is_local:
            existing = Path(self.location.path)
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                where = "is a file" if existing == Path(self.location.path) else f"is under {existing}, a file"
                raise UserError(f"results location {self.location.path} {where}, not a folder; choose a folder path")
            self.filesystem, base = pafs.LocalFileSystem(), self.location.path
        else:
            self.filesystem, base = _filesystem_from_uri(str(self.location))
        self.root = str(self.location)
        self._base = base.rstrip("/")

    def check(self, write: bool = False) -> None:
        """Fail now, in one line, if this location cannot be used: a local folder that cannot be written (with
        ``write``), or a remote store that does not answer within `DOOR_SECONDS` (network, credentials, bucket)."""
        if self.is_local:
            existing = Path(self._base)
            while not existing.exists():
                existing = existing.parent
            if write and not os.access(existing, os.W_OK | os.X_OK):
                raise UserError(
                    f"results location {self.root}: cannot write in {existing} (permission denied); "
                    "choose a folder you can write to with --results DIR"
                )
            return
        try:
            info, bucket_info = _within(DOOR_SECONDS, self._ask_location)
        except TimeoutError:
            way_out = _WAY_OUT.get(self.location.scheme, "check the URI and the network")
            raise UserError(f"results location {self.root}: no answer within {DOOR_SECONDS:g} s; {way_out}") from None
        except (OSError, pa.ArrowException) as error:
            way_out = _WAY_OUT.get(self.location.scheme, "check the URI and the network")
            raise UserError(f"results location {self.root}: {_first_line(error)}; {way_out}") from None
        if bucket_info is not None and bucket_info.type == pafs.FileType.NotFound:
            bucket = bucket_info.path
            raise UserError(
                f"results location {self.root}: bucket {bucket!r} does not exist; check its name, or create it "
                f"({_MAKE_BUCKET[self.location.scheme].format(bucket=bucket)}) and run again"
            )
        if info.type == pafs.FileType.File:
            raise UserError(f"results location {self.root} is a file, not a folder; choose a folder path")

    def _ask_location(self) -> tuple[pafs.FileInfo, pafs.FileInfo | None]:
        """What the store says of the root, and of its bucket when the root is not found (else None).

        An object store answers "not found" for a path in a bucket that does not exist as for a path not yet
        written, and the first write would fail; so then the bucket is asked too (S3: one HeadBucket). A refusal
        of that question is no answer (a policy may allow listing under a prefix only): None.
        """
        info = self.filesystem.get_file_info(self._base)
        if info.type != pafs.FileType.NotFound or self.location.scheme not in _URI_OPTIONS:
            return info, None
        try:
            return info, self.filesystem.get_file_info(self._base.split("/", 1)[0])
        except (OSError, pa.ArrowException):
            return info, None

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
        return Storage(self.location.child(_relative(rel, self.root)))

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
        """Write ``data`` so that readers see either the old file, or all of the new one.

        A write the filesystem refuses (disk full, permission denied) is a `WriteFailed` naming the file.
        """
        target = self._changeable(rel, "write")
        with _refused("write", target):
            self.filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
            if not self.is_local:
                # An object store publishes an object only when its upload completes.
                with self.filesystem.open_output_stream(target) as out:
                    out.write(data)
                return
            temporary = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                _write_synced(temporary, data)
                os.replace(temporary, target)
            finally:  # a write cut short (disk full) leaves no temporary file behind
                if os.path.lexists(temporary):
                    os.unlink(temporary)

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
        with _refused("write", target):
            self.filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
            temporary = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                _write_synced(temporary, data)
                os.link(temporary, target)
                return True
            except FileExistsError:
                return False
            finally:
                if os.path.lexists(temporary):
                    os.unlink(temporary)

    def rename(self, rel: str, new_rel: str) -> bool:
        """Move the file ``rel`` to ``new_rel`` (replacing it); False if ``rel`` was not there.

        Atomic locally, so of two callers renaming the same file exactly one succeeds; on an object store a
        copy and a delete.
        """
        source, target = self._changeable(rel, "move"), self._changeable(new_rel, "write")
        with _refused("write", target):
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
            with _refused("delete", target):
                self.filesystem.delete_dir(target)

    def delete_file(self, rel: str) -> None:
        target = self._changeable(rel, "delete")
        if self.exists(rel):
            with _refused("delete", target):
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


class WriteFailed(UserError):
    """A write or delete the filesystem refused (disk full, permission denied, a read-only disk): the message
    names the file and the way out, a rerun (``--resume`` keeps everything a sweep finished)."""


@contextmanager
def _refused(action: str, target: str) -> Iterator[None]:
    """Turn the filesystem's refusal to ``action`` ``target`` into a one-line `WriteFailed`.

    What was written before stays (every file is atomic), so after making room a sweep resumes where it stopped.
    """
    try:
        yield
    except OSError as error:  # pyarrow's filesystem errors are OSErrors too
        reason = error.strerror or _first_line(error)
        raise WriteFailed(
            f"cannot {action} {target} ({reason}); make room or fix the folder's permissions, then rerun: a sweep "
            "with --resume keeps everything it finished"
        ) from None


def _write_synced(path: str, data: bytes) -> None:
    """Write ``data`` to a new local file and flush it to the disk before it is renamed or linked into place."""
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


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
    MODELS: "rerun `rayrs sweep` on the sweep file with --resume to write it again",
    SIMILARITY_DIR: "delete it and rerun the sweep with --resume to recompute that comparison",
    PROBES_DIR: "delete it; the sweep crafts that probe again",
    REPORT_DIR: "delete it and rerun `rayrs analyze` to draw the report again",
    LEASE: "delete it if no rayrs driver is running on this experiment",
}
