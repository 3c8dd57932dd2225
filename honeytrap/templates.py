"""Response templates: raw bytes in `<response_dir>/<port>_<protocol>` (data, not code)."""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger("honeytrap.templates")

# A port without a template answers a client whose protocol is unknown with a single newline
# (the original's answer on every port; dialogue/detect.py), and UDP datagrams the same.
DEFAULT_TEMPLATE = b"\n"
# A template is sent whole on each turn; a larger file is a mistake in the response directory.
MAX_TEMPLATE_SIZE = 1024 * 1024


def template_names(response_dir: str) -> frozenset[str]:
    """The names in response_dir, read by the master at start and on SIGHUP: a port without a
    template costs no open() per start then (a sweep starts thousands a second)."""
    try:
        return frozenset(os.listdir(response_dir))
    except OSError as exc:
        log.warning("response_dir %s unreadable (%s): no templates", response_dir, exc.strerror)
        return frozenset()


def template_path(response_dir: str, protocol: str, port: int) -> str:
    return os.path.join(response_dir, f"{port}_{protocol}")


def load_template(response_dir: str, protocol: str, port: int) -> bytes | None:
    """The template for protocol/port, or None when there is none or it is unusable (logged: a
    broken template must not stop the port being served)."""
    fd = open_template(response_dir, protocol, port)
    if fd is None:
        return None
    return read_template(fd, template_path(response_dir, protocol, port))


def open_template(response_dir: str, protocol: str, port: int) -> int | None:
    """The template file for protocol/port opened for reading, to hand to a server process that
    cannot open it itself (it runs unprivileged); None when there is none or it is not a regular
    file (logged). Never blocks: a FIFO in the directory must not stall the master."""
    path = template_path(response_dir, protocol, port)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("template %s unreadable (%s): answering a newline", path, exc.strerror)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        log.warning("template %s is not a regular file: answering a newline", path)
        return None
    return fd


def read_template(fd: int, path: str) -> bytes | None:
    """The template from a descriptor open_template gave (closed here); None if unusable."""
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_TEMPLATE_SIZE + 1)
    except OSError as exc:
        log.warning("template %s unreadable (%s): answering without", path, exc.strerror)
        return None
    if len(data) > MAX_TEMPLATE_SIZE:
        log.warning("template %s is over %d bytes: answering without", path, MAX_TEMPLATE_SIZE)
        return None
    return data
