"""Response templates: raw bytes in `<response_dir>/<port>_<protocol>` (data, not code)."""

from __future__ import annotations

import logging
import os

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
    path = template_path(response_dir, protocol, port)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TEMPLATE_SIZE + 1)
    except FileNotFoundError:
        return DEFAULT_TEMPLATE
    except OSError as exc:
        log.warning("template %s unreadable (%s): answering a newline", path, exc.strerror)
        return DEFAULT_TEMPLATE
    if len(data) > MAX_TEMPLATE_SIZE:
        log.warning("template %s is over %d bytes: answering a newline", path, MAX_TEMPLATE_SIZE)
        return DEFAULT_TEMPLATE
    return data
