"""Logging with the man page's levels: -t 0 off, 1 error, 2 warning, 3 notice, 4 info,
5 noisy, 6 debug. NOTICE and NOISY are levels of ours between the standard ones.

Messages never carry attacker bytes (payloads stay in the attack record); addresses and ports
are parsed values, so a hostile peer cannot forge log lines.
"""

from __future__ import annotations

import logging
import sys

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
        file_handler = logging.FileHandler(logfile, mode="a", encoding="utf-8")
        _handlers.append(file_handler)
    if stderr:
        _handlers.append(logging.StreamHandler(sys.stderr))
    for handler in _handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(LEVELS.get(level, NOTICE))


def reopen() -> None:
    """Reopen the log file (after logrotate moved it; SIGHUP)."""
    for handler in _handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()


def file_descriptors() -> list[int]:
    """Descriptors the logging uses, to keep open when daemonizing."""
    fds = []
    for handler in _handlers:
        if isinstance(handler, logging.StreamHandler):
            try:
                fds.append(handler.stream.fileno())
            except (AttributeError, ValueError, OSError):
                pass
    return fds
