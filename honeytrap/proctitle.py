"""Process names: `ps`, `top` and /proc/<pid>/comm tell the master's children apart.

The recorder is `honeytrap-rec`; a server process `ht-<port>/<protocol>` (e.g. `ht-8080/tcp`),
with `+N` when it serves N more ports (`ht-8080/tcp+3`).
Set with prctl(PR_SET_NAME), which the kernel truncates to 15 bytes.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger("honeytrap.proctitle")

PR_SET_NAME = 15
# The kernel's limit for the name (TASK_COMM_LEN, 16 with the terminating NUL).
MAX_NAME = 15

RECORDER = "honeytrap-rec"


def server_name(port: int, protocol: str, others: int = 0) -> str:
    """A server process: its oldest port, and how many more it serves ("ht-8080/tcp+3")."""
    return f"ht-{port}/{protocol}" + (f"+{others}" if others else "")


def set_name(name: str) -> None:
    """Best effort: a failure is logged, never fatal."""
    try:
        libc = _libc()
        raw = name.encode("ascii", "replace")[:MAX_NAME] + b"\0"
        if libc.prctl(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_NAME) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        log.debug("cannot set the process name: %s", exc)


@functools.cache
def _libc() -> ctypes.CDLL:
    # The running program's own symbols include libc's: no library search (find_library would
    # run ldconfig in a subprocess). Cached: a server process renames itself as ports come.
    return ctypes.CDLL(None, use_errno=True)
