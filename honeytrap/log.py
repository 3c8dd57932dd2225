"""Logging with the man page's levels: -t 0 off, 1 error, 2 warning, 3 notice, 4 info,
5 noisy, 6 debug. NOTICE and NOISY are levels of ours between the standard ones.

Messages never carry attacker bytes (payloads stay in the attack record); addresses and ports
are parsed values, so a hostile peer cannot forge log lines.
"""

from __future__ import annotations

import logging
import os
import sys
import time

NOTICE = 25
NOISY = 15
logging.addLevelName(NOTICE, "NOTICE")
logging.addLevelName(NOISY, "NOISY")

# -t value -> logging level. 0 is off: above CRITICAL.
LEVELS = {
    0: logging.CRITICAL + 10,
    1: logging.ERROR,
    2: logging.WARNING,
    3: NOTICE,
    4: logging.INFO,
    5: NOISY,
    6: logging.DEBUG,
}

FORMAT = "%(asctime)s honeytrap[%(process)d] %(levelname)s %(name)s: %(message)s"
# Seconds between two complaints on stderr that the log file cannot be written (a full disk).
COMPLAIN_INTERVAL = 60.0
LOG_FILE_MODE = 0o644


class AppendFileHandler(logging.Handler):
    """The -L file, shared by the master, the servers and the recorder: each record one
    os.write on an O_APPEND descriptor (the kernel appends it whole, never interleaved with
    another process's), no buffer to copy at fork or to flush twice.

    A write that fails (a full disk) loses that record: counted, and said on stderr at most
    once per COMPLAIN_INTERVAL, never as a traceback per record (logging's handleError). A short
    write leaves a fragment the other processes' records may follow: the next record of this
    process starts on a new line, so it is never glued to it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.fd = _open_log(path)
        self.lost = 0
        self._torn = False
        self._complained = -COMPLAIN_INTERVAL

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            self.handleError(record)  # a bug in a message's arguments: logging's report
            return
        if self._torn:
            data = b"\n" + data
        try:
            written = os.write(self.fd, data)
        except OSError as exc:
            self._lost(exc.strerror or str(exc))
            return
        self._torn = written < len(data)
        if self._torn:
            self._lost("short write")

    def _lost(self, why: str) -> None:
        self.lost += 1
        now = time.monotonic()
        if now - self._complained >= COMPLAIN_INTERVAL:
            self._complained = now
            try:
                sys.stderr.write(f"honeytrap: cannot write the log file {self.path} ({why}): "
                                 f"{self.lost} log records lost so far\n")
            except (OSError, ValueError):
                pass

    def reopen(self) -> None:
        """A new descriptor for the path (logrotate moved the file)."""
        self.acquire()
        try:
            old, self.fd = self.fd, _open_log(self.path)
            os.close(old)
        finally:
            self.release()

    def close(self) -> None:
        self.acquire()
        try:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        finally:
            self.release()
        super().close()


def _open_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)

_handlers: list[logging.Handler] = []


def setup(level: int, logfile: str | None, *, stderr: bool) -> None:
    """(Re)configure the root logger: the -L file (append mode: one write per line, shared by
    every dynamic server) and, with -D, stderr as well."""
    root = logging.getLogger()
    for handler in _handlers:
        root.removeHandler(handler)
        handler.close()
    _handlers.clear()
    formatter = logging.Formatter(FORMAT)
    if logfile:
        _handlers.append(AppendFileHandler(logfile))
    if stderr:
        _handlers.append(logging.StreamHandler(sys.stderr))
    for handler in _handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(LEVELS.get(level, NOTICE))


def reopen() -> None:
    """Reopen the log file (after logrotate moved it; SIGHUP)."""
    for handler in _handlers:
        if isinstance(handler, AppendFileHandler):
            handler.reopen()


def file_descriptors() -> list[int]:
    """Descriptors the logging uses, to keep open when daemonizing."""
    fds = []
    for handler in _handlers:
        if isinstance(handler, AppendFileHandler):
            fds.append(handler.fd)
        elif isinstance(handler, logging.StreamHandler):
            try:
                fds.append(handler.stream.fileno())
            except (AttributeError, ValueError, OSError):
                pass
    return fds
