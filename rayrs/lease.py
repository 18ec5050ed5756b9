"""One driver per experiment: a lease object, ``lease.json``, in the experiment's storage.

A driver takes the lease before it writes anything and gives it back when it stops, also on an error or
Ctrl-C; a second driver is refused with one line naming the holder, and `rayrs status` shows the holder.
The lease holds the driver's host, pid, start time and a heartbeat that a background thread renews every
`HEARTBEAT_SECONDS`. A lease whose heartbeat is older than `EXPIRY_SECONDS` (its driver was killed without a
chance to give it back, or its machine was lost) is stale, and the next driver takes it over; so is, at once,
a lease held by a process that no longer exists on this very machine (same host, boot and pid namespace).
Ages are read against this machine's clock: clocks of the machines sharing the results must agree to well
within the expiry (NTP does).

What is guaranteed:

- Local folder (and NFS): the lease is created with link(2) from a complete temporary file, which fails if a
  lease exists, so of two drivers starting together exactly one gets it. A stale lease is first renamed
  aside (of two drivers, one rename wins) and checked to be the stale one before a new one is created.
- Object store (S3 through pyarrow, which has no conditional PUT): a driver PUTs its lease only where it
  finds none (or a stale one), waits `SETTLE_SECONDS`, and reads it back; it holds the lease only if it reads
  its own token. Reads after a completed PUT see it (S3 is strongly consistent), so of two drivers the last
  PUT wins and the other steps back, provided that each one's check-then-PUT takes less than the settle
  delay. The residual race, a driver stalled between its check and its PUT for longer than that, is caught
  by the heartbeat: every renewal first reads the lease, and a driver that finds another's token there stops
  its sweep (`Lease.check`) with one line, leaving the experiment to the other.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rayrs.errors import UserError
from rayrs.storage import LEASE, DamagedFile, MissingFile, Storage, way_out

HEARTBEAT_SECONDS = 10.0  # how often the holder renews its heartbeat
EXPIRY_SECONDS = 60.0  # a lease without a heartbeat for this long is stale: six missed renewals
SETTLE_SECONDS = 2.0  # object stores: wait between PUT and read-back when taking the lease


class LeaseHeld(UserError):
    """Another driver holds the experiment's lease."""


class LeaseLost(UserError):
    """This driver's lease was taken over by another driver; it must stop."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: a driver process, where it runs, since when, and its last heartbeat (Unix times)."""

    token: str  # unique per acquisition: tells a driver its own lease from another's
    host: str
    pid: int
    machine: str  # host, boot and pid namespace: within it a pid names one process (`this_machine`)
    started: float
    heartbeat: float

    @classmethod
    def me(cls, token: str) -> Holder:
        now = time.time()
        return cls(token, socket.gethostname(), os.getpid(), this_machine(), now, now)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    def age(self, now: float | None = None) -> float:
        """Seconds since the last heartbeat."""
        return (time.time() if now is None else now) - self.heartbeat

    def stale(self, expiry: float) -> bool:
        """No heartbeat for ``expiry`` seconds, or a holder process gone from this very machine."""
        return self.age() > expiry or (self.machine == this_machine() and not _alive(self.pid))

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"host {self.host}, pid {self.pid}, started {started}, last heartbeat {self.age():.0f} s ago"


