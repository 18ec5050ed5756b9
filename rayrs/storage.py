"""Where every result lives, and how it is written so that nothing half-written is ever read.

One experiment's results sit under one root: a local folder (``results/<experiment>``) or any pyarrow
filesystem URI (``s3://bucket/prefix/<experiment>``) that every node of a cluster can reach. The layout,
relative to that root, is defined here and nowhere else::

    sweep.json                                   the validated sweep, as run (resume checks it)
    trials/<trial>/trial.json                    the trial's full parameters
    trials/<trial>/epoch_<eeee>/model.safetensors       weights after epoch e (e = 1..epochs)
    trials/<trial>/epoch_<eeee>/optimizer.safetensors   resume state, so training resumes exactly; by default
                                                        the latest epoch's only (`rayrs.checkpoint`)
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

A location is parsed once (`parse_location`), with a URI's options kept apart from its path:
``s3://bucket/prefix?region=eu-west-1`` holds experiment ``exp`` at ``s3://bucket/prefix/exp?region=eu-west-1``.
`Storage.check` asks a remote store one question, given up after `DOOR_SECONDS`, so that an unreachable or
misconfigured location is one line before anything runs.
"""

from __future__ import annotations

import datetime
import functools
import io
import json
import math
import os
import re
import threading
import uuid
from collections.abc import Callable
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
    kwargs = {
        "region": options.get("region"),
        "endpoint_override": options.get("endpoint_override"),
        "scheme": options.get("scheme"),
        "anonymous": _flag(options, "anonymous"),
        "connect_timeout": _seconds(options, "connect_timeout"),
        "request_timeout": _seconds(options, "request_timeout"),
        "force_virtual_addressing": _flag(options, "force_virtual_addressing"),
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
            info = _within(DOOR_SECONDS, partial(self.filesystem.get_file_info, self._base))
        except TimeoutError:
            way_out = _WAY_OUT.get(self.location.scheme, "check the URI and the network")
            raise UserError(f"results location {self.root}: no answer within {DOOR_SECONDS:g} s; {way_out}") from None
        except (OSError, pa.ArrowException) as error:
            way_out = _WAY_OUT.get(self.location.scheme, "check the URI and the network")
            raise UserError(f"results location {self.root}: {_first_line(error)}; {way_out}") from None
        if info.type == pafs.FileType.File:
            raise UserError(f"results location {self.root} is a file, not a folder; choose a folder path")

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
        return Storage(self.location.child(rel))

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
