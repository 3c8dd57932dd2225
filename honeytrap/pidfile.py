"""The pid file: created exclusively, locked while we live, removed on exit.

A live lock means another honeytrap runs: refuse to start. A file without a lock was left by a
crash: take it over (O_EXCL alone would refuse forever after a crash).
"""

from __future__ import annotations

import errno
import fcntl
import os

from honeytrap.errors import HoneytrapError


class AlreadyRunning(HoneytrapError):
    pass


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                with open(self.path) as f:
                    other = f.read().strip()
                raise AlreadyRunning(
                    f"pid file {self.path} is locked: honeytrap already runs (pid {other or '?'})"
                ) from exc
            raise
        self.fd = fd
        self.write()

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
