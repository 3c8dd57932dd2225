"""A bounded, durable, multi-process local queue for outputs whose sink is away.

When a central store (PostgreSQL, an hpfeeds broker) cannot be reached, an output writes each
record here and replays it, oldest first, when the sink is back. Several dynamic servers (one
process per port) share one spool directory, so everything is done with files and kernel locks:

- **One file per record**, named `<time in ns, 20 digits>-<key>.rec`: a directory listing sorted
  by name is the replay order (time, then key). The key is chosen by the output (an attack id, a
  sample hash) and is never attacker data; it is checked against `_KEY`.
- **Durable**: written to a temp file, fsync'ed, renamed into place, the directory fsync'ed. A
  crash leaves a complete record or none; temp files of dead processes are removed on open.
- **Claimed with flock** before sending: a claim is an open descriptor holding LOCK_EX, so a
  claimer that crashes loses its claims with its descriptors and another process takes them up.
  A claimer that finds the file already unlinked (link count 0) after locking skips it: the
  holder before it delivered it.
- **Removed after the sink confirmed** (`Claim.ack`). Records the sink refuses as bad data (not
  for being away) are moved to `rejected/`, kept for the operator, logged and counted: a poison
  record must not block the queue forever, and must not vanish either.
- **Bounded** by record count and bytes. Overflow policy: **refuse new**. A record that would go
  over a bound is not written; that is logged with its key and counted (`refused`). We keep the
  oldest because they are already durable and in order, deleting files another process may hold
  claimed would race, and an operator reading "refused N" knows exactly which gap to look for
  in the other outputs (logJSON, SaveFile still hold those attacks). Nothing is dropped silently.

The bounds are checked against a tally of the directory that is rescanned at most every
`_RESCAN_INTERVAL`; in between this process counts its own writes exactly, so with several
processes writing at once the bound can be passed by what the others wrote within that interval.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("honeytrap.spool")

# Defaults for the bounds: about a day of a busy sensor's attacks, and a disk budget an
# operator notices before it fills a /var partition.
DEFAULT_MAX_RECORDS = 100_000
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024
# How stale the shared tally of the directory may get before a write rescans it (see above).
_RESCAN_INTERVAL = 1.0
# Keys name files: a conservative alphabet and length (ids and hex hashes fit).
_KEY = re.compile(r"[A-Za-z0-9_-]{1,150}")
# A replay batch reads at most about this much into memory (records hold payloads of up to
# read_limit bytes, hex-encoded: a batch of 200 of them must not take gigabytes).
CLAIM_MAX_BYTES = 32 * 1024 * 1024
_SUFFIX = ".rec"
_TMP_PREFIX = ".tmp-"
REJECTED_DIR = "rejected"


@dataclass
class SpoolCounters:
    written: int = 0
    refused: int = 0  # overflow: records not written (policy "refuse new")
    acked: int = 0
    rejected: int = 0  # poison records moved to rejected/


@dataclass
class Claim:
    """A record held by this process (flock) until acknowledged or released."""

    spool: Spool
    name: str
    key: str
    when_ns: int
    data: bytes
    fd: int = field(repr=False)
    done: bool = False

    def ack(self) -> None:
        """The sink has it: remove it for good."""
        if self.done:
            return
        self.done = True
        try:
            os.unlink(os.path.join(self.spool.directory, self.name))
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
        self.spool._forget(len(self.data))
        self.spool.counters.acked += 1

    def reject(self, reason: str) -> None:
        """The sink refused it as bad data: keep it aside in rejected/, log and count."""
        if self.done:
            return
        self.done = True
        try:
            os.rename(
                os.path.join(self.spool.directory, self.name),
                os.path.join(self.spool.directory, REJECTED_DIR, self.name),
            )
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
        self.spool._forget(len(self.data))
        self.spool.counters.rejected += 1
        log.error("spool %s: record %s rejected by the sink (%s): kept in %s/",
                  self.spool.directory, self.key, reason, REJECTED_DIR)

    def release(self) -> None:
        """Not delivered: give it back for a later attempt (by us or another process)."""
        if not self.done:
            self.done = True
            os.close(self.fd)


class Spool:
    def __init__(
        self,
        directory: str,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.directory = directory
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.counters = SpoolCounters()
        self._lock = threading.Lock()
        self._tally_records = 0
        self._tally_bytes = 0
        self._tally_time = -_RESCAN_INTERVAL * 2
        os.makedirs(os.path.join(directory, REJECTED_DIR), mode=0o700, exist_ok=True)
        self._remove_dead_temps()

    @staticmethod
    def prepare(directory: str, uid: int = -1, gid: int = -1) -> None:
        """Create the directory (and rejected/) and hand it, with what it holds, to uid/gid:
        run in the master as root, before the dynamic servers drop privileges."""
        rejected = os.path.join(directory, REJECTED_DIR)
        os.makedirs(rejected, mode=0o700, exist_ok=True)
        if uid == -1 and gid == -1:
            return
        for base in (directory, rejected):
            os.chown(base, uid, gid)
            with os.scandir(base) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        os.chown(entry.path, uid, gid, follow_symlinks=False)

    # -- writing ---------------------------------------------------------------------------

    def put(self, key: str, data: bytes, when: float | None = None) -> bool:
        """Store one record durably. False if refused by the bounds (logged and counted)."""
        if not _KEY.fullmatch(key):
            raise ValueError(f"spool key not allowed: {key!r}")
        when_ns = time.time_ns() if when is None else int(when * 1e9)
        name = f"{when_ns:020d}-{key}{_SUFFIX}"
        with self._lock:
            self._refresh_tally()
            if (self._tally_records + 1 > self.max_records
                    or self._tally_bytes + len(data) > self.max_bytes):
                self.counters.refused += 1
                log.error(
                    "spool %s full (%d records, %d bytes; bounds %d, %d): record %s refused "
                    "(policy: refuse new; %d refused so far)",
                    self.directory, self._tally_records, self._tally_bytes,
                    self.max_records, self.max_bytes, key, self.counters.refused,
                )
                return False
            self._tally_records += 1
            self._tally_bytes += len(data)
        self._write(name, data)
        self.counters.written += 1
        return True

    def put_rejected(self, key: str, data: bytes, reason: str, when: float | None = None) -> None:
        """Set a record the sink refused as bad data aside in rejected/ (outside the bounds:
        these are rare and the operator must see them), logged and counted."""
        if not _KEY.fullmatch(key):
            raise ValueError(f"spool key not allowed: {key!r}")
        when_ns = time.time_ns() if when is None else int(when * 1e9)
        self._write(f"{when_ns:020d}-{key}{_SUFFIX}", data, REJECTED_DIR)
        self.counters.rejected += 1
        log.error("spool %s: record %s rejected by the sink (%s): kept in %s/",
                  self.directory, key, reason, REJECTED_DIR)

    def _write(self, name: str, data: bytes, subdir: str = "") -> None:
        directory = os.path.join(self.directory, subdir) if subdir else self.directory
        tmp = os.path.join(directory, f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, os.path.join(directory, name))
        _sync_dir(directory)

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Record file names, oldest first."""
        with os.scandir(self.directory) as entries:
            return sorted(e.name for e in entries if e.name.endswith(_SUFFIX))

    def claim(self, limit: int, max_bytes: int = CLAIM_MAX_BYTES) -> list[Claim]:
        """Up to `limit` of the oldest records no other process holds, locked for us, read
        into memory up to about `max_bytes` (always at least one)."""
        claims: list[Claim] = []
        size = 0
        for name in self.names():
            if len(claims) >= limit or size >= max_bytes:
                break
            claim = self._claim_one(name)
            if claim is not None:
                claims.append(claim)
                size += len(claim.data)
        return claims

    def _claim_one(self, name: str) -> Claim | None:
        path = os.path.join(self.directory, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None  # delivered by another process meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None  # another process holds it
            raise
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)  # acknowledged and unlinked by its holder before we locked it
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        stamp, _, rest = name.partition("-")
        return Claim(self, name, rest[: -len(_SUFFIX)], int(stamp), b"".join(chunks), fd)

    # -- accounting ------------------------------------------------------------------------

    def records(self, max_age: float) -> int:
        """Records in the spool: the running tally (this process's writes and deliveries move
        it), counted afresh when older than `max_age` seconds (other processes' work shows
        then). A directory that cannot be read keeps the running figure."""
        with self._lock:
            if time.monotonic() - self._tally_time >= max_age:
                try:
                    self._scan()
                except OSError:
                    pass
            return self._tally_records

    def depth(self) -> tuple[int, int]:
        """(records, bytes) in the spool now, from a fresh scan."""
        with self._lock:
            self._scan()
            return self._tally_records, self._tally_bytes

    def _forget(self, size: int) -> None:
        with self._lock:
            self._tally_records = max(0, self._tally_records - 1)
            self._tally_bytes = max(0, self._tally_bytes - size)

    def _refresh_tally(self) -> None:
        if time.monotonic() - self._tally_time >= _RESCAN_INTERVAL:
            self._scan()

    def _scan(self) -> None:
        records = size = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(_SUFFIX):
                    try:
                        size += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
                    records += 1
        self._tally_records, self._tally_bytes = records, size
        self._tally_time = time.monotonic()

    def _remove_dead_temps(self) -> None:
        """Temp files whose writer process is gone are half-written records: remove them."""
        for directory in (self.directory, os.path.join(self.directory, REJECTED_DIR)):
            self._remove_dead_temps_in(directory)

    @staticmethod
    def _remove_dead_temps_in(directory: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.name.startswith(_TMP_PREFIX):
                    continue
                pid_text = entry.name[len(_TMP_PREFIX):].partition("-")[0]
                if pid_text.isdigit() and not _alive(int(pid_text)):
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sync_dir(directory: str) -> None:
    """fsync a directory so a rename in it survives a crash."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
