"""Response templates: raw bytes in `<response_dir>/<port>_<protocol>` (data, not code)."""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger("honeytrap.templates")

# The man page's behaviour for a port without a template: answer a single newline.
DEFAULT_TEMPLATE = b"\n"
# A template is sent whole on each turn; a larger file is a mistake in the response directory.
MAX_TEMPLATE_SIZE = 1024 * 1024


def template_path(response_dir: str, protocol: str, port: int) -> str:
    return os.path.join(response_dir, f"{port}_{protocol}")


def load_template(response_dir: str, protocol: str, port: int) -> bytes:
    """The template for protocol/port, or a single newline when there is none or it is unusable
    (logged: a broken template must not stop the port being served)."""
    fd = open_template(response_dir, protocol, port)
    if fd is None:
        return DEFAULT_TEMPLATE
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


def read_template(fd: int, path: str) -> bytes:
    """The template from a descriptor open_template gave (closed here); a newline if unusable."""
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_TEMPLATE_SIZE + 1)
    except OSError as exc:
        log.warning("template %s unreadable (%s): answering a newline", path, exc.strerror)
        return DEFAULT_TEMPLATE
    if len(data) > MAX_TEMPLATE_SIZE:
        log.warning("template %s is over %d bytes: answering a newline", path, MAX_TEMPLATE_SIZE)
        return DEFAULT_TEMPLATE
    return data
