"""Process names: `ps`, `top` and /proc/<pid>/comm tell the master's children apart.

The recorder is `honeytrap-rec`; a dynamic server `ht-<port>/<protocol>` (e.g. `ht-8080/tcp`).
Set with prctl(PR_SET_NAME), which the kernel truncates to 15 bytes.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("honeytrap.proctitle")

PR_SET_NAME = 15
# The kernel's limit for the name (TASK_COMM_LEN, 16 with the terminating NUL).
MAX_NAME = 15

RECORDER = "honeytrap-rec"


def server_name(port: int, protocol: str) -> str:
    return f"ht-{port}/{protocol}"


def set_name(name: str) -> None:
    """Best effort: a failure is logged, never fatal."""
    try:
        # The running program's own symbols include libc's: no library search (find_library
        # would run ldconfig in a subprocess).
        libc = ctypes.CDLL(None, use_errno=True)
        raw = name.encode("ascii", "replace")[:MAX_NAME] + b"\0"
        if libc.prctl(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_NAME) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        log.debug("cannot set the process name: %s", exc)