def this_machine() -> str:
    """This process space: host name, boot id and pid namespace (where a pid means one process)."""
    parts = [socket.gethostname()]
    for source in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                   lambda: str(os.stat("/proc/self/ns/pid").st_ino)):
        try:
            parts.append(source())
        except OSError:  # not Linux: the host name alone
            pass
    return ":".join(parts)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs here (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_holder(storage: Storage, rel: str = LEASE) -> Holder | None:
    """The lease's holder, or None when there is no lease; a damaged lease is a `DamagedFile`."""
    try:
        data = storage.read_json(rel)
    except MissingFile:
        return None
    try:
        holder = Holder(**{key: data[key] for key in Holder.__dataclass_fields__})
        if not isinstance(holder.pid, int) or not all(isinstance(t, (int, float)) for t in (holder.started, holder.heartbeat)):
            raise TypeError("pid, started and heartbeat must be numbers")
        return holder
    except (TypeError, KeyError) as error:
        raise DamagedFile(f"{storage.full_path(rel)} is not a rayrs lease ({error!r}); {way_out(LEASE)}") from None


class Lease:
    """The experiment's lease, held from `acquire` (or ``with``) to `release`; see the module docstring.

    ``heartbeat``, ``expiry`` and ``settle`` default to the module's constants (seconds).
    """

    def __init__(self, storage: Storage, heartbeat: float | None = None, expiry: float | None = None,
                 settle: float | None = None):
        self.storage = storage
        self.heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
        self.expiry = EXPIRY_SECONDS if expiry is None else expiry
        self.settle = SETTLE_SECONDS if settle is None else settle
        self.token = uuid.uuid4().hex
        self._lost: Holder | None | str = ""  # "" while held; the holder found (None: the lease vanished) once lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- taking and giving back -------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease, or raise `LeaseHeld` naming the driver that holds it."""
        for _ in range(3):  # a lease given back or taken over between our steps: look again
            if self._create():
                break
            holder = read_holder(self.storage)
            if holder is None:
                continue
            if not holder.stale(self.expiry):
                raise LeaseHeld(
                    f"{self.storage.root} is in use by another rayrs driver ({holder.describe()}; "
                    f"{self.storage.full_path(LEASE)}); wait for it to finish or stop it (a lease expires "
                    f"{self.expiry:.0f} s after its last heartbeat), then rerun"
                )
            if self._take_over(holder):
                break
        else:
            raise LeaseHeld(f"{self.storage.root}: other drivers keep taking its lease; stop them, then rerun")
        self._thread = threading.Thread(target=self._beat, name="rayrs-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours (never another driver's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            holder = read_holder(self.storage)
            if holder is not None and holder.token == self.token:
                self.storage.delete_file(LEASE)
        except (UserError, OSError):
            pass  # storage out of reach: the lease expires on its own

    def check(self) -> None:
        """Raise `LeaseLost` if the heartbeat found that another driver has taken the lease over."""
        if self._lost == "":
            return
        now = "is gone" if self._lost is None else f"is held by {self._lost.describe()}"
        raise LeaseLost(
            f"{self.storage.root}: this driver lost its lease (it {now}); it stops here and leaves the experiment "
            "to the other driver; rerun with --resume once that one is done"
        )

    # -- steps --------------------------------------------------------------------------------------------
    def _create(self) -> bool:
        if not self.storage.create_new(LEASE, Holder.me(self.token).encode()):
            return False
        return self.storage.is_local or self._settled()

    def _settled(self) -> bool:
        """Object stores: after our PUT, wait and read back; ours only if the last PUT was ours."""
        time.sleep(self.settle)
        holder = read_holder(self.storage)
        return holder is not None and holder.token == self.token

    def _take_over(self, stale: Holder) -> bool:
        if not self.storage.is_local:
            self.storage.write_bytes(LEASE, Holder.me(self.token).encode())
            return self._settled()
        aside = f"{LEASE}.stale-{self.token[:8]}"
        if not self.storage.rename(LEASE, aside):  # another driver moved it first
            return False
        moved = read_holder(self.storage, aside)
        if moved is None or moved.token != stale.token:
            # Between our read and our rename another driver took the lease over: give theirs back.
            self.storage.create_new(LEASE, self.storage.read_bytes(aside))
            self.storage.delete_file(aside)
            return False
        self.storage.delete_file(aside)
        return self._create()

    def _beat(self) -> None:
        """Renew the heartbeat until released; stop, marking the lease lost, if another driver holds it now."""
        while not self._stop.wait(self.heartbeat):
            try:
                holder = read_holder(self.storage)
                if holder is None or holder.token != self.token:
                    self._lost = holder
                    return
                self.storage.write_bytes(LEASE, replace(holder, heartbeat=time.time()).encode())
            except (UserError, OSError):
                continue  # a storage hiccup: try again at the next beat (the lease expires only after many)
