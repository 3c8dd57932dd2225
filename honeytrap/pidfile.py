"""The pid file: created exclusively, locked while we live, removed on exit.

A live lock means another honeytrap runs: refuse to start. A file without a lock was left by a
crash: take it over (O_EXCL alone would refuse forever after a crash).

We run as root, often in a directory others can write to (/run, /tmp, a container's volume):
whatever is at the path is opened without following a symbolic link, without blocking (a FIFO)
and checked to be a regular file before anything is written, so a link planted at the pid file
path cannot make root truncate and overwrite its target.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from honeytrap.errors import HoneytrapError

# Enough for any pid and its newline: what we read back of another instance's pid file.
_PID_TEXT_MAX = 32
_OPEN_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


class AlreadyRunning(HoneytrapError):
    pass


class PidFileRefused(HoneytrapError):
    """The pid file path holds something we must not write to (a link, a FIFO, a directory)."""


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                other = os.pread(fd, _PID_TEXT_MAX, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise AlreadyRunning(
                    f"pid file {self.path} is locked: honeytrap already runs (pid {other or '?'})"
                ) from exc
            os.close(fd)
            raise
        self.fd = fd
        self.write()

    def _open(self) -> int:
        """The pid file's descriptor: created, or an existing regular file (never through a
        link, never a FIFO or device: PidFileRefused naming the path)."""
        try:
            fd = os.open(self.path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                fd = os.open(self.path, _OPEN_FLAGS)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise PidFileRefused(
                        f"pid file {self.path} is a symbolic link: refusing to follow it "
                        "(remove it, or choose another path with -P)"
                    ) from exc
                if exc.errno == errno.EISDIR:
                    raise PidFileRefused(
                        f"pid file {self.path} is a directory: choose another path with -P"
                    ) from exc
                raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise PidFileRefused(
                f"pid file {self.path} is not a regular file ({_kind(mode)}): refusing to "
                "write to it (remove it, or choose another path with -P)"
            )
        return fd

    def write(self) -> None:
        """Write our pid (again after daemonizing: the lock survives the fork)."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"
